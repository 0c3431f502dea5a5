"""Sampling speed of an exported sampler against the eager model, on CPU:
``python -m inverseflow.bench.export_speed [--checkpoint CK] [--out DIR] [--quick]``.

For each model (the digits preset's InverseFlow, its paper step, Glow and the CNN flow, at
random weights after ``initialize``; or one checkpoint) it times noise → images for 1 and
100 images three ways: the eager model (``decode`` of the same noise, clamped), the
``.pt2`` program (``torch.export.load(...).module()``) and onnxruntime on the ONNX file
(at torch's thread count). The three are timed round-robin, one call per sample with
``torch.utils.benchmark`` (docs/benchmarks.md, "Timing method"), and the medians are
reported with their ratio to eager; each exported file's output is compared with eager's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch

from ..export import export_sampler, max_rel_error, noise_shapes, reference_images
from ..models import from_preset
from ..models.timing import timer
from .environment import environment

BATCHES = (1, 100)
RUNNERS = ("eager", "pt2", "onnxruntime")
KINDS = {
    "inverseflow": dict(model="inverseflow"),
    "inverseflow-paper-step": dict(model="inverseflow", order="TL", step_layout="paper"),
    "glow": dict(model="glow"),
    "convflow": dict(model="convflow"),
}


def _digits_model(options: dict):
    torch.manual_seed(0)
    model = from_preset("digits", **options)
    model.initialize(torch.randint(0, 256, (64, *model.image_shape), dtype=torch.uint8))
    return model.eval()


def _runners(model, folder: Path, temperature: float) -> dict:
    import onnxruntime

    pt2 = export_sampler(model, folder / "sampler.pt2", dynamic_batch=True,
                         temperature=temperature)
    onnx = export_sampler(model, folder / "sampler.onnx", dynamic_batch=True,
                          temperature=temperature)
    program = torch.export.load(str(pt2.path)).module()
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = onnxruntime.InferenceSession(str(onnx.path), options,
                                           providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]

    def eager(noise):
        with torch.no_grad():
            return reference_images(model, noise, temperature)

    def exported(noise):
        with torch.no_grad():
            return program(*noise)

    def ort(noise):
        return torch.from_numpy(session.run(None, dict(zip(names, (n.numpy() for n in noise))))[0])

    return {"eager": eager, "pt2": exported, "onnxruntime": ort}


def _time(runners: dict, noise, rounds: int) -> dict:
    calls = {name: (lambda f=f: f(noise)) for name, f in runners.items()}
    timers = {name: timer(call) for name, call in calls.items()}
    for call in calls.values():
        call()
        call()                                  # warm-up: allocator, thread pools
    samples = {name: [] for name in calls}
    for _ in range(rounds):                     # round-robin: all see the same load
        for name, measure in timers.items():
            samples[name].append(measure.timeit(1).median * 1e3)
    return {name: statistics.median(values) for name, values in samples.items()}


def run(checkpoint: str | None = None, quick: bool = False, temperature: float = 1.0) -> dict:
    rounds = 7 if quick else 31
    result = {"environment": environment("cpu"), "rounds": rounds, "temperature": temperature,
              "models": {}}
    if checkpoint:
        from ..train import load_trained

        models = {checkpoint: load_trained(checkpoint)[0]}
    else:
        models = {name: _digits_model(options) for name, options in KINDS.items()}
    for name, model in models.items():
        with tempfile.TemporaryDirectory(prefix="inverseflow-export-speed-") as folder:
            runners = _runners(model, Path(folder), temperature)
            entry = {"parameters": sum(p.numel() for p in model.parameters()),
                     "noise_shapes": noise_shapes(model), "batches": {}}
            for batch in BATCHES:
                noise = [torch.randn(batch, *s) for s in noise_shapes(model)]
                expected = runners["eager"](noise)
                errors = {k: max_rel_error(runners[k](noise), expected) for k in ("pt2", "onnxruntime")}
                medians = _time(runners, noise, rounds)
                entry["batches"][batch] = {
                    "median_ms": medians,
                    "speedup_vs_eager": {k: medians["eager"] / medians[k] for k in medians},
                    "max_rel_error_vs_eager": errors}
            result["models"][name] = entry
    return result


def format_table(result: dict) -> str:
    lines = ["| model | images | eager ms | .pt2 ms | onnxruntime ms | .pt2 / eager speed-up "
             "| onnxruntime / eager speed-up | max rel. error (.pt2, ORT) |",
             "|---|---|---|---|---|---|---|---|"]
    for name, entry in result["models"].items():
        for batch, row in entry["batches"].items():
            ms, up, err = row["median_ms"], row["speedup_vs_eager"], row["max_rel_error_vs_eager"]
            lines.append(f"| {name} | {batch} | {ms['eager']:.2f} | {ms['pt2']:.2f} | "
                         f"{ms['onnxruntime']:.2f} | {up['pt2']:.2f}x | {up['onnxruntime']:.2f}x | "
                         f"{err['pt2']:.1e}, {err['onnxruntime']:.1e} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m inverseflow.bench.export_speed",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="time this model instead of the digits presets")
    parser.add_argument("--out", default="bench-results", help="folder for export_speed.json")
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    args = parser.parse_args(argv)
    result = run(args.checkpoint, args.quick)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "export_speed.json").write_text(json.dumps(result, indent=2))
    print(format_table(result))
    print(f"wrote {out / 'export_speed.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
