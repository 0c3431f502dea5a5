"""The compiler and flags of a run-time specialization: those the installed build used.

CMakeLists.txt records its compilers and flags in the build info of the CPU module
(``toolchain``); a run-time module is compiled the same way, so that it runs the code a
rebuild with the shape in ``codegen/specs.toml`` would have produced.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import sysconfig
from pathlib import Path

from ..ops import _backends
from ._errors import ToolchainError

PIP_HINT = "pip install 'inverseflow[jit]'"


@dataclasses.dataclass(frozen=True)
class Toolchain:
    """How to compile one backend's run-time module."""

    backend: str
    compiler: str          # absolute path
    version: str           # first line of `compiler --version`
    flags: tuple           # the build's flags, then the backend's code-generation flags
    include_dirs: tuple    # Python and pybind11 headers
    ext_suffix: str        # e.g. ".cpython-311-x86_64-linux-gnu.so"
    pybind11_version: str
    host_cpu: str = ""     # with -march=native: the CPU the code is tuned for

    def command(self, sources: list[Path], output: Path, include: Path,
                defines: list[str]) -> list[str]:
        """The one command that compiles and links ``sources`` into ``output``."""
        cmd = [self.compiler, *self.flags]
        cmd += ["-Xcompiler=-fPIC", "--cudart=static"] if self.backend == "cuda" else ["-fPIC"]
        cmd += ["-shared", f"-I{include}"]
        for folder in self.include_dirs:
            cmd += ["-isystem", str(folder)]
        cmd += [f"-D{d}" for d in defines]
        return cmd + [str(s) for s in sources] + ["-o", str(output)]

    def describe(self) -> dict:
        return {"compiler": self.compiler, "compiler_version": self.version,
                "flags": list(self.flags), "pybind11": self.pybind11_version,
                "ext_suffix": self.ext_suffix, "host_cpu": self.host_cpu}


def _recorded() -> dict:
    toolchain = _backends.build_info().get("toolchain")
    if not toolchain:
        raise ToolchainError(
            "this build of inverseflow predates run-time specialization (its build info "
            f"records no toolchain); {_backends.REBUILD_HINT}")
    return toolchain


def _find(explicit_env: str, recorded: str, default_name: str, what: str) -> str:
    """The compiler to use: $explicit_env, else the build's compiler's name looked up on PATH.

    Looking the name up on PATH (rather than trusting the recorded absolute path) means a
    wheel built elsewhere still finds the local compiler of that name.
    """
    chosen = os.environ.get(explicit_env)
    if chosen:
        found = shutil.which(chosen)
        if not found:
            raise ToolchainError(f"{explicit_env}={chosen!r} is not an executable compiler")
        return found
    name = Path(recorded).name if recorded else default_name
    found = shutil.which(name)
    if not found:
        built_with = f" (inverseflow was built with {recorded})" if recorded else ""
        raise ToolchainError(f"no {what}: {name!r} is not on PATH{built_with}; install it "
                             f"or point {explicit_env} at one")
    return found


@functools.lru_cache(maxsize=None)
def compiler_version(compiler: str) -> str:
    try:
        out = subprocess.run([compiler, "--version"], capture_output=True, text=True,
                             timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise ToolchainError(f"{compiler} --version failed: {exc}") from None
    lines = [line.strip() for line in out.splitlines() if line.strip()]
    # nvcc prints a banner first; its version is on the "release" line.
    release = [line for line in lines if "release" in line]
    return (release or lines or ["unknown"])[-1 if release else 0]


def _cuda_arch_flags(archs: str) -> list[str]:
    """CMake's CUDA_ARCHITECTURES syntax ("90", "80;90", "90-real", "native") as nvcc flags."""
    flags = []
    for arch in archs.replace(",", ";").split(";"):
        arch = arch.strip()
        if not arch:
            continue
        if arch in ("native", "all", "all-major"):
            flags.append(f"-arch={arch}")
        elif arch.endswith("-real"):
            flags.append(f"--generate-code=arch=compute_{arch[:-5]},code=[sm_{arch[:-5]}]")
        elif arch.endswith("-virtual"):
            flags.append(f"--generate-code=arch=compute_{arch[:-8]},code=[compute_{arch[:-8]}]")
        else:
            flags.append(f"--generate-code=arch=compute_{arch},code=[compute_{arch},sm_{arch}]")
    return flags


def _host_cpu() -> str:
    """The CPU model and its instruction-set flags: code built with -march=native for one
    CPU can crash on another, so a cache shared between machines must tell them apart."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    fields = {}
    for line in text.split("\n\n")[0].splitlines():
        name, _, value = line.partition(":")
        fields[name.strip()] = value.strip()
    flags = fields.get("flags") or fields.get("Features") or ""
    digest = hashlib.sha256(" ".join(sorted(flags.split())).encode()).hexdigest()[:16]
    return f"{fields.get('model name') or platform.machine()} (isa {digest})"


def _python_includes() -> tuple[tuple, str]:
    try:
        import pybind11
    except ImportError:
        raise ToolchainError(f"run-time specialization needs pybind11's headers; {PIP_HINT}") from None
    python_include = Path(sysconfig.get_paths()["include"])
    if not (python_include / "Python.h").is_file():
        raise ToolchainError(f"the Python development headers are missing ({python_include}/"
                             "Python.h); install them (e.g. the python3-dev package)")
    return (str(python_include), pybind11.get_include()), pybind11.__version__


def for_backend(backend: str) -> Toolchain:
    """The toolchain for ``backend`` ("cpu" or "cuda"); ToolchainError says what is missing."""
    recorded = _recorded()
    includes, pybind11_version = _python_includes()
    if backend == "cpu":
        compiler = _find("CXX", recorded.get("cxx", ""), "c++", "C++ compiler")
        flags = shlex.split(recorded.get("cxx_flags", ""))
    else:
        compiler = _find("CUDACXX", recorded.get("cuda", ""), "nvcc",
                         "CUDA compiler (device='cuda' needs nvcc)")
        # A build without CUDA records no CUDA flags: use those CMakeLists.txt would use.
        flags = shlex.split(recorded.get("cuda_flags") or
                            "-O3 -DNDEBUG -Xcompiler=-fvisibility=hidden -O3 -std=c++17")
        archs = os.environ.get("INVERSEFLOW_CUDA_ARCHS") or recorded.get("cuda_archs") or "90"
        flags += _cuda_arch_flags(archs)
    native = any(f.startswith(("-march=native", "-mcpu=native", "-mtune=native")) for f in flags)
    return Toolchain(backend, compiler, compiler_version(compiler), tuple(flags), includes,
                     sysconfig.get_config_var("EXT_SUFFIX") or ".so", pybind11_version,
                     _host_cpu() if native else "")
