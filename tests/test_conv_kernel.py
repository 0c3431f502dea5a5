"""The generated causal-convolution kernel (direction ``conv``, DESIGN.md §15, issue 18):
``y = T x`` from the solve's templates and data layout without the recurrence, for every
order of every dimension, against the dense oracles (tests/oracle.py for 2-D,
tests/oracle_nd.py for 1-D and 3-D), in float32 and float64, on contiguous and
non-contiguous inputs, specialized and generic. The sampling pass picks it (or a torch
convolution) per shape; both must give the oracle's answer."""

from __future__ import annotations

import pytest
import torch

import inverseflow
import oracle
import oracle_nd
from inverseflow.ops import _autotune, _dispatch, _geometry

TOL = {torch.float64: 1e-12, torch.float32: 1e-5}
ORDERS = {1: ("L", "R", "pair"), 2: ("TL", "TR", "BL", "BR", "quad"),
          3: ("NTL", "NTR", "NBL", "NBR", "FTL", "FTR", "FBL", "FBR", "oct")}
# (batch, channels, spatial, kernel); the first of each dimension has a specialization
# (codegen/specs.toml), the others run the generic kernel.
SHAPES = [
    (3, 8, (9,), (3,)), (9, 4, (5,), (2,)),
    (3, 12, (5, 6), (3, 3)), (2, 8, (4, 7), (3, 2)), (17, 4, (1, 3), (2, 2)),
    # Batches of at most half a vector run in row strips (lanes hold rows, not samples):
    # strips of one row, uneven strips, a kernel taller than a strip, too few rows to fill
    # every lane.
    (1, 12, (16, 5), (3, 3)), (1, 8, (13, 6), (3, 2)), (2, 4, (9, 4), (5, 3)),
    (1, 8, (3, 7), (3, 3)), (1, 48, (8, 8), (3, 3)),
    (2, 8, (3, 4, 5), (3, 3, 3)), (3, 8, (2, 3, 4), (2, 1, 3)),
]


def _weight(channels, kernel, order, rng, dtype):
    groups = 2 ** len(kernel) if order in ("pair", "quad", "oct") else 1
    # Every stored entry random (the masked ones too), so the kernel must mask.
    return (0.5 * torch.randn(channels, channels // groups, *kernel, generator=rng,
                              dtype=torch.float64)).to(dtype)


def _reference(x, weight, order):
    if x.dim() == 4:
        return oracle.causal_conv(x.double(), weight.double(), order)
    return oracle_nd.causal_conv(x.double(), weight.double(), order)


def _strided(x):
    """The same values with a last-axis stride of 2 (a non-contiguous view)."""
    return torch.stack([x, x], dim=-1)[..., 0]


def _cases():
    for shape in SHAPES:
        for order in ORDERS[len(shape[3])]:
            groups = 2 ** len(shape[3]) if order in ("pair", "quad", "oct") else 1
            if shape[1] % groups == 0:
                yield pytest.param(shape, order, id=f"{'x'.join(map(str, shape[2]))}-"
                                                    f"k{'x'.join(map(str, shape[3]))}-{order}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("shape,order", list(_cases()))
def test_generated_conv_matches_the_dense_oracle(shape, order, dtype, rng):
    batch, channels, spatial, kernel = shape
    weight = _weight(channels, kernel, order, rng, dtype)
    x = torch.randn(batch, channels, *spatial, generator=rng, dtype=torch.float64).to(dtype)
    expected = _reference(x, weight, order)
    for name, inp in (("contiguous", x), ("strided", _strided(x))):
        y, kernel_name = _dispatch.solve(inp, weight, order, _dispatch.CONV)
        assert y.dtype == dtype and y.shape == x.shape
        assert oracle.rel_err(y, expected) < TOL[dtype], (name, kernel_name)
        generic, _ = _dispatch.solve(inp, weight, order, _dispatch.CONV, force_generic=True)
        assert oracle.rel_err(generic, expected) < TOL[dtype], (name, "generic")


def test_specialized_shapes_run_their_generated_conv(rng):
    weight = _weight(12, (3, 3), "quad", rng, torch.float32)
    _, name = _dispatch.solve(torch.randn(2, 12, 4, 4), weight, "quad", _dispatch.CONV)
    assert name == "invconv_k3x3_g3_f32_conv_cpu"   # 12 / 4 channels per group
    weight = _weight(8, (2, 2, 2), "oct", rng, torch.float64)
    _, name = _dispatch.solve(torch.randn(2, 8, 3, 3, 3, dtype=torch.float64), weight, "oct",
                              _dispatch.CONV)
    assert name == "invconv_k2x2x2_g1_f64_conv_cpu"


@pytest.mark.parametrize("order", ["TL", "BR", "quad"])
def test_the_solve_inverts_the_generated_conv(order, rng):
    """Independent of the oracle: inv_conv2d undoes the kernel's conv to float64 precision."""
    weight = _weight(8, (3, 3), order, rng, torch.float64) * 0.2
    x = torch.randn(4, 8, 6, 5, generator=rng, dtype=torch.float64)
    y, _ = _dispatch.solve(x, weight, order, _dispatch.CONV)
    assert oracle.rel_err(inverseflow.inv_conv2d(y, weight, order), x) < 1e-12


def test_masked_entries_never_reach_the_output(rng):
    """inf stored where the mask overrides the weight (the centre's diagonal and above) is
    ignored, as masked_weight's `where` ignores it."""
    weight = _weight(4, (3, 3), "TL", rng, torch.float64)
    weight[0, 0, 2, 2] = float("inf")   # the centre's diagonal (TL centre is (kh-1, kw-1))
    weight[1, 3, 2, 2] = float("nan")   # above the diagonal
    x = torch.randn(2, 4, 5, 5, generator=rng, dtype=torch.float64)
    y, _ = _dispatch.solve(x, weight, "TL", _dispatch.CONV)
    assert torch.isfinite(y).all()
    assert oracle.rel_err(y, oracle.causal_conv(x, weight, "TL")) < 1e-12


@pytest.mark.parametrize("order", ["TL", "BL", "quad"])
def test_sampling_chooses_among_the_forms_and_stays_exact(order, rng):
    weight = _weight(8, (3, 3), order, rng, torch.float64)
    x = torch.randn(3, 8, 7, 6, generator=rng, dtype=torch.float64)
    with torch.no_grad():
        got = inverseflow.causal_conv2d(x, weight, order)
    forms = _geometry.sampling_forms(order, 2, True)
    assert oracle.rel_err(got, oracle.causal_conv(x, weight, order)) < 1e-12
    for name, form in forms.items():   # every form, whichever one was chosen
        weight_m = _geometry.masked_weight(weight, order)
        assert oracle.rel_err(form(x, weight_m), oracle.causal_conv(x, weight, order)) < 1e-12


def test_a_wrong_direction_code_is_refused():
    module = inverseflow.ops._backends.cpu_module()
    y = torch.zeros(1, 4, 2, 2)
    with pytest.raises(ValueError, match="direction"):
        module.solve(y.data_ptr(), torch.zeros(4, 4, 1, 1).data_ptr(), y.data_ptr(), 1, 4,
                     1, 2, 2, 1, 1, 1, 0, 0, 3, 1, 0, False)


@pytest.mark.parametrize("order", ["TL", "quad"])
def test_a_masked_tangent_never_takes_the_kernel(order, rng):
    """The kernel applies M itself (a unit diagonal); a masked tangent or gradient has a zero
    diagonal there, so forward-mode AD's Ṫx must take a torch form (it once did not)."""
    weight = _weight(8, (3, 3), order, rng, torch.float64)
    x = torch.randn(2, 8, 5, 4, generator=rng, dtype=torch.float64)
    tangent_m = _geometry.mask_gradient(torch.randn(weight.shape, generator=rng,
                                                    dtype=torch.float64), order)
    expected = oracle.causal_conv(x, tangent_m, order) - oracle.causal_conv(
        x, torch.zeros_like(tangent_m), order)   # linear part only: no identity centre
    assert oracle.rel_err(_geometry.causal_conv(x, tangent_m, order), expected) < 1e-12


def test_callers_with_other_forms_never_share_a_choice(rng, monkeypatch):
    """In benchmark mode the sampling forms (with the kernel) and the torch-only forms of a
    masked tangent are timed separately for one shape: a choice made among one set is never
    looked up in another (a KeyError once, when the kernel won for quad)."""
    monkeypatch.setattr(inverseflow.backends, "benchmark", True)
    monkeypatch.setattr(_autotune, "_choices", {})
    weight = _weight(8, (3, 3), "quad", rng, torch.float64)
    x = torch.randn(2, 8, 9, 7, generator=rng, dtype=torch.float64)
    weight_m = _geometry.masked_weight(weight, "quad")
    tangent_m = _geometry.mask_gradient(torch.randn(weight.shape, generator=rng,
                                                    dtype=torch.float64), "quad")
    expected = oracle.causal_conv(x, weight, "quad")
    linear = oracle.causal_conv(x, tangent_m, "quad") - oracle.causal_conv(
        x, torch.zeros_like(tangent_m), "quad")
    for _ in range(2):   # the second round reads every cached choice
        assert oracle.rel_err(_geometry.causal_conv(x, weight_m, "quad", unit_center=True),
                              expected) < 1e-12
        assert oracle.rel_err(_geometry.causal_conv(x, tangent_m, "quad"), linear) < 1e-12
    keys = [k for k in _autotune.choices() if k[0] == "causal_conv"]
    assert len(keys) == 2 and {k[2] for k in keys} == {
        tuple(sorted(_geometry.sampling_forms("quad", 2, with_kernel)))
        for with_kernel in (True, False)}
