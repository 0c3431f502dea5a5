"""Same seed, same bits (issue 25, DESIGN §16): equal forms are chosen by a fixed rule unless
benchmark mode is asked for, and a resume replays exactly in both modes.

The training tests run in subprocesses under an adversarial clock (``time.perf_counter``
returns random values in the child), so any choice that consulted a clock would differ
between two processes; by default none may."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings

import pytest
import torch

import inverseflow
from inverseflow.ops import _autotune, _form_rules, _geometry
from inverseflow.ops._validate import ORDERS_BY_DIMS

pytest.importorskip("sklearn", reason="the digits dataset comes from scikit-learn")

SMALL = ["--dataset", "digits", "--flow-steps", "1", "--coupling-width", "16",
         "--batch-size", "32", "--eval-limit", "64", "--num-samples", "4", "--quiet",
         "--checkpoint-every", "2", "--warmup", "1"]

# The child: a random clock (seeded by the process id, so two children differ), then the
# command line; KILL_AFTER_CHECKPOINTS=n SIGKILLs the process right after its n-th checkpoint.
CHILD = r"""
import os, random, signal, sys, time
clock = random.Random(os.getpid())
time.perf_counter = lambda: clock.random() * 1e3
kill_after = int(os.environ.get("KILL_AFTER_CHECKPOINTS", "0"))
if kill_after:
    from inverseflow.train import loop
    saved, real_save = [], loop.save_checkpoint
    def save_then_maybe_die(state, path):
        out = real_save(state, path)
        saved.append(path)
        if len(saved) == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
        return out
    loop.save_checkpoint = save_then_maybe_die
from inverseflow.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _run(args, kill_after=0, env=None):
    environment = {**os.environ, "OMP_NUM_THREADS": "2", **(env or {})}
    environment.pop("INVERSEFLOW_BENCHMARK", None)
    if kill_after:
        environment["KILL_AFTER_CHECKPOINTS"] = str(kill_after)
    return subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True,
                          env=environment, timeout=600)


def _train(out, steps, *extra, kill_after=0, resume=False):
    result = _run(["train", *SMALL, "--out", str(out), "--steps", str(steps), *extra,
                   *(["--resume"] if resume else [])], kill_after=kill_after)
    if kill_after:
        assert result.returncode == -9, result.stderr[-2000:]   # killed, as asked
    else:
        assert result.returncode == 0, result.stderr[-2000:]
    return result


def _outcome(out) -> dict:
    """Everything a run leaves that must replay bit for bit."""
    metrics = json.loads((out / "metrics.json").read_text())
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    return {"losses": metrics["train_losses"], "test_bpd": metrics["test_bpd"],
            "initial": metrics["initial_test_bpd"], "samples": (out / "samples.png").read_bytes(),
            "model": state["model"], "step": state["step"]}


def _assert_identical(a: dict, b: dict) -> None:
    assert a["losses"] == b["losses"]
    assert a["test_bpd"] == b["test_bpd"] and a["initial"] == b["initial"]
    assert a["step"] == b["step"] and a["model"].keys() == b["model"].keys()
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert a["samples"] == b["samples"]


def test_two_default_runs_are_bit_identical_under_an_adversarial_clock(tmp_path):
    _train(tmp_path / "a", 6)
    _train(tmp_path / "b", 6)
    _assert_identical(_outcome(tmp_path / "a"), _outcome(tmp_path / "b"))
    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert metrics["benchmark"] is False and metrics["form_choice"] == "deterministic"
    # sampling from the checkpoint: the same bits in two processes
    for name in ("s1.png", "s2.png"):
        result = _run(["sample", "--checkpoint", str(tmp_path / "a" / "checkpoint.pt"),
                       "--num", "9", "--seed", "3", "--out", str(tmp_path / name)])
        assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "s1.png").read_bytes() == (tmp_path / "s2.png").read_bytes()


def test_sigkill_and_resume_replays_the_uninterrupted_run_in_default_mode(tmp_path):
    _train(tmp_path / "straight", 6)
    _train(tmp_path / "killed", 6, kill_after=2)          # dies right after step 4's checkpoint
    assert torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=True)["step"] == 4
    _train(tmp_path / "killed", 6, resume=True)
    _assert_identical(_outcome(tmp_path / "straight"), _outcome(tmp_path / "killed"))


def test_two_resumes_of_one_checkpoint_are_bit_identical_in_benchmark_mode(tmp_path):
    first = tmp_path / "first"
    _train(first, 6, "--benchmark", kill_after=1)          # dies right after step 2's checkpoint
    state = torch.load(first / "checkpoint.pt", weights_only=True)
    assert state["train_config"]["benchmark"] is True
    ops = {entry[0] for entry in state["form_choices"]}
    assert {"causal_conv", "conv_weight_grad"} <= ops       # timed while training and up front
    second = tmp_path / "second"
    shutil.copytree(first, second)
    _train(first, 6, "--benchmark", resume=True)
    _train(second, 6, "--benchmark", resume=True)
    _assert_identical(_outcome(first), _outcome(second))
    assert json.loads((first / "metrics.json").read_text())["form_choice"] == "benchmark"
    # changing the mode on resume is refused, like any other flag that shapes the run
    refused = _run(["train", *SMALL, "--out", str(first), "--steps", "8", "--resume"])
    assert refused.returncode == 2 and "--benchmark" in refused.stderr


# ------------------------------------------------------------------ the measurement itself

class FakeClock:
    """A clock that only the forms advance: each call of form f costs ``costs[f]`` seconds,
    times a noise factor drawn from ``noise``."""

    def __init__(self, costs: dict, noise=lambda: 1.0):
        self.now, self.costs, self.noise = 0.0, costs, noise

    def __call__(self) -> float:
        return self.now

    def forms(self, real: dict) -> dict:
        def timed(name, fn):
            def call(*args):
                self.now += self.costs[name] * self.noise()
                return fn(*args)
            return call
        return {name: timed(name, fn) for name, fn in real.items()}


def _br_case(rng):
    weight = 0.03 * torch.randn(12, 12, 3, 3, generator=rng)
    x = torch.randn(2, 12, 6, 6, generator=rng)
    return x, _geometry.masked_weight(weight, "BR"), _geometry.sampling_forms("BR", 2, True)


@pytest.fixture
def benchmark_mode(monkeypatch):
    monkeypatch.setattr(inverseflow.backends, "benchmark", True)
    monkeypatch.setattr(_autotune, "_choices", {})


@pytest.mark.parametrize("slow", ["kernel", "padded_conv"])
def test_benchmark_mode_never_picks_a_form_the_timer_makes_slow(slow, rng, monkeypatch,
                                                                 benchmark_mode):
    x, weight_m, real = _br_case(rng)
    noise = __import__("random").Random(0)
    for trial in range(20):   # 3x slower, under ±40% noise per call: never chosen
        clock = FakeClock({name: 3e-4 if name == slow else 1e-4 for name in real},
                          noise=lambda: noise.uniform(0.6, 1.4))
        monkeypatch.setattr(_autotune, "clock", clock)
        _autotune.forget()
        forms = clock.forms(real)
        choice = _autotune.choose("causal_conv", "BR", forms, x, weight_m)
        assert choice != slow, trial
    # the choice is remembered: no second measurement for the shape
    before = clock.now
    assert _autotune.choose("causal_conv", "BR", forms, x, weight_m) == choice
    assert clock.now == before


def test_benchmark_mode_picks_the_rules_form_when_all_are_equal(rng, monkeypatch, benchmark_mode):
    x, weight_m, real = _br_case(rng)
    rule = _form_rules.pick("causal_conv", "BR", real, (x, weight_m))
    for _ in range(5):
        clock = FakeClock(dict.fromkeys(real, 1e-4))
        monkeypatch.setattr(_autotune, "clock", clock)
        _autotune.forget()
        assert _autotune.choose("causal_conv", "BR", clock.forms(real), x, weight_m) == rule


def test_each_form_is_timed_in_several_rounds_over_a_minimum_time(rng, monkeypatch,
                                                                  benchmark_mode):
    x, weight_m, real = _br_case(rng)
    calls = dict.fromkeys(real, 0)
    clock = FakeClock(dict.fromkeys(real, 5e-5))        # a 50 µs form
    monkeypatch.setattr(_autotune, "clock", clock)

    def counted(name, fn):
        def call(*args):
            calls[name] += 1
            return fn(*args)
        return call
    forms = {name: counted(name, fn) for name, fn in clock.forms(real).items()}
    _autotune.choose("causal_conv", "BR", forms, x, weight_m)
    per_sample = _autotune.MIN_SAMPLE_SECONDS / 5e-5
    for name, count in calls.items():
        assert _autotune.ROUNDS >= 5
        assert count >= _autotune.ROUNDS * per_sample, name


def test_default_mode_reads_no_clock(rng, monkeypatch):
    monkeypatch.setattr(inverseflow.backends, "benchmark", False)
    monkeypatch.setattr(_autotune, "_choices", {})

    def no_clock():
        raise AssertionError("the default mode consulted a clock")
    monkeypatch.setattr(_autotune, "clock", no_clock)
    x, weight_m, forms = _br_case(rng)
    with torch.no_grad():
        inverseflow.causal_conv2d(x, weight_m, "BR")
    assert _autotune.choose("causal_conv", "BR", forms, x, weight_m) in forms
    assert _autotune.choices() == {}


def test_deterministic_algorithms_turn_benchmark_mode_off_with_one_warning(rng, monkeypatch):
    monkeypatch.setattr(inverseflow.backends, "benchmark", True)
    monkeypatch.setattr(inverseflow.backends, "_warned_deterministic", False)
    monkeypatch.setattr(_autotune, "_choices", {})
    x, weight_m, forms = _br_case(rng)
    rule = _form_rules.pick("causal_conv", "BR", forms, (x, weight_m))
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(3):
                assert _autotune.choose("causal_conv", "BR", forms, x, weight_m) == rule
            assert inverseflow.backends.mode() == "deterministic"
    finally:
        torch.use_deterministic_algorithms(previous)
    messages = [str(w.message) for w in caught if "use_deterministic_algorithms" in str(w.message)]
    assert len(messages) == 1 and "fixed rule" in messages[0]
    assert _autotune.choices() == {}   # nothing was timed


def test_the_setting_is_checked(monkeypatch):
    with pytest.raises(TypeError, match="True or False"):
        inverseflow.backends.benchmark = "yes"
    monkeypatch.setattr(inverseflow.backends, "_benchmark", None)
    monkeypatch.setenv("INVERSEFLOW_BENCHMARK", "perhaps")
    with pytest.raises(ValueError, match="INVERSEFLOW_BENCHMARK"):
        inverseflow.backends.benchmark
    monkeypatch.setattr(inverseflow.backends, "_benchmark", None)
    monkeypatch.setenv("INVERSEFLOW_BENCHMARK", "1")
    assert inverseflow.backends.benchmark is True


def test_restore_takes_back_what_recorded_wrote_and_refuses_anything_else(rng, monkeypatch,
                                                                          benchmark_mode):
    x, weight_m, real = _br_case(rng)
    monkeypatch.setattr(_autotune, "clock", FakeClock({"kernel": 1e-4, "padded_conv": 3e-4}))
    _autotune.choose("causal_conv", "BR", _autotune.clock.forms(real), x, weight_m)
    saved = _autotune.recorded()
    assert saved and saved[0][-1] == "kernel"
    _autotune.forget()
    assert _autotune.restore(saved) == 1 and _autotune.recorded() == saved
    for bad in ("x", [["causal_conv"]], [["rm -rf", "BR", ["a"], "cpu", "f", [], "a"]],
                [saved[0][:-1] + ["not_a_candidate"]]):
        with pytest.raises(ValueError):
            _autotune.restore(bad)


# ----------------------------------------------------------------------------- the rule

def _candidate_sets():
    """Every (op, dims, order, candidates) the geometry offers a choice among."""
    for dims, orders in ORDERS_BY_DIMS.items():
        for order in orders:
            for with_kernel in (True, False):
                yield "causal_conv", dims, order, _geometry.sampling_forms(order, dims, with_kernel)
            yield "conv_weight_grad", dims, order, _geometry.weight_grad_forms(order)
            if _geometry.is_group_pattern(order):
                yield "causal_conv_adjoint", dims, order, _geometry.ADJOINT_GROUP_FORMS


@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_rule_covers_every_op_order_and_dimension_with_a_choice(device, dtype):
    for op, dims, order, candidates in _candidate_sets():
        if len(candidates) < 2:
            continue
        for batch, channels, size in ((1, 8, 2), (1, 48, 32), (100, 16, 16), (100, 64, 8)):
            case = _form_rules.Case(op=op, group_pattern=_geometry.is_group_pattern(order),
                                    dims=dims, device=device, dtype=dtype, batch=batch,
                                    channels=channels, positions=size ** dims, isa="AVX2")
            assert _form_rules.rule_for(case, candidates).form in candidates, (op, order, case)


def test_every_form_has_a_rule_entry():
    """A new form without a row in the rule's table never runs: that is a bug."""
    named = {(row.op, row.form) for row in _form_rules.RULES}
    for op, _, order, candidates in _candidate_sets():
        for form in candidates:
            assert (op, form) in named, f"{op}: form {form!r} ({order}) has no rule entry"
    assert {row.op for row in _form_rules.RULES} == set(_form_rules.OPS)
    assert all(row.source for row in _form_rules.RULES)   # each entry says where it comes from
