"""Which training flags may change when a run is resumed.

A resumed run replays the uninterrupted one exactly, so everything that shapes the model,
the batches, the noise or the optimizer must be what the checkpoint was trained with.
Flags that only say how long to train, where things are, or how to report, evaluate and
sample may change. Anything else that differs is refused, in one message that lists
each flag with both values.
"""

from __future__ import annotations

from .precision import DEFAULT_PRECISION
from .quoting import quote

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

# Fields added after checkpoints were first written: the value every older checkpoint had.
OLDER_CHECKPOINTS = {"precision": DEFAULT_PRECISION, "benchmark": False}


def allowed_changes(fields=None) -> str:
    """The flags that may change on --resume, for messages and --help. ``fields``: the
    TrainConfig fields a command's flags set (``inverseflow experiment`` sets fewer than
    ``train``), so that only flags the command has are named; None for all."""
    return ", ".join(sorted({flag for field, flag in MAY_CHANGE_ON_RESUME.items()
                             if fields is None or field in fields} - {"--resume"}))


def flag_name(field: str, fields=None) -> str:
    if fields is not None and field not in fields:
        return f"{field} (set by `inverseflow train`; this command has no flag for it)"
    return MAY_CHANGE_ON_RESUME.get(field) or _FLAG_NAMES.get(field) or (
        "--" + field.replace("_", "-"))


def differing_flags(saved: dict, current: dict, fields=None) -> list[tuple[str, object, object]]:
    """``(flag, value in the checkpoint, value now)`` for each field that must not change
    on resume but does. Fields one side lacks (an older or newer version) are skipped,
    except those of :data:`OLDER_CHECKPOINTS`, whose value older checkpoints are known to
    have had."""
    saved = {**OLDER_CHECKPOINTS, **saved}
    out = []
    for field in sorted(set(saved) & set(current)):
        if field in MAY_CHANGE_ON_RESUME:
            continue
        if _normalise(saved[field]) != _normalise(current[field]):
            out.append((flag_name(field, fields), saved[field], current[field]))
    return out


def check_resume_flags(saved: dict, current: dict, checkpoint_path, fields=None) -> None:
    """Raises ValueError listing every flag that differs from the checkpoint's run;
    ``fields`` as for :func:`allowed_changes`. ``saved`` comes from a checkpoint that
    ``load_checkpoint`` checked (flat values, bounded in size); quotes are capped still."""
    diffs = differing_flags(saved, current, fields)
    if not diffs:
        return
    lines = "\n".join(f"  {flag}: {quote(old)} in the checkpoint, {quote(new)} now"
                      for flag, old, new in diffs)
    raise ValueError(
        f"cannot resume {checkpoint_path}: these flags differ from the run it continues, and "
        f"an exact replay needs them unchanged:\n{lines}\n"
        f"rerun with the checkpoint's values (only {allowed_changes(fields)} may change on "
        "--resume)")


def _normalise(value):
    # JSON-ish round trips (a checkpoint's lists vs tuples, 1 vs 1.0) are not changes.
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    if isinstance(value, dict):
        return {k: _normalise(v) for k, v in value.items()}
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value
