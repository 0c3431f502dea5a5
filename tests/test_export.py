"""The exported sampler (DESIGN §13) computes what the model's own decode does, loads
without this package, and refuses what it cannot export, with the reason."""

import os
import re
import shlex
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import onnxruntime  # noqa: F401 - no importorskip: the ONNX tests must run in CI (test extra)
import pytest
import torch
from torch import nn

from inverseflow.export import (ConvExpInverse, ExportError, SmoothLeakyReLUInverse,
                                export_checkpoint, export_sampler, noise_shapes, run_exported)
from inverseflow.models import ConvFlow, Glow, InverseFlow, from_preset
from inverseflow.nn import ConvExp2d, SmoothLeakyReLU
from inverseflow.train.checkpoint import CheckpointError, save_checkpoint

SHAPE = (1, 8, 8)
KINDS = {
    "inverseflow": lambda: InverseFlow(SHAPE, 2, 1, coupling_width=4),
    "inverseflow-paper-step": lambda: InverseFlow(SHAPE, 2, 1, coupling_width=4, order="TL",
                                                  step_layout="paper"),
    "glow": lambda: Glow(SHAPE, 2, 1, coupling_width=4),
    "convflow-smooth-leaky-relu": lambda: ConvFlow(SHAPE, 2, 2),
    "convflow-spline": lambda: ConvFlow(SHAPE, 2, 2, activation="spline"),
    "convflow-conv-exp": lambda: ConvFlow(SHAPE, 2, 2, layer="conv-exp"),
}
TOLERANCE = 1e-5


def _trained_like(build, seed: int, scale: float = 0.2):
    """A model after ``initialize``, every parameter then moved at random (untrained
    couplings, priors and splines start as identities, which would hide errors)."""
    torch.manual_seed(seed)
    model = build()
    model.initialize(torch.randint(0, 256, (32, *SHAPE), dtype=torch.uint8))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(scale * torch.randn_like(parameter))
    return model.eval()


def _noise(model, batch):
    return [torch.randn(batch, *shape) for shape in noise_shapes(model)]


def _decoded(model, noise, temperature):
    """The oracle: the eager model's decode of the same latents, clamped to [0, 1]."""
    z = torch.cat([n.flatten(1) for n in noise], dim=1) * temperature
    with torch.no_grad():
        return model.decode(z).clamp(0, 1)


def _rel_error(got, expected):
    return float((got - expected).abs().max() / expected.abs().max())


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """Each kind exported in both formats with a dynamic batch traced at 64, made on first use."""
    cache = {}

    def get(kind):
        if kind not in cache:
            model = _trained_like(KINDS[kind], seed=len(kind))
            folder = tmp_path_factory.mktemp(kind)
            cache[kind] = model, {
                fmt: export_sampler(model, folder / f"sampler.{fmt}", batch=64,
                                    dynamic_batch=True, temperature=0.7).path
                for fmt in ("pt2", "onnx")}
        return cache[kind]
    return get


@pytest.mark.parametrize("fmt", ["pt2", "onnx"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_the_exported_sampler_is_the_models_decode(exports, kind, fmt):
    model, files = exports(kind)
    for batch in (64, 1, 5):     # the traced batch, then ones it never saw
        noise = _noise(model, batch)
        got = run_exported(files[fmt], noise)
        assert got.shape == (batch, *SHAPE) and got.min() >= 0 and got.max() <= 1
        assert _rel_error(got, _decoded(model, noise, 0.7)) <= TOLERANCE


@pytest.mark.parametrize("fmt", ["pt2", "onnx"])
def test_a_fixed_batch_of_one(fmt, tmp_path):
    model = _trained_like(KINDS["inverseflow"], seed=1)
    result = export_sampler(model, tmp_path / f"one.{fmt}")
    assert result.batch == 1 and result.max_rel_error <= TOLERANCE
    noise = _noise(model, 1)
    assert _rel_error(run_exported(result.path, noise), _decoded(model, noise, 1.0)) <= TOLERANCE
    with pytest.raises(Exception, match="(?i)shape|dim|size|batch|invalid|got"):
        run_exported(result.path, _noise(model, 2))


def _site_without_inverseflow(folder):
    """A sys.path entry holding every installed package except inverseflow (links)."""
    site = sysconfig.get_paths()["purelib"]
    folder.mkdir(exist_ok=True)
    for entry in os.listdir(site):
        if "inverseflow" not in entry and not (folder / entry).exists():
            os.symlink(os.path.join(site, entry), folder / entry)
    return folder


_RUN_WITHOUT_PACKAGE = textwrap.dedent("""
    import sys
    sys.path[:] = [p for p in sys.path if "site-packages" not in p] + [sys.argv[1]]
    try:
        import inverseflow
    except ImportError:
        pass
    else:
        raise SystemExit(f"inverseflow is importable here: {inverseflow}")
    import torch
    for program, noise, images in zip(*[iter(sys.argv[2:])] * 3):
        noise = torch.load(noise, weights_only=True)
        torch.save(torch.export.load(program).module()(*noise), images)
""")


def _run_without_package(programs, noises, tmp_path):
    """Runs each .pt2 program on its noise in one fresh interpreter where inverseflow
    cannot be imported; returns the process and the paths of the images it saved."""
    args, images = [], []
    for index, (program, noise) in enumerate(zip(programs, noises)):
        torch.save(noise, tmp_path / f"noise{index}.pt")
        images.append(tmp_path / f"images{index}.pt")
        args += [str(program), str(tmp_path / f"noise{index}.pt"), str(images[-1])]
    # -I -S: no site (so no editable-install hook), no working directory, no PYTHON* vars.
    process = subprocess.run(
        [sys.executable, "-I", "-S", "-c", _RUN_WITHOUT_PACKAGE,
         str(_site_without_inverseflow(tmp_path / "site")), *args],
        capture_output=True, text=True, cwd=tmp_path)
    return process, images


def test_every_pt2_runs_where_inverseflow_cannot_be_imported(exports, tmp_path):
    models, programs, noises = [], [], []
    for kind in KINDS:
        model, files = exports(kind)
        models.append(model)
        programs.append(files["pt2"])
        noises.append(_noise(model, 3))
    process, images = _run_without_package(programs, noises, tmp_path)
    assert process.returncode == 0, process.stderr[-2000:]
    for model, noise, path in zip(models, noises, images):
        got = torch.load(path, weights_only=True)
        assert _rel_error(got, _decoded(model, noise, 0.7)) <= TOLERANCE


@pytest.fixture(scope="module")
def sampling_placement():
    return _trained_like(lambda: InverseFlow(SHAPE, 2, 1, coupling_width=4,
                                             solve_on="sampling"), seed=3)


def test_solve_on_sampling_exports_to_pt2_that_needs_the_package(sampling_placement,
                                                                 tmp_path):
    model = sampling_placement
    result = export_sampler(model, tmp_path / "finc.pt2", batch=4)
    assert result.needs_inverseflow
    noise = _noise(model, 4)
    assert _rel_error(run_exported(result.path, noise), _decoded(model, noise, 1.0)) <= TOLERANCE
    without, _ = _run_without_package([result.path], [noise], tmp_path)
    assert without.returncode != 0 and "inverseflow is importable" not in without.stderr
    assert "inv_conv2d" in without.stderr


@pytest.mark.parametrize("model", [
    "sampling-placement",
    pytest.param(lambda: ConvFlow(SHAPE, 2, 1, layer="emerging"), id="emerging"),
    pytest.param(lambda: InverseFlow(SHAPE, 2, 1, coupling_width=4, layer="finc"), id="finc"),
])
def test_onnx_refuses_a_solve_on_sampling_and_says_why(model, sampling_placement, tmp_path):
    model = sampling_placement if model == "sampling-placement" else _trained_like(model, 4)
    with pytest.raises(ExportError) as error:
        export_sampler(model, tmp_path / "x.onnx")
    message = str(error.value)
    for part in ("ONNX", "inv_conv2d", "sampling pass", "solve_on='density'", "exports"):
        assert part in message
    assert "layer levels.0.0.layers.1" in message or "layer layers.1" in message
    assert not (tmp_path / "x.onnx").exists()


class _Unknown(nn.Module):
    def forward(self, x):
        return x, x.new_zeros(x.shape[0])

    def inverse(self, y):
        return y


def test_an_unknown_layer_and_an_uninitialised_model_are_refused(tmp_path):
    model = _trained_like(KINDS["convflow-smooth-leaky-relu"], seed=5)
    model.layers[2] = _Unknown()
    with pytest.raises(ExportError, match=r"layer layers\.2 \(_Unknown\)"):
        export_sampler(model, tmp_path / "x.pt2")
    with pytest.raises(ExportError, match="not initialised"):
        export_sampler(KINDS["glow"](), tmp_path / "x.pt2")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("options, error, match", [
    (dict(out="x.png"), ValueError, "format"),
    (dict(format="tflite"), ValueError, "format must be one of pt2, onnx"),
    (dict(batch=0), ValueError, "batch"),
    (dict(batch=2.5), TypeError, "batch"),
    (dict(temperature=-1.0), ValueError, "temperature"),
    (dict(dynamic_batch="yes"), TypeError, "dynamic_batch"),
])
def test_bad_arguments_name_themselves(options, error, match, tmp_path):
    model = _trained_like(KINDS["glow"], seed=6)
    options = dict(options)
    out = tmp_path / options.pop("out", "x.pt2")
    with pytest.raises(error, match=match):
        export_sampler(model, out, **options)


def _bisection_inverse(y, alpha):
    """The oracle for the smooth leaky ReLU's inverse: bisection in float64 on a bracket
    that holds the root (f(lo) ≤ y ≤ f(hi)), never Newton's method."""
    f = lambda x: alpha * x + (1 - alpha) * torch.nn.functional.softplus(x)  # noqa: E731
    lo, hi = torch.minimum(y, y / alpha) - 4, torch.maximum(y, y / alpha) + 4
    assert bool((f(lo) <= y).all() and (f(hi) >= y).all())
    for _ in range(120):     # from a width of 1e39 or less down to below an ulp
        mid = (lo + hi) / 2
        below = f(mid) < y
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    return (lo + hi) / 2


@pytest.mark.parametrize("alpha", [0.3, 0.1, 0.7])
def test_the_fixed_newton_count_inverts_the_smooth_leaky_relu_in_float32(alpha, rng):
    layer = SmoothLeakyReLU(alpha)
    big = torch.finfo(torch.float32).max
    y = torch.cat([torch.linspace(-60, 60, 100_001), 30 * torch.randn(20_000, generator=rng),
                   torch.tensor([0.0, 1e-30, -1e-30, 1e6, -1e6, 1e30, -1e30, big,
                                 alpha * -big * 0.999])])
    x = SmoothLeakyReLUInverse(layer, torch.float32).inverse(y)
    truth = _bisection_inverse(y.double(), alpha)
    eps = torch.finfo(torch.float32).eps
    assert bool(((x.double() - truth).abs() <= 4 * eps * (1 + truth.abs())).all())
    if alpha == 0.3:   # the models' α (the eager inverse does not converge on all y for 0.1)
        assert torch.allclose(x, layer.inverse(y), rtol=4 * eps, atol=4 * eps)
    beyond = torch.tensor([-big, float("-inf"), float("inf")])   # −big: its preimage overflows
    assert torch.equal(SmoothLeakyReLUInverse(layer, torch.float32).inverse(beyond),
                       torch.tensor([float("-inf"), float("-inf"), float("inf")]))


def _dense_conv_matrix(kernel, padding, channels, height, width):
    """M as a dense matrix: the 'same' convolution applied to every basis image."""
    basis = torch.eye(channels * height * width, dtype=torch.float64)
    basis = basis.reshape(-1, channels, height, width)
    out = torch.nn.functional.conv2d(torch.nn.functional.pad(basis, padding), kernel)
    return out.reshape(len(basis), -1).T


def test_the_fixed_series_count_inverts_the_convolution_exponential(rng):
    layer = ConvExp2d(3, kernel_size=2)
    with torch.no_grad():   # at the norm limit: the slowest series max_norm allows
        layer.weight.mul_(50)
    z = torch.randn(4, 3, 5, 5, generator=rng)
    got = ConvExpInverse(layer, torch.float32, "layer").inverse(z)
    dense = _dense_conv_matrix(layer.kernel().detach().double(), layer.padding, 3, 5, 5)
    truth = (torch.linalg.matrix_exp(-dense) @ z.double().reshape(4, -1).T).T.reshape(z.shape)
    assert _rel_error(got.double(), truth) <= 2 * torch.finfo(torch.float32).eps * 10


def _write_checkpoint(model, path):
    save_checkpoint(dict(model=model.state_dict(), model_config=model.config, optimizer={},
                         step=0, losses=[], train_seconds=0.0, initial_test_bpd=None,
                         dataset="digits", train_config={}), path)


def test_a_bad_checkpoint_gives_the_checkpoint_errors(tmp_path):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt.pt"):
        export_checkpoint(corrupt, tmp_path / "x.pt2")
    wrong = tmp_path / "wrong.pt"
    torch.save({"weights": torch.zeros(3)}, wrong)
    with pytest.raises(CheckpointError, match="wrong.pt.*missing"):
        export_checkpoint(wrong, tmp_path / "x.pt2")
    with pytest.raises(FileNotFoundError):
        export_checkpoint(tmp_path / "absent.pt", tmp_path / "x.pt2")
    result = _cli("--checkpoint", str(corrupt), "--out", str(tmp_path / "x.onnx"))
    assert result.returncode == 2 and "corrupt.pt" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "x.pt2").exists() and not (tmp_path / "x.onnx").exists()


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "inverseflow", "export", *args],
                          capture_output=True, text=True)


def test_the_cli_exports_a_checkpoint_in_both_formats(tmp_path):
    model = _trained_like(KINDS["inverseflow"], seed=7)
    _write_checkpoint(model, tmp_path / "checkpoint.pt")
    onnx = _cli("--checkpoint", str(tmp_path / "checkpoint.pt"), "--out",
                str(tmp_path / "s.onnx"), "--batch", "3", "--dynamic-batch",
                "--temperature", "0.5")
    pt2 = _cli("--checkpoint", str(tmp_path / "checkpoint.pt"), "--out",
               str(tmp_path / "sampler.bin"), "--format", "pt2", "--batch", "2")
    for result in (onnx, pt2):
        assert result.returncode == 0, result.stderr
        assert "noise_0 (" in result.stdout and "Traceback" not in result.stderr
    noise = _noise(model, 6)
    assert _rel_error(run_exported(tmp_path / "s.onnx", noise),
                      _decoded(model, noise, 0.5)) <= TOLERANCE
    noise = _noise(model, 2)
    assert _rel_error(run_exported(tmp_path / "sampler.bin", noise, "pt2"),
                      _decoded(model, noise, 1.0)) <= TOLERANCE


def test_the_readme_commands_and_snippets_run(tmp_path, monkeypatch):
    # The README's export section, moved verbatim into the guide the README links to.
    section = (Path(__file__).resolve().parent.parent / "docs" / "guides" / "export.md").read_text()
    commands = [line.split("#")[0].split() for line in section.splitlines()
                if line.strip().startswith("inverseflow export")]
    snippets = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(commands) == 2 and len(snippets) == 2
    (tmp_path / "runs" / "digits").mkdir(parents=True)   # what scripts/quickstart.sh trains
    # Moved less than the tiny models: at width 64, 0.2 overflows the couplings' scales.
    _write_checkpoint(_trained_like(lambda: from_preset("digits"), seed=8, scale=0.02),
                      tmp_path / "runs" / "digits" / "checkpoint.pt")
    for command in commands:
        result = subprocess.run([sys.executable, "-m", "inverseflow", *command[1:]],
                                capture_output=True, text=True, cwd=tmp_path)
        assert result.returncode == 0, (shlex.join(command), result.stderr)
    monkeypatch.chdir(tmp_path)
    for index, code in enumerate(snippets):
        namespace = {}
        exec(compile(code, f"README export snippet {index}", "exec"), namespace)
        assert namespace["images"].shape[1:] == (1, 8, 8)
        assert 0 <= namespace["images"].min() and namespace["images"].max() <= 1


def test_the_parity_measure_counts_equal_non_finite_values_as_equal():
    from inverseflow.export import max_rel_error

    expected = torch.tensor([0.5, float("nan"), 1.0, float("inf")])
    assert max_rel_error(expected.clone(), expected) == 0
    assert max_rel_error(torch.tensor([0.5, 0.2, 1.0, float("inf")]), expected) != 0
    assert not max_rel_error(torch.tensor([0.5, float("nan"), 0.9, 1.0]), expected) <= 1e-5


def test_an_ill_conditioned_model_is_held_to_its_own_float32_error(tmp_path, monkeypatch):
    # The digits CNN flow's float32 decode is ~1e-4 from its float64 decode, so no float32
    # program meets 1e-5 against it: the export is checked against float64 instead.
    torch.manual_seed(9)
    model = from_preset("digits", model="convflow")
    model.initialize(torch.randint(0, 256, (64, *SHAPE), dtype=torch.uint8))
    result = export_sampler(model.eval(), tmp_path / "cnn.pt2", batch=64)
    assert result.max_rel_error < 1e-2
    # A wrong program is still refused: two Newton steps are not enough.
    monkeypatch.setattr(SmoothLeakyReLUInverse, "__init__", _two_newton_steps)
    with pytest.raises(ExportError, match="over twice the model's own float32 error"):
        export_sampler(model, tmp_path / "wrong.pt2", batch=64)
    assert not (tmp_path / "wrong.pt2").exists()


def _two_newton_steps(self, layer, dtype):
    nn.Module.__init__(self)
    self.layer, self.alpha, self.steps = layer, layer.alpha, 2
