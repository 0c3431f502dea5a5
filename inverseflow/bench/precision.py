"""``inverseflow bench --precision``: a training step at fp32 and at bf16, and the test
bits/dim after the same steps (DESIGN.md §12).

For each preset, two copies of one initialised InverseFlow train side by side on the same
batches, noise and learning rates, one step each in turn (round-robin, so that both see
the same load on a shared machine): fp32, and bf16 under ``torch.autocast``
(:class:`inverseflow.train.precision.MixedPrecision`, as ``train --precision bf16``).
Each step is timed whole (forward, backward, Adam) with ``time.perf_counter``:
``torch.utils.benchmark``'s ``Timer.timeit`` runs its statement twice more to warm up,
which here would train extra steps. The first step of each (oneDNN builds its kernels
then) is left out of the medians. After the last step both are evaluated in float32 on
the same test images with the same dequantisation noise.
"""

from __future__ import annotations

import copy
import statistics
import time
from pathlib import Path

import torch

from ..data import load_dataset
from ..models import from_preset
from ..train.loop import TrainConfig, evaluate, learning_rate
from ..train.precision import MixedPrecision
from .environment import environment, write_json

PRECISIONS = ("fp32", "bf16")
# (batch, steps, test images): MNIST's preset (L=2, K=16, width 512) takes tens of seconds
# a step on a shared 2-core CPU, and bf16 several times that without AVX-512 BF16.
SIZES = {"digits": (64, 100, None), "mnist": (4, 5, 100)}
QUICK_SIZES = {"digits": (16, 3, 64)}


def _quartiles(values: list[float]) -> dict:
    q = statistics.quantiles(values, n=4) if len(values) > 1 else values * 3
    return {"median_s": statistics.median(values), "q1_s": q[0], "q3_s": q[2],
            "samples": len(values)}


def _preset(dataset: str, batch: int, steps: int, eval_limit, device: str) -> dict:
    data = load_dataset(dataset)
    torch.manual_seed(0)
    base = from_preset(dataset).to(device)
    base.initialize(data.train[:batch].to(device), torch.Generator().manual_seed(0))
    schedule = TrainConfig(dataset=dataset, out="", steps=steps, batch_size=batch)
    runs = {}
    for precision in PRECISIONS:
        model = copy.deepcopy(base).train()
        runs[precision] = {"model": model, "mixed": MixedPrecision(precision, device),
                           "optimizer": torch.optim.Adam(model.parameters()),
                           "seconds": [], "losses": []}
    per_epoch = len(data.train) // batch
    for step in range(steps):
        epoch, index = divmod(step, per_epoch)   # drop-last epochs of seeded permutations
        order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(epoch))
        x = data.train[order[index * batch:(index + 1) * batch]].to(device)
        for precision in PRECISIONS:
            run = runs[precision]
            for group in run["optimizer"].param_groups:
                group["lr"] = learning_rate(schedule, step)
            start = time.perf_counter()
            with run["mixed"].autocast():
                loss = run["model"](x, torch.Generator().manual_seed(step)).mean()
            run["optimizer"].zero_grad(set_to_none=True)
            run["mixed"].backward(loss)
            run["mixed"].step(run["optimizer"])
            if device == "cuda":
                torch.cuda.synchronize()
            run["seconds"].append(time.perf_counter() - start)
            run["losses"].append(loss.item())
    row = {"dataset": dataset, "batch": batch, "steps": steps,
           "test_images": min(len(data.test), eval_limit or len(data.test)), "precisions": {}}
    for precision, run in runs.items():
        row["precisions"][precision] = {
            "step": _quartiles(run["seconds"][1:] or run["seconds"]),
            "train_losses": run["losses"],
            "test_bpd": evaluate(run["model"], data.test, 100, limit=eval_limit)}
    fp32, bf16 = (row["precisions"][p] for p in PRECISIONS)
    row["bf16_step_over_fp32"] = bf16["step"]["median_s"] / fp32["step"]["median_s"]
    row["bf16_minus_fp32_test_bpd"] = bf16["test_bpd"] - fp32["test_bpd"]
    return row


def run(device: str = "cpu", quick: bool = False, datasets=None) -> dict:
    sizes = QUICK_SIZES if quick else SIZES
    datasets = datasets or list(sizes)
    result = {"environment": environment(device),
              "cpu_capability": torch.backends.cpu.get_cpu_capability(), "presets": []}
    for dataset in datasets:
        batch, steps, eval_limit = sizes[dataset]
        result["presets"].append(_preset(dataset, batch, steps, eval_limit, device))
    return result


def format_report(result: dict) -> str:
    env = result["environment"]
    lines = [f"training step, fp32 vs bf16 autocast, {env['device']} "
             f"({result['cpu_capability']}), {env['threads']} thread(s), {env['date'][:10]}", "",
             "| preset | batch | steps | fp32 step (s) | bf16 step (s) | bf16/fp32 "
             "| fp32 test bits/dim | bf16 test bits/dim | test images |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in result["presets"]:
        p = row["precisions"]
        lines.append(
            f"| {row['dataset']} | {row['batch']} | {row['steps']} "
            f"| {p['fp32']['step']['median_s']:.3f} | {p['bf16']['step']['median_s']:.3f} "
            f"| {row['bf16_step_over_fp32']:.2f}x | {p['fp32']['test_bpd']:.4f} "
            f"| {p['bf16']['test_bpd']:.4f} | {row['test_images']} |")
    return "\n".join(lines)


def write(result: dict, out: Path) -> Path:
    return write_json(result, out, "precision.json")
