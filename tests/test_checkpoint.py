"""Checkpoint loading treats files as data: no code runs, bad files get one clear error."""

import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("sklearn", reason="the digits dataset comes from scikit-learn")

from inverseflow.train.checkpoint import CheckpointError, load_checkpoint  # noqa: E402
from inverseflow.train import TrainConfig, load_trained, train  # noqa: E402


class _RunsCode:
    """Unpickling this calls ``os.system``: what a crafted checkpoint would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def good_state(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    train(TrainConfig(dataset="digits", out=str(out), steps=1, flow_steps=1, coupling_width=8,
                      batch_size=16, eval_limit=16, num_samples=1, progress=False))
    return torch.load(out / "checkpoint.pt", weights_only=True)


def test_a_crafted_pickle_does_not_run_code(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"model": _RunsCode(marker), "model_config": {}}, evil)
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_checkpoint(evil)
    assert not marker.exists()


@pytest.mark.parametrize("command", ["eval", "sample"])
def test_the_cli_refuses_a_crafted_checkpoint_without_running_it(command, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"model": _RunsCode(marker), "model_config": {}}, evil)
    argv = {"eval": ["--dataset", "digits"], "sample": ["--out", str(tmp_path / "s.png")]}
    result = subprocess.run([sys.executable, "-m", "inverseflow", command, "--checkpoint",
                             str(evil), *argv[command]], capture_output=True, text=True)
    assert result.returncode == 2
    assert "evil.pt" in result.stderr and "Traceback" not in result.stderr
    assert not marker.exists()


def _damaged(state, key, value):
    state = dict(state)
    if value is _DROP:
        del state[key]
    else:
        state[key] = value
    return state


_DROP = object()


@pytest.mark.parametrize("key, value, message", [
    ("model", _DROP, "missing 'model'"),
    ("step", _DROP, "missing 'step'"),
    ("optimizer", _DROP, "missing 'optimizer'"),
    ("step", "four", "'step' is a str"),
    ("model", [1, 2], "'model' is a list"),
    ("model", {"w": 3}, "non-tensor"),
    ("model_config", {"levels": 2}, "model_config needs"),
    ("losses", ["x"], "non-numeric losses"),
])
def test_malformed_checkpoints_name_the_file_and_the_fault(good_state, tmp_path, key, value,
                                                          message):
    path = tmp_path / "bad.pt"
    torch.save(_damaged(good_state, key, value), path)
    with pytest.raises(CheckpointError, match=message) as err:
        load_checkpoint(path)
    assert "bad.pt" in str(err.value)


def test_a_config_that_does_not_build_is_a_checkpoint_error(good_state, tmp_path):
    config = dict(good_state["model_config"], levels="two")
    path = tmp_path / "bad.pt"
    torch.save(dict(good_state, model_config=config), path)
    with pytest.raises(CheckpointError, match="bad.pt.*do not build"):
        load_trained(str(path))
    weights = dict(list(good_state["model"].items())[1:])
    torch.save(dict(good_state, model=weights), path)
    with pytest.raises(CheckpointError, match="bad.pt"):
        load_trained(str(path))


def test_not_a_dict_and_not_a_pickle(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match="holds a list"):
        load_checkpoint(path)
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="list.pt"):
        load_checkpoint(path)


def test_our_own_checkpoints_load_as_data(good_state, tmp_path):
    path = tmp_path / "ok.pt"
    torch.save(good_state, path)
    model, state = load_trained(str(path))
    assert state["step"] == 1
    assert all(torch.equal(model.state_dict()[k], v) for k, v in good_state["model"].items())
