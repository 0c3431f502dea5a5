"""inverseflow.deblur against independent oracles: a shifted-sum blur, dense matrices and
torch.linalg, a circular blur by padding, and scikit-image's PSNR."""

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from inverseflow import deblur as D

CORNERS = ("TL", "TR", "BL", "BR")


def shifted_sum_blur(x, kernel, order):
    """y[h, w] = Σ k[i, j] x[h + dh, w + dw] with the corner's offsets (DESIGN.md §2 table),
    zero outside the image: a loop over taps, sharing no code with the package."""
    kh, kw = kernel.shape
    h, w = x.shape[-2:]
    y = torch.zeros_like(x)
    for i in range(kh):
        for j in range(kw):
            dh = i - (kh - 1) if order in ("TL", "TR") else i
            dw = j - (kw - 1) if order in ("TL", "BL") else j
            src = x[..., max(dh, 0):h + min(dh, 0), max(dw, 0):w + min(dw, 0)]
            y[..., max(-dh, 0):h - max(dh, 0), max(-dw, 0):w - max(dw, 0)] += kernel[i, j] * src
    return y


def dense_blur_matrix(kernel, order, h, w):
    """The blur as an (hw × hw) matrix, column by column from unit images."""
    eye = torch.eye(h * w, dtype=kernel.dtype).reshape(h * w, h, w)
    return shifted_sum_blur(eye, kernel, order).reshape(h * w, h * w).T


def leading_index(order, kh, kw):
    return (kh - 1 if order in ("TL", "TR") else 0, kw - 1 if order in ("TL", "BL") else 0)


def stable_kernel(kh, kw, order, rng, rho=None, dtype=torch.float64):
    """A fresh random kernel with Σ|k_t/k₀| = rho < 1 and a random leading tap."""
    rho = float(torch.rand((), generator=rng, dtype=torch.float64)) * 0.9 if rho is None else rho
    taps = torch.randn(kh, kw, generator=rng, dtype=torch.float64)
    lead = leading_index(order, kh, kw)
    taps[lead] = 0
    k0 = (0.5 + torch.rand((), generator=rng, dtype=torch.float64)) * (1 if torch.rand(
        (), generator=rng) < 0.7 else -1)
    if kh * kw > 1:
        taps = taps / taps.abs().sum() * rho * abs(k0)
    taps[lead] = k0
    return taps.to(dtype)


def corner_gaussian(size=5, sigma=1.0, dtype=torch.float64):
    """A centred Gaussian blur used as if anchored at the corner: its leading tap is tiny."""
    g = torch.exp(-((torch.arange(size, dtype=dtype) - size // 2) ** 2) / (2 * sigma ** 2))
    k = g[:, None] * g[None, :]
    return k / k.sum()


# ------------------------------------------------------------------ non-blind


@pytest.mark.parametrize("order", CORNERS)
@pytest.mark.parametrize("kernel_size", [(1, 1), (3, 3), (2, 5), (4, 1)])
def test_restores_the_truth_for_stable_random_kernels(order, kernel_size, rng):
    kernel = stable_kernel(*kernel_size, order, rng)
    truth = torch.rand(2, 3, 13, 17, generator=rng, dtype=torch.float64)
    blurred = shifted_sum_blur(truth, kernel, order)
    restored = D.deblur(blurred, kernel, order)
    assert restored.shape == truth.shape
    torch.testing.assert_close(restored, truth, rtol=0, atol=1e-11)


@pytest.mark.parametrize("order", CORNERS)
def test_blur_matches_the_shifted_sum(order, rng):
    kernel = torch.randn(3, 4, generator=rng, dtype=torch.float64)
    kernel[leading_index(order, 3, 4)] = 1.5
    x = torch.rand(5, 9, generator=rng, dtype=torch.float64)
    torch.testing.assert_close(D.blur(x, kernel, order), shifted_sum_blur(x, kernel, order))


def test_restores_a_photograph_in_float64_and_float32(rng):
    pytest.importorskip("skimage")
    truth = D.load_image("camera")[:, 100:228, 150:278]
    kernel = stable_kernel(5, 5, "TL", rng, rho=0.9)
    restored = D.deblur(shifted_sum_blur(truth, kernel, "TL"), kernel)
    assert (restored - truth).abs().max() < 1e-11
    restored32 = D.deblur(shifted_sum_blur(truth, kernel, "TL").float(), kernel.float())
    # float32 rounding of y, amplified at most by the bound 1/(|k0|(1-ρ)) ≤ 20
    assert (restored32.double() - truth).abs().max() < 20 * 1e-6


def test_load_image_gives_unit_range_channels_first():
    pytest.importorskip("skimage")
    from skimage import data
    grey, colour = D.load_image("camera"), D.load_image("astronaut", torch.float32)
    assert grey.shape == (1, *data.camera().shape) and grey.dtype == torch.float64
    assert colour.shape == (3, 512, 512) and colour.dtype == torch.float32
    torch.testing.assert_close(colour[1], torch.from_numpy(data.astronaut()[..., 1]).float() / 255)


def test_deblur_is_differentiable_in_image_and_kernel(rng):
    kernel = stable_kernel(2, 3, "BR", rng, rho=0.5).requires_grad_()
    blurred = torch.rand(1, 4, 5, generator=rng, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda y, k: D.deblur(y, k, "BR"), (blurred, kernel))


# ------------------------------------------------------------------ stability


@pytest.mark.parametrize("order", CORNERS)
def test_stability_ratio_is_the_sum_of_the_other_taps_over_the_leading_one(order, rng):
    kernel = torch.randn(3, 2, generator=rng, dtype=torch.float64)
    k0 = kernel[leading_index(order, 3, 2)]
    expected = float((kernel.abs().sum() - k0.abs()) / k0.abs())
    assert D.stability_ratio(kernel, order) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("order", CORNERS)
def test_inverse_gain_is_the_dense_inverse_inf_norm(order, rng):
    h, w = 4, 5
    kernel = torch.randn(2, 3, generator=rng, dtype=torch.float64)
    kernel[leading_index(order, 2, 3)] = 0.8   # ρ above 1 as often as not
    inverse = torch.linalg.inv(dense_blur_matrix(kernel, order, h, w))
    expected = float(inverse.abs().sum(dim=1).max())
    assert D.inverse_gain(kernel, (h, w), order) == pytest.approx(expected, rel=1e-9)
    # it is the growth max|x|/max|y| of the worst input, and no random input grows more
    row = inverse.abs().sum(dim=1).argmax()
    worst = inverse[row].sign().reshape(h, w)
    assert float(D.deblur(worst, kernel, order, max_growth=math.inf).abs().max()) == \
        pytest.approx(expected, rel=1e-9)
    y = torch.randn(8, h, w, generator=rng, dtype=torch.float64)
    restored = D.deblur(y, kernel, order, max_growth=math.inf)
    growth = restored.abs().amax((1, 2)) / y.abs().amax((1, 2))
    assert float(growth.max()) <= expected * (1 + 1e-9)


def test_stable_bound_holds_on_random_images(rng):
    kernel = stable_kernel(3, 3, "TL", rng)
    rho, k0 = D.stability_ratio(kernel), float(D.leading_tap(kernel).abs())
    assert D.inverse_gain(kernel, (40, 40)) <= 1 / (k0 * (1 - rho)) * (1 + 1e-12)


def test_a_corner_anchored_gaussian_is_refused(rng):
    kernel = corner_gaussian()
    assert D.stability_ratio(kernel) > 100
    truth = torch.rand(1, 64, 64, generator=rng, dtype=torch.float64)
    blurred = shifted_sum_blur(truth, kernel, "TL")
    with pytest.raises(D.UnstableBlurError, match="not dominated by its leading tap"):
        D.deblur(blurred, kernel)
    assert issubclass(D.UnstableBlurError, ValueError)
    with pytest.warns(D.BlurStabilityWarning, match="can amplify"):
        garbage = D.deblur(blurred, kernel, on_unstable="warn")
    # what the refusal protects from: the solve really is garbage on this image
    assert not torch.isfinite(garbage).all() or (garbage - truth).abs().max() > 1e3


def test_refusal_threshold_is_max_growth(rng):
    # max_growth bounds the growth of the kernel's shape k/k₀ (its overall gain 1/k₀ scales
    # signal and noise alike: issue 26)
    kernel = stable_kernel(3, 3, "TL", rng, rho=0.5)
    gain = D.inverse_gain(kernel / D.leading_tap(kernel), (10, 10))
    y = torch.rand(10, 10, generator=rng, dtype=torch.float64)
    with pytest.raises(D.UnstableBlurError):
        D.deblur(y, kernel, max_growth=gain * 0.99)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        D.deblur(y, kernel, max_growth=gain * 1.01)


def test_a_stable_blur_beyond_the_rho_bound_is_certified_and_exact(rng):
    # (1 + 1.5z + 0.56z²) = (1 + 0.7z)(1 + 0.8z) in each axis: ρ ≈ 8.4, yet a stable inverse
    u = torch.tensor([0.56, 1.5, 1.0], dtype=torch.float64)
    kernel = u[:, None] * u[None, :]
    assert D.stability_ratio(kernel) > 1
    truth = torch.rand(48, 48, generator=rng, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        restored = D.deblur(shifted_sum_blur(truth, kernel, "TL"), kernel)
    assert (restored - truth).abs().max() < 1e-9


# ------------------------------------------------------------------ calibration


def test_calibration_recovers_the_kernel_on_a_small_crop(rng):
    pytest.importorskip("skimage")
    camera = D.load_image("camera")
    kernel = stable_kernel(3, 3, "TL", rng, rho=0.8) * 0.7
    sharp = camera[:, 200:240, 240:280]
    result = D.calibrate(sharp, shifted_sum_blur(sharp, kernel, "TL"), 3, steps=10)
    # stated tolerance: 1e-4 relative (noise-free float64 pair)
    assert float((result.kernel - kernel).norm() / kernel.norm()) < 1e-4
    assert result.loss < 1e-10 and len(result.losses) >= 1
    other = camera[:, 300:364, 100:164]   # restore a different crop with the learned kernel
    restored = D.deblur(shifted_sum_blur(other, kernel, "TL"), result.kernel)
    assert (restored - other).abs().max() < 1e-3


# ------------------------------------------------------------------ FFT baseline, PSNR


@pytest.mark.parametrize("order", CORNERS)
def test_fft_deconvolve_inverts_the_circular_blur_and_approaches_the_causal_one(order, rng):
    kernel = stable_kernel(3, 2, order, rng, rho=0.6)
    truth = torch.rand(2, 12, 15, generator=rng, dtype=torch.float64)
    # circular blur: wrap-pad on the corner's sides, then the causal taps
    left, right, top, bottom = ((1, 0) if order in ("TL", "BL") else (0, 1)) + \
        ((2, 0) if order in ("TL", "TR") else (0, 2))
    wrapped = F.pad(truth[:, None], (left, right, top, bottom), mode="circular")
    circular = F.conv2d(wrapped, kernel[None, None])[:, 0]
    torch.testing.assert_close(D.fft_deconvolve(circular, kernel, order), truth)
    causal = shifted_sum_blur(truth, kernel, order)
    error = (D.fft_deconvolve(causal, kernel, order, pad=80) - truth).abs().max()
    assert error < 1e-10


def test_psnr_matches_scikit_image(rng):
    metrics = pytest.importorskip("skimage.metrics")
    a = torch.rand(3, 20, 20, generator=rng, dtype=torch.float64)
    b = (a + 0.05 * torch.randn(3, 20, 20, generator=rng, dtype=torch.float64))
    expected = metrics.peak_signal_noise_ratio(a.numpy(), b.numpy(), data_range=1.0)
    assert D.psnr(b, a) == pytest.approx(expected, rel=1e-12)
    assert D.psnr(a, a) == math.inf
    assert D.psnr(a * 1e300, a) == -math.inf and math.isnan(D.psnr(a * math.nan, a))


# ------------------------------------------------------------------ bad arguments

KERNEL = torch.tensor([[0.1, 0.2], [0.1, 1.0]], dtype=torch.float64)
IMAGE = torch.rand(6, 6, dtype=torch.float64)


@pytest.mark.parametrize("call, error, words", [
    (lambda: D.deblur(IMAGE.numpy(), KERNEL), TypeError, "blurred must be a torch.Tensor"),
    (lambda: D.deblur(IMAGE.to(torch.int64), KERNEL), TypeError, "blurred must be float32"),
    (lambda: D.deblur(IMAGE[0], KERNEL), ValueError, "blurred must have at least 2"),
    (lambda: D.deblur(IMAGE[:0], KERNEL), ValueError, "blurred must have H, W"),
    (lambda: D.deblur(IMAGE.clone().fill_(math.nan), KERNEL), ValueError, "blurred holds inf"),
    (lambda: D.deblur(IMAGE, [[1.0]]), TypeError, "kernel must be a torch.Tensor"),
    (lambda: D.deblur(IMAGE, KERNEL[None]), ValueError, "kernel must be 2-D"),
    (lambda: D.deblur(IMAGE, KERNEL.float()), TypeError, "kernel must have the image's dtype"),
    (lambda: D.deblur(IMAGE, KERNEL * torch.tensor([[1.0, 1], [1, 0]], dtype=torch.float64)),
     ValueError, "kernel's leading tap kernel[1, 1]"),
    (lambda: D.deblur(IMAGE, KERNEL, "quad"), ValueError, "order must be one of TL"),
    (lambda: D.deblur(IMAGE, KERNEL, 0), TypeError, "order must be a str"),
    (lambda: D.deblur(IMAGE, KERNEL, max_growth=-1.0), ValueError, "max_growth must be positive"),
    (lambda: D.deblur(IMAGE, KERNEL, max_growth="big"), TypeError, "max_growth must be a number"),
    (lambda: D.deblur(IMAGE, KERNEL, on_unstable="ignore"), ValueError, "on_unstable must be"),
    (lambda: D.blur(IMAGE, KERNEL * math.inf), ValueError, "kernel holds inf"),
    (lambda: D.inverse_gain(KERNEL, (0, 3)), ValueError, "size must be a pair"),
    (lambda: D.calibrate(IMAGE, IMAGE[:5], 2), ValueError, "sharp and blurred must have the same"),
    (lambda: D.calibrate(IMAGE, IMAGE, 0), ValueError, "kernel_size must be a positive int"),
    (lambda: D.calibrate(IMAGE, IMAGE, (2, 2, 2)), ValueError, "kernel_size must be"),
    (lambda: D.calibrate(IMAGE, IMAGE, 2, steps=0), ValueError, "steps must be a positive int"),
    (lambda: D.fft_deconvolve(IMAGE, KERNEL, pad=-1), ValueError, "pad must be a non-negative"),
    (lambda: D.psnr(IMAGE, IMAGE[:3]), ValueError, "estimate and truth must have the same shape"),
    (lambda: D.load_image("download_all"), ValueError, "name must be one of"),
])
def test_bad_arguments_are_named(call, error, words):
    with pytest.raises(error, match=words.replace("[", r"\[").replace("]", r"\]")):
        call()


def test_the_readme_example_runs():
    pytest.importorskip("skimage")
    import re
    from pathlib import Path
    # The README's Deblurring section, moved to the documentation site.
    guide = Path(__file__).resolve().parent.parent / "docs" / "guides" / "deblurring.md"
    (code,) = re.findall(r"```python\n(.*?)```", guide.read_text(), flags=re.S)
    exec(compile(code, "deblurring guide example", "exec"), {})


def test_the_demo_script_runs_quick(tmp_path):
    pytest.importorskip("skimage")
    pytest.importorskip("matplotlib")
    import importlib.util
    import json
    from pathlib import Path
    script = Path(__file__).resolve().parent.parent / "scripts" / "deblur_demo.py"
    spec = importlib.util.spec_from_file_location("deblur_demo", script)
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    threads = torch.get_num_threads()
    try:
        assert demo.main(["--quick", "--out", str(tmp_path), "--figure",
                          str(tmp_path / "deblur.png")]) == 0
    finally:
        torch.set_num_threads(threads)
    result = json.loads((tmp_path / "deblur.json").read_text())
    assert "refused" in result["non_blind"]["corner_gaussian/camera"]
    assert result["non_blind"]["decaying/camera"]["restored_psnr_f64"] > 200
    assert (tmp_path / "deblur.png").stat().st_size > 0
    with pytest.raises(SystemExit):
        demo.main(["--rounds", "0"])
