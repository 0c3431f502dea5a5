"""The time-scaling study (`inverseflow bench --scaling`): its two slow baselines must
compute the same inverse and the same gradients as ours (else the timing compares
different work), and the run writes JSON and a plot with fitted slopes."""

import json
import math
import sys

import pytest
import torch

import oracle
from inverseflow import inv_conv2d
from inverseflow.bench import scaling
from inverseflow.cli import main as cli_main


@pytest.mark.parametrize("order", scaling.ORDERS)
@pytest.mark.parametrize("method", ["dense", "sequential"])
def test_baseline_matches_oracle_value_and_gradients(method, order, rng):
    weight = oracle.random_weight(3, 2, 3, order, rng, scale=0.3).requires_grad_()
    y = torch.randn(2, 3, 4, 5, generator=rng, dtype=torch.float64).requires_grad_()
    probe = torch.randn(2, 3, 4, 5, generator=rng, dtype=torch.float64)
    x = scaling.METHODS[method](y, weight, order)
    assert oracle.rel_err(x.detach(), oracle.inv_conv(y.detach(), weight.detach(), order)) < 1e-10
    got = torch.autograd.grad((x * probe).sum(), (y, weight))
    x_ref = inv_conv2d(y, weight, order)
    expected = torch.autograd.grad((x_ref * probe).sum(), (y, weight))
    for g, e in zip(got, expected):
        assert oracle.rel_err(g, e) < 1e-10


def test_sequential_gradient_matches_finite_differences(rng):
    weight = oracle.random_weight(2, 2, 2, "TR", rng, scale=0.3).requires_grad_()
    y = torch.randn(1, 2, 3, 3, generator=rng, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: scaling.sequential_inv_conv2d(a, b, "TR"),
                                    (y, weight))


def test_fit_slope_recovers_a_power_law():
    points = [(n, 3.0 * n ** 1.5) for n in (64, 256, 1024, 4096, 16384)]
    assert math.isclose(scaling.fit_slope(points, 4), 1.5, rel_tol=1e-9)
    assert scaling.fit_slope(points[:1], 4) is None


def test_run_writes_json_and_plot(tmp_path):
    result = scaling.run("cpu", sides=(4, 8, 12), batch=1, channels=2, kernel=2, repeats=1,
                         dense_max=130, fit_points=3, progress=lambda line: None)
    assert [r["side"] for r in result["results"]["ours"]] == [4, 8, 12]
    assert [r["side"] for r in result["results"]["dense"]] == [4, 8]   # 2·144 rows > 130
    assert "dense_max" in result["stopped"]["dense"]
    assert all(isinstance(result["slopes_vs_n"][m], float) for m in ("ours", "sequential"))
    paths = scaling.write(result, tmp_path)
    assert json.loads(paths[0].read_text())["channels"] == 2
    assert paths[1].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown method"):
        scaling.run("cpu", sides=(4,), methods=("fast",))
    with pytest.raises(ValueError, match="order must be one of"):
        scaling.sequential_inv_conv2d(torch.zeros(1, 4, 2, 2), torch.zeros(4, 1, 2, 2), "quad")


def test_cli_scaling_quick(tmp_path, capsys, monkeypatch):
    calls, real_run = {}, scaling.run

    def fake_run(device, **options):
        calls.update(options, device=device)
        return real_run(device, sides=(4, 8), batch=1, channels=2, kernel=2, repeats=1,
                           progress=lambda line: None)

    monkeypatch.setattr(scaling, "run", fake_run)
    assert cli_main(["bench", "--scaling", "--quick", "--out", str(tmp_path)]) == 0
    assert calls["sides"] == (8, 16, 32) and calls["device"] == "cpu"
    assert "slope" in capsys.readouterr().out
    assert (tmp_path / "scaling.png").exists()


def test_without_matplotlib_the_json_is_written_and_the_plot_skipped(tmp_path, monkeypatch,
                                                                     capsys):
    result = scaling.run("cpu", sides=(4, 8), batch=1, channels=2, kernel=2, repeats=1,
                         dense_max=0, fit_points=2, progress=lambda line: None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)   # import now raises ImportError
    paths = scaling.write(result, tmp_path)
    assert [p.name for p in paths] == ["scaling.json"]
    assert "inverseflow[bench]" in capsys.readouterr().err


def _no_measuring(monkeypatch):
    """Makes every bench section fail the test if it starts measuring."""
    from inverseflow.bench import jit_speedup
    from inverseflow.bench import suite

    def measured(*args, **kwargs):
        raise AssertionError("measured before the arguments and --out were checked")

    for module in (scaling, jit_speedup, suite):
        monkeypatch.setattr(module, "run", measured)


def test_cli_scaling_checks_out_before_measuring(tmp_path, monkeypatch, capsys):
    _no_measuring(monkeypatch)
    in_the_way = tmp_path / "results"
    in_the_way.write_text("a file, not a folder")
    assert cli_main(["bench", "--scaling", "--quick", "--out", str(in_the_way)]) == 2
    assert "--out" in capsys.readouterr().err and in_the_way.read_text() == "a file, not a folder"


def test_cli_scaling_and_jit_together_are_refused(tmp_path, monkeypatch, capsys):
    _no_measuring(monkeypatch)
    out = tmp_path / "results"
    assert cli_main(["bench", "--scaling", "--jit", "--quick", "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert "--scaling and --jit" in error and "one" in error
    assert not out.exists()
