"""torchrun / DistributedDataParallel plumbing: NCCL on GPUs, gloo on CPU."""

from __future__ import annotations

import dataclasses
import os

import torch
import torch.distributed as dist


@dataclasses.dataclass(frozen=True)
class Context:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup(device_type: str) -> Context:
    """Joins the process group when launched by torchrun (WORLD_SIZE > 1)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Context()
    ctx = Context(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if device_type == "cuda":
        torch.cuda.set_device(ctx.local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return ctx


def barrier(ctx: Context) -> None:
    if ctx.enabled:
        dist.barrier()


def all_agree(ctx: Context, flag: bool) -> bool:
    """True when ``flag`` is true on every rank (so all ranks stop together)."""
    if not ctx.enabled:
        return flag
    value = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item() > 0)


def teardown(ctx: Context) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()
