"""Bounds on a model's size, checked before it is built.

A configuration that asks for far more than any of the paper's models (a user's
``--flow-steps 1000000``, or a checkpoint's ``model_config["steps"] = 10**6``) would build
modules until memory runs out. Two checks stop it first: the number of flow steps, from
the configuration alone, and the number of parameters and buffers, counted on a model built
on the ``meta`` device (shapes only, no memory), so that no model's arithmetic is copied here.
"""

from __future__ import annotations

import math

import torch

# levels × steps (InverseFlow, Glow) or blocks × steps (ConvFlow). The paper's largest
# model (ImageNet 64: L=4, K=16) has 64; sixteen times that is still a sane experiment.
MAX_FLOW_STEPS = 1024
# Parameters and buffers together: 2**30 floats are 4 GiB in float32, 28 times the
# paper's largest model (about 38 M).
MAX_TENSOR_ELEMENTS = 2**30


def _number(value) -> str:
    # A huge int cannot even be printed (Python caps int -> str at 4300 digits).
    return str(value) if value.bit_length() <= 64 else f"a {value.bit_length()}-bit number"


def check_flow_steps(kind: str, config: dict) -> None:
    """Raises ValueError when ``config`` (a model's keyword arguments) asks for more than
    :data:`MAX_FLOW_STEPS` flow steps; values that are not positive ints are left to the
    model's own checks."""
    outer = "blocks" if kind == "convflow" else "levels"
    counts = {name: config.get(name) for name in (outer, "steps")}
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1
               for v in counts.values()):
        return
    total = math.prod(counts.values())
    if total > MAX_FLOW_STEPS:
        raise ValueError(
            f"{outer} × steps = {_number(counts[outer])} × {_number(counts['steps'])} flow "
            f"steps is more than the {MAX_FLOW_STEPS} a model may have (the paper's largest "
            f"has 64); lower {outer} or steps")


def meta_model(build):
    """``build()`` run on the meta device: the model's structure and tensor shapes, with
    no memory behind them."""
    with torch.device("meta"):
        return build()


def tensor_elements(model: torch.nn.Module) -> int:
    return sum(t.numel() for t in (*model.parameters(), *model.buffers()))


def check_tensor_elements(model: torch.nn.Module) -> None:
    """Raises ValueError when ``model`` (typically a :func:`meta_model`) holds more than
    :data:`MAX_TENSOR_ELEMENTS` parameter and buffer elements."""
    count = tensor_elements(model)
    if count > MAX_TENSOR_ELEMENTS:
        raise ValueError(
            f"the model would hold {count:.3g} parameter and buffer elements "
            f"({count * 4 / 2**30:.3g} GiB in float32), more than the {MAX_TENSOR_ELEMENTS:.3g} "
            "allowed (the paper's largest model has 3.8e+07); lower the widths, levels or steps")
