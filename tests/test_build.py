"""The build: modules never link libtorch, `info` reports what was built, pruning works."""

import importlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from codegen.spec import DIRECTIONS, DTYPES, by_file, fold, parse_specs
from inverseflow import info
from inverseflow.ops import _backends

ROOT = Path(__file__).resolve().parent.parent


def _built_modules():
    names = ["_cpu"] + ([] if _backends.import_error("_cuda") else ["_cuda"])
    return [importlib.import_module(f"inverseflow.ops.{name}") for name in names]


@pytest.mark.skipif(shutil.which("readelf") is None, reason="needs readelf")
def test_compiled_modules_do_not_link_libtorch_or_cudart():
    for module in _built_modules():
        needed = subprocess.run(["readelf", "-d", module.__file__], capture_output=True,
                                text=True, check=True).stdout
        libs = [line for line in needed.splitlines() if "(NEEDED)" in line]
        assert libs, module.__file__
        assert not any("torch" in line or "c10" in line for line in libs), libs
        assert not any("libcudart" in line for line in libs), libs  # static runtime


def test_info_lists_backends_and_specializations():
    data = info.collect()
    cpu = data["backends"]["cpu"]
    per_layer = len(DTYPES) * len(DIRECTIONS)   # both dtypes; solve, transposed, conv
    assert cpu["built"] and len(cpu["specializations"]) == per_layer * len(
        data["build"]["layers_built"])
    assert "cuda" in data["build"]
    report = info.format_report(data)
    assert "[cpu] built" in report and "invconv_k3x3_g12_f32_solve_cpu" not in report
    rows = [line.split() for line in report.splitlines()]
    row = rows[[r[:2] for r in rows].index(["3x3", "12"])]
    assert ["3x3", "12", "f32", "f64;", "solve", "transposed", "conv"] == row[:7]
    assert " ".join(row).endswith("tl/tr/bl/br C=12, quad C=48")   # the shapes it serves
    assert "invconv_k3x3_g12_f32_solve_cpu" in info.format_report(data, verbose=True)
    cli = subprocess.run([sys.executable, "-m", "inverseflow", "info", "--json"],
                         capture_output=True, text=True, check=True)
    assert json.loads(cli.stdout)["backends"]["cpu"]["built"]


def test_missing_cuda_backend_says_how_to_rebuild(monkeypatch):
    monkeypatch.setattr(_backends, "_import", lambda name: (None, "No module named x"))
    with pytest.raises(RuntimeError, match="rebuild"):
        _backends.module_for("cuda")
    with pytest.raises(RuntimeError, match="rebuild"):
        _backends.module_for("cpu")


def test_cli_reports_bad_arguments_cleanly():
    result = subprocess.run([sys.executable, "-m", "inverseflow", "demo", "--batch", "0"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "positive integer" in result.stderr


@pytest.mark.skipif(shutil.which("cmake") is None, reason="needs cmake")
def test_build_pruning_keeps_only_matching_layers(tmp_path):
    pybind11 = pytest.importorskip("pybind11")
    result = subprocess.run(
        ["cmake", "-S", str(ROOT), "-B", str(tmp_path), "-DINVERSEFLOW_CUDA=OFF",
         "-DINVERSEFLOW_SPECS=k3x3_g(12|3)$", f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
         f"-DPython_EXECUTABLE={sys.executable}"],
        capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    total = len(by_file(fold(parse_specs((ROOT / "codegen" / "specs.toml").read_text()), "cpu")))
    assert f"building 2 of {total} specializations" in result.stdout
    built = (tmp_path / "build_info.h").read_text()
    assert '"invconv_k3x3_g12", "invconv_k3x3_g3"' in built
    assert "disabled by INVERSEFLOW_CUDA=OFF" in built


def _configure_build_info(source: Path, build: Path) -> dict:
    """Configures CMake (no compiling) and returns the JSON it writes into build_info.h."""
    pybind11 = pytest.importorskip("pybind11")
    result = subprocess.run(
        ["cmake", "-S", str(source), "-B", str(build), "-DINVERSEFLOW_CUDA=OFF",
         "-DINVERSEFLOW_SPECS=k3x3_g12$", f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
         f"-DPython_EXECUTABLE={sys.executable}"],
        capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    header = (build / "build_info.h").read_text()
    return json.loads(header.split('R"json(', 1)[1].split(')json"', 1)[0])


def _git(*args, cwd):
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True,
                          env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
                               "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
                               "PATH": "/usr/bin:/bin"}).stdout.strip()


@pytest.mark.skipif(shutil.which("cmake") is None or shutil.which("git") is None,
                    reason="needs cmake and git")
def test_build_records_the_commit_it_is_built_from(tmp_path):
    try:
        top = Path(_git("rev-parse", "--show-toplevel", cwd=ROOT)).resolve()
    except subprocess.CalledProcessError:
        pytest.skip("the sources are not a git checkout")
    if top != ROOT:
        pytest.skip("the sources are not the top of their own git checkout")
    head = _git("rev-parse", "HEAD", cwd=ROOT)
    info = _configure_build_info(ROOT, tmp_path)
    assert info["commit"] == head and isinstance(info["commit_dirty"], bool)


@pytest.mark.skipif(shutil.which("cmake") is None or shutil.which("git") is None,
                    reason="needs cmake and git")
def test_sources_inside_another_repository_record_no_commit(tmp_path):
    # An sdist unpacked inside some project's git tree: that project's HEAD is not ours.
    outer = tmp_path / "project"
    source = outer / "vendor" / "inverseflow"
    for part in ("csrc", "generated", "templates", "codegen"):
        shutil.copytree(ROOT / part, source / part,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy(ROOT / "CMakeLists.txt", source / "CMakeLists.txt")
    _git("init", "-q", cwd=outer)
    (outer / "README").write_text("someone else's project\n")
    _git("add", "README", cwd=outer)
    _git("commit", "-q", "-m", "theirs", cwd=outer)
    info = _configure_build_info(source, tmp_path / "build")
    assert info["commit"] is None and info["commit_dirty"] is None


def test_built_module_records_a_commit_or_none():
    commit = _backends.build_info().get("commit")
    assert commit is None or (len(commit) == 40 and set(commit) <= set("0123456789abcdef"))
