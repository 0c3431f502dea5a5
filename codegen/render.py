"""Renders the templates for every instantiation and writes ``generated/`` (only what changed).

Layers fold onto unique instantiations first (:func:`codegen.spec.fold`): one kernel file
per (kernel, group channels) and backend, however many layer shapes it serves."""

from __future__ import annotations

import filecmp
import tempfile
from pathlib import Path

import jinja2

from . import triton_target
from .spec import BACKENDS, Layer, by_file, fold

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# A wheel carries the templates and the kernel headers inside this package (CMakeLists.txt
# installs them there) so that inverseflow.jit can render and compile at run time; a
# source checkout (and an editable install) keeps them at the top of the repository.
TEMPLATES = HERE / "templates" if (HERE / "templates").is_dir() else ROOT / "templates"
HEADERS = HERE / "csrc" if (HERE / "csrc").is_dir() else ROOT / "csrc"
GENERATED = ROOT / "generated"
SPECS = ROOT / "codegen" / "specs.toml"

KERNEL_TEMPLATE = {"cpu": "kernel_cpu.cpp.j2", "cuda": "kernel_cuda.cu.j2"}
REGISTRY_TEMPLATE = "registry.j2"
REGISTRY_FILE = {"cpu": "registry_cpu.cpp", "cuda": "registry_cuda.cu"}


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _kernel_file(env, backend: str, insts) -> str:
    template = KERNEL_TEMPLATE[backend]
    return env.get_template(template).render(template_name=template, insts=insts,
                                             first=insts[0])


def _registry(env, backend: str, files: dict) -> str:
    return env.get_template(REGISTRY_TEMPLATE).render(template_name=REGISTRY_TEMPLATE,
                                                      files=files, backend=backend)


def render_all(layers: list[Layer]) -> dict[str, str]:
    """Maps each output path (relative to generated/) to its content."""
    env = _environment()
    outputs: dict[str, str] = {}

    def emit(path: str, text: str) -> None:
        if path in outputs:
            raise ValueError(f"two specs would write {path}")
        outputs[path] = text

    sources: dict[str, dict[str, str]] = {}   # stem -> backend -> file
    for backend in BACKENDS:
        files = by_file(fold(layers, backend))
        for stem, insts in files.items():
            emit(insts[0].filename, _kernel_file(env, backend, insts))
            sources.setdefault(stem, {})[backend] = insts[0].filename
        emit(REGISTRY_FILE[backend], _registry(env, backend, files))
    text = env.get_template("sources.cmake.j2").render(
        template_name="sources.cmake.j2", sources=sources, registry=REGISTRY_FILE)
    emit("sources.cmake", text)
    for path, text in triton_target.render(env, layers).items():   # Python, not built
        emit(path, text)
    return outputs


def render_layer(layer: Layer, backend: str) -> dict[str, str]:
    """One layer's kernel file (its instantiations) and a registry holding only those.

    This is what a run-time specialization (inverseflow.jit) compiles: the same templates
    and context as :func:`render_all`, for a single layer and backend.
    """
    env = _environment()
    files = by_file(fold([layer], backend))
    (insts,) = files.values()
    return {insts[0].filename: _kernel_file(env, backend, insts),
            REGISTRY_FILE[backend]: _registry(env, backend, files)}


def write_layer(layer: Layer, backend: str, out: Path) -> list[Path]:
    """Writes :func:`render_layer`'s files into ``out``; returns their paths."""
    paths = []
    for rel, text in render_layer(layer, backend).items():
        write_if_changed(out / rel, text)
        paths.append(out / rel)
    return paths


def write_if_changed(path: Path, content: str) -> bool:
    if path.exists() and path.read_text() == content:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    return True


def _existing_files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def generate(layers: list[Layer], out: Path | None = None) -> tuple[list[str], list[str]]:
    """Writes outputs into ``out`` (default generated/); removes files no spec produces.

    Returns (written, removed) as paths relative to ``out``.
    """
    out = GENERATED if out is None else out
    outputs = render_all(layers)
    written = [rel for rel, text in sorted(outputs.items()) if write_if_changed(out / rel, text)]
    removed = []
    if out.exists():
        for rel in sorted(_existing_files(out) - set(outputs)):
            (out / rel).unlink()
            removed.append(rel)
    return written, removed


def check(layers: list[Layer], out: Path | None = None) -> list[str]:
    """Returns the differences between ``out`` and a fresh render (empty when fresh)."""
    out = GENERATED if out is None else out
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        generate(layers, fresh)
        want = _existing_files(fresh)
        have = _existing_files(out) if out.exists() else set()
        problems = [f"missing: generated/{rel}" for rel in sorted(want - have)]
        problems += [f"stale extra file: generated/{rel}" for rel in sorted(have - want)]
        problems += [f"out of date: generated/{rel}" for rel in sorted(want & have)
                     if not filecmp.cmp(fresh / rel, out / rel, shallow=False)]
    return problems
