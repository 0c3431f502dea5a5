"""The ``inverseflow`` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys

# Plain text: `inverseflow --help` prints it as it is (the docs' CLI page too).
DESCRIPTION = ("The inverseflow command line: train, evaluate, sample and export normalizing "
               "flows built on inverse convolutions, and benchmark the ops.")


def _info(args) -> int:
    from . import info

    data = info.collect()
    text = json.dumps(data, indent=2) if args.json else info.format_report(data, args.verbose)
    try:
        print(text, flush=True)
    except BrokenPipeError:
        # A reader that stops early (`inverseflow info | head -4`, under `set -o pipefail`
        # in scripts/quickstart.sh) is not an error: silence the exit-time flush too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def _demo(args) -> int:
    from .bench import demo

    result = demo.run(args.batch, args.channels, args.size, args.kernel, args.order, args.device)
    print(demo.format_report(result))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)
    return 0


def _bench(args) -> int:
    from pathlib import Path

    from .train.preflight import prepare_run_folder

    # Each section flag runs that section alone, so two of them cannot both be honoured.
    sections = [f"--{name}" for name in ("scaling", "jit", "parity", "precision", "nd", "peak")
                if getattr(args, name, False)]
    if len(sections) > 1:
        raise ValueError(f"{' and '.join(sections)} each run one section alone; give one of "
                         "them per run (or none for the op and model suite)")
    if args.dims != 2 and not args.scaling:
        raise ValueError(f"--dims {args.dims} applies to --scaling only (the 1-D and 3-D "
                         "solves against conv are --nd)")
    # Before measuring, so that a run's results are never lost to an unwritable --out.
    prepare_run_folder(args.out)
    if args.jit:
        return _bench_jit(args)

    if args.scaling:
        return _bench_scaling(args)

    if args.precision:
        return _bench_precision(args)

    if args.parity:
        return _bench_parity(args)

    if args.nd:
        return _bench_nd(args)

    if args.peak:
        return _bench_peak(args)

    from .bench import suite as bench

    result = bench.run(args.device, args.quick)
    for path in bench.write(result, Path(args.out)):
        print(f"wrote {path}")
    return 0


def _bench_peak(args) -> int:
    from pathlib import Path

    from .bench import solve_rate

    if args.device != "cpu":
        raise ValueError("--peak measures the CPU kernels against the CPU's FMA peak; "
                         "use --device cpu")
    for path in solve_rate.write(solve_rate.run(args.quick), Path(args.out)):
        print(f"wrote {path}")
    return 0


def _bench_precision(args) -> int:
    from pathlib import Path

    from .bench import precision

    result = precision.run(args.device, args.quick)
    print(precision.format_report(result))
    print(f"wrote {precision.write(result, Path(args.out))}")
    return 0


def _bench_jit(args) -> int:
    from pathlib import Path

    from .bench import jit_speedup

    result = jit_speedup.run(args.device, args.quick)
    print(jit_speedup.format_report(result))
    print(f"wrote {jit_speedup.write(result, Path(args.out))}")
    return 0


def _bench_parity(args) -> int:
    from pathlib import Path

    from .bench import conv_parity

    result = conv_parity.run(args.device, args.quick)
    print(json.dumps(result["summary"], indent=2))
    print(f"wrote {conv_parity.write(result, Path(args.out))}")
    return 0


def _bench_nd(args) -> int:
    from pathlib import Path

    from .bench import nd_solve

    if args.device != "cpu":
        raise ValueError("--nd measures the CPU kernels; give --device cpu (the default)")
    result = nd_solve.run(args.quick)
    for path in nd_solve.write(result, Path(args.out)):
        print(f"wrote {path}")
    return 0


def _jit(args) -> int:
    from . import jit

    if args.clear:
        cleared = jit.clear_cache()
        print(f"removed {cleared.removed} cached specialization(s) from {jit.cache_dir()}")
        if cleared.left:
            print(f"left {len(cleared.left)} in place:\n    " + "\n    ".join(cleared.left))
    elif args.specialize:
        kernel, channels, pattern = args.specialize
        try:
            channels = int(channels)
        except ValueError:
            raise ValueError(f"CHANNELS: expected an integer, got {channels!r}") from None
        for name in jit.specialize(kernel, channels, pattern, args.device):
            print(name)
    elif args.json:
        print(json.dumps(jit.cached(), indent=2))
    else:
        print("\n".join(jit.cache_lines()))
    return 0


def _bench_scaling(args) -> int:
    from pathlib import Path

    from .bench import scaling

    quick_sides = (8, 16, 32) if args.dims == 2 else (4, 8, 12)
    options = dict(sides=quick_sides, repeats=3, max_step_s=5.0) if args.quick else {}
    result = scaling.run(args.device, dims=args.dims, **options)
    for name, slope in result["slopes_vs_n"].items():
        print(f"{name}: slope of log(time) vs log(n) = "
              f"{'n/a' if slope is None else format(slope, '.2f')}")
    for path in scaling.write(result, Path(args.out)):
        print(f"wrote {path}")
    return 0


def _train(args) -> int:
    from .train import TrainConfig, train

    fields = {f: getattr(args, f) for f in TrainConfig.__dataclass_fields__ if hasattr(args, f)}
    fields["progress"] = not args.quiet
    # --benchmark, else the process setting (INVERSEFLOW_BENCHMARK=1) (DESIGN §16)
    fields["benchmark"] = True if args.benchmark else None
    metrics = train(TrainConfig(**fields))
    if metrics:
        print(f"test bits/dim: {metrics['initial_test_bpd']:.4f} before, "
              f"{metrics['test_bpd']:.4f} after {metrics['steps']} steps "
              f"({metrics['train_seconds']:.1f} s of training)")
        for batch, timing in metrics["pass_timings_ms"].items():
            for placement, t in timing.items():
                print(f"  {batch:>9}, solve on {placement:8}: density pass "
                      f"{t['density_ms']:8.2f} ms, sampling pass {t['sampling_ms']:8.2f} ms")
        print(f"samples: {metrics['samples']}")
        print(f"metrics: {args.out}/metrics.json, checkpoint: {args.out}/checkpoint.pt")
    return 0


def _experiment(args) -> int:
    from .train import experiments

    if args.list:
        print(experiments.listing())
        return 0
    if not (args.name and args.dataset and args.out):
        raise ValueError("give NAME, --dataset and --out (or --list)")
    sizes = {k: getattr(args, k) for k in ("levels", "blocks", "flow_steps", "coupling_width",
                                           "activation")}
    fields = {k: getattr(args, k) for k in experiments.RUN_FIELDS}
    config = experiments.train_config(args.name, args.dataset, args.out, args.steps,
                                      args.time_budget, sizes, progress=not args.quiet, **fields)
    metrics = experiments.run(args.name, config)
    if metrics:
        print(f"{args.name}: test bits/dim {metrics['initial_test_bpd']:.4f} before, "
              f"{metrics['test_bpd']:.4f} after {metrics['steps']} steps; "
              f"{metrics['parameters']} parameters; metrics: {args.out}/metrics.json")
    return 0


def _eval(args) -> int:
    from .data import load_dataset
    from .train import evaluate, load_trained

    from .train.preflight import check_device
    from .train.quoting import quote

    check_device(args.device)   # before the checkpoint, which would be blamed otherwise
    model, state = load_trained(args.checkpoint, args.device)
    trained_on = state["dataset"]
    dataset = args.dataset or trained_on    # the checkpoint records its training data
    other = "" if dataset == trained_on else (
        f" (the checkpoint was trained on {quote(trained_on, 60)}; leave out --dataset to "
        "evaluate on that)")
    try:
        data = load_dataset(dataset, args.data_dir)
    except (ValueError, OSError) as exc:
        if not other:
            raise
        raise ValueError(f"{exc}{other}") from None
    if tuple(data.image_shape) != tuple(model.image_shape):
        raise ValueError(f"the checkpoint models {tuple(model.image_shape)} images, "
                         f"{dataset} has {tuple(data.image_shape)}{other}")
    bpd = evaluate(model, data.test, args.batch_size, limit=args.eval_limit)
    images = min(len(data.test), args.eval_limit or len(data.test))
    print(f"test bits/dim on {dataset}: {bpd:.4f} ({images} images, step {state['step']})"
          f"{other}")
    return 0


def _sample(args) -> int:
    import torch

    from .train.grids import save_grid
    from .train import load_trained

    from .train.preflight import check_device, prepare_output_file

    if not args.out.lower().endswith(".png"):
        raise ValueError(f"--out must be a .png file, got {args.out!r}")
    check_device(args.device)
    model, _ = load_trained(args.checkpoint, args.device)
    prepare_output_file(args.out)   # after the checkpoint: a bad one leaves no folder
    gen = torch.Generator(device=args.device).manual_seed(args.seed)
    images = model.sample(args.num, args.temperature, generator=gen)
    print(f"wrote {save_grid(images, args.out)}")
    return 0


def _export(args) -> int:
    from .export import export_checkpoint

    try:
        result = export_checkpoint(args.checkpoint, args.out, args.format, args.batch,
                                   args.dynamic_batch, args.temperature)
    except ImportError as exc:     # the export extra is not installed
        raise RuntimeError(str(exc)) from None
    batch = "any" if result.batch is None else result.batch
    inputs = ", ".join(f"{name} ({batch}, {', '.join(map(str, shape))})"
                       for name, shape in zip(result.input_names, result.noise_shapes))
    print(f"wrote {result.path} ({result.format}): standard-normal {inputs} -> images in "
          f"[0, 1] at temperature {result.temperature:g}; largest relative difference from "
          f"the model's decode {result.max_rel_error:.2g}")
    if result.needs_inverseflow:
        print("note: this model solves in its sampling pass (solve_on='sampling'), so the "
              "program calls torch.ops.inverseflow.inv_conv2d: `import inverseflow` before "
              "torch.export.load")
    return 0


def _count(text: str, least: int) -> int:
    # A run records its counts in its checkpoint, which holds integers up to MAX_INT.
    from .train.checkpoint import MAX_INT
    from .train.quoting import quote

    what = "a positive integer" if least == 1 else f"an integer >= {least}"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {quote(text, 60)}") from None
    if not least <= value <= MAX_INT:
        raise argparse.ArgumentTypeError(f"expected {what} up to {MAX_INT} (2**63-1), "
                                         f"got {quote(text, 60)}")
    return value


def _positive(text: str) -> int:
    return _count(text, 1)


def _non_negative(text: str) -> int:
    return _count(text, 0)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (value > 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"expected a finite positive number, got {text}")
    return value


def _seed(text: str) -> int:
    from .train.loop import MAX_SEED

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"expected an integer from 0 to {MAX_SEED}, got {text}")
    return value


def _add_run_options(parser: argparse.ArgumentParser, batch_size: int,
                     fields=None) -> None:
    """The options a training run shares between `train` and `experiment`; ``fields``:
    the TrainConfig fields the command sets (for --resume's help), None for all."""
    from .train.resume_flags import allowed_changes

    parser.add_argument("--batch-size", type=_positive, default=batch_size, help="per process")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (Adam)")
    parser.add_argument("--warmup", type=_non_negative, default=100,
                        help="linear warm-up steps (0: none)")
    parser.add_argument("--grad-clip", type=_positive_float, default=100.0,
                        help="clip the gradients' global 2-norm to this before each step "
                             "(default 100)")
    parser.add_argument("--seed", type=_seed, default=0,
                        help="seed of the initialisation, batch order and noise (0 to 2**32-1)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                        help="where to train")
    parser.add_argument("--checkpoint-every", type=_positive, default=200,
                        help="write OUT/checkpoint.pt every N steps")
    parser.add_argument("--eval-limit", type=_positive, help="evaluate on the first N test images")
    parser.add_argument("--resume", action="store_true",
                        help="continue OUT/checkpoint.pt; the other flags must match the run's, "
                             f"except {allowed_changes(fields)}")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="inverseflow", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="list the built backends and specializations")
    info.add_argument("--json", action="store_true", help="print JSON (every kernel)")
    info.add_argument("--verbose", "-v", action="store_true",
                      help="also list every compiled kernel by name")
    info.set_defaults(run=_info)
    demo = sub.add_parser("demo", help="invert a convolution, check the round trip, time it")
    demo.add_argument("--batch", type=_positive, default=64, help="images per call (N)")
    demo.add_argument("--channels", type=_positive, default=12, help="channels (C)")
    demo.add_argument("--size", type=_positive, default=16, help="image height and width")
    demo.add_argument("--kernel", type=_positive, default=3, help="k of the k×k kernel")
    demo.add_argument("--order", default="TL", choices=["TL", "TR", "BL", "BR", "quad"],
                      help="the padded corner, or quad (four channel groups)")
    demo.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where to run")
    demo.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    demo.set_defaults(run=_demo)
    train = sub.add_parser("train", help="train a flow; writes metrics.json, checkpoint.pt, samples.png")
    train.add_argument("--dataset", required=True, help="digits, mnist, fashion-mnist, cifar10, imagenet32, imagenet64")
    train.add_argument("--data-dir", help="folder holding the dataset files (cifar10, imagenet*)")
    train.add_argument("--out", required=True, help="run folder")
    length = train.add_mutually_exclusive_group(required=True)
    length.add_argument("--steps", type=_positive, help="total optimizer steps")
    length.add_argument("--epochs", type=_positive, help="total epochs")
    train.add_argument("--model", default="inverseflow", choices=["inverseflow", "glow"],
                       help="inverseflow (k×k inverse convolutions) or the glow 1×1 baseline")
    train.add_argument("--solve-on", choices=["density", "sampling"],
                       help="density (default): Inverse-Flow placement; sampling: "
                            "FInC/Emerging (k×k models only, not glow)")
    train.add_argument("--order", choices=["TL", "TR", "BL", "BR", "quad"],
                       help="corner order of the k×k layer (default quad; not glow)")
    train.add_argument("--kernel-size", type=_positive,
                       help="k of the k×k layer (default 3; not glow)")
    train.add_argument("--levels", type=_positive, help="override the preset's L")
    train.add_argument("--flow-steps", type=_positive, help="override the preset's K")
    train.add_argument("--coupling-width", type=_positive, help="override the preset's width")
    _add_run_options(train, batch_size=64)
    train.add_argument("--lr-final", type=float, default=1e-4,
                       help="learning rate the exponential decay ends at")
    train.add_argument("--eval-batch-size", type=_positive, default=500,
                       help="images per evaluation batch")
    train.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                       help="the training forward under torch.autocast: bf16, or fp16 with a "
                            "GradScaler (--device cuda only); the inverse convolutions, "
                            "log-determinants, prior and bits/dim stay float32 (default fp32)")
    train.add_argument("--benchmark", action="store_true",
                       help="time the equal forms of each op once per shape and keep the "
                            "fastest (like torch.backends.cudnn.benchmark); the choices are "
                            "saved in the checkpoint and reused by --resume. Default: a fixed "
                            "rule, so that two runs give the same bits (also "
                            "INVERSEFLOW_BENCHMARK=1)")
    train.add_argument("--time-budget", type=float, help="stop training after this many seconds")
    train.add_argument("--num-samples", type=_positive, default=64,
                       help="samples in OUT/samples.png")
    train.add_argument("--temperature", type=_positive_float, default=0.7,
                       help="scale of the samples' latent standard deviation")
    train.add_argument("--tensorboard", action="store_true",
                       help="also write TensorBoard event files (losses, test bits/dim, samples) "
                            "to OUT/tensorboard; needs the tensorboard package")
    train.set_defaults(run=_train)

    experiment = sub.add_parser("experiment", help="run one of the paper's named experiments")
    experiment.add_argument("name", nargs="?", metavar="NAME", help="see --list")
    experiment.add_argument("--list", action="store_true", help="list the experiments")
    experiment.add_argument("--dataset", help="digits, mnist, fashion-mnist, cifar10, ...")
    experiment.add_argument("--data-dir", help="folder holding the dataset files (cifar10, imagenet*)")
    experiment.add_argument("--out", help="run folder (as for train)")
    experiment.add_argument("--steps", type=_positive, help="optimizer steps (a cap with --time-budget)")
    experiment.add_argument("--time-budget", type=float, help="stop after this many seconds")
    experiment.add_argument("--levels", type=_positive, help="Glow backbone: override L")
    experiment.add_argument("--blocks", type=_positive, help="CNN backbone: override the blocks")
    experiment.add_argument("--flow-steps", type=_positive, help="override K (steps per level/block)")
    experiment.add_argument("--coupling-width", type=_positive, help="Glow backbone: override the width")
    experiment.add_argument("--activation", choices=["smooth-leaky-relu", "spline"],
                            help="CNN backbone: the activation")
    from .train.experiments import COMMAND_FIELDS

    _add_run_options(experiment, batch_size=100, fields=COMMAND_FIELDS)
    experiment.set_defaults(run=_experiment)

    evaluate = sub.add_parser("eval", help="test bits/dim of a checkpoint")
    evaluate.add_argument("--checkpoint", required=True, help="a checkpoint.pt that train wrote")
    evaluate.add_argument("--dataset",
                          help="whose test images: digits, mnist, fashion-mnist, cifar10, ... "
                               "(default: the dataset the checkpoint was trained on)")
    evaluate.add_argument("--data-dir", help="folder holding the dataset files (cifar10, imagenet*)")
    evaluate.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                          help="where to evaluate")
    evaluate.add_argument("--batch-size", type=_positive, default=500,
                          help="images per evaluation batch")
    evaluate.add_argument("--eval-limit", "--limit", dest="eval_limit", type=_positive,
                          help="evaluate on the first N test images (as train's --eval-limit; "
                               "--limit is its old name)")
    evaluate.set_defaults(run=_eval)

    sample = sub.add_parser("sample", help="write a grid of samples as PNG")
    sample.add_argument("--checkpoint", required=True, help="a checkpoint.pt that train wrote")
    sample.add_argument("--num", type=_positive, default=64, help="how many samples")
    sample.add_argument("--out", required=True, help="FILE.png")
    sample.add_argument("--temperature", type=_positive_float, default=0.7,
                        help="scale of the latent's standard deviation (1: the model's)")
    sample.add_argument("--seed", type=_seed, default=0, help="seed of the latents (0 to 2**32-1)")
    sample.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                        help="where to sample")
    sample.set_defaults(run=_sample)

    export = sub.add_parser("export", help="export the sampler (noise -> images) to "
                            "torch.export (.pt2) or ONNX, runnable without inverseflow")
    export.add_argument("--checkpoint", required=True, help="a checkpoint.pt that train wrote")
    export.add_argument("--out", required=True, help="FILE.pt2 or FILE.onnx")
    export.add_argument("--format", choices=["pt2", "onnx"],
                        help="default: from the suffix of --out")
    export.add_argument("--batch", type=_positive, default=1,
                        help="images per call (with --dynamic-batch: only the traced example)")
    export.add_argument("--dynamic-batch", action="store_true",
                        help="accept any batch size")
    export.add_argument("--temperature", type=_positive_float, default=1.0,
                        help="scale of the latent's standard deviation, fixed in the file "
                             "(default 1: the model's; `sample` uses 0.7)")
    export.set_defaults(run=_export)

    bench = sub.add_parser("bench", help="op benchmark against F.conv2d, as JSON")
    bench.add_argument("--quick", action="store_true", help="fewer repeats (CI-sized)")
    bench.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="what to measure on")
    bench.add_argument("--out", default="bench-results",
                       help="folder for bench.json, bench.md and the plots")
    bench.add_argument("--scaling", action="store_true",
                       help="only the time-scaling study (the paper's Figure 4): one training "
                            "step of 4 inverse convs against image size, ours vs the dense "
                            "O(n^3) and sequential solvers (writes scaling.json, scaling.png)")
    bench.add_argument("--dims", type=int, default=2, choices=[2, 3],
                       help="with --scaling: 2 (default) for images, 3 for cubes m x m x m: a "
                            "stack of 8 inverse convs, one per corner NTL..FBR (writes "
                            "scaling_3d.json, scaling_3d.png)")
    bench.add_argument("--precision", action="store_true",
                       help="only the mixed-precision section: a training step of the digits "
                            "and MNIST presets at fp32 and bf16 (round-robin), and the test "
                            "bits/dim after the same steps (writes precision.json)")
    bench.add_argument("--jit", action="store_true",
                       help="only the run-time specialization section: compile times and "
                            "speed-ups over the generic kernel (writes jit.json)")
    bench.add_argument("--parity", action="store_true",
                       help="only the convolution-parity section: causal_conv2d against "
                            "F.conv2d and the solve, the sampling pass per placement against "
                            "Glow's, and inv_conv2d's forward+backward (time, peak memory) "
                            "against F.conv2d's (writes parity.json)")
    bench.add_argument("--nd", action="store_true",
                       help="only the 1-D and 3-D solves (inv_conv1d, inv_conv3d, their "
                            "transposed solves and the generic kernel) against F.conv1d and "
                            "F.conv3d of the same shape, CPU (writes nd.json, nd.md)")
    bench.add_argument("--peak", action="store_true",
                       help="only the CPU solves' useful GFLOP/s and fraction of the CPU's "
                            "FMA peak (TL, BR, quad, generic, oneDNN conv2d; writes "
                            "solve_rate.json, solve_rate.md)")
    bench.set_defaults(run=_bench)

    jit = sub.add_parser("jit", help="layer shapes specialized at run time (the JIT cache)")
    action = jit.add_mutually_exclusive_group(required=True)
    action.add_argument("--list", action="store_true", help="list the cached specializations")
    action.add_argument("--clear", action="store_true", help="empty the cache")
    action.add_argument("--specialize", nargs=3, metavar=("KERNEL", "CHANNELS", "PATTERN"),
                        help="compile one shape into the cache now, e.g. 3x3 16 tl (2-D), "
                             "5 8 l (1-D) or 2x3x3 8 ntl (3-D)")
    jit.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                     help="with --specialize: the C++ compiler (cpu) or nvcc (cuda)")
    jit.add_argument("--json", action="store_true", help="with --list: print JSON")
    jit.set_defaults(run=_jit)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except KeyboardInterrupt as exc:
        # A training run turns Ctrl-C into a checkpoint and says so (train.guards).
        print(f"inverseflow {args.command}: {exc or 'interrupted'}", file=sys.stderr)
        return 130
    except MemoryError:
        print(f"inverseflow {args.command}: error: out of memory (MemoryError); use a smaller "
              "model, batch or dataset, or a machine with more memory", file=sys.stderr)
        return 2
    except (ValueError, TypeError, RuntimeError, OSError) as exc:
        from .train.loop import TrainingDiverged   # only now: `info` needs no training code

        if isinstance(exc, TrainingDiverged):
            print(f"inverseflow {args.command}: stopped: {exc}", file=sys.stderr)
            return 3
        print(f"inverseflow {args.command}: error: {exc}", file=sys.stderr)
        return 2
