"""The ``inverseflow`` command line."""

from __future__ import annotations

import argparse
import json
import sys


def _info(args) -> int:
    from . import info

    data = info.collect()
    print(json.dumps(data, indent=2) if args.json else info.format_report(data))
    return 0


def _demo(args) -> int:
    from . import demo

    result = demo.run(args.batch, args.channels, args.size, args.kernel, args.order, args.device)
    print(demo.format_report(result))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)
    return 0


def _bench(args) -> int:
    from . import bench

    device = args.device
    repeats = 20 if args.quick else 100
    cases = [dict(batch=64, channels=12, size=16, kernel=3, order="TL"),
             dict(batch=64, channels=12, size=16, kernel=3, order="quad"),
             dict(batch=64, channels=12, size=16, kernel=3, order="TL", dtype="float64")]
    if device == "cuda":
        cases.insert(0, dict(batch=256, channels=12, size=16, kernel=3, order="TL"))
    results = []
    for case in cases:
        import torch

        dtype = getattr(torch, case.pop("dtype", "float32"))
        r = bench.op_case(**case, dtype=dtype, device=device, repeats=repeats)
        results.append(r)
        b, c, h, w = r["shape"]
        print(f"{b}x{c}x{h}x{w} k={r['kernel']} {r['order']:>4} {r['dtype']}: "
              f"inv {r['inv_conv2d']['median_ms']:.3f} ms = {r['ratio_inv_over_conv']:.2f}x conv; "
              f"fwd+bwd {r['ratio_fwd_bwd_inv_over_conv']:.2f}x conv's; generic "
              f"{r['ratio_generic_over_specialized']:.2f}x slower; backward's largest buffer "
              f"{r['backward_largest_buffer_over_bchw']:.2f} BCHW")
    payload = {"environment": bench.environment(device), "ops": results}
    with open(args.out, "w") as handle:
        json.dump(payload, handle, indent=2)
    print(f"wrote {args.out}")
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="inverseflow", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="list the built backends and specializations")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(run=_info)
    demo = sub.add_parser("demo", help="invert a convolution, check the round trip, time it")
    demo.add_argument("--batch", type=_positive, default=64)
    demo.add_argument("--channels", type=_positive, default=12)
    demo.add_argument("--size", type=_positive, default=16)
    demo.add_argument("--kernel", type=_positive, default=3)
    demo.add_argument("--order", default="TL", choices=["TL", "TR", "BL", "BR", "quad"])
    demo.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    demo.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    demo.set_defaults(run=_demo)
    bench = sub.add_parser("bench", help="op benchmark against F.conv2d, as JSON")
    bench.add_argument("--quick", action="store_true", help="fewer repeats (CI-sized)")
    bench.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    bench.add_argument("--out", default="bench.json", help="JSON output file")
    bench.set_defaults(run=_bench)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, TypeError, RuntimeError) as exc:
        print(f"inverseflow {args.command}: error: {exc}", file=sys.stderr)
        return 2
