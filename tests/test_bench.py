"""Benchmark plumbing (structure, not speed) and the slow baselines' correctness."""

import json

import pytest
import torch

import inverseflow
from inverseflow.bench import baselines
from inverseflow.bench import suite as bench


@pytest.mark.parametrize("order", ["TL", "TR", "BL", "BR", "quad"])
@pytest.mark.parametrize("solver", [baselines.sequential_solve, baselines.diagonal_solve,
                                    baselines.dense_solve])
def test_baselines_solve_the_same_system(solver, order, rng):
    channels = 8
    cg = channels // 4 if order == "quad" else channels
    weight = 0.1 * torch.randn(channels, cg, 3, 2, generator=rng, dtype=torch.float64)
    y = torch.randn(3, channels, 5, 4, generator=rng, dtype=torch.float64)
    x = solver(y, weight, order)
    assert torch.allclose(inverseflow.causal_conv2d(x, weight, order), y, atol=1e-10)


def test_op_case_reports_every_figure(tmp_path):
    r = bench.op_case(4, 4, 6, 3, "TL", repeats=2, baseline_repeats=1)
    for key in ("conv2d", "inv_conv2d", "inv_conv2d_generic", "inv_conv2d_fwd_bwd",
                "sequential_per_pixel", "per_diagonal", "dense_lu_4_samples"):
        assert r["times"][key]["median_ms"] > 0, key
    assert {"inv_over_conv", "fwd_bwd_inv_over_conv", "generic_over_specialized",
            "sequential_over_specialized", "dense_over_specialized_4_samples"} <= set(r["ratios"])
    assert r["memory"]["backward_largest_buffer_over_bchw"] >= 1.0


def test_model_case_and_outputs(tmp_path):
    m = bench.model_case("digits", 2, "cpu", repeats=1)
    assert {"density", "sampling", "glow"} == set(m["times_ms"])
    result = {"environment": bench.environment("cpu"),
              "ops": [bench.op_case(2, 4, 4, 2, "quad", repeats=2, baseline_repeats=1)],
              "sweeps": {"batch": [bench._sweep_point(2, 4, "cpu", 2)],
                         "size": [bench._sweep_point(2, 4, "cpu", 2)]},
              "models": [m]}
    written = bench.write(result, tmp_path)
    assert json.loads((tmp_path / "bench.json").read_text())["models"][0]["preset"] == "digits"
    table = (tmp_path / "bench.md").read_text()
    assert "| 2×4×4×4 | 2 | quad |" in table and "| digits | 2 |" in table
    assert all(p.endswith((".json", ".md", ".png")) for p in written)


def test_timings_come_from_torch_utils_benchmark_at_the_callers_thread_count(monkeypatch):
    from torch.utils import benchmark

    from inverseflow.models.timing import timings_ms

    made, seen = [], []
    real_timer = benchmark.Timer
    monkeypatch.setattr(benchmark, "Timer", lambda *a, **k: made.append(k) or real_timer(*a, **k))
    threads = torch.get_num_threads()
    samples = timings_ms(lambda: seen.append(torch.get_num_threads()), 4)
    assert len(samples) == 4 and all(s > 0 for s in samples)
    assert len(made) == 1 and made[0]["num_threads"] == threads   # not the Timer's default 1
    assert set(seen) == {threads} and len(seen) > 4              # warm-up calls came first


def test_environment_records_the_build_commit_without_asking_git(monkeypatch):
    # git next to the installed package answers for whatever repository contains it (a
    # project's .venv); the commit is the build's, recorded by CMake, or None.
    import subprocess
    from pathlib import Path

    from inverseflow.bench.environment import environment
    from inverseflow.ops import _backends

    real_popen = subprocess.Popen

    class NoGit(real_popen):
        def __init__(self, args, *rest, **kwargs):
            program = args[0] if isinstance(args, (list, tuple)) else str(args).split()[0]
            assert Path(str(program)).name != "git", f"environment() ran {args}"
            super().__init__(args, *rest, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", NoGit)
    env = environment("cpu")
    assert env["commit"] == _backends.build_info().get("commit")
    assert env["commit_dirty"] == _backends.build_info().get("commit_dirty")


def test_parity_section_reports_every_ratio_and_writes_json(tmp_path):
    from inverseflow.bench import conv_parity
    from inverseflow.bench import forms as forms_section

    causal = conv_parity.causal_conv_case(2, 4, 4, "quad", rounds=2)
    assert set(causal["ratios"]) >= {"causal_over_conv", "causal_over_solve"}
    assert causal["form"] in inverseflow.ops._geometry.sampling_forms("quad", 2, True)
    sampling = conv_parity.sampling_case("digits", 2, rounds=1)
    assert set(sampling["times"]) == {"inverseflow", "finc", "glow"}
    fwd_bwd = conv_parity.fwd_bwd_case(2, 4, 4, "BR", rounds=2)
    assert fwd_bwd["memory"]["inv_conv2d_backward_peak_over_bchw"] >= 1.0   # at least grad_y
    assert fwd_bwd["weight_grad_form"] in inverseflow.ops._geometry.weight_grad_forms("BR")
    forms = [forms_section.case(op, "quad", 2, 4, 4) for op in forms_section._form_rules.OPS]
    for form_case in forms:
        assert form_case["rule"] in form_case["median_ms"]
        assert form_case["benchmark_choice"] in form_case["median_ms"]
        fastest = min(form_case["median_ms"].values())
        assert form_case["rule_over_fastest"] == form_case["median_ms"][form_case["rule"]] / fastest
    assert set(forms[2]["median_ms"]) == set(inverseflow.ops._geometry.WEIGHT_GRAD_FORMS)
    result = {"causal_conv": [causal], "sampling": [sampling], "fwd_bwd": [fwd_bwd],
              "forms": forms}
    result["summary"] = conv_parity.summarize(result)
    path = conv_parity.write(result, tmp_path)
    summary = json.loads(open(path).read())["summary"]
    assert summary["causal_conv"]["cases"] == 1 and summary["forms"]["cases"] == 3
