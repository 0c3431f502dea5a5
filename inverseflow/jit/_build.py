"""Render, compile, cache, load and register the kernels of one instantiation: a layer
shape's kernel sizes and group channels, which every corner and group pattern of that group
size shares (DESIGN.md §17)."""

from __future__ import annotations

import atexit
import datetime
import importlib.util
import logging
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

from ..ops import _backends, _dispatch
from . import _cache, _toolchain
from ._errors import CompileError, JitError, ToolchainError

COMPILE_TIMEOUT_S = 1200
DEVICES = ("cpu", "cuda")

log = logging.getLogger("inverseflow.jit")

_loaded: dict[tuple, tuple] = {}   # (backend, (kd, kh, kw, group channels)) -> (module, names)
_key_locks: dict[tuple, threading.Lock] = {}
_key_locks_guard = threading.Lock()
_compilers: set[subprocess.Popen] = set()   # compiles in flight, killed at exit


def _codegen():
    """codegen's spec and render modules: the generator the build itself runs."""
    try:
        from codegen import render, spec
    except ImportError as exc:
        raise ToolchainError(f"the codegen package is not importable ({exc}); reinstall "
                             f"inverseflow (its wheel carries codegen), or {_toolchain.PIP_HINT}"
                             ) from None
    return spec, render


def layer_for(kernel_size, channels, pattern):
    """codegen's Layer for the arguments; codegen's own SpecError when they are invalid."""
    spec, _ = _codegen()
    if isinstance(kernel_size, (tuple, list)) and 1 <= len(kernel_size) <= 3:
        kernel_size = "x".join(str(k) for k in kernel_size)
    return spec.layer_from_entry({"kernel": kernel_size, "channels": channels,
                                  "pattern": pattern})


def check_device(device) -> str:
    backend = getattr(device, "type", device)  # accepts torch.device too
    if backend not in DEVICES:
        raise ValueError(f"device: expected 'cpu' or 'cuda', got {device!r}")
    return backend


def describe(layer, backend: str) -> str:
    spec, _ = _codegen()
    return (f"kernel {spec.kernel_name(layer)}, {layer.group_channels} channels per group "
            f"({spec.served_text(layer.dims, layer.group_channels)}; {backend})")


def _instantiation_key(layer) -> tuple:
    """What the run-time registry keys a layer's instantiations on (dims aside)."""
    return (layer.kd, layer.kh, layer.kw, layer.group_channels)


def _built_names(layer, backend: str) -> list[str] | None:
    """The installed build's kernels for this shape's instantiation, when it has every
    dtype and direction of it (whichever layer shape it was listed for)."""
    try:
        module = _backends.module_for(backend)
    except RuntimeError:
        return None
    spec, _ = _codegen()
    rows = [s for s in module.specializations()
            if (s["kd"], s["kh"], s["kw"], s["group_channels"]) == _instantiation_key(layer)]
    wanted = {(i.codes["dtype"], i.codes["direction"]) for i in layer.instantiations(backend)}
    have = {(s["dtype"], s["direction"]) for s in rows}
    return sorted(s["name"] for s in rows) if wanted <= have else None


def _source_files(render, backend: str) -> dict[str, Path]:
    """What a run-time module is compiled from besides the rendered files."""
    files = {"bind_jit.cpp": render.HEADERS / "bind_jit.cpp"}
    if backend == "cuda":
        files["jit_cuda_generic.cu"] = render.HEADERS / "jit_cuda_generic.cu"
    return files


def _key_payload(layer, backend, toolchain, rendered: dict, render) -> dict:
    """Everything the module's bytes depend on (DESIGN.md §11)."""
    inputs = sorted((render.HEADERS / "invconv").glob("*")) + sorted(
        render.TEMPLATES.glob("*.j2")) + list(_source_files(render, backend).values())
    return {
        "format": _cache.FORMAT,
        "instantiation": [layer.dims, layer.kd, layer.kh, layer.kw, layer.group_channels],
        "backend": backend,
        "inputs": {p.name: _cache.sha256_file(p) for p in inputs},
        "rendered": {rel: _cache.sha256_bytes(text.encode()) for rel, text in rendered.items()},
        "toolchain": toolchain.describe(),
    }


def _kill_group(proc: subprocess.Popen) -> None:
    """Kills the compiler and what it started (cc1plus, as, ld, cicc, ptxas): its group."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass   # the whole group has exited already


@atexit.register
def _kill_compilers_at_exit() -> None:
    """A background compile (INVERSEFLOW_JIT=1) runs in a daemon thread, which exit does not
    unwind: its compiler, in a group of its own, must not outlive the process."""
    for proc in list(_compilers):
        _kill_group(proc)


def _run_compiler(cmd: list[str], cwd: Path) -> tuple[int | str, str]:
    """Runs one compile in a process group of its own; on a timeout, Ctrl-C or any other
    exception, the whole group is killed, so that no cc1plus is left running."""
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, text=True, start_new_session=True)
    _compilers.add(proc)
    try:
        try:
            output, _ = proc.communicate(timeout=COMPILE_TIMEOUT_S)
            return proc.returncode, output
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            output, _ = proc.communicate()   # the group is dead: its pipe ends at once
            return "timeout", f"killed after {COMPILE_TIMEOUT_S} s\n{output or ''}"
    except BaseException:
        _kill_group(proc)
        proc.wait()
        raise
    finally:
        _compilers.discard(proc)


def cache_key(layer, backend: str) -> tuple:
    """``(toolchain, rendered sources, key, entry name)`` of one layer shape's module: the
    module of its instantiation, the same for every corner and group pattern of its group
    size."""
    _, render = _codegen()
    toolchain = _toolchain.for_backend(backend)
    rendered = render.render_layer(layer, backend)
    key = _cache.make_key(_key_payload(layer, backend, toolchain, rendered, render))
    return toolchain, rendered, key, f"{layer.stem}_{backend}_{key[:16]}"


def _compile(layer, backend, toolchain, rendered, render, entry_name, key) -> Path:
    """Compiles into a fresh workspace, writes the manifest last; returns the workspace."""
    spec, _ = _codegen()
    workspace = _cache.new_workspace(entry_name)
    try:
        for rel, text in rendered.items():
            (workspace / rel).parent.mkdir(parents=True, exist_ok=True)
            (workspace / rel).write_text(text)
        library = entry_name + toolchain.ext_suffix
        sources = list(_source_files(render, backend).values()) + [workspace / rel for rel in
                                                                   rendered]
        cmd = toolchain.command(sources, workspace / library, render.HEADERS,
                                [f"IFLOW_HAS_{layer.stem}", f"IFLOW_JIT_MODULE={entry_name}"])
        log.debug("compiling %s with %s", describe(layer, backend), Path(toolchain.compiler).name)
        start = time.perf_counter()
        returncode, output = _run_compiler(cmd, workspace)
        seconds = time.perf_counter() - start
        build_log = " ".join(cmd) + "\n\n" + output
        (workspace / "build.log").write_text(build_log)
        if returncode != 0:
            saved = _cache.save_failure_log(entry_name, build_log)
            tail = "\n".join(output.strip().splitlines()[-12:])
            raise CompileError(f"{Path(toolchain.compiler).name} failed ({returncode}) on "
                               f"{describe(layer, backend)}:\n{tail}\n(full log: {saved})")
        _cache.write_manifest(workspace, {
            "key": key, "stem": layer.stem, "backend": backend, "module": entry_name, "library": library,
            "kernel": "x".join(str(k) for k in layer.kernel),
            "group_channels": layer.group_channels,
            "serves": spec.served_text(layer.dims, layer.group_channels),
            "kernels": [i.symbol for i in layer.instantiations(backend)],
            "specializations": [{"name": i.symbol, "dtype": i.dtype, "direction": i.direction}
                                for i in layer.instantiations(backend)],
            "compile_seconds": round(seconds, 2),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            **toolchain.describe()})
        log.debug("compiled %s in %.1f s", describe(layer, backend), seconds)
        return workspace
    except BaseException:
        _cache.discard(workspace)
        raise


def _load(entry: Path, manifest: dict):
    spec = importlib.util.spec_from_file_location(manifest["module"], entry / manifest["library"])
    try:
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except (ImportError, OSError) as exc:
        raise JitError(f"the cached module {entry} does not load ({exc}); "
                       "`inverseflow jit --clear` empties the cache") from None
    names = sorted(s["name"] for s in module.specializations())
    if names != sorted(manifest["kernels"]):
        raise JitError(f"{entry} holds kernels {names}, its manifest says {manifest['kernels']}")
    return module


def _after_fork_in_child() -> None:
    """A lock held by a parent's thread at fork() would never be released in the child."""
    global _key_locks_guard
    _key_locks_guard = threading.Lock()
    _key_locks.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _key_lock(key: tuple) -> threading.Lock:
    with _key_locks_guard:
        return _key_locks.setdefault(key, threading.Lock())


def specialize(kernel_size, channels, pattern, device="cpu") -> list[str]:
    """Specialized kernels for one layer shape, compiled now or found in the cache.

    Renders codegen's templates for the shape (both dtypes, both directions), compiles them
    with the compiler and flags the installed build used, caches the module under
    ``$INVERSEFLOW_CACHE`` (default ``$XDG_CACHE_HOME/inverseflow`` or
    ``~/.cache/inverseflow``), loads it and adds it to the
    dispatch, so that the next ``inv_conv2d`` of that shape on ``device`` runs it.

    Args:
        kernel_size: ``k`` (that size on every axis of the pattern's dimension), a tuple of
            1 to 3 sizes (``(kw,)``, ``(kh, kw)``, ``(kd, kh, kw)``) or ``"KHxKW"``-style text.
        channels: channel count C (divisible by the group count for ``pair``, ``quad``,
            ``oct``).
        pattern: the order, any case: 1-D ``L | R | pair``; 2-D ``TL | TR | BL | BR |
            quad``; 3-D ``NTL`` … ``FBR`` or ``oct`` (the pattern names the dimension).
        device: ``"cpu"`` (the C++ compiler of the build) or ``"cuda"`` (nvcc).

    Returns:
        The kernel names, as ``_dispatch.solve`` reports them when they run. They name the
        instantiation (kernel and group channels, e.g. ``invconv_k3x3_g12_f32_solve_cpu``),
        which serves every corner and group pattern of that group size: a shape whose
        instantiation the installed build (or this process) has already needs no compile.

    Raises:
        codegen's ``SpecError`` (a ValueError) for an invalid shape, unchanged;
        ``ValueError`` for an unknown device; ``JitError`` (a RuntimeError) when there is no
        compiler (``ToolchainError``), the compile fails (``CompileError``) or a cache
        folder, entry or module belongs to someone else or others can write it
        (``UntrustedCacheError``: the message names it and the fix).
    """
    backend = check_device(device)
    layer = layer_for(kernel_size, channels, pattern)
    built = _built_names(layer, backend)
    if built:
        return built
    shape = (backend, _instantiation_key(layer))
    with _key_lock(shape):
        if shape in _loaded:
            return list(_loaded[shape][1])
        _, render = _codegen()
        toolchain, rendered, key, entry_name = cache_key(layer, backend)
        entry = _cache.trusted_jit_dir() / entry_name
        manifest, _ = _cache.inspect(entry, key)
        if manifest is None:
            with _cache.lock(entry_name):
                manifest, problem = _cache.inspect(entry, key)  # another process may be done
                if manifest is None:
                    if problem:
                        log.warning("rebuilding the cache entry %s: %s", entry, problem)
                        _cache.discard(entry)
                    workspace = _compile(layer, backend, toolchain, rendered, render,
                                         entry_name, key)
                    _cache.publish(workspace, entry)
                    manifest, problem = _cache.inspect(entry, key)
                    if manifest is None:
                        raise JitError(f"the new cache entry {entry} is unsound: {problem}")
        module = _load(entry, manifest)
        names = [i.symbol for i in layer.instantiations(backend)]
        _dispatch.register_runtime_module(backend, (layer.kd, layer.kh, layer.kw),
                                          layer.group_channels, module)
        _loaded[shape] = (module, tuple(names))
        return names


def loaded() -> list[dict]:
    """The run-time modules this process has loaded."""
    return [{"backend": backend, "shape": list(shape), "kernels": list(names)}
            for (backend, shape), (_, names) in sorted(_loaded.items())]
