"""Hardening, third pass (issue 26): the weight cache under inference mode and tracing, the
1×1 inverse's cache sources, checkpoints whose tensors overflow when cast, export edge
values and paths, counts on the command line, the deblur gain, and the CLI's texts."""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import inverseflow
import oracle
from inverseflow import deblur as D
from inverseflow.cli import build_parser
from inverseflow.cli import main as cli_main
from inverseflow.models import Glow, InverseFlow
from inverseflow.nn import InvConv2d, InvertibleConv1x1
from inverseflow.ops import _weight_cache

REPO = Path(__file__).resolve().parents[1]
SHAPE = (1, 8, 8)


def _frozen(build, seed):
    """A model after ``initialize``, its parameters moved at random, frozen for sampling."""
    torch.manual_seed(seed)
    model = build()
    model.initialize(torch.randint(0, 256, (16, *SHAPE), dtype=torch.uint8))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return model.eval().requires_grad_(False)


MODELS = {
    "inverseflow": lambda: InverseFlow(SHAPE, 2, 1, coupling_width=4),
    "glow": lambda: Glow(SHAPE, 2, 1, coupling_width=4),
}


# ------------------------------------------------- 1. inference mode never poisons the cache

@pytest.mark.parametrize("kind", sorted(MODELS))
def test_sampling_under_inference_mode_leaves_decode_differentiable(kind):
    model = _frozen(MODELS[kind], seed=1)
    with torch.inference_mode():
        model.sample(2)                      # fills the cache inside inference mode
    z = torch.randn(2, model.dim, requires_grad=True)
    images = model.decode(z)
    images.sum().backward()
    # the gradient is the one a fresh model (no cache at all) gives
    fresh = MODELS[kind]()
    fresh.load_state_dict(model.state_dict())
    fresh.eval().requires_grad_(False)
    z2 = z.detach().clone().requires_grad_(True)
    fresh.decode(z2).sum().backward()
    torch.testing.assert_close(z.grad, z2.grad)


@pytest.mark.parametrize("dims", [1, 2])
def test_causal_conv_after_inference_mode_saves_for_backward(dims, rng):
    conv = getattr(inverseflow, f"causal_conv{dims}d")
    groups = 2**dims
    weight = 0.1 * torch.randn(4, 4 // groups, *(3,) * dims, generator=rng,
                               dtype=torch.float64)
    x = torch.randn(2, 4, *(5,) * dims, generator=rng, dtype=torch.float64)
    with torch.inference_mode():
        conv(x, weight, "quad" if dims == 2 else "pair")
    xg = x.clone().requires_grad_(True)
    out = conv(xg, weight, "quad" if dims == 2 else "pair")
    out.square().sum().backward()
    expected = x.clone().requires_grad_(True)
    _weight_cache._entries.clear()
    conv(expected, weight, "quad" if dims == 2 else "pair").square().sum().backward()
    torch.testing.assert_close(xg.grad, expected.grad)


def test_conv1x1_inverse_after_inference_mode_saves_for_backward(rng):
    layer = InvertibleConv1x1(6).requires_grad_(False)
    z = torch.randn(2, 6, 3, 3, generator=rng)
    with torch.inference_mode():
        layer.inverse(z)
    zg = z.clone().requires_grad_(True)
    layer.inverse(zg).square().sum().backward()
    w_inv = torch.linalg.inv(layer.matrix().double())
    # d/dz Σ (W⁻¹z)² = 2 W⁻ᵀ W⁻¹ z, per pixel
    x = torch.einsum("oc,bchw->bohw", w_inv, z.double())
    expected = 2 * torch.einsum("oc,bohw->bchw", w_inv, x)
    torch.testing.assert_close(zg.grad.double(), expected, rtol=1e-5, atol=1e-5)


def test_a_value_cached_in_inference_mode_is_an_ordinary_tensor():
    weight = torch.randn(3, 3)
    with torch.inference_mode():
        value = _weight_cache.derived("test-inference", (weight,), lambda: weight * 2)
    assert not value.is_inference()
    assert _weight_cache.derived("test-inference", (weight,), lambda: weight * 3) is value


# ------------------------------------------------------------- 3. torch.jit.trace is right

class _Traced(torch.nn.Module):
    def __init__(self, solve_on):
        super().__init__()
        self.kxk = InvConv2d(8, 3, "quad", solve_on=solve_on)
        self.mix = InvertibleConv1x1(8)

    def forward(self, z):
        return self.mix.inverse(self.kxk.inverse(z))


def _reference(module, z):
    """The dense float64 oracle: the k×k layer's inverse (a causal conv on the density
    placement, a solve on the sampling one), then the explicit inverse of the 1×1 matrix."""
    weight = module.kxk.weight.double()
    x = (oracle.causal_conv if module.kxk.solve_on == "density" else oracle.inv_conv)(
        z.double(), weight, "quad")
    w_inv = torch.linalg.inv(module.mix.matrix().double())
    return torch.einsum("oc,bchw->bohw", w_inv, x)


@pytest.mark.parametrize("solve_on", ["density", "sampling"])
def test_jit_trace_records_the_computation_not_garbage_or_constants(solve_on):
    torch.manual_seed(3)
    module = _Traced(solve_on).eval().requires_grad_(False)
    example = torch.randn(2, 8, 6, 6)
    module(example)                           # warm-up: autotuning and the weight cache
    with torch.no_grad():
        traced = torch.jit.trace(module, example, check_trace=False)
    z = torch.randn(2, 8, 6, 6)
    torch.testing.assert_close(traced(z).double(), _reference(module, z), rtol=1e-4, atol=1e-4)
    with torch.no_grad():                     # a weight update reaches the trace
        module.kxk.weight.mul_(1.5)
        module.mix.log_s.add_(0.3)
    torch.testing.assert_close(traced(z).double(), _reference(module, z), rtol=1e-4, atol=1e-4)


def test_plain_eager_is_false_under_jit_trace():
    seen = []

    def probe(x):
        seen.append(_weight_cache.plain_eager(x))
        return x + 1

    torch.jit.trace(probe, torch.zeros(2), check_trace=False)
    assert seen == [False]
    assert _weight_cache.plain_eager(torch.zeros(2))


# ------------------------------------------------- 4. the 1×1 cache lists every source

def test_conv1x1_inverse_follows_every_tensor_matrix_reads(rng):
    layer = InvertibleConv1x1(5).requires_grad_(False)
    z = torch.randn(2, 5, 3, 3, generator=rng)
    layer.inverse(z)                                  # cached
    names = [name for name, _ in [*layer.named_parameters(), *layer.named_buffers()]]
    assert "lower_mask" in names
    for name in names:
        tensor = getattr(layer, name)
        with torch.no_grad():
            if name == "lower_mask":
                tensor.mul_(0.5)                      # any in-place edit of a source
            elif name == "perm":
                tensor.copy_(tensor.flip(0))
            else:
                tensor.add_(0.1 * torch.randn(tensor.shape, generator=rng))
        got = layer.inverse(z)
        w = layer.matrix().double()
        x = torch.einsum("oc,bchw->bohw", w, got.double())
        torch.testing.assert_close(x, z.double(), rtol=1e-4, atol=1e-4, msg=name)


# ------------------------------------ 2. a checkpoint tensor must not overflow when cast

def _checkpoint(model, path, dataset="digits", state=None):
    from inverseflow.train.checkpoint import save_checkpoint

    state = model.state_dict() if state is None else state
    save_checkpoint(dict(model=state, model_config=model.config, optimizer={},
                         step=0, losses=[], train_seconds=0.0, initial_test_bpd=None,
                         dataset=dataset, train_config={}), path)
    return path


def test_a_wider_dtype_that_overflows_on_load_is_refused_naming_the_tensor(tmp_path, capsys):
    from inverseflow.train import load_trained
    from inverseflow.train.checkpoint import CheckpointError

    model = _frozen(MODELS["inverseflow"], seed=2)
    state = model.state_dict()
    name = next(k for k, v in state.items() if v.dtype == torch.float32 and v.numel() > 1)
    wide = state[name].double()
    wide.view(-1)[0] = 1e300                  # finite in the file, inf as float32
    state[name] = wide
    path = _checkpoint(model, tmp_path / "wide.pt", state=state)
    with pytest.raises(CheckpointError, match=rf"wide\.pt.*{name}.*float64"):
        load_trained(str(path))
    png = tmp_path / "s.png"
    assert cli_main(["sample", "--checkpoint", str(path), "--out", str(png)]) == 2
    assert name in capsys.readouterr().err
    assert not png.exists()


def test_optimizer_state_that_overflows_on_resume_is_refused(tmp_path):
    """The same cast in the optimizer's state: Adam's moments stored as float64 1e300 are
    finite in the file and inf once load_state_dict casts them; --resume must refuse, not
    diverge."""
    from inverseflow.train import TrainConfig, train
    from inverseflow.train.checkpoint import CheckpointError, save_checkpoint

    config = dict(dataset="digits", out=str(tmp_path), flow_steps=1, coupling_width=16,
                  batch_size=32, eval_limit=32, num_samples=4, progress=False,
                  checkpoint_every=2)
    train(TrainConfig(steps=2, **config))
    path = tmp_path / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    moments = state["optimizer"]["state"][0]["exp_avg"].double()
    moments.view(-1)[0] = 1e300
    state["optimizer"]["state"][0]["exp_avg"] = moments
    save_checkpoint(state, path)
    with pytest.raises(CheckpointError, match=r"optimizer state 0: exp_avg"):
        train(TrainConfig(steps=4, resume=True, **config))


# ----------------------------------------------------- 5. export: temperature and parity

def test_export_refuses_a_temperature_beyond_the_model_dtype(tmp_path):
    from inverseflow.export import export_sampler

    model = _frozen(MODELS["inverseflow"], seed=4)
    for temperature in (1e39, 1e-39):         # inf and 0 once rounded to float32
        with pytest.raises(ValueError, match="temperature must be representable.*float32"):
            export_sampler(model, tmp_path / "t.pt2", temperature=temperature)
    with pytest.raises(ValueError, match="temperature must be representable"):
        model.sample(2, temperature=1e39)
    assert not (tmp_path / "t.pt2").exists()


def test_export_cli_refuses_a_temperature_beyond_float32(tmp_path):
    path = _checkpoint(_frozen(MODELS["glow"], seed=5), tmp_path / "c.pt")
    result = _cli("export", "--checkpoint", str(path), "--out", str(tmp_path / "s.pt2"),
                  "--temperature", "1e39")
    assert result.returncode == 2 and "temperature" in result.stderr, result.stderr
    assert not (tmp_path / "s.pt2").exists()


def test_export_parity_check_fails_on_nan(tmp_path):
    from inverseflow.export import ExportError, export_sampler

    model = _frozen(MODELS["inverseflow"], seed=6)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(math.inf)
    with torch.no_grad():
        assert not torch.isfinite(model.decode(torch.randn(2, model.dim))).all()
    with pytest.raises(ExportError, match="NaN or inf.*not written"):
        export_sampler(model, tmp_path / "nan.pt2")
    assert not (tmp_path / "nan.pt2").exists()
    assert not list(tmp_path.iterdir())      # no temporary file left either


# -------------------------------------------- 8. export: messages name the user's path

def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "inverseflow", *args], capture_output=True,
                          text=True, cwd=cwd)


def test_export_into_a_folder_names_the_folder(tmp_path):
    from inverseflow.export import export_sampler

    folder = tmp_path / "adir.pt2"
    folder.mkdir()
    with pytest.raises(ValueError) as info:
        export_sampler(_frozen(MODELS["glow"], seed=7), folder)
    assert str(folder) in str(info.value) and "folder" in str(info.value)
    assert ".tmp" not in str(info.value)


def test_export_accepts_any_name_the_file_system_accepts(tmp_path):
    from inverseflow.export import export_sampler, run_exported, noise_shapes

    model = _frozen(MODELS["glow"], seed=8)
    out = tmp_path / ("a" * (255 - len(".pt2")) + ".pt2")   # the longest name allowed
    result = export_sampler(model, out)
    assert result.path == out and out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]
    plain = tmp_path / "plain"
    plain.write_bytes(b"")                    # the permissions any new file gets here
    assert out.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777
    noise = [torch.randn(1, *s) for s in noise_shapes(model)]
    assert torch.isfinite(run_exported(out, noise)).all()


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="needs /proc")
def test_export_where_nothing_can_be_written_names_the_path(tmp_path):
    path = _checkpoint(_frozen(MODELS["glow"], seed=9), tmp_path / "c.pt")
    result = _cli("export", "--checkpoint", str(path), "--out", "/proc/sampler.pt2")
    assert result.returncode == 2
    assert "/proc/sampler.pt2" in result.stderr
    assert "enforce fail" not in result.stderr and ".tmp" not in result.stderr
    assert "Traceback" not in result.stderr


def test_export_write_failures_name_the_users_path(tmp_path, monkeypatch):
    from inverseflow import export

    def failing_save(program, name):
        raise RuntimeError("[enforce fail at inline_container.cc:747] . PytorchStreamWriter "
                           f"failed writing file {name}: file write failed")

    monkeypatch.setattr(torch.export, "save", failing_save)
    out = tmp_path / "s.pt2"
    with pytest.raises(OSError) as info:
        export.export_sampler(_frozen(MODELS["glow"], seed=10), out)
    message = str(info.value)
    assert str(out) in message and "enforce fail" not in message and ".export-" not in message
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------ 6, 7. counts on the command line

TRAIN = ["train", "--dataset", "digits", "--flow-steps", "1", "--coupling-width", "8",
         "--batch-size", "16", "--eval-limit", "16", "--num-samples", "1", "--quiet"]


@pytest.mark.parametrize("flag, value", [
    ("--steps", "99999999999999999999999"), ("--steps", str(2**63)),
    ("--epochs", str(2**63)), ("--batch-size", str(2**64)), ("--checkpoint-every", str(2**63)),
    ("--warmup", "-5"), ("--warmup", str(2**63)),
])
def test_train_counts_are_bounded_where_the_parser_reads_them(flag, value, tmp_path, capsys):
    argv = [*TRAIN, "--out", str(tmp_path / "run"), "--time-budget", "3"]
    if flag not in ("--steps", "--epochs"):
        argv += ["--steps", "1"]
    with pytest.raises(SystemExit) as info:
        cli_main([*argv, flag, value])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert flag in err and str(2**63 - 1) in err
    assert not (tmp_path / "run").exists()


def test_the_largest_count_a_checkpoint_holds_is_accepted_by_the_parser():
    args = build_parser().parse_args(["train", "--dataset", "digits", "--out", "x",
                                      "--steps", str(2**63 - 1), "--warmup", "0"])
    assert args.steps == 2**63 - 1 and args.warmup == 0


@pytest.mark.parametrize("field, value", [("warmup", -5), ("steps", 2**63),
                                          ("batch_size", 2**70)])
def test_train_config_bounds_every_count(field, value):
    from inverseflow.train import TrainConfig

    kwargs = {"steps": 1, field: value}
    with pytest.raises(ValueError, match=f"{field} must be"):
        TrainConfig(dataset="digits", out="x", **kwargs).validate()


@pytest.mark.parametrize("steps", ["99999999999999999999999", "0", "ten"])
def test_paper_tables_steps_are_refused_in_one_line(steps, tmp_path):
    env = {**os.environ, "PYTHON": sys.executable}
    # In a session of its own: a STEPS that is not refused starts training for ever, and a
    # failing test must stop it (the script and every process it started).
    process = subprocess.Popen(["bash", str(REPO / "scripts" / "paper_tables.sh"), steps,
                                "digits", str(tmp_path / "runs")], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env, cwd=REPO,
                               start_new_session=True)
    try:
        _, stderr = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail(f"paper_tables.sh {steps} was not refused: it started training")
    assert process.returncode == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "STEPS" in lines[0], stderr
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------- 9. deblur: the overall gain

def test_deblur_of_a_scaled_kernel_is_exact(rng):
    kernel = torch.tensor([[0.05, 0.1], [0.1, 1.0]], dtype=torch.float64)   # ρ = 0.25
    truth = torch.rand(3, 16, 16, generator=rng, dtype=torch.float64)
    for scale in (1e-5, 1e-12, 1e5):
        scaled = kernel * scale
        restored = D.deblur(D.blur(truth, scaled), scaled)
        torch.testing.assert_close(restored, truth, rtol=1e-9, atol=1e-9)


def test_deblur_refuses_only_a_gain_that_overflows_and_says_so(rng):
    kernel = torch.tensor([[0.05, 0.1], [0.1, 1.0]], dtype=torch.float32) * 1e-39
    truth = torch.rand(8, 8, generator=rng)
    with pytest.raises(D.UnstableBlurError, match="overall gain 1/k₀.*overflows") as info:
        D.deblur(truth, kernel)
    assert "not dominated" not in str(info.value)


def test_a_barely_dominated_kernel_is_not_called_undominated(rng):
    kernel = torch.tensor([[0.0, 0.4999], [0.4999, 1.0]], dtype=torch.float64)  # ρ < 1
    y = torch.rand(64, 64, generator=rng, dtype=torch.float64)
    with pytest.raises(D.UnstableBlurError) as info:
        D.deblur(y, kernel, max_growth=10.0)
    message = str(info.value)
    assert "not dominated" not in message and "below 1" not in message
    assert "barely dominated" in message


# --------------------------------------------------- 10, 11. the CLI's texts read right

def test_help_prints_plain_text(capsys):
    with pytest.raises(SystemExit):
        cli_main(["--help"])
    out = capsys.readouterr().out
    assert build_parser().description in " ".join(out.split())
    assert "``" not in out and ":func:" not in out


def test_cli_page_sets_flags_in_prose_as_literals():
    sys.path.insert(0, str(REPO / "docs" / "_ext"))
    try:
        import cli_text
    finally:
        sys.path.pop(0)
    text = "\n".join(cli_text.render(build_parser()))
    # a flag named in help prose: the --resume entry lists the flags that may change
    assert "``--checkpoint-every``" in text
    in_code = False   # usage blocks are literal already
    for line in text.splitlines():
        if line.startswith(".. code-block::"):
            in_code = True
        elif line.strip() and not line.startswith(" "):
            in_code = False
        if not in_code:
            bare = re.sub(r"``[^`]*``", "", line)
            assert not re.search(r"(?<![\w-])--[A-Za-z]", bare), line


def test_the_built_cli_page_has_no_en_dash_before_a_letter(tmp_path):
    pytest.importorskip("sphinx")
    from sphinx.application import Sphinx

    source = tmp_path / "src"
    source.mkdir()
    (source / "conf.py").write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(REPO / 'docs' / '_ext')!r})\n"
        "extensions = ['cli_reference']\n")
    (source / "index.rst").write_text("CLI\n===\n\n.. inverseflow-cli::\n")
    app = Sphinx(str(source), str(source), str(tmp_path / "html"), str(tmp_path / "doctrees"),
                 "html", status=None, warning=None, freshenv=True)
    app.build()
    page = (tmp_path / "html" / "index.html").read_text()
    assert "checkpoint-every" in page
    dashes = re.findall(r".{30}\u2013[A-Za-z].{10}", page)
    assert not dashes, dashes[:5]


# ------------------------------------------- 12. eval defaults to the checkpoint's data

@pytest.fixture(scope="module")
def digits_checkpoint(tmp_path_factory):
    pytest.importorskip("sklearn", reason="the digits dataset comes from scikit-learn")
    from inverseflow.models import from_preset

    torch.manual_seed(11)
    model = from_preset("digits", steps=1, coupling_width=8)
    from inverseflow.data import load_dataset

    model.initialize(load_dataset("digits").train[:64])
    return _checkpoint(model.eval(), tmp_path_factory.mktemp("ck") / "checkpoint.pt")


def test_eval_takes_the_dataset_from_the_checkpoint(digits_checkpoint, capsys):
    assert cli_main(["eval", "--checkpoint", str(digits_checkpoint), "--eval-limit", "16"]) == 0
    out = capsys.readouterr().out
    assert "test bits/dim on digits" in out and "trained on" not in out


def test_eval_on_another_dataset_says_what_the_checkpoint_was_trained_on(digits_checkpoint,
                                                                         capsys):
    code = cli_main(["eval", "--checkpoint", str(digits_checkpoint), "--dataset", "mnist",
                     "--data-dir", "/nonexistent", "--eval-limit", "16"])
    assert code == 2
    err = capsys.readouterr().err
    assert "trained on 'digits'" in err and "--dataset" in err
