"""Training runs: outputs, exact resume, divergence handling, CLI errors, DDP on CPU."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("sklearn", reason="the digits dataset comes from scikit-learn")

from inverseflow.cli import main as cli_main  # noqa: E402
from inverseflow.models import InverseFlow  # noqa: E402
from inverseflow.train import TrainConfig, TrainingDiverged, train  # noqa: E402

SMALL = ["--dataset", "digits", "--flow-steps", "1", "--coupling-width", "16",
         "--batch-size", "32", "--eval-limit", "64", "--num-samples", "4", "--quiet"]


def _config(out, **kw):
    base = dict(dataset="digits", out=str(out), flow_steps=1, coupling_width=16, batch_size=32,
                eval_limit=64, num_samples=4, progress=False, checkpoint_every=2)
    return TrainConfig(**{**base, **kw})


def test_train_writes_metrics_checkpoint_and_samples(tmp_path):
    metrics = train(_config(tmp_path, steps=5))
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["steps"] == 5 and len(saved["train_losses"]) == 5
    for key in ("initial_test_bpd", "test_bpd", "train_seconds", "seconds_per_step"):
        assert isinstance(saved[key], float) and saved[key] > 0, key
    assert set(saved["pass_timings_ms"]["batch_1"]) == {"density", "sampling"}
    assert (tmp_path / "checkpoint.pt").is_file()
    assert (tmp_path / "samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert metrics["test_bpd"] == saved["test_bpd"]


def test_resumed_run_matches_an_uninterrupted_one(tmp_path):
    straight = train(_config(tmp_path / "a", steps=6))
    train(_config(tmp_path / "b", steps=3))
    resumed = train(_config(tmp_path / "b", steps=6, resume=True))
    assert resumed["train_losses"] == straight["train_losses"]
    assert resumed["test_bpd"] == straight["test_bpd"]
    assert resumed["initial_test_bpd"] == straight["initial_test_bpd"]


def test_resume_needs_a_checkpoint_and_more_steps(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(_config(tmp_path, steps=2, resume=True))
    train(_config(tmp_path, steps=2))
    with pytest.raises(ValueError, match="--resume"):
        train(_config(tmp_path, steps=4))
    with pytest.raises(ValueError, match="more steps"):
        train(_config(tmp_path, steps=2, resume=True))


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    real_forward = InverseFlow.forward
    calls = {"n": 0}

    def poisoned(self, x, generator=None):
        out = real_forward(self, x, generator)
        calls["n"] += 1
        # Call 1 is ActNorm's initialisation; training steps 1..4 are fine, step 5 is NaN.
        return out * float("nan") if calls["n"] == 6 else out

    monkeypatch.setattr(InverseFlow, "forward", poisoned)
    with pytest.raises(TrainingDiverged, match="non-finite loss at step 5"):
        train(_config(tmp_path, steps=8))
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["step"] == 4 and all(torch.isfinite(torch.tensor(state["losses"])))
    assert not (tmp_path / "metrics.json").exists()


def test_cli_train_eval_sample(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli_main(["train", *SMALL, "--out", str(out), "--steps", "2"]) == 0
    printed = capsys.readouterr().out
    assert "before" in printed and "after" in printed and "samples.png" in printed
    assert cli_main(["eval", "--checkpoint", str(out / "checkpoint.pt"), "--dataset", "digits",
                     "--limit", "32"]) == 0
    assert "test bits/dim" in capsys.readouterr().out
    png = tmp_path / "s.png"
    assert cli_main(["sample", "--checkpoint", str(out / "checkpoint.pt"), "--num", "9",
                     "--out", str(png), "--temperature", "0.5"]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("argv, message", [
    (["train", "--dataset", "digits", "--out", "X", "--steps", "0"], "positive integer"),
    (["train", "--dataset", "digits", "--out", "X"], "required"),
    (["train", "--dataset", "svhn", "--out", "X", "--steps", "1"], "svhn"),
    (["train", "--dataset", "cifar10", "--out", "X", "--steps", "1"], "data-dir"),
    (["train", "--dataset", "digits", "--out", "X", "--steps", "1", "--device", "tpu"],
     "invalid choice"),
    (["eval", "--checkpoint", "missing.pt", "--dataset", "digits"], "no checkpoint"),
    (["sample", "--checkpoint", "missing.pt", "--out", "x.png"], "no checkpoint"),
])
def test_cli_errors_are_clear(argv, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = subprocess.run([sys.executable, "-m", "inverseflow", *argv], capture_output=True,
                            text=True)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr[-1500:]
    assert "Traceback" not in result.stderr


@pytest.mark.skipif(shutil.which("torchrun") is None and not (
    Path(sys.executable).parent / "torchrun").exists(), reason="needs torchrun")
def test_ddp_two_processes_on_cpu(tmp_path):
    torchrun = str(Path(sys.executable).parent / "torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [torchrun, "--nproc_per_node", "2", "--master_port", "29517", "-m", "inverseflow",
         "train", *SMALL, "--out", str(tmp_path), "--steps", "3"],
        capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["steps"] == 3
    assert all(torch.isfinite(torch.tensor(metrics["train_losses"])))


def test_batches_partition_each_epoch_across_ranks():
    from inverseflow.train.distributed import Context
    from inverseflow.train import batch_indices

    n, per_rank, world = 103, 8, 3
    steps_per_epoch = n // (per_rank * world)
    for epoch in range(2):
        seen = []
        for step in range(epoch * steps_per_epoch, (epoch + 1) * steps_per_epoch):
            parts = [batch_indices(n, per_rank * world, step, 5, Context(r, world))
                     for r in range(world)]
            assert all(len(p) == per_rank for p in parts)
            seen += torch.cat(parts).tolist()
        assert len(seen) == len(set(seen)) == steps_per_epoch * per_rank * world


def test_learning_rate_schedule_depends_on_the_step_alone():
    from inverseflow.train import learning_rate

    config = _config("unused", steps=10, lr=1e-3, lr_final=1e-4, warmup=10, decay_steps=100)
    assert learning_rate(config, 0) == pytest.approx(1e-4)
    assert learning_rate(config, 9) == pytest.approx(1e-3 * 0.1 ** 0.09)
    assert learning_rate(config, 100) == pytest.approx(1e-4)
    assert learning_rate(config, 10**6) == pytest.approx(1e-4)


@pytest.mark.parametrize("channels", [1, 3])
def test_png_grid_round_trips(tmp_path, channels, rng):
    import numpy as np
    from PIL import Image

    from inverseflow.train.grids import save_grid

    images = torch.rand(5, channels, 5, 4, generator=rng)
    path = save_grid(images, tmp_path / "g.png", ncols=3, pad=1, min_side=1)
    with Image.open(path) as png:
        assert png.format == "PNG" and png.mode == ("L" if channels == 1 else "RGB")
        pixels = torch.from_numpy(np.array(png))
    pixels = pixels.reshape(*pixels.shape[:2], -1).permute(2, 0, 1)    # (C, H', W')
    assert tuple(pixels.shape) == (channels, 2 * 6 + 1, 3 * 5 + 1)
    expected = (images * 255).round().to(torch.uint8)
    for i in range(5):   # row-major tiles of 5x4 with a 1-pixel black border
        r, col = divmod(i, 3)
        tile = pixels[:, 1 + r * 6:1 + r * 6 + 5, 1 + col * 5:1 + col * 5 + 4]
        assert torch.equal(tile, expected[i]), i
    assert int(pixels[:, 0].max()) == 0 and int(pixels[:, 7:, 11:].max()) == 0  # border, empty slot
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("channels,side,count", [(1, 8, 64), (3, 5, 7), (1, 300, 1)])
def test_small_grids_are_enlarged_nearest_neighbour(tmp_path, channels, side, count, rng):
    # Sample grids used to be written one pixel per pixel (73x73 for 64 digits).
    import numpy as np
    from PIL import Image

    from inverseflow.train.grids import make_grid, save_grid

    images = torch.rand(count, channels, side, side, generator=rng)
    grid = make_grid(images)                                   # (C, H', W') uint8, 1:1
    with Image.open(save_grid(images, tmp_path / "g.png")) as png:
        pixels = torch.from_numpy(np.array(png))
    pixels = pixels.reshape(*pixels.shape[:2], -1).permute(2, 0, 1)
    factor = pixels.shape[1] // grid.shape[1]
    assert min(pixels.shape[1:]) >= 256 and factor >= 1
    assert tuple(pixels.shape) == (channels, grid.shape[1] * factor, grid.shape[2] * factor)
    if min(grid.shape[1:]) >= 256:
        assert factor == 1
    else:   # the smallest whole factor: one less would fall short of 256
        assert min(grid.shape[1:]) * (factor - 1) < 256
    # Nearest neighbour: every factor x factor block is one pixel of the 1:1 grid.
    blocks = pixels.reshape(channels, grid.shape[1], factor, grid.shape[2], factor)
    assert torch.equal(blocks, grid[:, :, None, :, None].expand_as(blocks))


def test_cli_reports_divergence_with_exit_code_3(tmp_path, monkeypatch, capsys):
    real_forward = InverseFlow.forward

    def poisoned(self, x, generator=None):
        return real_forward(self, x, generator) * float("nan")

    monkeypatch.setattr(InverseFlow, "forward", poisoned)
    for command in (["train", *SMALL], ["experiment", "if-glow", "--dataset", "digits",
                                        "--flow-steps", "1", "--coupling-width", "8",
                                        "--batch-size", "32", "--eval-limit", "32", "--quiet"]):
        out = tmp_path / command[0]
        assert cli_main([*command, "--out", str(out), "--steps", "3"]) == 3
        err = capsys.readouterr().err
        assert f"inverseflow {command[0]}: stopped: non-finite loss at step 1" in err, err
