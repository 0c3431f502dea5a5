"""Hardening of the training loop and CLI (issue 12): resume flags, divergence messages,
finite checks, start-up validation, Ctrl-C, devices, temperatures, Glow's options, and
the inverse's growth statistic."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("sklearn", reason="the digits dataset comes from scikit-learn")

from inverseflow.cli import main as cli_main  # noqa: E402
from inverseflow.models import InverseFlow  # noqa: E402
from inverseflow.train import TrainConfig, TrainingDiverged, TrainingInterrupted, train  # noqa: E402
from inverseflow.train import guards, loop  # noqa: E402

SMALL = ["--dataset", "digits", "--flow-steps", "1", "--coupling-width", "16",
         "--batch-size", "32", "--eval-limit", "64", "--num-samples", "4", "--quiet"]
REPO = Path(__file__).resolve().parents[1]


def _config(out, **kw):
    base = dict(dataset="digits", out=str(out), flow_steps=1, coupling_width=16, batch_size=32,
                eval_limit=64, num_samples=4, progress=False, checkpoint_every=2)
    return TrainConfig(**{**base, **kw})


def _load(path):
    return torch.load(path, weights_only=True)


# ------------------------------------------------------------------- 3. resume flags

def test_resume_refuses_changed_flags_and_lists_each(tmp_path):
    train(_config(tmp_path, steps=2))
    with pytest.raises(ValueError) as info:
        train(_config(tmp_path, steps=4, resume=True, lr=5e-4, seed=3, kernel_size=5,
                      batch_size=16))
    message = str(info.value)
    for flag, old, new in (("--lr", "0.001", "0.0005"), ("--seed", "0", "3"),
                           ("--kernel-size", "None", "5"), ("--batch-size", "32", "16")):
        assert re.search(rf"{flag}: {old} in the checkpoint, {new} now", message), (flag, message)
    assert "--steps" in message and "--time-budget" in message   # says what may change
    assert _load(tmp_path / "checkpoint.pt")["step"] == 2        # nothing was trained


def test_resume_accepts_the_flags_that_may_change(tmp_path):
    train(_config(tmp_path / "a", steps=4))
    train(_config(tmp_path / "b", steps=2))
    resumed = train(_config(tmp_path / "b", steps=4, resume=True, checkpoint_every=1,
                            time_budget=1e6, eval_limit=32, num_samples=2, temperature=0.5))
    straight = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert resumed["train_losses"] == straight["train_losses"]
    assert resumed["test_images"] == 32


def test_cli_resume_with_a_changed_flag_is_refused(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert cli_main(["train", *SMALL, "--out", out, "--steps", "2"]) == 0
    capsys.readouterr()
    assert cli_main(["train", *SMALL, "--out", out, "--steps", "4", "--resume",
                     "--order", "TL"]) == 2
    assert "--order: None in the checkpoint, 'TL' now" in capsys.readouterr().err


# ------------------------------------------------------ 4, 5. divergence and finiteness

def _poison_forward(monkeypatch, at_call, poison):
    real_forward = InverseFlow.forward
    calls = {"n": 0}

    def poisoned(self, x, generator=None):
        out = real_forward(self, x, generator)
        calls["n"] += 1
        return poison(self, out) if calls["n"] == at_call else out

    monkeypatch.setattr(InverseFlow, "forward", poisoned)


def test_divergence_message_names_the_step_in_the_checkpoint(tmp_path, monkeypatch):
    # call 1 initialises ActNorm; call 6 is step 5; checkpoints every 3 steps -> step 3.
    _poison_forward(monkeypatch, 6, lambda self, out: out * float("nan"))
    with pytest.raises(TrainingDiverged) as info:
        train(_config(tmp_path, steps=8, checkpoint_every=3))
    kept = int(re.search(r"last good checkpoint .* \(step (\d+)\)", str(info.value)).group(1))
    assert kept == _load(tmp_path / "checkpoint.pt")["step"] == 3
    assert "non-finite loss at step 5" in str(info.value)


def test_non_finite_gradient_stops_before_the_step_is_kept(tmp_path, monkeypatch):
    # sqrt(0 * sum) is 0 forward, but its gradient is inf * 0 = NaN: a finite loss whose
    # gradient is not.
    _poison_forward(monkeypatch, 4,
                    lambda self, out: out + torch.sqrt(self.top_mean.sum() * 0))
    with pytest.raises(TrainingDiverged, match=r"non-finite gradient at step 3 \(in .*top_mean"):
        train(_config(tmp_path, steps=8, checkpoint_every=1))
    state = _load(tmp_path / "checkpoint.pt")
    assert state["step"] == 2
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())


def test_non_finite_parameters_are_never_saved(tmp_path, monkeypatch):
    real_step = torch.optim.Adam.step
    calls = {"n": 0}

    def step_then_poison(self, *args, **kwargs):
        result = real_step(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(float("inf"))
        return result

    monkeypatch.setattr(torch.optim.Adam, "step", step_then_poison)
    with pytest.raises(TrainingDiverged, match="non-finite parameters after the update of step 3"):
        train(_config(tmp_path, steps=8, checkpoint_every=1))
    state = _load(tmp_path / "checkpoint.pt")
    assert state["step"] == 2
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())


# ------------------------------------------------------------ 6. start-up validation

def test_out_that_is_a_file_fails_before_any_work(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("in the way")
    monkeypatch.setattr(loop, "load_dataset", lambda *a: pytest.fail("did work first"))
    with pytest.raises(ValueError, match=rf"--out {re.escape(str(blocker))} is a file"):
        train(_config(blocker, steps=2))
    with pytest.raises(ValueError, match="a file is in the way") as info:
        train(_config(blocker / "run", steps=2))
    assert ".tmp" not in str(info.value)


def test_out_that_cannot_be_created_fails_at_start(monkeypatch):
    monkeypatch.setattr(loop, "load_dataset", lambda *a: pytest.fail("did work first"))
    with pytest.raises(ValueError, match="cannot create --out /proc/inverseflow-run"):
        train(_config("/proc/inverseflow-run", steps=2))


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into a read-only folder")
def test_out_that_is_read_only_fails_at_start(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(ValueError, match="cannot write files in --out"):
            train(_config(folder, steps=2))
    finally:
        folder.chmod(0o700)


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    train(_config(out, steps=2))
    return out / "checkpoint.pt"


def test_sample_creates_a_missing_folder_or_says_what_is_in_the_way(trained_checkpoint, tmp_path,
                                                                    capsys):
    target = tmp_path / "new" / "deeper" / "s.png"
    assert cli_main(["sample", "--checkpoint", str(trained_checkpoint), "--num", "2",
                     "--out", str(target)]) == 0
    assert target.read_bytes()[:4] == b"\x89PNG"
    (tmp_path / "blocker").write_text("x")
    capsys.readouterr()
    assert cli_main(["sample", "--checkpoint", str(trained_checkpoint), "--num", "2",
                     "--out", str(tmp_path / "blocker" / "s.png")]) == 2
    err = capsys.readouterr().err
    assert "a file is in the way" in err and ".tmp" not in err


# ------------------------------------------------------------------------ 7. Ctrl-C

def test_ctrl_c_writes_a_checkpoint_and_resume_matches_bit_for_bit(tmp_path, monkeypatch):
    straight = train(_config(tmp_path / "a", steps=6, checkpoint_every=100))
    real_lr = loop.learning_rate

    def lr_with_ctrl_c(config, step):
        if step == 2:                    # during step 3 (steps count from 1)
            signal.raise_signal(signal.SIGINT)
        return real_lr(config, step)

    monkeypatch.setattr(loop, "learning_rate", lr_with_ctrl_c)
    with pytest.raises(TrainingInterrupted, match="interrupted at step 3; rerun with --resume"):
        train(_config(tmp_path / "b", steps=6, checkpoint_every=100))
    assert _load(tmp_path / "b" / "checkpoint.pt")["step"] == 3
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler   # handler restored
    monkeypatch.setattr(loop, "learning_rate", real_lr)
    resumed = train(_config(tmp_path / "b", steps=6, checkpoint_every=100, resume=True))
    assert resumed["train_losses"] == straight["train_losses"]
    assert resumed["test_bpd"] == straight["test_bpd"]
    final_a = _load(tmp_path / "a" / "checkpoint.pt")["model"]
    final_b = _load(tmp_path / "b" / "checkpoint.pt")["model"]
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)


def test_cli_ctrl_c_exits_130_with_a_resumable_checkpoint(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "inverseflow", "train", *SMALL, "--out", str(out),
           "--steps", "100000", "--checkpoint-every", "1"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 120
    while not (out / "checkpoint.pt").exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "training did not start"
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    match = re.search(r"interrupted at step (\d+); rerun with --resume", err)
    assert match, err
    assert "Traceback" not in err
    step = int(match.group(1))
    assert _load(out / "checkpoint.pt")["step"] == step
    assert cli_main(["train", *SMALL, "--out", str(out), "--steps", str(step + 1),
                     "--checkpoint-every", "1", "--resume"]) == 0


# ------------------------------------------------------------- 8. devices, 9. options

@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("command", [
    ["eval", "--dataset", "digits"],
    ["sample", "--out", "s.png"],
])
def test_cuda_without_cuda_is_checked_before_the_checkpoint(command, trained_checkpoint, capsys,
                                                            tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli_main([command[0], "--checkpoint", str(trained_checkpoint), *command[1:],
                     "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "torch sees no CUDA device" in err and "checkpoint" not in err


@pytest.mark.parametrize("value", ["nan", "inf", "0", "-1", "warm"])
@pytest.mark.parametrize("command", ["train", "sample"])
def test_cli_temperature_must_be_finite_and_positive(command, value, capsys):
    rest = SMALL + ["--out", "x", "--steps", "1"] if command == "train" else [
        "--checkpoint", "c.pt", "--out", "s.png"]
    with pytest.raises(SystemExit) as info:
        cli_main([command, *rest, "--temperature", value])
    assert info.value.code == 2
    assert "--temperature" in capsys.readouterr().err


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 0.0, -1.0])
def test_train_config_temperature_must_be_finite_and_positive(value):
    with pytest.raises(ValueError, match="temperature must be finite and positive"):
        TrainConfig(dataset="digits", out="x", steps=1, temperature=value).validate()


# ---------------------------------------------------------------------- 10. Glow options

def test_cli_glow_rejects_k_by_k_options_and_records_none(tmp_path, capsys):
    assert cli_main(["train", *SMALL, "--out", str(tmp_path / "g"), "--steps", "1",
                     "--model", "glow", "--solve-on", "sampling"]) == 2
    assert "Glow has no k×k" in capsys.readouterr().err
    assert cli_main(["train", *SMALL, "--out", str(tmp_path / "ok"), "--steps", "1",
                     "--model", "glow"]) == 0
    metrics = json.loads((tmp_path / "ok" / "metrics.json").read_text())
    assert metrics["solve_on"] is None
    assert _load(tmp_path / "ok" / "checkpoint.pt")["model_config"]["kernel_size"] is None


# --------------------------------------------------------------------- 12. growth logged

def test_train_logs_the_inverse_growth_and_warns_past_the_threshold(tmp_path, monkeypatch):
    metrics = train(_config(tmp_path / "a", steps=2))
    assert metrics["max_inverse_growth"] > 0
    monkeypatch.setattr(guards, "GROWTH_WARNING_THRESHOLD", 1e-3)
    with pytest.warns(guards.InverseGrowthWarning, match="amplified its input"):
        train(_config(tmp_path / "b", steps=2))


def test_a_failed_checkpoint_write_names_the_file_not_its_temporary(tmp_path):
    from inverseflow.train.checkpoint import save_checkpoint

    target = tmp_path / "blocker" / "checkpoint.pt"
    (tmp_path / "blocker").write_text("x")
    with pytest.raises(OSError) as info:
        save_checkpoint({"step": 1}, target)
    assert str(target) in str(info.value) and ".tmp" not in str(info.value)


def test_a_failed_sample_grid_write_names_the_file_not_its_temporary(tmp_path):
    from inverseflow.train.grids import save_grid

    target = tmp_path / "missing" / "s.png"
    with pytest.raises(OSError) as info:
        save_grid(torch.rand(2, 1, 4, 4), target)
    assert str(target) in str(info.value) and ".tmp" not in str(info.value)


def test_all_finite_is_exact_for_huge_finite_values_and_nan():
    huge = torch.full((4,), 3e38)                    # its 2-norm overflows float32
    assert guards.all_finite([huge, torch.zeros(2, 2), None])
    for bad in (float("nan"), float("inf"), float("-inf")):
        assert not guards.all_finite([huge, torch.tensor([0.0, bad])])


def test_tensorboard_logs_the_inverse_growth_per_step(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    metrics = train(_config(tmp_path, steps=3, tensorboard=True))
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    growth = events.Scalars("train/max_inverse_growth")
    assert [e.step for e in growth] == [1, 2, 3]
    assert max(e.value for e in growth) == pytest.approx(metrics["max_inverse_growth"], rel=1e-6)


# ------------------------------------------------- issue 16: rough edges of the command line

def test_grad_clip_is_a_flag_applied_recorded_and_checked_on_resume(tmp_path, capsys,
                                                                    monkeypatch):
    real_clip = torch.nn.utils.clip_grad_norm_
    clipped = []

    def recording_clip(parameters, max_norm, *args, **kwargs):
        parameters = list(parameters)
        result = real_clip(parameters, max_norm, *args, **kwargs)
        norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in parameters
                                                     if p.grad is not None]))
        clipped.append((max_norm, float(norm)))
        return result

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recording_clip)
    out = str(tmp_path / "run")
    assert cli_main(["train", *SMALL, "--out", out, "--steps", "2", "--grad-clip", "1e-3"]) == 0
    assert len(clipped) == 2
    for max_norm, norm in clipped:   # the gradients' global norm after the step's clipping
        assert max_norm == 1e-3 and norm <= 1e-3 * (1 + 1e-4)
    assert _load(Path(out) / "checkpoint.pt")["train_config"]["grad_clip"] == 1e-3
    capsys.readouterr()
    assert cli_main(["train", *SMALL, "--out", out, "--steps", "4", "--resume",
                     "--grad-clip", "0.01"]) == 2
    assert "--grad-clip: 0.001 in the checkpoint, 0.01 now" in capsys.readouterr().err


def test_experiment_takes_grad_clip_too():
    from inverseflow.cli import build_parser
    from inverseflow.train import experiments

    args = build_parser().parse_args(["experiment", "if-cnn", "--dataset", "digits", "--out",
                                      "x", "--steps", "1", "--grad-clip", "5"])
    fields = {k: getattr(args, k) for k in experiments.RUN_FIELDS}
    assert experiments.train_config("if-cnn", "digits", "x", 1, **fields).grad_clip == 5


@pytest.mark.parametrize("command", ["train", "experiment", "sample"])
@pytest.mark.parametrize("seed", ["99999999999999999999", "-1", "4294967296"])
def test_seeds_out_of_range_are_refused_naming_the_flag(command, seed, capsys):
    rest = {"train": [*SMALL, "--out", "x", "--steps", "1"],
            "experiment": ["if-cnn", "--dataset", "digits", "--out", "x", "--steps", "1"],
            "sample": ["--checkpoint", "c.pt", "--out", "s.png"]}[command]
    with pytest.raises(SystemExit) as info:
        cli_main([command, *rest, "--seed", seed])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--seed" in err and "from 0 to 4294967295" in err and "Overflow" not in err


@pytest.mark.parametrize("seed", [2**64, -1, 1.5, True])
def test_train_config_seed_must_be_a_32_bit_integer(seed):
    with pytest.raises(ValueError, match="seed must be an integer from 0 to 4294967295"):
        TrainConfig(dataset="digits", out="x", steps=1, seed=seed).validate()


def test_the_largest_seed_trains(tmp_path):
    metrics = train(_config(tmp_path, steps=1, seed=loop.MAX_SEED))
    assert len(metrics["train_losses"]) == 1


@pytest.mark.parametrize("command", ["eval", "sample", "train", "experiment"])
def test_every_flag_has_a_help_line(command):
    parser = _subparser(command)
    silent = [a.option_strings or a.dest for a in parser._actions
              if a.help is None or not str(a.help).strip()]
    assert not silent, f"{command} flags without help: {silent}"


def test_eval_limit_is_named_as_in_train_and_limit_still_works(trained_checkpoint, capsys):
    for flag, count in (("--eval-limit", 16), ("--limit", 8)):
        assert cli_main(["eval", "--checkpoint", str(trained_checkpoint), "--dataset", "digits",
                         flag, str(count)]) == 0
        assert f"({count} images" in capsys.readouterr().out


def _subparser(command):
    from inverseflow.cli import build_parser

    subparsers = next(a for a in build_parser()._actions
                      if isinstance(getattr(a, "choices", None), dict) and command in a.choices)
    return subparsers.choices[command]


def _experiment_options():
    experiment = _subparser("experiment")
    resume_help = next(a.help for a in experiment._actions if "--resume" in a.option_strings)
    return set(experiment._option_string_actions), resume_help


def test_experiment_resume_help_names_only_experiment_flags():
    options, resume_help = _experiment_options()
    named = set(re.findall(r"--[a-z][a-z-]*", resume_help))
    assert named and named <= options, named - options
    assert "--steps" in named and "--time-budget" in named


def test_experiment_resume_refusal_names_only_experiment_flags(tmp_path, capsys):
    options, _ = _experiment_options()
    out = str(tmp_path / "run")
    base = ["experiment", "if-cnn", "--dataset", "digits", "--out", out, "--eval-limit", "16",
            "--batch-size", "32", "--quiet"]
    assert cli_main([*base, "--steps", "1"]) == 0
    capsys.readouterr()
    assert cli_main([*base, "--steps", "2", "--resume", "--lr", "5e-4", "--seed", "3"]) == 2
    err = capsys.readouterr().err
    assert "--lr: 0.001 in the checkpoint, 0.0005 now" in err and "--seed: 0" in err
    named = set(re.findall(r"--[a-z][a-z-]*", err))
    assert named <= options, named - options


@pytest.mark.parametrize("argv", [
    ["--model", "glow", "--kernel-size", "5"],            # a model option error
    ["--dataset", "cifar10"],                             # data that is not there
    ["--resume"],                                         # no checkpoint to resume
    ["--flow-steps", "4096"],                             # past the size bound
])
def test_a_failed_start_leaves_no_run_folder(tmp_path, capsys, argv):
    out = tmp_path / "new" / "run"
    assert cli_main(["train", *SMALL, "--out", str(out), "--steps", "1", *argv]) == 2
    assert "error" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
    existing = tmp_path / "mine"
    existing.mkdir()
    assert cli_main(["train", *SMALL, "--out", str(existing), "--steps", "1", *argv]) == 2
    assert existing.is_dir()   # a folder the user had is never removed


def test_sample_with_a_bad_checkpoint_leaves_no_folder(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert cli_main(["sample", "--checkpoint", str(bad), "--out",
                     str(tmp_path / "new" / "s.png")]) == 2
    assert not (tmp_path / "new").exists()


def test_tensorboard_with_a_file_in_the_way_fails_before_any_work(tmp_path, monkeypatch):
    (tmp_path / "tensorboard").write_text("in the way")
    monkeypatch.setattr(loop, "load_dataset", lambda *a: pytest.fail("did work first"))
    monkeypatch.setattr(loop, "_build", lambda *a, **k: pytest.fail("did work first"))
    with pytest.raises(ValueError, match=rf"--tensorboard .*{re.escape(str(tmp_path))}"
                                         r"/tensorboard is a file"):
        train(_config(tmp_path, steps=1, tensorboard=True))
