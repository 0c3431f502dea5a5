"""``python -m codegen``: regenerate ``generated/``; ``--check``; ``add``; ``list``."""

from __future__ import annotations

import argparse
import sys

from . import render
from .spec import DIRECTIONS, DTYPES, Layer, SpecError, load_specs, parse_kernel, parse_specs


def _add(args) -> int:
    kh, kw = parse_kernel(args.kernel)
    layer = Layer(kh, kw, args.channels, args.pattern.lower(),
                  tuple(args.dtypes or DTYPES), tuple(args.directions or DIRECTIONS))
    text = render.SPECS.read_text()
    layers = parse_specs(text, str(render.SPECS))
    if any(existing.shape_key == layer.shape_key for existing in layers):
        print(f"{layer.stem} is already in {render.SPECS}; nothing to do")
        return 0
    text = text.rstrip("\n") + "\n\n" + layer.to_toml()
    layers = parse_specs(text, str(render.SPECS))  # re-validate the file as it will be
    render.SPECS.write_text(text)
    written, removed = render.generate(layers)
    print(f"added {layer.stem}; wrote {len(written)} file(s). Rebuild: pip install -e .")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m codegen", description=__doc__)
    parser.add_argument("--check", action="store_true",
                        help="exit non-zero when generated/ differs from a fresh render")
    sub = parser.add_subparsers(dest="command")
    add = sub.add_parser("add", help="add a layer shape to specs.toml and regenerate")
    add.add_argument("--kernel", required=True, help="KHxKW, e.g. 5x5 or 1x3")
    add.add_argument("--channels", required=True, type=int)
    add.add_argument("--pattern", required=True, help="tl, tr, bl, br or quad")
    add.add_argument("--dtypes", nargs="+", choices=DTYPES)
    add.add_argument("--directions", nargs="+", choices=DIRECTIONS)
    sub.add_parser("list", help="list the specs")
    args = parser.parse_args(argv)

    try:
        if args.command == "add":
            return _add(args)
        layers = load_specs(render.SPECS)
        if args.command == "list":
            for layer in layers:
                for spec in layer.specs("cpu"):
                    print(spec.symbol.removesuffix("_cpu"))
            return 0
        if args.check:
            problems = render.check(layers)
            for line in problems:
                print(line, file=sys.stderr)
            if problems:
                print("generated/ is stale: run `python -m codegen`", file=sys.stderr)
                return 1
            print(f"generated/ is up to date ({len(layers)} layer shapes)")
            return 0
        written, removed = render.generate(layers)
        print(f"{len(layers)} layer shapes: wrote {len(written)}, removed {len(removed)}, "
              f"unchanged {len(render.render_all(layers)) - len(written)}")
        return 0
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
