"""The CPU solve against the machine's limit: useful GFLOP/s and the fraction of FMA peak.

**Useful FLOPs** of one solve (or its transpose, or the causal conv y = T x), per voxel and
channel group of ``cg`` channels: ``2·((taps − 1)·cg² + cg(cg + 1)/2)``. Every off-centre tap
is a full cg×cg matrix-vector product; the centre is a triangular one (L⁻¹ for the solves, L
for the conv). A dense ``F.conv2d`` of the same shape multiplies the masked zeros too, and
is credited with the same useful FLOPs, so both rates compare like with like.

**Peak** = cores × clock × FMA units × lanes × 2 FLOPs, where (each source is recorded in the
JSON, and what is assumed says so):

- cores: the threads the solve runs on (``torch.get_num_threads()``), at most the CPUs online;
- clock: lscpu's "CPU max MHz" when it reports one, else /proc/cpuinfo's "cpu MHz" (a
  virtual machine's nominal clock; a turbo above it makes the fraction look higher);
- lanes: the vector width the CPU module was compiled for (its ``vector_bytes``: 64 for
  AVX-512, 32 for AVX2) over the dtype's size;
- FMA units of that width per core: not in lscpu or cpuinfo, so taken from a table by vendor
  and family (``_fma_units``); ``INVERSEFLOW_FMA_UNITS`` overrides it.
"""

from __future__ import annotations

import os
import re
import subprocess
from functools import lru_cache

import torch

from ..ops import _backends

FMA_UNITS_ENV = "INVERSEFLOW_FMA_UNITS"


def useful_flops(batch: int, channels: int, spatial: tuple[int, ...], kernel: tuple[int, ...],
                 groups: int = 1) -> int:
    """FLOPs a solve, transposed solve or causal conv of this shape must do (see above)."""
    cg = channels // groups
    taps, voxels = 1, 1
    for k in kernel:
        taps *= k
    for n in spatial:
        voxels *= n
    per_voxel_group = 2 * ((taps - 1) * cg * cg + cg * (cg + 1) // 2)
    return batch * groups * voxels * per_voxel_group


def _cpuinfo() -> dict:
    fields = {}
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if ":" in line:
                    key, value = (part.strip() for part in line.split(":", 1))
                    fields.setdefault(key, value)   # the first processor's values
    except OSError:
        pass
    return fields


def _lscpu_max_mhz() -> float | None:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"^CPU max MHz:\s*([\d.]+)", out, re.MULTILINE)
    return float(match.group(1)) if match else None


def _fma_units(vendor: str, family: int, vector_bytes: int) -> tuple[int, str]:
    """FMA units of the build's vector width per core, and why that number."""
    if vendor == "AuthenticAMD" and family == 25:
        if vector_bytes >= 64:
            return 1, ("AMD family 25 (Zen 3/Zen 4): two 256-bit FMA pipes; a 512-bit FMA "
                       "occupies both (Zen 4), so one 512-bit FMA per cycle")
        return 2, "AMD family 25 (Zen 3/Zen 4): two 256-bit FMA pipes"
    if vendor == "AuthenticAMD" and family == 26:
        return 2, "AMD family 26 (Zen 5): two FMA pipes of the full vector width (assumed)"
    if vendor == "AuthenticAMD" and family == 23:
        return 2, "AMD family 23 (Zen 2): two 256-bit FMA pipes (Zen 1 had 128-bit ones)"
    if vendor == "GenuineIntel":
        return 2, ("Intel: two FMA units of the vector width (Haswell and later for AVX2; "
                   "Xeon Gold/Platinum for AVX-512; some parts have one 512-bit unit)")
    return 2, f"unknown CPU ({vendor or 'no vendor'}, family {family}): two FMA units assumed"


@lru_cache(maxsize=None)
def _machine() -> dict:
    info = _cpuinfo()
    max_mhz = _lscpu_max_mhz()
    if max_mhz:
        clock, clock_source = max_mhz / 1e3, "lscpu 'CPU max MHz'"
    elif info.get("cpu MHz"):
        clock, clock_source = float(info["cpu MHz"]) / 1e3, (
            "/proc/cpuinfo 'cpu MHz' (lscpu reports no max clock; turbo not counted)")
    else:
        clock, clock_source = None, "unknown: neither lscpu nor /proc/cpuinfo gives a clock"
    return {"model": info.get("model name", "unknown"), "vendor": info.get("vendor_id", ""),
            "family": int(info.get("cpu family", "0") or 0), "clock_ghz": clock,
            "clock_source": clock_source, "cpus_online": os.cpu_count() or 1,
            "flags_avx512f": "avx512f" in info.get("flags", "").split(),
            "flags_avx2": "avx2" in info.get("flags", "").split()}


def cpu_peak(dtype: torch.dtype = torch.float32, threads: int | None = None) -> dict:
    """The FMA peak of the CPU module as built, on ``threads`` cores, with its sources."""
    machine = _machine()
    module = _backends.cpu_module()
    vector_bytes = int(getattr(module, "vector_bytes", 0)) or None
    threads = threads or torch.get_num_threads()
    cores = min(threads, machine["cpus_online"])
    element = torch.finfo(dtype).bits // 8
    units, why = _fma_units(machine["vendor"], machine["family"], vector_bytes or 16)
    if os.environ.get(FMA_UNITS_ENV, "").strip():
        units, why = int(os.environ[FMA_UNITS_ENV]), f"set by {FMA_UNITS_ENV}"
    lanes = (vector_bytes or 16) // element
    peak = (cores * machine["clock_ghz"] * units * lanes * 2
            if machine["clock_ghz"] else None)
    return {"cpu": machine["model"], "vendor": machine["vendor"], "family": machine["family"],
            "cores": cores, "clock_ghz": machine["clock_ghz"],
            "clock_source": machine["clock_source"],
            "build_vector_bits": 8 * vector_bytes if vector_bytes else None,
            "build_vector_source": ("the CPU module's vector_bytes" if vector_bytes else
                                    "unknown (module without vector_bytes): 128 bits assumed"),
            "dtype": str(dtype).removeprefix("torch."), "lanes": lanes, "fma_units": units,
            "fma_units_assumption": why, "peak_gflops": peak,
            "formula": "cores x clock_GHz x fma_units x lanes x 2"}


def rate(flops: int, milliseconds: float, peak: dict) -> dict:
    """GFLOP/s of ``flops`` done in ``milliseconds``, and the fraction of ``peak``."""
    gflops = flops / (milliseconds * 1e6)
    fraction = gflops / peak["peak_gflops"] if peak.get("peak_gflops") else None
    return {"gflops": gflops, "fraction_of_peak": fraction}
