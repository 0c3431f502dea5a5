"""Deblurring with the parallel inverse on scikit-image's photographs: PSNR, calibration,
the stability limit, and time against an FFT inverse filter.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python scripts/deblur_demo.py [--quick] [--threads 1]
        [--out docs/results/deblur] [--figure docs/figures/deblur.png]

Writes ``deblur.json`` (every number below, with the environment) and the picture
(blurred / restored / truth). Needs the ``deblur`` extra (scikit-image, matplotlib).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import warnings
from pathlib import Path

import torch
from torch.utils import benchmark

from inverseflow import deblur as D
from inverseflow import inv_conv2d
from inverseflow.bench.environment import environment

IMAGES = ("camera", "astronaut", "coffee")


def decaying_kernel(size: int, decay: float) -> torch.Tensor:
    """A causal blur whose weight decays as decay^(distance to the TL leading tap)."""
    steps = torch.arange(size - 1, -1, -1, dtype=torch.float64)
    kernel = decay ** (steps[:, None] + steps[None, :])
    return kernel / kernel.sum()


def corner_gaussian(size: int = 5, sigma: float = 1.0) -> torch.Tensor:
    """A centred Gaussian used as a TL-anchored blur: its leading tap is a tail value."""
    g = torch.exp(-((torch.arange(size, dtype=torch.float64) - size // 2) ** 2) / (2 * sigma ** 2))
    kernel = g[:, None] * g[None, :]
    return kernel / kernel.sum()


def quantize(image: torch.Tensor) -> torch.Tensor:
    """8-bit storage of a blurred image: the noise every real pair carries."""
    return torch.round(image.clamp(0, 1) * 255) / 255


def kernels() -> dict:
    return {"dominated": decaying_kernel(5, 0.25),     # ρ < 1: bounded at every size
            "decaying": decaying_kernel(7, 0.5),       # ρ > 1, exact gain small: certified
            "corner_gaussian": corner_gaussian()}      # tiny leading tap: refused


def describe(kernel: torch.Tensor, size) -> dict:
    return {"shape": list(kernel.shape), "leading_tap": float(D.leading_tap(kernel)),
            "rho": D.stability_ratio(kernel), "inverse_gain": D.inverse_gain(kernel, size)}


def non_blind(images: dict, named: dict) -> dict:
    rows = {}
    for name, kernel in named.items():
        for image_name, truth in images.items():
            blurred = D.blur(truth, kernel)
            row = {"blurred_psnr": D.psnr(blurred, truth)}
            try:
                row["restored_psnr_f64"] = D.psnr(D.deblur(blurred, kernel), truth)
                row["restored_psnr_f32"] = D.psnr(D.deblur(blurred.float(), kernel.float()), truth)
                row["restored_psnr_8bit"] = D.psnr(D.deblur(quantize(blurred), kernel), truth)
            except D.UnstableBlurError as err:
                row["refused"] = str(err)
            rows[f"{name}/{image_name}"] = row
    return rows


def calibration(images: dict, kernel: torch.Tensor, crop: int) -> dict:
    """Learn the kernel on a crop of camera, restore the other images with it."""
    camera = images["camera"]
    top, left = (camera.shape[1] - crop) // 2, (camera.shape[2] - crop) // 2
    sharp = camera[:, top:top + crop, left:left + crop]
    out = {"crop": crop, "kernel_size": list(kernel.shape)}
    for noise, degrade in (("noise_free", lambda t: t), ("8bit", quantize)):
        result = D.calibrate(sharp, degrade(D.blur(sharp, kernel)), tuple(kernel.shape))
        entry = {"kernel_rel_error": float((result.kernel - kernel).norm() / kernel.norm()),
                 "final_loss": result.loss, "lbfgs_steps": len(result.losses), "images": {}}
        for name in images:
            if name == "camera":
                continue
            truth = images[name]
            blurred = degrade(D.blur(truth, kernel))
            entry["images"][name] = {
                "blurred_psnr": D.psnr(blurred, truth),
                "restored_psnr_learned": D.psnr(D.deblur(blurred, result.kernel), truth),
                "restored_psnr_true_kernel": D.psnr(D.deblur(blurred, kernel), truth)}
        out[noise] = entry
        out[f"{noise}_kernel"] = result.kernel.tolist()
    return out


def fft_accuracy(truth: torch.Tensor, kernel: torch.Tensor, pads) -> dict:
    """How far the FFT inverse filter is from the causal problem's exact answer."""
    blurred = D.blur(truth, kernel)
    return {str(pad): D.psnr(D.fft_deconvolve(blurred, kernel, pad=pad), truth) for pad in pads}


def timings(truth: torch.Tensor, kernel: torch.Tensor, pad: int, rounds: int) -> dict:
    """Median seconds per call, methods timed round-robin in one process."""
    out = {}
    for dtype in (torch.float32, torch.float64):
        k = kernel.to(dtype)
        y = D.blur(truth.to(dtype), k)
        y_scaled, k_scaled = (y / D.leading_tap(k))[:, None], (k / D.leading_tap(k))[None, None]
        calls = {
            "inv_conv2d (the solve)": lambda: inv_conv2d(y_scaled, k_scaled),
            "deblur (solve + checks)": lambda: D.deblur(y, k),
            "fft, same grid (circular problem)": lambda: D.fft_deconvolve(y, k),
            f"fft, pad {pad} (causal problem)": lambda: D.fft_deconvolve(y, k, pad=pad),
        }
        timers = {name: benchmark.Timer("f()", globals={"f": f}) for name, f in calls.items()}
        samples = {name: [] for name in calls}
        for _ in range(rounds):
            for name, timer in timers.items():
                samples[name].append(timer.timeit(3).median)
        out[str(dtype).replace("torch.", "")] = {name: statistics.median(s)
                                                 for name, s in samples.items()}
    return out


def figure(images: dict, named: dict, calibrated: list, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    camera, astronaut = images["camera"], images["astronaut"]
    stable = named["decaying"]
    # Each row restores the whole photograph and shows a crop, where a 7-pixel blur shows.
    def window(rows, cols):   # the whole image when it is smaller (--quick)
        inside = rows.stop <= camera.shape[1] and cols.stop <= camera.shape[2]
        return (slice(None), rows, cols) if inside else (slice(None),) * 3

    face, helmet = window(slice(60, 220), slice(190, 350)), window(slice(20, 220), slice(130, 330))
    rows = []
    blurred = D.blur(camera, stable)
    rows.append(("non-blind, 7x7 decaying blur", blurred, D.deblur(blurred, stable), camera, face))
    learned = torch.tensor(calibrated, dtype=torch.float64)
    blurred = quantize(D.blur(astronaut, stable))
    rows.append(("kernel learned on camera, 8-bit", blurred, D.deblur(blurred, learned), astronaut,
                 helmet))
    gaussian = named["corner_gaussian"]
    blurred = D.blur(camera, gaussian)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", D.BlurStabilityWarning)
        garbage = D.deblur(blurred, gaussian, on_unstable="warn")
    rows.append(("corner Gaussian: refused; forced", blurred, garbage.nan_to_num(0, 1, -1), camera,
                 face))

    fig, axes = plt.subplots(len(rows), 3, figsize=(7.2, 2.5 * len(rows)))
    for r, (title, blurred, restored, truth, crop) in enumerate(rows):
        panels = (("blurred", blurred), ("restored", restored), ("truth", truth))
        for c, (label, image) in enumerate(panels):
            ax = axes[r, c]
            shown = image[crop].clamp(0, 1).permute(1, 2, 0).squeeze(-1).float().numpy()
            ax.imshow(shown, cmap="gray" if shown.ndim == 2 else None, vmin=0, vmax=1)
            score = D.psnr(image, truth) if image is not truth else None
            if score is not None:
                label += f" {score:.1f} dB" if math.isfinite(score) and score > 0 else " (garbage)"
            ax.set_title(label, fontsize=8)
            ax.axis("off")
        axes[r, 0].text(-0.05, 0.5, title, transform=axes[r, 0].transAxes, rotation=90,
                        va="center", ha="right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=60, pil_kwargs={"optimize": True})
    plt.close(fig)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="docs/results/deblur", help="folder for deblur.json")
    parser.add_argument("--figure", default="docs/figures/deblur.png", help="the picture's path")
    parser.add_argument("--quick", action="store_true",
                        help="crop the photographs to 96x96 and time one round (a smoke run)")
    parser.add_argument("--crop", type=positive_int, default=128, help="calibration crop side")
    parser.add_argument("--rounds", type=positive_int, default=7, help="round-robin timing rounds")
    parser.add_argument("--threads", type=positive_int, default=1,
                        help="torch threads (1: on a shared machine, OpenMP threads that "
                             "spin-wait for a busy core distort the times; see "
                             "docs/benchmarks.md)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    images = {name: D.load_image(name) for name in IMAGES}
    if args.quick:
        images = {name: image[:, 64:160, 192:288] for name, image in images.items()}
        args.crop, args.rounds = min(args.crop, 32), 1
    named = kernels()
    size = tuple(images["camera"].shape[-2:])
    result = {"environment": environment("cpu"),
              "kernels": {name: describe(k, size) for name, k in named.items()},
              "non_blind": non_blind(images, named),
              "calibration": calibration(images, named["decaying"], args.crop)}
    pad = 64
    result["fft_causal_psnr_by_pad"] = fft_accuracy(images["camera"], named["decaying"],
                                                    (0, 8, 16, 32, 64))
    result["seconds"] = {name: timings(images[name], named["decaying"], pad, args.rounds)
                         for name in ("camera", "astronaut")}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "deblur.json").write_text(json.dumps(result, indent=2))
    figure(images, named, result["calibration"]["8bit_kernel"], Path(args.figure))
    print(json.dumps({k: result[k] for k in ("kernels", "fft_causal_psnr_by_pad", "seconds")},
                     indent=1))
    print(f"wrote {out / 'deblur.json'} and {args.figure}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
