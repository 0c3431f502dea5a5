"""Writes the paper's two tables (Glow backbone, CNN backbone) from the runs of
``scripts/paper_tables.sh``: bits/dim, parameters, time per step and the time to sample
100 images, one row per named experiment, with the run's budget and honest notes.

Usage: ``python -m inverseflow.train.paper_tables RUNS --out TABLE.md [--remeasure]
[--data-dir DIR] [--wall-seconds S] [--command TEXT] [--note TEXT ...]``, or
``python -m inverseflow.train.paper_tables RUNS --plan STEPS``, which prints what each row
needs to reach exactly STEPS steps (``train``, ``resume`` or ``done``) and refuses (exit 2)
when a row cannot: a finished row is extended by an exact ``--resume``, never kept at an
older budget, and a row past STEPS cannot be shortened.

Every row shows the steps its run actually took; when they differ the table says so in its
title and budget line instead of calling the budget equal.

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
import sys
from pathlib import Path

import statistics

import torch

from ..data import load_dataset
from ..models.timing import timings_ms
from .checkpoint import MAX_INT, CheckpointError, load_checkpoint
from .experiments import EXPERIMENTS
from .loop import load_trained
from .quoting import quote

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


def _checkpoint_step(run: Path) -> int | None:
    path = run / "checkpoint.pt"
    if not path.exists():
        return None
    state = load_checkpoint(path)
    step = state.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise CheckpointError(f"{path} is malformed: its step is {step!r}")
    return step


def plan(runs: Path, steps: int) -> dict[str, str]:
    """What each experiment's run under ``runs`` needs to have trained exactly ``steps``
    steps: ``"train"`` (no run yet), ``"resume"`` (a checkpoint short of ``steps``, finished
    or not: an exact ``--resume`` extends it) or ``"done"`` (finished at ``steps``). Raises
    ValueError naming every row that cannot get there, before anything is trained."""
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_INT:
        # A run records its steps in its checkpoint, which holds integers up to MAX_INT.
        raise ValueError(f"STEPS must be a positive integer up to {MAX_INT}, got {quote(steps)}")
    actions, problems = {}, []
    for name in EXPERIMENTS:
        run = runs / name
        finished = json.loads((run / "metrics.json").read_text()).get("steps") if (
            run / "metrics.json").exists() else None
        step = _checkpoint_step(run)
        if step is None:
            if finished is not None:
                problems.append(f"{name}: {run}/metrics.json has no checkpoint.pt to extend")
            actions[name] = "train"
        elif step > steps:
            problems.append(f"{name}: trained for {step} steps, more than {steps}; a run cannot "
                            f"be shortened (give STEPS >= {step}, or another OUT folder)")
        elif step < steps:
            actions[name] = "resume"
        elif finished == steps:
            actions[name] = "done"
        else:
            problems.append(f"{name}: its checkpoint is at step {steps} but its metrics.json "
                            f"{'is missing' if finished is None else f'says {finished} steps'} "
                            f"(the run stopped during its final evaluation); remove {run} to "
                            "train it again")
    if problems:
        raise ValueError(f"cannot bring every row of {runs} to {steps} steps:\n  "
                         + "\n  ".join(problems))
    return actions


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


def remeasure(runs: Path, batch: int = 100, repeats: int = 5, threads: int = 1,
              data_dir: str | None = None) -> dict:
    """Median ms of a training step (forward, backward, Adam), the density pass and the
    sampling pass on a batch of ``batch``, for every trained run under ``runs``, timed
    round-robin in this process with ``threads`` torch threads; written to
    ``runs/remeasured.json``. The images come from ``data_dir``, or else the folder each
    run was trained from (datasets such as cifar10 are read from a folder)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        cases = {}
        for name in rows(runs):
            model, state = load_trained(str(runs / name / "checkpoint.pt"))
            folder = data_dir or (state.get("train_config") or {}).get("data_dir")
            images = load_dataset(state["dataset"], folder).train[:batch]
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


BUDGET_KEYS = (("steps", "steps"), ("batch_size", "batch"), ("dataset", "dataset"),
               ("test_images", "test images"))


def unequal_budget(found: dict[str, dict]) -> dict[str, list]:
    """For each budget field (steps taken, batch, dataset, test images) on which the rows'
    metrics differ, its distinct values in order; empty when the budget is equal."""
    differing = {}
    for key, label in BUDGET_KEYS:
        values = {m.get(key) for m in found.values()}
        try:
            values = sorted(values)
        except TypeError:    # a row without the field (None) beside numbers
            values = sorted(values, key=str)
        if len(values) > 1:
            differing[label] = values
    return differing


def _fmt(value, spec, missing="—"):
    return missing if value is None else format(value, spec)


def markdown(runs: Path, wall_seconds: float | None = None, command: str | None = None,
             notes: list[str] | None = None) -> str:
    found = rows(runs)
    first = next(iter(found.values()), {})
    again = (json.loads((runs / REMEASURED).read_text())
             if (runs / REMEASURED).exists() else None)
    differing = unequal_budget(found)
    title = ("# The paper's tables, reproduced at a short equal budget" if not differing else
             "# The paper's tables, at UNEQUAL budgets (compare rows only at equal steps)")
    lines = [title, ""]
    lines += [f"- **Date:** {datetime.date.today().isoformat()}. **Machine:** "
              f"{platform.machine()} CPU, {torch.get_num_threads()} torch threads, "
              f"torch {torch.__version__}, Python {platform.python_version()}."]
    if command:
        lines.append(f"- **Command:** `{command}`.")
    if first and not differing:
        lines.append(f"- **Budget (equal for every row):** {first.get('steps')} Adam "
                     f"steps of batch {first.get('batch_size')}, seed 0, dataset "
                     f"`{first.get('dataset')}`; bits/dim on {first.get('test_images')} test "
                     "images with fixed dequantisation noise.")
    elif differing:
        spread = "; ".join(f"{label}: {', '.join(map(str, values))}"
                           for label, values in differing.items())
        lines.append(f"- **Budget: UNEQUAL across rows** ({spread}); each row's steps are in "
                     "its steps column. Bring every row to one budget with "
                     "`scripts/paper_tables.sh STEPS` (an exact --resume of each run).")
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
            lines += ["| experiment | paper's name | steps | test bits/dim (step 0 → end) "
                      "| parameters | s / step | sampling 100 images | density pass, 100 images "
                      "| s / step in run |", "|---|---|---|---|---|---|---|---|---|"]
        else:
            lines += ["| experiment | paper's name | steps | test bits/dim (step 0 → end) "
                      "| parameters | s / step | sampling 100 images | density pass, 100 images |",
                      "|---|---|---|---|---|---|---|---|"]
        for name, experiment in EXPERIMENTS.items():
            if experiment.backbone != backbone:
                continue
            m = found.get(name)
            if m is None:
                lines.append(f"| {name} | `{experiment.paper_name}` | | not run (see notes) "
                             "| | | | |")
                continue
            passes = _passes_100(m) or {}
            steps = f"{m['steps']:,}" + ("" if m["steps"] == m["requested_steps"] else
                                         f" of {m['requested_steps']:,} asked")
            head = (f"| {name} | `{experiment.paper_name}` | {steps} | "
                    f"{m['initial_test_bpd']:.3f} → **{m['test_bpd']:.3f}** | "
                    f"{m['parameters']:,} | ")
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


def _steps(text: str) -> int:
    """STEPS as given to scripts/paper_tables.sh: refused in one line (exit 2), like every
    other problem of the plan, rather than with argparse's usage text."""
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"STEPS must be a positive integer up to {MAX_INT}, got "
                         f"{quote(text)}") from None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", help="folder holding one run folder per experiment")
    parser.add_argument("--plan", metavar="STEPS",
                        help="print what each row needs to reach exactly STEPS steps (train, "
                             "resume or done), or refuse; writes nothing")
    parser.add_argument("--out", help="markdown file to write (required without --plan)")
    parser.add_argument("--remeasure", action="store_true",
                        help="time every trained model again, round-robin, one thread")
    parser.add_argument("--data-dir", help="folder holding the dataset files, for --remeasure "
                                           "(default: the folder each run was trained from)")
    parser.add_argument("--wall-seconds", type=float, help="wall time of the runs, for the notes")
    parser.add_argument("--command", help="the command that made the runs, quoted in the table")
    parser.add_argument("--note", action="append", default=[], help="a note line (repeatable)")
    args = parser.parse_args(argv)
    if args.plan is None and not args.out:
        parser.error("give --out TABLE.md (or --plan STEPS)")
    runs = Path(args.runs)
    try:
        if args.plan is not None:
            for name, action in plan(runs, _steps(args.plan)).items():
                print(name, action)
            return 0
        if args.remeasure:
            remeasure(runs, data_dir=args.data_dir)
        text = markdown(runs, args.wall_seconds, args.command, args.note)
    except (ValueError, OSError) as exc:     # CheckpointError is a ValueError
        print(f"paper_tables: error: {exc}", file=sys.stderr)
        return 2
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
