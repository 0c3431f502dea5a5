"""``python -m codegen``: regenerate ``generated/``; ``--check``; ``add``; ``list``."""

from __future__ import annotations

import argparse
import sys

from . import render
from .spec import (DIMS_OF_PATTERN, DIRECTIONS, DTYPES, PATTERNS, SpecError, by_file, fold,
                   layer_for, load_specs, parse_kernel, parse_specs, served_text)


def _add(args) -> int:
    pattern = args.pattern.lower()
    if pattern not in PATTERNS:
        raise SpecError(f"pattern: {pattern!r} must be one of {', '.join(PATTERNS)}")
    layer = layer_for(parse_kernel(args.kernel, DIMS_OF_PATTERN[pattern]), args.channels,
                      pattern, dtypes=tuple(args.dtypes or DTYPES),
                      directions=tuple(args.directions or DIRECTIONS))
    text = render.SPECS.read_text()
    layers = parse_specs(text, str(render.SPECS))
    if any(existing.shape_key == layer.shape_key for existing in layers):
        print(f"{layer.name} is already in {render.SPECS}; nothing to do")
        return 0
    have = {inst.key for existing in layers for inst in existing.instantiations("cpu")}
    if {inst.key for inst in layer.instantiations("cpu")} <= have:
        serves = served_text(layer.dims, layer.group_channels)
        print(f"{layer.name} is already served by {layer.stem} ({serves}); nothing to do")
        return 0
    text = text.rstrip("\n") + "\n\n" + layer.to_toml()
    layers = parse_specs(text, str(render.SPECS))  # re-validate the file as it will be
    render.SPECS.write_text(text)
    written, removed = render.generate(layers)
    print(f"added {layer.name} ({layer.stem}); wrote {len(written)} file(s). "
          "Rebuild: pip install -e .")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m codegen", description=__doc__)
    parser.add_argument("--check", action="store_true",
                        help="exit non-zero when generated/ differs from a fresh render")
    sub = parser.add_subparsers(dest="command")
    add = sub.add_parser("add", help="add a layer shape to specs.toml and regenerate")
    add.add_argument("--kernel", required=True,
                     help="KW (1-D), KHxKW (2-D) or KDxKHxKW (3-D), e.g. 5, 5x5 or 3x3x3")
    add.add_argument("--channels", required=True, type=int)
    add.add_argument("--pattern", required=True,
                     help="1-D: l, r, pair; 2-D: tl, tr, bl, br, quad; 3-D: ntl, ntr, nbl, "
                          "nbr, ftl, ftr, fbl, fbr, oct")
    add.add_argument("--dtypes", nargs="+", choices=DTYPES)
    add.add_argument("--directions", nargs="+", choices=DIRECTIONS)
    sub.add_parser("list", help="list the specs")
    args = parser.parse_args(argv)

    try:
        if args.command == "add":
            return _add(args)
        layers = load_specs(render.SPECS)
        if args.command == "list":
            for stem, insts in by_file(fold(layers, "cpu")).items():
                first = insts[0]
                listed = ", ".join(layer.name for layer in first.layers)
                print(f"{stem}: serves {served_text(first.dims, first.group_channels)} "
                      f"(listed: {listed})")
                for inst in insts:
                    print(f"    {inst.symbol.removesuffix('_cpu')}")
            return 0
        if args.check:
            problems = render.check(layers)
            for line in problems:
                print(line, file=sys.stderr)
            if problems:
                print("generated/ is stale: run `python -m codegen`", file=sys.stderr)
                return 1
            print(f"generated/ is up to date ({len(layers)} layer shapes, "
                  f"{len(by_file(fold(layers, 'cpu')))} instantiation files per backend)")
            return 0
        written, removed = render.generate(layers)
        print(f"{len(layers)} layer shapes, {len(by_file(fold(layers, 'cpu')))} "
              f"instantiation files per backend: wrote {len(written)}, removed {len(removed)}, "
              f"unchanged {len(render.render_all(layers)) - len(written)}")
        return 0
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
