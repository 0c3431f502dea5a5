"""What a training run reports as it goes: the tqdm progress bar and TensorBoard events."""

import io
import sys

import pytest

pytest.importorskip("sklearn", reason="the digits dataset comes from scikit-learn")

from inverseflow.cli import main as cli_main  # noqa: E402
from inverseflow.train import TrainConfig, train  # noqa: E402
from inverseflow.train.loop import Progress  # noqa: E402


def _config(out, **kw):
    base = dict(dataset="digits", out=str(out), flow_steps=1, coupling_width=16, batch_size=32,
                eval_limit=64, num_samples=4, progress=False, checkpoint_every=2)
    return TrainConfig(**{**base, **kw})


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_draws_on_a_terminal_only(monkeypatch):
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    bar = Progress(total=6, start=2, enabled=True)
    for step in (3, 4, 5, 6):
        bar.update(step, 1.25 * step)
    bar.close()
    drawn = terminal.getvalue()
    assert "6/6" in drawn and "loss (train bits/dim) 7.5000" in drawn and "train" in drawn

    for enabled, stream in ((False, _Terminal()), (True, io.StringIO())):  # --quiet; a log file
        monkeypatch.setattr(sys, "stderr", stream)
        bar = Progress(total=3, start=0, enabled=enabled)
        bar.update(3, 1.0)
        bar.close()
        assert stream.getvalue() == "", enabled


def _events(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return events


def test_tensorboard_events_hold_losses_test_bits_per_dim_and_samples(tmp_path):
    train(_config(tmp_path, steps=3, tensorboard=True))
    metrics = train(_config(tmp_path, steps=5, tensorboard=True, resume=True))
    events = _events(tmp_path / "tensorboard")

    losses = events.Scalars("train/bits_per_dim")
    assert [e.step for e in losses] == [1, 2, 3, 4, 5]   # the resumed run continues the curve
    assert [e.value for e in losses] == pytest.approx(metrics["train_losses"], rel=1e-6)
    assert len(events.Scalars("train/learning_rate")) == 5

    test_bpd = {e.step: e.value for e in events.Scalars("test/bits_per_dim")}
    assert test_bpd[0] == pytest.approx(metrics["initial_test_bpd"], rel=1e-6)
    assert test_bpd[5] == pytest.approx(metrics["test_bpd"], rel=1e-6)

    samples = events.Images("samples")
    assert samples[-1].step == 5
    # 4 digit samples (8×8) in a 2×2 grid with 1-pixel borders.
    assert (samples[-1].width, samples[-1].height) == (19, 19)


def test_without_tensorboard_the_error_says_how_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)   # import fails
    with pytest.raises(RuntimeError, match=r"pip install tensorboard"):
        train(_config(tmp_path / "lib", steps=2, tensorboard=True))
    assert not (tmp_path / "lib" / "checkpoint.pt").exists()   # failed before training
    code = cli_main(["train", "--dataset", "digits", "--out", str(tmp_path / "cli"), "--steps",
                     "2", "--flow-steps", "1", "--coupling-width", "16", "--quiet",
                     "--tensorboard"])
    assert code == 2
    err = capsys.readouterr().err
    assert "--tensorboard needs the tensorboard package" in err and "pip install" in err
    # Without the flag the run does not need tensorboard.
    assert train(_config(tmp_path / "plain", steps=1))["steps"] == 1
    assert not (tmp_path / "plain" / "tensorboard").exists()
