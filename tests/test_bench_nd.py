"""The 1-D and 3-D benchmarks (issue 21): `bench --nd`, `bench --scaling --dims 3` and
scripts/bench_2d_before_after.py. Structure and correctness, never speed: the N-D
baselines must solve the same system as the dense float64 oracle (tests/oracle_nd.py) and
give the same gradients, else the scaling study compares different work."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

import oracle_nd
from inverseflow import inv_conv1d, inv_conv2d, inv_conv3d
from inverseflow.bench import baselines_nd, nd_solve, scaling
from inverseflow.cli import main as cli_main
from inverseflow.ops import _backends, _dispatch

OPS = {1: inv_conv1d, 2: inv_conv2d, 3: inv_conv3d}
CASES = [(1, "L"), (1, "R"), (1, "pair"), (2, "BR"), (2, "quad"), (3, "NTL"), (3, "FBR"),
         (3, "NBR"), (3, "oct")]


def _problem(dims, order, rng, kernel=2, size=3, batch=2, scale=0.3):
    channels = 2 ** dims if order in ("pair", "quad", "oct") else 3
    cols = 1 if order in ("pair", "quad", "oct") else channels
    weight = scale * torch.randn(channels, cols, *(kernel,) * dims, generator=rng,
                                 dtype=torch.float64)
    y = torch.randn(batch, channels, *(size,) * dims, generator=rng, dtype=torch.float64)
    return y, weight


def _oracle_solve(y, weight, order):
    matrix = oracle_nd.dense(weight, order, tuple(y.shape[2:]))
    return torch.linalg.solve(matrix, y.reshape(y.shape[0], -1).T).T.reshape(y.shape)


@pytest.mark.parametrize("dims,order", CASES)
def test_baselines_solve_the_oracle_system(dims, order, rng):
    y, weight = _problem(dims, order, rng)
    expected = _oracle_solve(y, weight, order)
    assert torch.allclose(baselines_nd.sequential_solve(y, weight, order), expected, atol=1e-10)
    assert torch.allclose(baselines_nd.dense_inv_conv(y, weight, order), expected, atol=1e-10)


@pytest.mark.parametrize("dims,order", [(1, "R"), (2, "TR"), (3, "FTL"), (3, "NBR")])
@pytest.mark.parametrize("method", ["sequential", "dense"])
def test_baseline_gradients_match_the_oracle(dims, order, method, rng):
    y, weight = _problem(dims, order, rng, kernel=3, size=3)
    y.requires_grad_()
    weight.requires_grad_()
    probe = torch.randn(y.shape, generator=rng, dtype=torch.float64)
    inverse = {"sequential": baselines_nd.sequential_inv_conv,
               "dense": baselines_nd.dense_inv_conv}[method]
    got = torch.autograd.grad((inverse(y, weight, order) * probe).sum(), (y, weight))
    expected = torch.autograd.grad((_oracle_solve(y, weight, order) * probe).sum(), (y, weight))
    for g, e in zip(got, expected):
        assert torch.allclose(g, e, atol=1e-9)


def test_sequential_gradient_matches_finite_differences(rng):
    y, weight = _problem(3, "FBL", rng, kernel=2, size=2, batch=1)
    assert torch.autograd.gradcheck(
        lambda a, b: baselines_nd.sequential_inv_conv(a, b, "FBL"),
        (y.requires_grad_(), weight.requires_grad_()))


def test_sequential_inverse_refuses_a_group_pattern():
    with pytest.raises(ValueError, match="order must be one of"):
        baselines_nd.sequential_inv_conv(torch.zeros(1, 8, 2, 2, 2), torch.zeros(8, 1, 2, 2, 2),
                                         "oct")


def test_opposite_corner():
    flipped = [baselines_nd.opposite(c) for c in ("L", "TR", "NTL", "FBL")]
    assert flipped == ["R", "BL", "FBR", "NTR"]


def test_the_3d_methods_do_the_same_training_step(rng):
    """ours, dense and sequential: the same gradients of the 8-corner stack."""
    grads = {}
    for name, method in scaling.METHODS_3D.items():
        y, weights = scaling._case(3, 1, 2, 2, "cpu", torch.float64, dims=3)
        scaling.training_step(method, y, weights, scaling.SETUPS[3][0])
        grads[name] = [w.grad for w in weights]
    assert len(grads["ours"]) == 8
    for name in ("dense", "sequential"):
        for g, e in zip(grads[name], grads["ours"]):
            assert torch.allclose(g, e, rtol=1e-9, atol=1e-12), name


def test_scaling_3d_run_writes_json_and_plot(tmp_path):
    result = scaling.run("cpu", sides=(2, 3, 4), batch=1, channels=2, kernel=2, repeats=1,
                         dense_max=60, fit_points=3, progress=lambda line: None, dims=3)
    assert result["dims"] == 3 and result["orders"] == list(oracle_nd.corners(3))
    rows = result["results"]["ours"]
    assert [(r["side"], r["n"], r["dependent_steps"]) for r in rows] == [
        (2, 8, 4), (3, 27, 7), (4, 64, 10)]                      # D + H + W - 2
    assert [r["side"] for r in result["results"]["dense"]] == [2, 3]   # 2·64 rows > 60
    assert "dense_max" in result["stopped"]["dense"]
    ratios = result["over_ours"]["sequential"]
    assert [r["side"] for r in ratios] == [2, 3, 4] and all(r["ratio"] > 0 for r in ratios)
    paths = scaling.write(result, tmp_path)
    assert [p.name for p in paths] == ["scaling_3d.json", "scaling_3d.png"]
    assert json.loads(paths[0].read_text())["dims"] == 3
    assert paths[1].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_scaling_2d_keeps_its_defaults():
    assert scaling.SETUPS[2] == (scaling.ORDERS, scaling.METHODS, scaling.SIDES)
    with pytest.raises(ValueError, match="dims must be one of"):
        scaling.run("cpu", sides=(2,), dims=4)


@pytest.mark.parametrize("channels,kernel,order,size,specialized", [
    (8, (3,), "L", (9,), True), (12, (4,), "R", (7,), False),
    (8, (2, 2, 2), "oct", (3, 4, 5), True), (6, (3, 3, 3), "FBR", (3, 3, 4), False)])
def test_nd_case_reports_every_figure(channels, kernel, order, size, specialized):
    r = nd_solve.case(2, channels, kernel, order, size, rounds=2)
    assert r["shape"] == [2, channels, *size] and r["dims"] == len(kernel)
    assert (r["kernel_used"] != "generic") == specialized
    assert r["residual_max_abs"] < 1e-4              # the op's x solves causal_conv(x) = y
    assert set(r["times"]) == set(nd_solve.STATEMENTS)
    assert all(t["median_ms"] > 0 and t["rounds"] == 2 for t in r["times"].values())
    assert set(r["ratios"]) == set(r["ratios_of_minima"]) == {
        "solve_over_conv", "op_over_conv", "transposed_over_conv", "generic_over_solve"}
    assert r["ratios_of_minima"]["solve_over_conv"] == (r["times"]["solve"]["min_ms"]
                                                        / r["times"]["conv"]["min_ms"])


def test_nd_shapes_cover_the_specialized_layers():
    """Every 1-D and 3-D layer of specs.toml that the build has is measured."""
    built = {s for s in _backends.build_info().get("layers_built", [])
             if s.count("x") != 1}                                 # not 2-D
    measured = {f"invconv_k{'x'.join(map(str, k))}_g{_dispatch.group_channels(c, o)}"
                for shapes in nd_solve.SHAPES.values() for c, k, o, _ in shapes}
    assert built <= measured


def test_nd_run_writes_json_and_markdown(tmp_path, monkeypatch):
    monkeypatch.setattr(nd_solve, "QUICK_SHAPES", {1: ((8, (3,), "pair", (6,)),),
                                                   3: ((4, (3, 3, 3), "NTL", (3, 3, 3)),)})
    result = nd_solve.run(quick=True, log=lambda line: None)
    assert [r["dims"] for r in result["cases"]] == [1, 3]
    paths = nd_solve.write(result, tmp_path)
    assert [p.name for p in paths] == ["nd.json", "nd.md"]
    assert len(json.loads(paths[0].read_text())["cases"]) == 2
    table = paths[1].read_text()
    assert "| 8×8×6 | 3 | pair | specialized |" in table
    assert "| 2×4×3×3×3 | 3×3×3 | NTL | specialized |" in table


def test_cli_nd_and_dims(tmp_path, monkeypatch, capsys):
    calls = {}

    def fake_nd(quick):
        calls["nd"] = quick
        return {"environment": {"device": "cpu", "processor": "", "machine": "x", "threads": 1,
                                "torch": "t", "date": "d"}, "rounds": 1, "cases": []}

    def fake_scaling(device, **options):
        calls["scaling"] = options
        return {"slopes_vs_n": {}, "dims": options["dims"]}

    monkeypatch.setattr(nd_solve, "run", fake_nd)
    monkeypatch.setattr(scaling, "run", fake_scaling)
    monkeypatch.setattr(scaling, "write", lambda result, out: [])
    assert cli_main(["bench", "--nd", "--quick", "--out", str(tmp_path)]) == 0
    assert calls["nd"] is True and (tmp_path / "nd.json").exists() and (tmp_path / "nd.md").exists()
    assert cli_main(["bench", "--scaling", "--dims", "3", "--quick", "--out", str(tmp_path)]) == 0
    assert calls["scaling"]["dims"] == 3 and calls["scaling"]["sides"] == (4, 8, 12)
    assert cli_main(["bench", "--scaling", "--quick", "--out", str(tmp_path)]) == 0
    assert calls["scaling"]["dims"] == 2 and calls["scaling"]["sides"] == (8, 16, 32)
    capsys.readouterr()


@pytest.mark.parametrize("argv,message", [
    (["--dims", "3"], "--dims 3 applies to --scaling only"),
    (["--nd", "--scaling"], "--scaling and --nd"),
    (["--nd", "--device", "cuda"], "--nd measures the CPU kernels")])
def test_cli_nd_bad_arguments(argv, message, tmp_path, monkeypatch, capsys):
    def measured(*args, **kwargs):
        raise AssertionError("measured before the arguments were checked")

    monkeypatch.setattr(nd_solve, "run", measured)
    monkeypatch.setattr(scaling, "run", measured)
    assert cli_main(["bench", *argv, "--out", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err


def _before_after_script():
    path = Path(__file__).resolve().parents[1] / "scripts" / "bench_2d_before_after.py"
    spec = importlib.util.spec_from_file_location("bench_2d_before_after", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_before_after_solver_calls_both_entry_points(rng):
    script = _before_after_script()
    weight = 0.1 * torch.randn(12, 3, 3, 3, generator=rng)
    y = torch.randn(3, 12, 5, 6, generator=rng)
    x, name = script.solver(_backends.module_for("cpu"))(y, weight, "quad", 0, False)
    assert name == _dispatch.solve(y, weight, "quad")[1]
    assert torch.allclose(x, inv_conv2d(y, weight, "quad"), atol=1e-5)

    class OldModule:     # the entry point before the N-D change: no depth and kd
        calls = []

        def solve(self, *args):
            self.calls.append(args[3:])
            return "generic"
    OldModule.solve.__doc__ = ("solve(y: int, weight: int, x: int, batch: int, channels: int, "
                               "height: int, ...)")
    script.solver(OldModule())(y, weight, "TL", 1, True)
    assert OldModule.calls[0][:8] == (3, 12, 5, 6, 3, 3, 0, 0)   # batch..kw, TL, float32
    assert OldModule.calls[0][8] == 1 and OldModule.calls[0][-1] is True


def test_before_after_case_checks_and_times_every_build(rng):
    script = _before_after_script()
    run = script.solver(_backends.module_for("cpu"))
    r = script.case({"old": run, "new": run, "installed": run}, 2, 4, 4, 2, "quad", "solve", 2)
    assert set(r["times"]) == {"old", "new", "installed"}
    assert r["max_abs_diff_vs_installed"] == {"old": 0.0, "new": 0.0, "installed": 0.0}
    assert r["new_over_old"] > 0 and r["new_over_old_of_minima"] > 0
