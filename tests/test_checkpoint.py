"""Checkpoint loading treats files as data: no code runs, bad files get one clear error."""

import os
import re
import struct
import subprocess
import sys
import zipfile

import pytest
import torch

pytest.importorskip("sklearn", reason="the digits dataset comes from scikit-learn")

from inverseflow.train.checkpoint import CheckpointError, load_checkpoint  # noqa: E402
from inverseflow.train import TrainConfig, load_trained, train  # noqa: E402
from inverseflow.cli import main as cli_main  # noqa: E402


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


# ------------------------------------------------------- hostile files (issue 16, items 3, 7)

def _saved(state, tmp_path, name="hostile.pt"):
    path = tmp_path / name
    torch.save(state, path)
    return path


def _never_unpickled(monkeypatch):
    from inverseflow.train import checkpoint

    monkeypatch.setattr(checkpoint.torch, "load",
                        lambda *a, **k: pytest.fail("torch.load ran on a hostile archive"))


def test_a_compressed_record_is_refused_before_torch_load(good_state, tmp_path, monkeypatch):
    plain = _saved(good_state, tmp_path, "plain.pt")
    packed = tmp_path / "packed.pt"
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(packed, "w") as dst:
        for info in src.infolist():
            # A record of zeros deflates to almost nothing: the 3 MB file that unpacked to 3 GB.
            data = src.read(info.filename)
            if info.filename.endswith("/data/0"):
                data += bytes(2**20)
            method = zipfile.ZIP_DEFLATED if "/data/" in info.filename else zipfile.ZIP_STORED
            dst.writestr(info.filename, data, compress_type=method)
    assert packed.stat().st_size < 2**19
    _never_unpickled(monkeypatch)
    with pytest.raises(CheckpointError, match=r"packed\.pt .*record '.*/data/0' is compressed"):
        load_checkpoint(packed)


def _declare_record_size(path, suffix: bytes, size: int) -> None:
    """Rewrites the central-directory sizes of the record whose name ends with ``suffix``."""
    data = bytearray(path.read_bytes())
    at = 0
    while (at := data.find(b"PK\x01\x02", at + 1)) != -1:
        name_length = struct.unpack_from("<H", data, at + 28)[0]
        if data[at + 46:at + 46 + name_length].endswith(suffix):
            struct.pack_into("<II", data, at + 20, size, size)   # compressed, uncompressed
            path.write_bytes(bytes(data))
            return
    raise AssertionError(f"no record ending in {suffix!r}")


def test_a_record_declared_larger_than_the_file_is_refused_unread(good_state, tmp_path,
                                                                   monkeypatch):
    path = _saved(good_state, tmp_path)
    _declare_record_size(path, b"/data/0", 2**31)
    _never_unpickled(monkeypatch)
    with pytest.raises(CheckpointError, match=r"hostile\.pt .*declare more bytes .* than the "
                                              r"file has"):
        load_checkpoint(path)


def _shared_nesting(depth: int, width: int):
    """width**depth leaves in a few bytes per level: every level holds one list ``width``
    times, and pickle writes a shared list once."""
    value = [0.5]
    for _ in range(depth):
        value = [value] * width
    return value


@pytest.mark.parametrize("depth, width", [(40, 2), (4, 2000)])
@pytest.mark.parametrize("section, key", [("model_config", "levels"),
                                          ("train_config", "lr"),
                                          ("optimizer", "state")])
def test_shared_nested_lists_are_refused_without_expanding_them(good_state, tmp_path, section,
                                                                key, depth, width):
    state = dict(good_state, **{section: dict(good_state[section],
                                              **{key: _shared_nesting(depth, width)})})
    path = _saved(state, tmp_path)
    assert path.stat().st_size < 2 * _saved(good_state, tmp_path, "good.pt").stat().st_size
    with pytest.raises(CheckpointError, match=r"hostile\.pt is malformed: its (containers nest "
                                              r"more than|structure reaches more than)") as err:
        load_checkpoint(path)
    assert len(str(err.value)) < 500


@pytest.mark.parametrize("section, key", [("model_config", "levels"), ("train_config", "lr"),
                                          ("train_config", "model_options")])
def test_config_values_must_be_flat_and_messages_quote_little(good_state, tmp_path, section,
                                                               key):
    wide = [list(range(100 * i, 100 * i + 100)) for i in range(20)]   # no shared lists
    state = dict(good_state, **{section: dict(good_state[section], **{key: wide})})
    with pytest.raises(CheckpointError, match=rf"{section}\['{key}'\] is a list") as err:
        load_checkpoint(_saved(state, tmp_path))
    assert len(str(err.value)) < 500


@pytest.mark.parametrize("section, key, value", [
    ("model_config", "steps", 10**6),
    ("model_config", "levels", 2**62),
    ("model_config", "coupling_width", 10**9),
    ("model_config", "image_shape", [1, 2**20, 2**20]),
])
def test_an_oversized_architecture_is_refused_before_it_is_built(good_state, tmp_path,
                                                                monkeypatch, section, key, value):
    from inverseflow.train import loop

    real_build = loop.build_model

    def build_on_meta_only(config):
        assert torch.get_default_device().type == "meta", "built for real before the size check"
        return real_build(config)

    monkeypatch.setattr(loop, "build_model", build_on_meta_only)
    state = dict(good_state, **{section: dict(good_state[section], **{key: value})})
    with pytest.raises(CheckpointError, match=r"hostile\.pt .*(flow steps is more than|"
                                              r"parameter and buffer elements)"):
        load_trained(str(_saved(state, tmp_path)))


def test_a_config_that_does_not_fit_the_file_is_not_built(good_state, tmp_path, monkeypatch):
    from inverseflow.train import loop

    real_build = loop.build_model
    monkeypatch.setattr(loop, "build_model", lambda config: (
        real_build(config) if torch.get_default_device().type == "meta"
        else pytest.fail("built a model the file's tensors do not fit")))
    config = dict(good_state["model_config"], coupling_width=512)   # 8 in the file
    with pytest.raises(CheckpointError, match=r"hostile\.pt .*has shape .* in the file"):
        load_trained(str(_saved(dict(good_state, model_config=config), tmp_path)))


def _with_nonfinite(state, value):
    weights = dict(state["model"])
    name = [k for k, v in weights.items() if v.is_floating_point() and v.numel() > 1][-1]
    weights[name] = weights[name].clone()
    weights[name].view(-1)[torch.randint(weights[name].numel(), ()).item()] = value
    return dict(state, model=weights), name


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weights_are_refused_on_load(good_state, tmp_path, value):
    state, name = _with_nonfinite(good_state, value)
    with pytest.raises(CheckpointError, match=rf"hostile\.pt .*{re.escape(name)}"):
        load_checkpoint(_saved(state, tmp_path))


@pytest.mark.parametrize("command", ["eval", "sample"])
def test_eval_and_sample_exit_non_zero_on_non_finite_weights(good_state, tmp_path, capsys,
                                                             command):
    state, name = _with_nonfinite(good_state, float("nan"))
    path = _saved(state, tmp_path)
    argv = {"eval": ["--dataset", "digits", "--eval-limit", "8"],
            "sample": ["--out", str(tmp_path / "s.png"), "--num", "1"]}[command]
    assert cli_main([command, "--checkpoint", str(path), *argv]) == 2
    err = capsys.readouterr().err
    assert "hostile.pt" in err and name in err and "NaN" in err
    assert not (tmp_path / "s.png").exists()


@pytest.mark.parametrize("command", ["sample", "train"])
def test_the_cli_refuses_a_nested_list_bomb_quickly(good_state, tmp_path, command):
    # One process per command: before the fix, formatting the error (sample) or comparing
    # the resumed flags (train --resume) walked 2**40 leaves and never returned.
    section, key = {"sample": ("model_config", "levels"), "train": ("train_config", "lr")}[command]
    state = dict(good_state, **{section: dict(good_state[section],
                                              **{key: _shared_nesting(40, 2)})})
    run = tmp_path / "run"
    run.mkdir()
    path = _saved(state, run, "checkpoint.pt")
    argv = {"sample": ["sample", "--checkpoint", str(path), "--out", str(tmp_path / "s.png")],
            "train": ["train", "--dataset", "digits", "--out", str(run), "--steps", "5",
                      "--resume", "--quiet"]}[command]
    result = subprocess.run([sys.executable, "-m", "inverseflow", *argv], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "checkpoint.pt is malformed" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr) < 1000


def test_an_oversized_model_from_the_command_line_is_refused_before_any_work(tmp_path, capsys,
                                                                            monkeypatch):
    from inverseflow.train import loop

    monkeypatch.setattr(loop, "load_dataset", lambda *a: pytest.fail("did work first"))
    out = tmp_path / "run"
    assert cli_main(["train", "--dataset", "digits", "--out", str(out), "--steps", "1",
                     "--flow-steps", "1000000", "--quiet"]) == 2
    assert "flow steps is more than" in capsys.readouterr().err
    assert cli_main(["train", "--dataset", "digits", "--out", str(out), "--steps", "1",
                     "--coupling-width", "1000000", "--quiet"]) == 2
    assert "parameter and buffer elements" in capsys.readouterr().err
    assert not out.exists()


def test_memory_error_is_one_line_in_the_cli(tmp_path, capsys, monkeypatch):
    from inverseflow import cli

    def exhausted(args):
        raise MemoryError

    monkeypatch.setattr(cli, "_info", exhausted)
    assert cli.main(["info"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "out of memory" in err and "Traceback" not in err
