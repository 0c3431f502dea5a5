"""Loading of the compiled kernel modules, with errors that say how to fix a bad build."""

from __future__ import annotations

import functools
import importlib
import json
import os

import torch

REBUILD_HINT = ("rebuild with `pip install -v --no-build-isolation .` (or `pip install -e .`) "
                "on a machine where nvcc is on PATH; `python -m inverseflow info` shows what "
                "was built and why")


@functools.lru_cache(maxsize=None)
def build_info() -> dict:
    module, error = _import("_cpu")
    if module is None:
        return {"cuda": f"unknown: the CPU module, which records the build, is missing ({error})"}
    return json.loads(module.build_info)


@functools.lru_cache(maxsize=None)
def _import(name: str):
    try:
        return importlib.import_module(f"inverseflow.ops.{name}"), None
    except ImportError as exc:
        return None, f"{type(exc).__name__}: {exc}"


def cpu_module():
    module, error = _import("_cpu")
    if module is None:
        raise RuntimeError(f"inverseflow's CPU kernels are not built ({error}); {REBUILD_HINT}. "
                           f"Without a C++ build, {BACKEND_ENV}=triton runs the ops on a GPU")
    return module


def cuda_module():
    module, error = _import("_cuda")
    if module is None:
        reason = error if "No module named" not in (error or "") else build_info().get("cuda")
        raise RuntimeError(
            f"inverseflow was built without its CUDA backend ({reason}); {REBUILD_HINT}")
    return module


# Which kernels run the ops (DESIGN §18): INVERSEFLOW_BACKEND, or set_backend() (wins).
BACKEND_CHOICES = ("auto", "cpu", "cuda", "triton")
BACKEND_ENV = "INVERSEFLOW_BACKEND"
_backend_setting: str | None = None


def set_backend(name: str | None) -> None:
    """Forces the kernels the ops run: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"triton"``;
    ``None`` goes back to ``$INVERSEFLOW_BACKEND`` (default ``auto``)."""
    global _backend_setting
    if name is not None and name not in BACKEND_CHOICES:
        raise ValueError(f"backend must be one of {', '.join(BACKEND_CHOICES)} (or None); "
                         f"got {name!r}")
    _backend_setting = name


def get_backend() -> str:
    """The backend setting in force: set_backend()'s, else ``$INVERSEFLOW_BACKEND``."""
    if _backend_setting is not None:
        return _backend_setting
    name = os.environ.get(BACKEND_ENV, "auto").strip().lower() or "auto"
    if name not in BACKEND_CHOICES:
        raise ValueError(f"{BACKEND_ENV} must be one of {', '.join(BACKEND_CHOICES)}; "
                         f"got {name!r}")
    return name


def backend_for(device_type: str) -> str:
    """The kernels for tensors on ``device_type``: ``"cpu"``, ``"cuda"`` or ``"triton"``.

    ``auto`` on a GPU takes the CUDA module where it is built and the device is NVIDIA,
    otherwise Triton (always on ROCm, where no CUDA module is built). Triton on CPU tensors
    runs only in Triton's interpreter (``TRITON_INTERPRET=1``), which is for tests."""
    if device_type == "cpu" and _backend_setting is None and BACKEND_ENV not in os.environ:
        return "cpu"   # the common case first: the batch-1 sampling pass calls this per layer
    choice = get_backend()
    if choice == "triton":
        if device_type == "cpu" and os.environ.get("TRITON_INTERPRET", "0") != "1":
            raise ValueError(
                f"the triton backend ({BACKEND_ENV}=triton or set_backend('triton')) runs CPU "
                "tensors only in Triton's interpreter, for tests: set TRITON_INTERPRET=1 "
                f"before importing triton, or use {BACKEND_ENV}=cpu/auto")
        return "triton"
    if device_type == "cpu":
        if choice == "cuda":
            raise ValueError(f"{BACKEND_ENV}=cuda (or set_backend('cuda')) runs CUDA tensors "
                             "only; these are on the CPU: move them, or use auto/cpu")
        return "cpu"
    if device_type == "cuda":
        if choice == "cpu":
            raise ValueError(f"{BACKEND_ENV}=cpu (or set_backend('cpu')) runs CPU tensors "
                             "only; these are on a GPU: use auto, cuda or triton")
        if choice == "cuda" or (torch.version.hip is None and (
                import_error("_cuda") is None or triton_version() is None)):
            return "cuda"   # without Triton, module_for's error says what to build
        return "triton"
    return device_type   # module_for names what is supported


def triton_version() -> str | None:
    """Triton's version where it is installed (``pip install inverseflow[triton]``)."""
    try:
        from importlib.metadata import PackageNotFoundError, version
        return version("triton")
    except PackageNotFoundError:
        return None


def module_for(device_type: str):
    if device_type == "cpu":
        return cpu_module()
    if device_type == "cuda":
        return cuda_module()
    raise RuntimeError(f"inverseflow has no kernel for device type {device_type!r} "
                       "(supported: cpu, cuda)")


def import_error(name: str) -> str | None:
    return _import(name)[1]
