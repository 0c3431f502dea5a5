"""Builds the CPU emulation of the CUDA kernels (DESIGN.md §8) for test_cuda_emulated.py.

The real kernel bodies (csrc/invconv/cuda_solve_kernels.cuh), the generated CUDA files and
the generated registry are compiled as host C++ against csrc/emu/ (the shim and the emulated
launcher), with the compiler and CPU flags that built the project. Products:

- ``load_module(stems)``: the pybind11 module ``_cuda_emu`` (same ``solve`` entry as the real
  CUDA module, plus the fake device's controls);
- ``load_cpu_reference(stems)``: the CPU module (csrc/bind_cpu.cpp, the generated CPU files)
  built with the same flags as ``_cuda_emu``. Both are built with ``-ffp-contract=off``:
  with contraction on, GCC fuses a*b+c into an FMA in some places of one kernel and not of
  the other (the shipped CPU module and the emulation differ in the last bit of ~1 in 20
  results though they sum in the same order), so only without it does "same order" imply
  "same bits";
- ``build_tsan_check(stems)``: csrc/emu/tsan_check.cpp built with ``-fsanitize=thread``, an
  executable that runs small cases of every path with the threads running concurrently.

Builds are cached under ``build/cuda_emulation/<key>/``; the key hashes every input (sources,
headers, compiler and its version, flags, Python ABI), so a test run pays once and any change
to the kernel rebuilds. A file lock keeps concurrent test runs from building over each other.
"""

from __future__ import annotations

import concurrent.futures
import functools
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"
EMU = CSRC / "emu"
GENERATED_CUDA = ROOT / "generated" / "cuda"
GENERATED_CPU = ROOT / "generated" / "cpu"
CACHE = ROOT / "build" / "cuda_emulation"
MODULE_NAME = "_cuda_emu"

# The CPU module's flags in CMakeLists.txt (CMAKE_BUILD_TYPE=Release, C++17 with GNU
# extensions, -march=native when INVERSEFLOW_NATIVE), less LTO and OpenMP (slower to build,
# unused here), plus -ffp-contract=off (see above).
BASE_FLAGS = ["-std=gnu++17", "-O3", "-DNDEBUG", "-fno-math-errno", "-fno-trapping-math",
              "-ffp-contract=off", "-pthread"]
TSAN_FLAGS = ["-std=gnu++17", "-O1", "-g", "-fno-math-errno", "-fno-trapping-math",
              "-ffp-contract=off", "-pthread", "-fsanitize=thread"]


class BuildError(RuntimeError):
    pass


def _project_build_info() -> dict:
    try:
        from inverseflow.ops import _backends
        return _backends.build_info()
    except Exception:  # noqa: BLE001 - an unbuilt package just means "use the defaults"
        return {}


def _cmake_cache_compiler() -> str | None:
    for cache in sorted((ROOT / "build").glob("*/CMakeCache.txt")):
        for line in cache.read_text(errors="replace").splitlines():
            if line.startswith("CMAKE_CXX_COMPILER:"):
                path = line.split("=", 1)[1].strip()
                if path and shutil.which(path):
                    return path
    return None


@functools.lru_cache(maxsize=None)
def find_compiler() -> str | None:
    """The C++ compiler that built the project, else $CXX, else c++/g++/clang++ on PATH."""
    recorded = _project_build_info().get("toolchain", {}).get("cxx")
    candidates = [recorded, _cmake_cache_compiler(), os.environ.get("CXX"),
                  "c++", "g++", "clang++"]
    for candidate in candidates:
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return None


def cpu_flags() -> list[str]:
    native = str(_project_build_info().get("cpu_native", "ON")).upper()
    return BASE_FLAGS + (["-march=native"] if native in ("ON", "TRUE", "1", "YES") else [])


def specialization_stems(shapes_and_patterns) -> list[str]:
    """Generated CUDA instantiations (file stems: kernel and group channels) that serve any
    of (channels, *kernel, pattern), the kernel given by its 1 to 3 sizes (``(8, 3, "l")``,
    ``(4, 3, 3, "tl")``, ``(8, 2, 2, 2, "oct")``); a corner and a group pattern of the same
    group size share one."""
    stems = set()
    for channels, *kernel, pattern in shapes_and_patterns:
        group_channels = channels // {"quad": 4, "pair": 2, "oct": 8}.get(pattern.lower(), 1)
        stem = f"invconv_k{'x'.join(str(k) for k in kernel)}_g{group_channels}"
        if (GENERATED_CUDA / f"{stem}_cuda.cu").exists():
            stems.add(stem)
    return sorted(stems)


def _kernel_inputs() -> list[Path]:
    return sorted(p for p in EMU.rglob("*") if p.is_file()) + sorted(
        p for p in (CSRC / "invconv").glob("*") if p.is_file()) + [CSRC / "bind_cpu.cpp"]


def _key(kind: str, cxx: str, flags: list[str], sources: list[Path], extra: str) -> str:
    digest = hashlib.sha256()
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    digest.update(json.dumps([kind, cxx, version, flags, extra]).encode())
    for path in sorted(set(_kernel_inputs() + sources)):
        digest.update(str(path.relative_to(ROOT)).encode())
        digest.update(path.read_bytes())
    return f"{kind}-{digest.hexdigest()[:20]}"


def _compile_all(jobs: list[tuple[list[str], Path]]) -> None:
    def run(job):
        cmd, _ = job
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise BuildError(f"emulation build failed:\n$ {' '.join(cmd)}\n{proc.stderr[-6000:]}")
    workers = max(1, min(len(jobs), os.cpu_count() or 1))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        list(pool.map(run, jobs))


def _build_cached(kind: str, product: str, sources: list[tuple[Path, list[str]]],
                  flags: list[str], link: list[str], extra: str = "") -> Path:
    """Compiles each (source, extra flags) to an object and links them into `product`."""
    cxx = find_compiler()
    if cxx is None:
        raise BuildError("no C++ compiler found")
    key = _key(kind, cxx, flags + link, [s for s, _ in sources], extra)
    final = CACHE / key
    if (final / product).exists():
        return final / product
    import filelock  # a torch dependency

    CACHE.mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(str(CACHE / f"{key}.lock")):
        if (final / product).exists():
            return final / product
        work = Path(tempfile.mkdtemp(prefix=f"{key}.tmp", dir=CACHE))
        includes = ["-I", str(EMU), "-I", str(CSRC)]
        jobs = []
        for i, (source, source_flags) in enumerate(sources):
            obj = work / f"{i:03d}_{source.stem}.o"
            lang = ["-x", "c++"] if source.suffix == ".cu" else []
            jobs.append(([cxx, *flags, *includes, *source_flags, *lang, "-c", str(source),
                          "-o", str(obj)], obj))
        _compile_all(jobs)
        cmd = [cxx, *flags, *[str(obj) for _, obj in jobs], *link, "-o", str(work / product)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise BuildError(f"emulation link failed:\n$ {' '.join(cmd)}\n{proc.stderr[-6000:]}")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(work, final)
    return final / product


def _registry_defines(stems: list[str]) -> list[str]:
    return [f"-DIFLOW_HAS_{stem}" for stem in stems]


def _pybind11():
    try:
        import pybind11
    except ImportError as exc:
        raise BuildError("the emulation module needs pybind11 (in the `test` extra: "
                         "pip install -e '.[test]')") from exc
    return pybind11


def build_module(stems: list[str]) -> Path:
    pybind11 = _pybind11()
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    includes = ["-I", sysconfig.get_paths()["include"], "-I", pybind11.get_include()]
    flags = cpu_flags() + ["-fPIC", "-fvisibility=hidden"]
    sources = [(EMU / "bind_cuda_emu.cpp", includes),
               (ROOT / "generated" / "registry_cuda.cu", _registry_defines(stems))]
    sources += [(GENERATED_CUDA / f"{stem}_cuda.cu", []) for stem in stems]
    return _build_cached("module", MODULE_NAME + suffix, sources, flags, ["-shared"],
                         extra=f"{sys.version} {pybind11.__version__} {suffix}")


def build_cpu_reference(stems: list[str]) -> Path:
    pybind11 = _pybind11()

    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    includes = ["-I", sysconfig.get_paths()["include"], "-I", pybind11.get_include()]
    flags = cpu_flags() + ["-fPIC", "-fvisibility=hidden"]
    sources = [(CSRC / "bind_cpu.cpp", includes),
               (ROOT / "generated" / "registry_cpu.cpp", _registry_defines(stems))]
    sources += [(GENERATED_CPU / f"{stem}_cpu.cpp", []) for stem in stems]
    return _build_cached("cpuref", "_cpu" + suffix, sources, flags, ["-shared"],
                         extra=f"{sys.version} {pybind11.__version__} {suffix}")


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_module(stems: list[str]):
    return _load(MODULE_NAME, build_module(stems))


def load_cpu_reference(stems: list[str]):
    return _load("_cpu", build_cpu_reference(stems))


def build_tsan_check(stems: list[str]) -> Path:
    sources = [(EMU / "tsan_check.cpp", []),
               (ROOT / "generated" / "registry_cuda.cu", _registry_defines(stems))]
    sources += [(GENERATED_CUDA / f"{stem}_cuda.cu", []) for stem in stems]
    return _build_cached("tsan", "tsan_check", sources, TSAN_FLAGS, [])
