"""Loading of the compiled kernel modules, with errors that say how to fix a bad build."""

from __future__ import annotations

import functools
import importlib
import json

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
        raise RuntimeError(f"inverseflow's CPU kernels are not built ({error}); {REBUILD_HINT}")
    return module


def cuda_module():
    module, error = _import("_cuda")
    if module is None:
        reason = error if "No module named" not in (error or "") else build_info().get("cuda")
        raise RuntimeError(
            f"inverseflow was built without its CUDA backend ({reason}); {REBUILD_HINT}")
    return module


def module_for(device_type: str):
    if device_type == "cpu":
        return cpu_module()
    if device_type == "cuda":
        return cuda_module()
    raise RuntimeError(f"inverseflow has no kernel for device type {device_type!r} "
                       "(supported: cpu, cuda)")


def import_error(name: str) -> str | None:
    return _import(name)[1]
