"""Which training flags may change when a run is resumed.

A resumed run replays the uninterrupted one exactly, so everything that shapes the model,
the batches, the noise or the optimizer must be what the checkpoint was trained with.
Flags that only say how long to train, where things are, or how to report, evaluate and
sample may change. Anything else that differs is refused, in one message that lists
each flag with both values.
"""

from __future__ import annotations

# TrainConfig fields that may differ from the checkpoint's on --resume.
MAY_CHANGE_ON_RESUME = {
    "steps": "--steps", "epochs": "--epochs",               # how long
    "time_budget": "--time-budget", "checkpoint_every": "--checkpoint-every",
    "resume": "--resume", "progress": "--quiet", "tensorboard": "--tensorboard",
    "out": "--out", "data_dir": "--data-dir", "device": "--device",   # where
    "eval_batch_size": "--eval-batch-size", "eval_limit": "--eval-limit",  # evaluation
    "num_samples": "--num-samples", "temperature": "--temperature",        # sampling
}

_FLAG_NAMES = {"model_options": "the experiment's model options"}


def allowed_changes() -> str:
    """The flags that may change on --resume, for messages and --help."""
    return ", ".join(sorted(set(MAY_CHANGE_ON_RESUME.values()) - {"--resume"}))


def flag_name(field: str) -> str:
    return MAY_CHANGE_ON_RESUME.get(field) or _FLAG_NAMES.get(field) or (
        "--" + field.replace("_", "-"))


def differing_flags(saved: dict, current: dict) -> list[tuple[str, object, object]]:
    """``(flag, value in the checkpoint, value now)`` for each field that must not change
    on resume but does. Fields one side lacks (an older or newer version) are skipped."""
    out = []
    for field in sorted(set(saved) & set(current)):
        if field in MAY_CHANGE_ON_RESUME:
            continue
        if _normalise(saved[field]) != _normalise(current[field]):
            out.append((flag_name(field), saved[field], current[field]))
    return out


def check_resume_flags(saved: dict, current: dict, checkpoint_path) -> None:
    """Raises ValueError listing every flag that differs from the checkpoint's run."""
    diffs = differing_flags(saved, current)
    if not diffs:
        return
    lines = "\n".join(f"  {flag}: {old!r} in the checkpoint, {new!r} now"
                      for flag, old, new in diffs)
    raise ValueError(
        f"cannot resume {checkpoint_path}: these flags differ from the run it continues, and "
        f"an exact replay needs them unchanged:\n{lines}\n"
        f"rerun with the checkpoint's values (only {allowed_changes()} may change on --resume)")


def _normalise(value):
    # JSON-ish round trips (a checkpoint's lists vs tuples, 1 vs 1.0) are not changes.
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    if isinstance(value, dict):
        return {k: _normalise(v) for k, v in value.items()}
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value
