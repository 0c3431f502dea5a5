"""Writes the paper's two tables (Glow backbone, CNN backbone) from the runs of
``scripts/paper_tables.sh``: bits/dim, parameters, time per step and the time to sample
100 images, one row per named experiment, with the run's budget and honest notes.

Usage: ``python -m inverseflow.train.paper_tables RUNS --out docs/paper-tables.md
[--remeasure] [--wall-seconds S] [--command TEXT] [--note TEXT ...]``

The times a run writes are taken while it runs, each model at a different moment; on a
shared machine they are not comparable. ``--remeasure`` therefore times every trained
model again in one process, one thread, round-robin (model 1, 2, …, 8, then again), so
that whatever else runs on the machine affects every row alike; the table then shows
those medians beside the runs' own seconds per step.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
from pathlib import Path

import statistics

import torch

from ..data import load_dataset
from ..models.timing import timings_ms
from .checkpoint import CheckpointError, load_checkpoint
from .experiments import EXPERIMENTS
from .loop import load_trained

REMEASURED = "remeasured.json"

BACKBONES = (("glow", "Glow backbone"), ("cnn", "CNN backbone"))


def _passes_100(metrics: dict) -> dict | None:
    """The batch-100 pass timings of the placement the model was trained in."""
    timings = metrics.get("pass_timings_ms", {}).get("batch_100")
    if not timings:
        return None
    placement = metrics.get("solve_on")
    if placement in timings:
        return timings[placement]
    return next(iter(timings.values()))


def rows(runs: Path) -> dict[str, dict]:
    """experiment name → metrics.json of its run under ``runs`` (missing runs left out)."""
    out = {}
    for name in EXPERIMENTS:
        path = runs / name / "metrics.json"
        if path.exists():
            out[name] = json.loads(path.read_text())
    return out


SIZE_KEYS = {"glow": ("levels", "steps", "coupling_width", "kernel_size"),
             "cnn": ("blocks", "steps", "kernel_size", "activation")}


def model_size(runs: Path, names: list[str], backbone: str) -> str | None:
    """The size fields of the first run's model config (from its checkpoint)."""
    for name in names:
        try:
            config = load_checkpoint(runs / name / "checkpoint.pt")["model_config"]
        except (CheckpointError, FileNotFoundError, KeyError):
            continue
        return ", ".join(f"{key}={config[key]}" for key in SIZE_KEYS[backbone] if key in config)
    return None


def remeasure(runs: Path, batch: int = 100, repeats: int = 5, threads: int = 1) -> dict:
    """Median ms of a training step (forward, backward, Adam), the density pass and the
    sampling pass on a batch of ``batch``, for every trained run under ``runs``, timed
    round-robin in this process with ``threads`` torch threads; written to
    ``runs/remeasured.json``."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        cases = {}
        for name in rows(runs):
            model, state = load_trained(str(runs / name / "checkpoint.pt"))
            images = load_dataset(state["dataset"]).train[:batch]
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-6)
            gen = torch.Generator().manual_seed(0)
            with torch.no_grad():
                x = model.dequantize(images, gen)
            cases[name] = (model, optimizer, images, x)
        samples = {name: {"step": [], "density": [], "sampling": []} for name in cases}
        for _ in range(repeats):
            for name, (model, optimizer, images, x) in cases.items():
                def step():
                    model.train()
                    loss = model(images, torch.Generator().manual_seed(1)).mean()
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()

                def density():
                    with torch.no_grad():
                        model.eval()
                        model.encode(x)

                def sampling():
                    model.eval()
                    model.sample(batch)

                for key, fn in (("step", step), ("density", density), ("sampling", sampling)):
                    samples[name][key] += timings_ms(fn, 1)
        result = {"batch": batch, "repeats": repeats, "threads": threads,
                  "median_ms": {name: {key: statistics.median(v) for key, v in kinds.items()}
                                for name, kinds in samples.items()}}
    finally:
        torch.set_num_threads(previous)
    (runs / REMEASURED).write_text(json.dumps(result, indent=2))
    return result


def _fmt(value, spec, missing="—"):
    return missing if value is None else format(value, spec)


def markdown(runs: Path, wall_seconds: float | None = None, command: str | None = None,
             notes: list[str] | None = None) -> str:
    found = rows(runs)
    first = next(iter(found.values()), {})
    again = (json.loads((runs / REMEASURED).read_text())
             if (runs / REMEASURED).exists() else None)
    lines = ["# The paper's tables, reproduced at a short equal budget", ""]
    lines += [f"- **Date:** {datetime.date.today().isoformat()}. **Machine:** "
              f"{platform.machine()} CPU, {torch.get_num_threads()} torch threads, "
              f"torch {torch.__version__}, Python {platform.python_version()}."]
    if command:
        lines.append(f"- **Command:** `{command}`.")
    if first:
        lines.append(f"- **Budget (equal for every row):** {first.get('requested_steps')} Adam "
                     f"steps of batch {first.get('batch_size')}, seed 0, dataset "
                     f"`{first.get('dataset')}`; bits/dim on {first.get('test_images')} test "
                     "images with fixed dequantisation noise.")
    if wall_seconds is not None:
        lines.append(f"- **Wall time of the whole script:** {wall_seconds / 60:.1f} min.")
    for note in notes or []:
        lines.append(f"- {note}")
    if again:
        lines.append(f"- **Times** (re-measured after training, in one process, "
                     f"{again['threads']} thread, the models taken round-robin, median of "
                     f"{again['repeats']}, batch {again['batch']}): a training step (forward, "
                     "backward, Adam), the density pass (image → latent) and the sampling pass "
                     "(draw latents, decode), each in the placement the model was trained in. "
                     "\"s / step in run\" is the run's own training seconds / steps (2 "
                     "threads), taken while other jobs shared the CPU: not comparable across "
                     "rows.")
    else:
        lines.append("- Time per step: training seconds / steps (forward, backward, Adam). "
                     "Pass times: medians of 5 calls on a batch of 100 after training, in the "
                     "placement the model was trained in; sampling = draw 100 latents and "
                     "decode them.")
    for backbone, title in BACKBONES:
        names = [n for n, e in EXPERIMENTS.items() if e.backbone == backbone and n in found]
        size = model_size(runs, names, backbone)
        lines += ["", f"## {title}", ""]
        if size:
            lines += [f"Model size (every row of this table): {size}.", ""]
        if again:
            lines += ["| experiment | paper's name | test bits/dim (step 0 → end) | parameters "
                      "| s / step | sampling 100 images | density pass, 100 images "
                      "| s / step in run |", "|---|---|---|---|---|---|---|---|"]
        else:
            lines += ["| experiment | paper's name | test bits/dim (step 0 → end) | parameters "
                      "| s / step | sampling 100 images | density pass, 100 images |",
                      "|---|---|---|---|---|---|---|"]
        for name, experiment in EXPERIMENTS.items():
            if experiment.backbone != backbone:
                continue
            m = found.get(name)
            if m is None:
                lines.append(f"| {name} | `{experiment.paper_name}` | not run (see notes) "
                             "| | | | |")
                continue
            passes = _passes_100(m) or {}
            steps_note = "" if m["steps"] == m["requested_steps"] else f" ({m['steps']} steps)"
            head = (f"| {name} | `{experiment.paper_name}` | {m['initial_test_bpd']:.3f} → "
                    f"**{m['test_bpd']:.3f}**{steps_note} | {m['parameters']:,} | ")
            timed = (again or {}).get("median_ms", {}).get(name)
            if again and timed:
                lines.append(head + f"{timed['step'] / 1e3:.3f} | {timed['sampling']:.0f} ms | "
                             f"{timed['density']:.0f} ms | "
                             f"{_fmt(m.get('seconds_per_step'), '.3f')} |")
            elif again:
                lines.append(head + f"— | — | — | {_fmt(m.get('seconds_per_step'), '.3f')} |")
            else:
                lines.append(head + f"{_fmt(m.get('seconds_per_step'), '.3f')} | "
                             f"{_fmt(passes.get('sampling_ms'), '.0f')} ms | "
                             f"{_fmt(passes.get('density_ms'), '.0f')} ms |")
        lines += ["", "How each row differs from the paper's code:", ""]
        for name, experiment in EXPERIMENTS.items():
            if experiment.backbone == backbone:
                lines.append(f"- `{name}`: {experiment.description}."
                             + (f" Differs: {experiment.differences}." if experiment.differences
                                else " As in the paper's code (at the size given above)."))
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", help="folder holding one run folder per experiment")
    parser.add_argument("--out", required=True, help="markdown file to write")
    parser.add_argument("--remeasure", action="store_true",
                        help="time every trained model again, round-robin, one thread")
    parser.add_argument("--wall-seconds", type=float)
    parser.add_argument("--command")
    parser.add_argument("--note", action="append", default=[])
    args = parser.parse_args(argv)
    if args.remeasure:
        remeasure(Path(args.runs))
    text = markdown(Path(args.runs), args.wall_seconds, args.command, args.note)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
