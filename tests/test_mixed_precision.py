"""Mixed precision (DESIGN §12): the ops run in float32 under torch.autocast and for
bfloat16/float16 inputs; models train under autocast with float32 invertible layers;
``train --precision`` and its resume rule."""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import json
import math

import pytest
import torch
import torch.nn.functional as F

import inverseflow
from inverseflow.cli import main as cli_main
from inverseflow.ops import inv_conv2d_transposed
from inverseflow.train import train
from inverseflow.train import loop as train_loop
from inverseflow.train.checkpoint import load_checkpoint, save_checkpoint

import oracle

LOW = [torch.bfloat16, torch.float16]
LOW_IDS = ["bf16", "fp16"]
PUBLIC = {"inv_conv2d": inverseflow.inv_conv2d, "causal_conv2d": inverseflow.causal_conv2d,
          "inv_conv2d_transposed": inv_conv2d_transposed}
RAW = {name: getattr(torch.ops.inverseflow, name) for name in PUBLIC}
# Independent float64 references (dense matrices, tests/oracle.py).
ORACLE = {"inv_conv2d": oracle.inv_conv, "causal_conv2d": oracle.causal_conv,
          "inv_conv2d_transposed": oracle.inv_conv_transposed}
SHAPES = {"TL": (3, 8, 5, 6, 3, 3), "quad": (2, 8, 6, 5, 2, 3)}


def _inputs(order, rng, dtype=torch.float32):
    batch, channels, height, width, kh, kw = SHAPES[order]
    weight = oracle.random_weight(channels, kh, kw, order, rng, dtype=torch.float32)
    y = torch.randn(batch, channels, height, width, generator=rng)
    return y.to(dtype), weight.to(dtype)


def _fns(name):
    return [PUBLIC[name], RAW[name]]


def _assert_same(actual, expected):
    """The same computation, but for summation order: oneDNN picks its conv algorithm by
    grad mode, so causal_conv2d's sums may round differently (a few ulps of the largest
    value), which can flip one rounding of a result cast to a lower dtype."""
    assert actual.dtype == expected.dtype
    eps = torch.finfo(actual.dtype).eps
    tol = 4 * eps * (expected.abs() + expected.abs().max())
    assert ((actual - expected).abs() <= tol).all(), (actual - expected).abs().max()


# ------------------------------------------------------------------ ops under autocast

@pytest.mark.parametrize("autocast_dtype", LOW, ids=LOW_IDS)
@pytest.mark.parametrize("order", ["TL", "quad"])
@pytest.mark.parametrize("name", list(PUBLIC))
def test_ops_under_autocast_return_float32_and_match_the_float32_call(name, order,
                                                                       autocast_dtype, rng):
    y32, weight = _inputs(order, rng)
    # As in a model: the activation comes out of an autocast conv in low precision, the
    # weight is a float32 parameter.
    y_low = y32.to(autocast_dtype)
    reference = PUBLIC[name](y_low.float(), weight, order)
    expected = ORACLE[name](y_low.double(), weight.double(), order)
    for fn in _fns(name):
        for a in (y_low, y32):
            a = a.detach().requires_grad_()
            w = weight.detach().requires_grad_()
            with torch.autocast("cpu", dtype=autocast_dtype):
                out = fn(a, w, order)
            assert out.dtype == torch.float32, (fn, a.dtype, out.dtype)
            if a.dtype == autocast_dtype:
                # The float32 call on the same values.
                _assert_same(out, reference)
                assert oracle.rel_err(out, expected) < 1e-5
            out.backward(torch.ones_like(out))
            assert a.grad.dtype == a.dtype and w.grad.dtype == torch.float32


@pytest.mark.parametrize("name", list(PUBLIC))
def test_autocast_gradients_are_the_float32_gradients(name, rng):
    y32, weight = _inputs("TL", rng)
    upstream = torch.randn(y32.shape, generator=rng)
    y_low = y32.bfloat16()
    a32 = y_low.float().requires_grad_()
    w32 = weight.clone().requires_grad_()
    PUBLIC[name](a32, w32, "TL").backward(upstream)
    a = y_low.clone().requires_grad_()
    w = weight.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = PUBLIC[name](a, w, "TL")
    out.backward(upstream)
    _assert_same(w.grad, w32.grad)
    _assert_same(a.grad, a32.grad.bfloat16())


def test_a_float64_call_is_untouched_by_autocast(rng):
    y, weight = (t.double() for t in _inputs("TL", rng))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = inverseflow.inv_conv2d(y, weight, "TL")
    assert out.dtype == torch.float64
    assert oracle.rel_err(out, oracle.inv_conv(y, weight, "TL")) < 1e-10


# --------------------------------------------------------- direct low-precision calls

@pytest.mark.parametrize("dtype", LOW, ids=LOW_IDS)
@pytest.mark.parametrize("order", ["TL", "quad"])
@pytest.mark.parametrize("name", list(PUBLIC))
def test_direct_low_precision_calls_are_the_float32_result_cast_down(name, order, dtype, rng):
    y32, weight32 = _inputs(order, rng)
    y, weight = y32.to(dtype), weight32.to(dtype)
    upstream = torch.randn(y.shape, generator=rng).to(dtype)
    a32 = y.float().requires_grad_()
    w32 = weight.float().requires_grad_()
    reference = PUBLIC[name](a32, w32, order)
    reference.backward(upstream.float())
    # Independent of our float32 path: the float64 dense solve, rounded to the dtype.
    expected = ORACLE[name](y.double(), weight.double(), order)
    eps = torch.finfo(dtype).eps
    for fn in _fns(name):
        a, w = y.clone().requires_grad_(), weight.clone().requires_grad_()
        out = fn(a, w, order)
        assert out.dtype == dtype
        _assert_same(out, reference.detach().to(dtype))
        assert (out.double() - expected).abs().max() <= eps * expected.abs().max()
        out.backward(upstream)
        assert a.grad.dtype == dtype and w.grad.dtype == dtype
        _assert_same(a.grad, a32.grad.to(dtype))
        _assert_same(w.grad, w32.grad.to(dtype))


@pytest.mark.parametrize("name", list(PUBLIC))
def test_low_precision_without_autograd_and_in_inference_mode(name, rng):
    y, weight = _inputs("quad", rng, dtype=torch.bfloat16)
    reference = PUBLIC[name](y.float(), weight.float(), "quad").bfloat16()
    with torch.inference_mode():   # no Autograd key: the backend kernel casts itself
        _assert_same(RAW[name](y, weight, "quad"), reference)
    with torch.no_grad():
        _assert_same(PUBLIC[name](y, weight, "quad"), reference)


def test_vmap_over_low_precision_and_under_autocast(rng):
    y, weight = _inputs("TL", rng)
    expected = inverseflow.inv_conv2d(y.bfloat16().float(), weight, "TL")
    batched = torch.func.vmap(lambda a: inverseflow.inv_conv2d(a, weight.bfloat16(), "TL"))
    out = batched(y.bfloat16()[:, None])[:, 0]
    assert out.dtype == torch.bfloat16
    expected_low = inverseflow.inv_conv2d(y.bfloat16().float(), weight.bfloat16().float(), "TL")
    _assert_same(out, expected_low.bfloat16())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = torch.func.vmap(lambda a: inverseflow.inv_conv2d(a, weight, "TL"))(
            y.bfloat16()[:, None])[:, 0]
    _assert_same(out, expected)


# ---------------------------------------------------------------- still-refused dtypes

@pytest.mark.parametrize("fn", list(PUBLIC.values()) + list(RAW.values()))
def test_mixed_and_unsupported_dtypes_are_still_a_clear_type_error(fn, rng):
    y, weight = _inputs("TL", rng)
    cases = [(y.bfloat16(), weight, "weight"), (y.half(), weight.bfloat16(), "weight"),
             (y.double(), weight.half(), "weight"), (y.bfloat16(), weight.double(), "weight"),
             (y.to(torch.int32), weight.to(torch.int32), "float32, float64, bfloat16"),
             (y.to(torch.complex64), weight.to(torch.complex64), "float32, float64, bfloat16")]
    for a, w, words in cases:
        with pytest.raises(TypeError, match=words):
            fn(a, w, "TL")
    # Autocast casts bfloat16/float16/float32 to float32, never float64 or integers.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with pytest.raises(TypeError, match="weight"):
            fn(y.double(), weight, "TL")
        with pytest.raises(TypeError, match="float32, float64, bfloat16"):
            fn(y.to(torch.int64), weight, "TL")


# ------------------------------------------------------------------------------ opcheck

@pytest.mark.parametrize("requires_grad", [False, True], ids=["nograd", "grad"])
@pytest.mark.parametrize("dtype", LOW, ids=LOW_IDS)
@pytest.mark.parametrize("name", list(PUBLIC))
def test_opcheck_low_precision(name, dtype, requires_grad, rng):
    y, weight = _inputs("TL", rng, dtype=dtype)
    torch.library.opcheck(RAW[name], (y.requires_grad_(requires_grad),
                                      weight.requires_grad_(requires_grad), "TL"))


# ------------------------------------------------------------- torch.compile and export

def _autocast_pipeline(x, w_tl, w_quad):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = F.conv2d(x, torch.eye(x.shape[1])[:, :, None, None])   # bfloat16 under autocast
        a = inverseflow.inv_conv2d(h, w_tl, "TL")
        b = inverseflow.causal_conv2d(h, w_quad, "quad")
        c = inv_conv2d_transposed(h, w_tl, "TL")
    return a, b, c


def test_torch_compile_under_autocast_runs_the_ops_in_float32(rng):
    y, w_tl = _inputs("TL", rng)
    _, w_quad = _inputs("quad", rng)
    eager_inputs = [t.clone().requires_grad_() for t in (y, w_tl, w_quad)]
    eager = _autocast_pipeline(*eager_inputs)
    sum(o.sum() for o in eager).backward()
    torch._dynamo.reset()
    compiled_inputs = [t.clone().requires_grad_() for t in (y, w_tl, w_quad)]
    compiled = torch.compile(_autocast_pipeline, fullgraph=True, backend="aot_eager")(
        *compiled_inputs)
    sum(o.sum() for o in compiled).backward()
    h = y.bfloat16().float()
    references = (inverseflow.inv_conv2d(h, w_tl, "TL"),
                  inverseflow.causal_conv2d(h, w_quad, "quad"),
                  inv_conv2d_transposed(h, w_tl, "TL"))
    for out, ref, want in zip(compiled, eager, references):
        assert out.dtype == torch.float32
        _assert_same(out.detach(), ref.detach())
        _assert_same(ref.detach(), want)
    for a, b in zip(compiled_inputs, eager_inputs):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-5)


def test_torch_compile_of_direct_low_precision_calls(rng):
    y, weight = _inputs("TL", rng, dtype=torch.bfloat16)
    torch._dynamo.reset()

    def both(a, w):
        return inverseflow.inv_conv2d(a, w, "TL"), inverseflow.causal_conv2d(a, w, "TL")

    compiled = torch.compile(both, fullgraph=True, backend="aot_eager")(y, weight)
    for out, ref in zip(compiled, both(y, weight)):
        _assert_same(out, ref)


def test_torch_export_keeps_the_autocast_rule(rng):
    y, w_tl = _inputs("TL", rng)
    _, w_quad = _inputs("quad", rng)

    class Pipeline(torch.nn.Module):
        def forward(self, x, a, b):
            return _autocast_pipeline(x, a, b)

    program = torch.export.export(Pipeline(), (y, w_tl, w_quad))
    for exported in (program, program.run_decompositions()):
        outs = exported.module()(y, w_tl, w_quad)
        for out, ref in zip(outs, _autocast_pipeline(y, w_tl, w_quad)):
            _assert_same(out, ref)


# ------------------------------------------------------------------------------- models

def _uint8_batch(rng, n=32):
    return torch.randint(0, 256, (n, 1, 8, 8), generator=rng, dtype=torch.uint8)


def _perturbed(model, rng):
    """Parameters moved off the identity initialisation, so every layer acts."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=rng))
    return model


def _one_step(model, batch, autocast_dtype):
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    with torch.autocast("cpu", dtype=autocast_dtype or torch.bfloat16,
                        enabled=autocast_dtype is not None):
        loss = model(batch, torch.Generator().manual_seed(5)).mean()
    loss.backward()
    optimizer.step()
    with torch.no_grad():   # the updated model, in float32
        after = model(batch, torch.Generator().manual_seed(6)).mean()
    return loss, after


# InverseFlow: its coupling networks run in bfloat16, whose unit roundoff is 2^-8; their
# outputs perturb bits/dim by a fraction of that. ConvFlow: every layer is invertible, so
# nothing may run in bfloat16 and the loss is float32's.
MODEL_CASES = {
    "inverseflow": (dict(model="inverseflow"), 2.0**-8),
    "convflow-inverse": (dict(model="convflow"), 1e-6),
    "convflow-finc": (dict(model="convflow", layer="finc"), 1e-6),        # causal conv in density
    "convflow-emerging": (dict(model="convflow", layer="emerging"), 1e-6),
}


@pytest.mark.parametrize("case", list(MODEL_CASES))
def test_autocast_training_step_matches_float32(case, rng):
    options, rel_tol = MODEL_CASES[case]
    batch = _uint8_batch(rng)
    model = inverseflow.models.from_preset("digits", **options)
    model.initialize(batch, torch.Generator().manual_seed(4))
    model = _perturbed(model, rng)
    twin = copy.deepcopy(model)
    loss32, after32 = _one_step(model, batch, None)
    loss16, after16 = _one_step(twin, batch, torch.bfloat16)
    assert loss16.dtype == torch.float32
    assert abs(loss16.item() - loss32.item()) <= rel_tol * abs(loss32.item()), case
    # One Adam step moves each parameter by about lr whatever the gradient's size, so the
    # updated losses agree to a few lr (1e-3) at most.
    assert abs(after16.item() - after32.item()) <= max(rel_tol, 1e-3) * abs(after32.item())


@pytest.mark.parametrize("case", ["inverseflow", "convflow-finc"])
def test_sampling_under_autocast_is_the_float32_sampling(case, rng):
    options, _ = MODEL_CASES[case]
    model = inverseflow.models.from_preset("digits", **options)
    model.initialize(_uint8_batch(rng), torch.Generator().manual_seed(4))
    model = _perturbed(model, rng).eval()
    expected = model.sample(4, generator=torch.Generator().manual_seed(9))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        samples = model.sample(4, generator=torch.Generator().manual_seed(9))
    assert samples.dtype == torch.float32
    tol = 0.05 if case == "inverseflow" else 1e-5   # only the couplings' nets in bfloat16
    assert (samples - expected).abs().max() <= tol


def test_flow_layers_keep_log_determinants_and_prior_in_float32(rng):
    model = inverseflow.models.from_preset("digits")
    model.initialize(_uint8_batch(rng), torch.Generator().manual_seed(4))
    model = _perturbed(model, rng)
    x = torch.rand(8, 1, 8, 8, generator=rng)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z, logdet = model.encode(x)
        for module in model.modules():
            if isinstance(module, inverseflow.nn.Split):
                h = torch.randn(2, 2 * module.keep, 4, 4, generator=rng).bfloat16()
                kept, z_b, ld = module(h)
                assert z_b.dtype == ld.dtype == torch.float32
    assert z.dtype == logdet.dtype == torch.float32
    z32, logdet32 = model.encode(x)
    # The invertible layers and log-dets are float32; only the coupling nets round.
    assert (logdet - logdet32).abs().max() <= 2.0**-8 * logdet32.abs().max()


# ------------------------------------------------------------ train --precision, resume

needs_digits = pytest.mark.skipif(importlib.util.find_spec("sklearn") is None,
                                  reason="the digits dataset comes from scikit-learn")
from test_train import SMALL, _config  # noqa: E402  (the small digits run test_train uses)


@needs_digits
def test_cli_fp16_on_cpu_is_a_clear_error(tmp_path, capsys):
    code = cli_main(["train", *SMALL, "--out", str(tmp_path / "run"), "--steps", "1",
                     "--precision", "fp16"])
    err = capsys.readouterr().err
    assert code == 2
    assert "--precision fp16 needs --device cuda" in err and "bf16" in err
    assert not (tmp_path / "run").exists()


@needs_digits
def test_bf16_run_records_its_precision_and_resume_may_not_change_it(tmp_path, capsys):
    metrics = train(_config(tmp_path, steps=2, precision="bf16"))
    assert metrics["precision"] == "bf16" and torch.isfinite(torch.tensor(metrics["test_bpd"]))
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["train_config"]["precision"] == "bf16"
    code = cli_main(["train", *SMALL, "--out", str(tmp_path), "--steps", "3", "--resume"])
    err = capsys.readouterr().err
    assert code == 2 and "--precision: 'bf16' in the checkpoint, 'fp32' now" in err
    resumed = train(_config(tmp_path, steps=3, precision="bf16", resume=True))
    assert resumed["steps"] == 3 and resumed["precision"] == "bf16"


@needs_digits
def test_bf16_resume_replays_the_uninterrupted_run(tmp_path):
    straight = train(_config(tmp_path / "a", steps=4, precision="bf16"))
    train(_config(tmp_path / "b", steps=2, precision="bf16"))
    resumed = train(_config(tmp_path / "b", steps=4, precision="bf16", resume=True))
    assert resumed["train_losses"] == straight["train_losses"]
    assert resumed["test_bpd"] == straight["test_bpd"]


@needs_digits
def test_a_checkpoint_without_precision_is_fp32(tmp_path):
    train(_config(tmp_path, steps=2))
    path = tmp_path / "checkpoint.pt"
    state = load_checkpoint(path)
    del state["train_config"]["precision"]   # as written before --precision existed
    save_checkpoint(state, path)
    with pytest.raises(ValueError, match="--precision: 'fp32' in the checkpoint, 'bf16' now"):
        train(_config(tmp_path, steps=3, precision="bf16", resume=True))
    assert train(_config(tmp_path, steps=3, resume=True))["precision"] == "fp32"


@needs_digits
def test_fp16_loss_scaling_round_trips_through_a_checkpoint(tmp_path, monkeypatch):
    """The GradScaler path, exercised on the CPU (torch's CPU GradScaler and float16
    autocast) by lifting the CUDA-only check: its state is saved and a resumed run
    replays the uninterrupted one."""
    monkeypatch.setattr(train_loop, "check_precision", lambda precision, device: None)
    straight = train(_config(tmp_path / "a", steps=4, precision="fp16"))
    train(_config(tmp_path / "b", steps=2, precision="fp16"))
    scaler = load_checkpoint(tmp_path / "b" / "checkpoint.pt")["grad_scaler"]
    assert scaler["scale"] > 0 and scaler["growth_interval"] >= 1
    resumed = train(_config(tmp_path / "b", steps=4, precision="fp16", resume=True))
    assert resumed["train_losses"] == straight["train_losses"]
    assert all(torch.isfinite(torch.tensor(straight["train_losses"])))


@needs_digits
def test_precision_is_validated(tmp_path):
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16, fp16"):
        train(_config(tmp_path, steps=1, precision="int8"))
    assert dataclasses.asdict(_config(tmp_path, steps=1))["precision"] == "fp32"


@needs_digits
def test_bench_precision_quick_writes_its_json(tmp_path, capsys):
    assert cli_main(["bench", "--precision", "--quick", "--out", str(tmp_path)]) == 0
    assert "bf16/fp32" in capsys.readouterr().out
    result = json.loads((tmp_path / "precision.json").read_text())
    (row,) = result["presets"]
    assert row["dataset"] == "digits" and set(row["precisions"]) == {"fp32", "bf16"}
    for precision in row["precisions"].values():
        assert precision["step"]["median_s"] > 0 and math.isfinite(precision["test_bpd"])
        assert all(math.isfinite(loss) for loss in precision["train_losses"])
    assert row["bf16_step_over_fp32"] > 0
    assert result["environment"]["device"] == "cpu"


def test_a_whole_model_compiles_with_fullgraph_under_autocast(rng):
    """The float32 regions of the layers (autocast switched off inside) trace in Dynamo."""
    batch = _uint8_batch(rng, n=16)
    model = inverseflow.models.from_preset("digits")
    model.initialize(batch, torch.Generator().manual_seed(4))
    model = _perturbed(model, rng)
    x = model.dequantize(batch, torch.Generator().manual_seed(1))

    def loss(images):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model.bits_per_dim_dequantized(images).mean()

    torch._dynamo.reset()
    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")(x)
    eager = loss(x)
    assert compiled.dtype == torch.float32
    assert abs(compiled.item() - eager.item()) <= 1e-5 * abs(eager.item())
