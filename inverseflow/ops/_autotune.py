"""Which of several equal forms of an op runs (DESIGN §16).

The forms are equal in exact arithmetic and round differently, so the choice decides the
last bits of a result. By default it follows the fixed rule of :mod:`._form_rules`, from
what is known without a clock. In benchmark mode (:mod:`inverseflow.backends`) each form is
timed once per shape, robustly, and the choice is remembered for the process; training saves
the remembered choices in its checkpoints (:func:`recorded`) and a resume restores them
(:func:`restore`), so that it continues exactly as the killed process would have.
"""

from __future__ import annotations

import random
import statistics
import time

import torch

from .. import backends
from . import _form_rules

# The measurement (benchmark mode): every form is called WARMUP_CALLS times, then ROUNDS
# interleaved rounds time one sample of each form, in a shuffled order, each sample at least
# MIN_SAMPLE_SECONDS long (a 50 µs form is timed over several calls, not judged on one),
# and at most MAX_CALLS_PER_SAMPLE calls (so a clock that misreads the warm-up, which tests
# inject, costs a bounded time).
# The form with the smallest median wins; forms within TIE of the rule's choice count as
# equal to it, so equal forms give a stable choice: the rule's.
WARMUP_CALLS = 2
ROUNDS = 7
MIN_SAMPLE_SECONDS = 2e-3
MAX_CALLS_PER_SAMPLE = 100
TIE = 0.03

clock = time.perf_counter   # replaced by tests to inject a timer

_choices: dict[tuple, str] = {}        # benchmark mode's measured choices
_rule_choices: dict[tuple, str] = {}   # the rule's, remembered: the batch-1 sampling pass
                                       # calls this per layer


def choose(op: str, order: str, candidates: dict, *args: torch.Tensor) -> str:
    """The name of the form of ``op`` (one of :data:`._form_rules.OPS`) to run on ``args``,
    among ``candidates`` (name -> fn(*args)): the rule's, or in benchmark mode the fastest
    measured for this shape."""
    key = choice_key(op, order, candidates, args)
    if not backends.benchmark_active():
        rule = _rule_choices.get(key)
        if rule is None:
            rule = _rule_choices[key] = _form_rules.pick(op, order, candidates, args)
        return rule
    choice = _choices.get(key)
    if choice not in candidates:   # first use of the shape
        choice = _choices[key] = measure(
            candidates, args, prefer=_form_rules.pick(op, order, candidates, args))[0]
    return choice


def choice_key(op: str, order: str, candidates, args) -> tuple:
    """What a choice is remembered by, in either mode: strings and shapes (``torch.Size``
    is a tuple of ints), so that checkpoints can hold benchmark mode's as data."""
    first = args[0]
    return (op, order, tuple(sorted(candidates)), first.device.type, str(first.dtype),
            tuple(a.shape for a in args))


def measure(candidates: dict, args, prefer: str | None = None, seed: int = 0
            ) -> tuple[str, dict]:
    """(the fastest form, {form: median seconds per call}); see the constants above."""
    device = args[0].device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    calls = {}
    with torch.no_grad():
        for name, fn in candidates.items():
            for _ in range(WARMUP_CALLS):
                fn(*args)
            sync()
            start = clock()
            fn(*args)
            sync()
            once = max(clock() - start, 1e-9)
            calls[name] = max(1, min(MAX_CALLS_PER_SAMPLE, round(MIN_SAMPLE_SECONDS / once)))
        samples: dict[str, list[float]] = {name: [] for name in candidates}
        order = list(candidates)
        shuffle = random.Random(seed).shuffle
        for _ in range(ROUNDS):
            shuffle(order)
            for name in order:
                fn, count = candidates[name], calls[name]
                sync()
                start = clock()
                for _ in range(count):
                    fn(*args)
                sync()
                samples[name].append((clock() - start) / count)
    medians = {name: statistics.median(values) for name, values in samples.items()}
    best = min(medians, key=lambda name: (medians[name], name))
    if prefer in medians and medians[prefer] <= medians[best] * (1 + TIE):
        best = prefer
    return best, medians


def choices() -> dict:
    """What benchmark mode chose so far (for benchmarks and bug reports)."""
    return dict(_choices)


def recorded() -> list:
    """The remembered choices as plain data (lists of strings and ints), for checkpoints."""
    return [[op, order, list(forms), device, dtype, [list(s) for s in shapes], choice]
            for (op, order, forms, device, dtype, shapes), choice in sorted(_choices.items())]


def restore(entries) -> int:
    """Takes back choices that :func:`recorded` wrote (a resumed run's); returns how many.
    Raises ValueError on anything else (the file is data, checked like any other)."""
    if not isinstance(entries, list):
        raise ValueError(f"form choices must be a list, got {type(entries).__name__}")
    parsed = {}
    for entry in entries:
        if not (isinstance(entry, list) and len(entry) == 7):
            raise ValueError("a form choice must be [op, order, forms, device, dtype, shapes, "
                             "choice]")
        op, order, forms, device, dtype, shapes, choice = entry
        if (op not in _form_rules.OPS or not all(isinstance(v, str) and len(v) < 64
                                                for v in (order, device, dtype, choice))
                or not isinstance(forms, list) or choice not in forms
                or not all(isinstance(f, str) and len(f) < 64 for f in forms)
                or not isinstance(shapes, list)
                or not all(isinstance(s, list) and all(isinstance(n, int) and 0 <= n < 2**40
                                                       for n in s) for s in shapes)):
            raise ValueError(f"malformed form choice {entry!r:.200}")
        key = (op, order, tuple(forms), device, dtype, tuple(tuple(s) for s in shapes))
        parsed[key] = choice
    _choices.update(parsed)
    return len(parsed)


def forget() -> None:
    """Drops every remembered choice (a fresh run in this process measures anew)."""
    _choices.clear()
