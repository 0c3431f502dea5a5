"""Training, evaluation and sampling of the flow models on uint8 image datasets.

Determinism: the batch order of epoch e is a permutation seeded by (seed, e) and the
dequantisation noise of step s by (seed, s, rank), so a resumed run replays exactly the
batches and noise of an uninterrupted one; the checkpoint holds model, optimizer, step
and loss history. Where an op has equal forms that round differently, the fixed rule picks
one (DESIGN §16), so two runs of one command give the same bits; with ``benchmark`` the
forms are timed instead and the choices go into the checkpoint, for an exact resume.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .. import backends
from ..ops import _autotune
from . import distributed
from .checkpoint import (CHECKPOINT_NAME, MAX_INT, CheckpointError, load_checkpoint,
                         save_checkpoint, save_json)
from ..data import DATASETS, load_dataset
from ..models import build_model, from_preset, size
from ..models.timing import placement_timings
from . import guards, preflight
from .grids import save_grid
from .precision import MixedPrecision, check_precision
from .quoting import clip, quote
from .resume_flags import check_resume_flags
from .tensorboard_log import TensorBoardLog


# Seeds are 32-bit, so that the ones derived from them (per epoch, per step and rank)
# stay within the 64 bits torch.Generator.manual_seed takes.
MAX_SEED = 2**32 - 1


class TrainingDiverged(RuntimeError):
    """The loss became non-finite; the last good checkpoint is kept."""


@dataclasses.dataclass
class TrainConfig:
    dataset: str
    out: str
    steps: int | None = None
    epochs: int | None = None
    data_dir: str | None = None
    model: str = "inverseflow"
    # The k×k layer's options; None takes the model's default (Glow takes none of them).
    solve_on: str | None = None
    order: str | None = None
    kernel_size: int | None = None
    levels: int | None = None
    flow_steps: int | None = None
    coupling_width: int | None = None
    # The model's keyword arguments, used instead of the flat model fields above when
    # set (the named experiments of train/experiments.py).
    model_options: dict | None = None
    batch_size: int = 64
    lr: float = 1e-3
    lr_final: float = 1e-4
    decay_steps: int = 50_000
    warmup: int = 100
    grad_clip: float = 100.0
    seed: int = 0
    device: str = "cpu"
    precision: str = "fp32"   # fp32, bf16 or fp16 (CUDA): the training forward's autocast
    checkpoint_every: int = 200
    eval_batch_size: int = 500
    eval_limit: int | None = None
    time_budget: float | None = None
    num_samples: int = 64
    temperature: float = 0.7
    resume: bool = False
    # Equal forms chosen by timing rather than by the fixed rule (DESIGN §16); the choices
    # are saved in checkpoints so that a resume replays exactly. None: the process setting
    # (inverseflow.backends.benchmark, INVERSEFLOW_BENCHMARK), resolved when the run starts.
    benchmark: bool | None = None
    progress: bool = True
    tensorboard: bool = False

    def validate(self) -> None:
        if (self.steps is None) == (self.epochs is None):
            raise ValueError("give exactly one of steps or epochs")
        # Counts are recorded in the checkpoint, which holds integers up to MAX_INT.
        for name, least in (("steps", 1), ("epochs", 1), ("batch_size", 1),
                            ("checkpoint_every", 1), ("eval_batch_size", 1), ("eval_limit", 1),
                            ("num_samples", 1), ("decay_steps", 1), ("warmup", 0)):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                      or not least <= value <= MAX_INT):
                what = "a positive integer" if least == 1 else f"an integer >= {least}"
                raise ValueError(f"{name} must be {what} up to {MAX_INT}, got {quote(value)}")
        for name in ("lr", "lr_final", "temperature", "grad_clip"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be finite and positive, got {value!r}")
        if (not isinstance(self.seed, int) or isinstance(self.seed, bool)
                or not 0 <= self.seed <= MAX_SEED):
            raise ValueError(f"seed must be an integer from 0 to {MAX_SEED}, got "
                             f"{quote(self.seed)}")
        if self.benchmark is not None and not isinstance(self.benchmark, bool):
            raise TypeError(f"benchmark must be True, False or None, got "
                            f"{quote(self.benchmark)}")
        if self.time_budget is not None and not self.time_budget > 0:
            raise ValueError(f"time_budget must be positive seconds, got {self.time_budget!r}")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {self.device!r}")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("device 'cuda' was asked for, but torch sees no CUDA device")
        check_precision(self.precision, self.device)


def learning_rate(config: TrainConfig, step: int) -> float:
    """Linear warm-up, then exponential decay from lr to lr_final over decay_steps.
    It depends on the step alone, so a run extended by --resume keeps its schedule."""
    warm = min(1.0, (step + 1) / max(1, config.warmup))
    progress = min(step, config.decay_steps) / config.decay_steps
    return config.lr * warm * (config.lr_final / config.lr) ** progress


def batch_indices(n: int, global_batch: int, step: int, seed: int, ctx) -> torch.Tensor:
    """This rank's image indices for a step (drop-last epochs of a seeded permutation)."""
    per_epoch = n // global_batch
    epoch, index = divmod(step, per_epoch)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    chunk = order[index * global_batch:(index + 1) * global_batch]
    return chunk[ctx.rank::ctx.world_size]


def _noise(seed: int, step: int, rank: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 64 + rank)


@torch.no_grad()
def evaluate(model, images: torch.Tensor, batch_size: int = 500, seed: int = 1234,
             limit: int | None = None) -> float:
    """Mean test bits/dim, with fixed dequantisation noise (reproducible)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    images = images[:limit] if limit else images
    gen = torch.Generator().manual_seed(seed)
    total = 0.0
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size]
        x_deq = model.dequantize(x, gen).to(device)
        total += float(model.bits_per_dim_dequantized(x_deq).double().sum())
    model.train(was_training)
    return total / len(images)


class Progress:
    """The training progress bar: tqdm on stderr, a widget in notebooks; off with --quiet
    and when stderr is not a terminal (tqdm's rule), so logs keep only the result lines."""

    def __init__(self, total: int, start: int, enabled: bool):
        self.bar = tqdm(total=total, initial=start, unit="step", desc="train",
                        disable=None if enabled else True, dynamic_ncols=True)

    def update(self, step: int, loss: float) -> None:
        self.bar.set_postfix_str(f"loss (train bits/dim) {loss:.4f}", refresh=False)
        self.bar.update(step - self.bar.n)

    def close(self) -> None:
        self.bar.close()


def _build(config: TrainConfig, image_shape):
    if config.model_options is not None:
        model = from_preset(config.dataset, model=config.model, **config.model_options)
    else:
        model = from_preset(config.dataset, model=config.model, solve_on=config.solve_on,
                            order=config.order, kernel_size=config.kernel_size,
                            levels=config.levels, steps=config.flow_steps,
                            coupling_width=config.coupling_width)
    if image_shape is not None and tuple(model.image_shape) != tuple(image_shape):
        raise ValueError(f"preset image shape {model.image_shape} != data {tuple(image_shape)}")
    return model


def train(config: TrainConfig, command_fields=None) -> dict:
    """Runs (or resumes) a training run; returns the metrics written to metrics.json.
    ``command_fields``: the TrainConfig fields the caller's command line sets, so that a
    refused --resume names only its flags (None: every field has a flag, as in ``train``)."""
    config.validate()
    if config.benchmark is None:
        config.benchmark = backends.benchmark
    device = torch.device(config.device)
    if config.tensorboard:
        preflight.check_tensorboard(config.out)
    if not config.resume:   # a resumed run's model comes from its checkpoint
        _check_model_options(config)
    # Everything above fails without leaving a folder behind; what fails from here until
    # the run writes its first file (the data, a resumed checkpoint) removes what it made.
    created = preflight.missing_folders(config.out)
    preflight.prepare_run_folder(config.out)
    ctx = distributed.setup(device.type)
    setting = backends.benchmark
    backends.benchmark = config.benchmark   # for this run only (DESIGN §16)
    try:
        with guards.InterruptRequest() as interrupt:
            return _train(config, device, ctx, interrupt, command_fields)
    except BaseException:
        preflight.remove_empty_folders(created)
        raise
    finally:
        backends.benchmark = setting
        distributed.teardown(ctx)


def _check_model_options(config: TrainConfig) -> None:
    """The model's options and size, on the meta device (no memory, no data yet)."""
    if config.dataset not in DATASETS:
        raise ValueError(f"unknown dataset {config.dataset!r}; valid names: "
                         f"{', '.join(DATASETS)}")
    skeleton = size.meta_model(lambda: _build(config, image_shape=None))
    size.check_tensor_elements(skeleton)


def _train(config: TrainConfig, device, ctx, interrupt=None, command_fields=None) -> dict:
    out = Path(config.out)
    ckpt_path = out / CHECKPOINT_NAME
    data = load_dataset(config.dataset, config.data_dir)
    global_batch = config.batch_size * ctx.world_size
    if len(data.train) < global_batch:
        raise ValueError(f"batch size {global_batch} exceeds the {len(data.train)} training images")
    total_steps = config.steps or config.epochs * (len(data.train) // global_batch)
    torch.manual_seed(config.seed)

    start_step, losses, train_seconds, initial_bpd = 0, [], 0.0, None
    mixed = MixedPrecision(config.precision, device.type)
    if config.resume:
        state = load_checkpoint(ckpt_path, map_location=device)
        if state["dataset"] != config.dataset or state["model_config"]["model"] != config.model:
            raise ValueError(f"{ckpt_path} is a {state['model_config']['model']} run on "
                             f"{state['dataset']}, not {config.model} on {config.dataset}")
        check_resume_flags(state["train_config"], dataclasses.asdict(config), ckpt_path,
                           command_fields)
        model = restore_model(state, ckpt_path, device)
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
        try:
            optimizer.load_state_dict(state["optimizer"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"{ckpt_path} is malformed: its optimizer state does not "
                                  f"fit the model ({type(exc).__name__}: {clip(exc, 400)})"
                                  ) from None
        _check_optimizer_state(optimizer, ckpt_path)
        mixed.load_state_dict(state.get("grad_scaler"))   # fp16's loss scale, for an exact replay
        if config.benchmark:
            # The forms the killed process had timed, so that the resume continues as it
            # would have (a new measurement may choose otherwise).
            _autotune.forget()
            try:
                _autotune.restore(state.get("form_choices", []))
            except ValueError as exc:
                raise CheckpointError(f"{ckpt_path} is malformed: {clip(exc, 300)}") from None
        start_step, losses = state["step"], list(state["losses"])
        train_seconds, initial_bpd = state["train_seconds"], state["initial_test_bpd"]
        if start_step >= total_steps:
            raise ValueError(f"the checkpoint is at step {start_step}; ask for more steps "
                             f"than that to resume (got {total_steps})")
    else:
        if ckpt_path.exists():
            raise ValueError(f"{ckpt_path} exists: pass --resume to continue it, or choose "
                             "another --out")
        model = _build(config, data.image_shape).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
        # ActNorm's data-dependent initialisation, on the first batch (before DDP wraps
        # the model, so that rank 0's values are broadcast to every rank).
        first = data.train[batch_indices(len(data.train), global_batch, 0, config.seed, ctx)]
        with torch.no_grad(), mixed.autocast():
            model(first.to(device), _noise(config.seed, 0, ctx.rank))
        if config.benchmark:
            # Times the forms of the end-of-run sampling pass now, so that they are in every
            # checkpoint and a resumed run draws the same samples as an uninterrupted one.
            with torch.no_grad():
                model.sample(config.num_samples, config.temperature,
                             generator=torch.Generator().manual_seed(config.seed))
    tb_log = TensorBoardLog(out / "tensorboard" if config.tensorboard and ctx.is_main else None,
                            resume_step=start_step)
    if initial_bpd is None and ctx.is_main:
        initial_bpd = evaluate(model, data.test, config.eval_batch_size, limit=config.eval_limit)
        print(f"initial test bits/dim: {initial_bpd:.4f}", file=sys.stderr)
        tb_log.test_bits_per_dim(0, initial_bpd)

    trainer = model
    if ctx.enabled:
        trainer = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index or 0] if device.type == "cuda" else None)

    saved_step = start_step if config.resume else None   # the step ckpt_path holds
    growth = guards.GrowthMonitor(model)

    def diverged(reason: str) -> TrainingDiverged:
        progress.close()
        growth.close()
        kept = (f"kept the last good checkpoint {ckpt_path} (step {saved_step})"
                if saved_step is not None else "no checkpoint was written yet")
        seen = (f"; the largest inverse growth max|x|/max|y| was {growth.max_seen:.3g}"
                if growth.max_seen is not None else "")
        return TrainingDiverged(f"{reason} (the inverse convolution can overflow when its "
                                f"filter is unstable{seen}); {kept}; lower --lr or --grad-clip")

    def checkpoint(step: int) -> None:
        nonlocal saved_step
        if ctx.is_main:
            model_state = model.state_dict()
            if not guards.all_finite(model_state.values()):
                bad = guards.nonfinite_names(model_state.items())
                raise diverged(f"non-finite values in {', '.join(bad[:3])} at step {step}; "
                               "not saved")
            save_checkpoint({"model": model_state, "model_config": model.config,
                             "optimizer": optimizer.state_dict(), "step": step,
                             "losses": losses, "train_seconds": train_seconds,
                             "initial_test_bpd": initial_bpd, "dataset": config.dataset,
                             "train_config": dataclasses.asdict(config),
                             **({"form_choices": _autotune.recorded()} if config.benchmark
                                else {}),
                             **({"grad_scaler": mixed.state_dict()} if mixed.scales_loss else {})},
                            ckpt_path)
        saved_step = step

    progress = Progress(total_steps, start_step, config.progress and ctx.is_main)
    step, stopped_by_budget, t_start = start_step, False, time.perf_counter()
    model.train()
    while step < total_steps:
        # Ctrl-C is honoured here, between whole steps, so the checkpoint replays exactly.
        if interrupt is not None and not distributed.all_agree(ctx, not interrupt.requested):
            progress.close()
            growth.close()
            train_seconds += time.perf_counter() - t_start
            checkpoint(step)
            raise guards.TrainingInterrupted(step, ckpt_path)
        idx = batch_indices(len(data.train), global_batch, step, config.seed, ctx)
        x = data.train[idx].to(device)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, step)
        with mixed.autocast():
            loss = trainer(x, _noise(config.seed, step, ctx.rank)).mean()
        if not distributed.all_agree(ctx, bool(torch.isfinite(loss))):
            raise diverged(f"non-finite loss at step {step + 1}")
        optimizer.zero_grad(set_to_none=True)
        mixed.backward(loss)
        mixed.unscale(optimizer)
        # A step is kept only with finite gradients and finite parameters after it (with
        # fp16's GradScaler, non-finite gradients are an overflow: the scaler skips the step).
        if not mixed.scales_loss and not distributed.all_agree(
                ctx, guards.all_finite(p.grad for p in model.parameters())):
            bad = guards.nonfinite_names((n, p.grad) for n, p in model.named_parameters())
            raise diverged(f"non-finite gradient at step {step + 1} (in {', '.join(bad[:3])})")
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        mixed.step(optimizer)
        if not distributed.all_agree(ctx, guards.all_finite(model.parameters())):
            bad = guards.nonfinite_names(model.named_parameters())
            raise diverged(f"non-finite parameters after the update of step {step + 1} "
                           f"(in {', '.join(bad[:3])})")
        step += 1
        losses.append(loss.item())
        tb_log.inverse_growth(step, growth.peak(step))
        progress.update(step, losses[-1])
        tb_log.train_step(step, losses[-1], optimizer.param_groups[0]["lr"])
        elapsed = time.perf_counter() - t_start
        over_budget = config.time_budget is not None and train_seconds + elapsed >= config.time_budget
        if step % config.checkpoint_every == 0 or step == total_steps or over_budget:
            train_seconds += elapsed
            t_start = time.perf_counter()
            checkpoint(step)
        if distributed.all_agree(ctx, over_budget):
            stopped_by_budget = step < total_steps
            break
    progress.close()
    growth.close()
    if interrupt is not None:
        interrupt.restore()   # Ctrl-C during the final evaluation interrupts it at once
    distributed.barrier(ctx)
    if not ctx.is_main:
        return {}

    metrics = {"dataset": config.dataset, "model": model.config["model"],
               "solve_on": model.config["solve_on"], "steps": step,
               "requested_steps": total_steps, "stopped_by_time_budget": stopped_by_budget,
               "precision": config.precision,
               # how equal forms were chosen: "deterministic" (the fixed rule) or "benchmark"
               "benchmark": config.benchmark, "form_choice": backends.mode(),
               "batch_size": config.batch_size, "world_size": ctx.world_size,
               "initial_test_bpd": initial_bpd,
               "test_bpd": evaluate(model, data.test, config.eval_batch_size,
                                    limit=config.eval_limit),
               "test_images": min(len(data.test), config.eval_limit or len(data.test)),
               "parameters": sum(p.numel() for p in model.parameters()),
               "train_seconds": train_seconds,
               # train_seconds covers every session of a resumed run, so divide by all steps.
               "seconds_per_step": train_seconds / step if step else None,
               "final_train_loss": losses[-1] if losses else None, "train_losses": losses,
               "max_inverse_growth": growth.max_seen,
               "inverse_growth_warning_threshold": growth.threshold}
    model.eval()
    gen = torch.Generator().manual_seed(config.seed)
    samples = model.sample(config.num_samples, config.temperature, generator=gen)
    metrics["samples"] = str(save_grid(samples, out / "samples.png"))
    tb_log.test_bits_per_dim(step, metrics["test_bpd"])
    tb_log.samples(step, samples)
    tb_log.close()
    metrics["pass_timings_ms"] = {f"batch_{b}": placement_timings(model, b)
                                  for b in (1, min(100, config.eval_batch_size))}
    save_json(metrics, out / "metrics.json")
    return metrics


def _check_optimizer_state(optimizer, path) -> None:
    """The optimizer's state must be finite after ``load_state_dict`` cast it to the
    parameters' dtype (a float64 1e300 in Adam's moments is finite in the file and inf in
    float32): a healthy run never saves one, and resuming from it would only diverge."""
    named = [(f"optimizer state {index}: {key}", value)
             for index, param_state in enumerate(optimizer.state.values())
             for key, value in param_state.items() if isinstance(value, torch.Tensor)]
    if not guards.all_finite(tensor for _, tensor in named):
        bad = guards.nonfinite_names(named)
        raise CheckpointError(f"{path} holds NaN or infinite values in its optimizer state "
                              f"({', '.join(bad[:3])}{' and more' if len(bad) > 3 else ''}, "
                              "after the cast to the parameters' dtype): it cannot be resumed; "
                              "use an earlier checkpoint")


def restore_model(state: dict, path, device="cpu"):
    """Rebuilds the model a loaded checkpoint describes; errors name ``path``.

    The model is first built on the meta device (no memory) and its tensor names and
    shapes compared with the checkpoint's, so a ``model_config`` that asks for more than
    the file holds is refused before anything is allocated for it."""
    try:
        skeleton = size.meta_model(lambda: build_model(state["model_config"]))
        size.check_tensor_elements(skeleton)
        _check_tensor_shapes(skeleton.state_dict(), state["model"])
        model = build_model(state["model_config"])
        model.load_state_dict(state["model"])
    except (KeyError, TypeError, ValueError, RuntimeError, NotImplementedError) as exc:
        raise CheckpointError(f"{path} is malformed: its model_config and model state do not "
                              f"build a model ({type(exc).__name__}: {clip(exc, 400)})") from None
    return model.to(device)


def _check_tensor_shapes(expected: dict, weights: dict) -> None:
    """The file's tensors have the names, shapes and dtypes of the model's."""
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    if missing or unexpected:
        raise ValueError(f"the config's model has {len(missing)} tensor(s) the file lacks "
                         f"{quote(missing[:3])} and the file {len(unexpected)} it does not "
                         f"take {quote(unexpected[:3])}")
    for key, tensor in expected.items():
        if tuple(tensor.shape) != tuple(weights[key].shape):
            raise ValueError(f"{quote(key)} has shape {tuple(weights[key].shape)} in the file, "
                             f"but {tuple(tensor.shape)} in the model its config builds")
        # load_state_dict would cast, and a cast can overflow what the file's finiteness
        # check passed (1e300 in float64 is inf in float32): the dtypes must match.
        if tensor.dtype != weights[key].dtype:
            raise ValueError(f"{quote(key)} is {weights[key].dtype} in the file, but "
                             f"{tensor.dtype} in the model its config builds")


def load_trained(checkpoint: str, device: str = "cpu"):
    state = load_checkpoint(checkpoint, map_location=device)
    return restore_model(state, checkpoint, device).eval(), state
