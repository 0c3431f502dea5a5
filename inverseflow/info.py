"""``inverseflow info``: what was built, and why a backend is missing."""

from __future__ import annotations

import torch

from .ops import _backends

PATTERNS = ("tl", "tr", "bl", "br", "quad")
DTYPES = ("float32", "float64")
DIRECTIONS = ("solve", "transposed")


def collect() -> dict:
    """A JSON-able summary of the build: backends, their specializations and problems."""
    info = {"torch": torch.__version__, "build": _backends.build_info(), "backends": {}}
    for name in ("_cpu", "_cuda"):
        backend = name.lstrip("_")
        error = _backends.import_error(name)
        entry = {"built": error is None}
        if error is None:
            module = _backends.cpu_module() if backend == "cpu" else _backends.cuda_module()
            entry["specializations"] = [
                {"name": s["name"], "kernel": f"{s['kh']}x{s['kw']}", "channels": s["channels"],
                 "pattern": PATTERNS[s["pattern"]], "dtype": DTYPES[s["dtype"]],
                 "direction": DIRECTIONS[s["direction"]]}
                for s in module.specializations()]
            if backend == "cuda":
                try:
                    entry["devices"] = module.device_count()
                except RuntimeError as exc:
                    entry["devices"] = 0
                    entry["device_error"] = str(exc)
            else:
                entry["openmp"] = bool(module.openmp)
        else:
            entry["error"] = error if backend == "cpu" else (
                f"{error}; build: {_backends.build_info().get('cuda')}")
        info["backends"][backend] = entry
    info["torch_cuda_available"] = torch.cuda.is_available()
    info["jit"] = jit_cache()
    return info


def jit_cache() -> dict:
    """The layer shapes specialized at run time and cached (inverseflow.jit)."""
    from . import jit

    return {"cache": str(jit.cache_dir()), "specializations": jit.cached_specializations()}


def format_report(info: dict) -> str:
    lines = [f"inverseflow with torch {info['torch']}"]
    build = info["build"]
    if "layers_built" in build:
        lines.append(f"layer specs built: {len(build['layers_built'])} of {build['layers_total']}"
                     + (f" (filter {build['spec_filter']!r})" if build.get("spec_filter") else ""))
    lines.append(f"cuda build: {build.get('cuda')}")
    for backend, entry in info["backends"].items():
        if not entry["built"]:
            lines.append(f"[{backend}] NOT AVAILABLE: {entry['error']}")
            continue
        extra = ""
        if backend == "cpu":
            extra = f", OpenMP {'on' if entry['openmp'] else 'OFF'}"
        else:
            extra = f", {entry['devices']} device(s)"
            if "device_error" in entry:
                extra += f" ({entry['device_error']})"
        specs = entry["specializations"]
        lines.append(f"[{backend}] built, {len(specs)} specializations{extra}; "
                     "other shapes use the generic kernel")
        for s in specs:
            lines.append(f"    {s['name']}")
    if info["torch_cuda_available"] and not info["backends"]["cuda"]["built"]:
        lines.append("WARNING: this machine has a GPU but the CUDA backend is missing; "
                     + _backends.REBUILD_HINT)
    return "\n".join(lines)
