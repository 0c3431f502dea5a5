"""Run-time specialization (inverseflow.jit, DESIGN.md §11): results against the dense
oracle, the dispatch, the on-disk cache across processes, and failures that must not reach
a training loop.

A compile of one layer shape costs seconds, so one compiled shape is shared through a
session fixture; tests that must compile for themselves (a fresh cache, a rebuild) do so
once each.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

import inverseflow
from inverseflow import jit
from inverseflow.jit import _auto, _cache
from inverseflow.ops import _dispatch

import oracle
from codegen.spec import DIRECTIONS   # every direction a layer compiles: solve, transposed, conv

TESTS = Path(__file__).resolve().parent
# A shape no build specializes (specs.toml has square kernels only): rectangular and quad.
KERNEL, CHANNELS, ORDER = (2, 3), 8, "quad"
STEM = "invconv_k2x3_g2"   # the instantiation: kernel 2x3, 8 / 4 = 2 channels per group
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


def _set_cache(path) -> str | None:
    saved = os.environ.get(jit.CACHE_ENV)
    os.environ[jit.CACHE_ENV] = str(path)
    return saved


def _restore_cache(saved: str | None) -> None:
    if saved is None:
        os.environ.pop(jit.CACHE_ENV, None)
    else:
        os.environ[jit.CACHE_ENV] = saved


@pytest.fixture(scope="session")
def compiled(tmp_path_factory):
    """One shape specialized into a session cache: (cache folder, kernel names)."""
    cache = tmp_path_factory.mktemp("jit-cache")
    saved = _set_cache(cache)
    try:
        names = jit.specialize(KERNEL, CHANNELS, ORDER)
    finally:
        _restore_cache(saved)
    return cache, names


@pytest.fixture
def cache_env(monkeypatch, tmp_path):
    """A fresh, empty cache for this test (in this process and its children)."""
    monkeypatch.setenv(jit.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def _entry(cache: Path, backend: str = "cpu") -> Path:
    entries = [p for p in (cache / "jit").iterdir()
               if p.name.startswith(f"{STEM}_{backend}_")]
    assert len(entries) == 1, entries
    return entries[0]


def _python(script: str, cwd: Path, **env) -> subprocess.Popen:
    """Starts a Python child outside the source tree, with tests/ importable (oracle)."""
    full_env = dict(os.environ, PYTHONPATH=str(TESTS), **env)
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], cwd=cwd,
                            env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _finish(proc: subprocess.Popen, timeout: float = 600) -> tuple[dict, str]:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1]), err


# A child that specializes the shared shape, checks one solve against the oracle and
# reports the kernel that ran; it logs inverseflow.jit's DEBUG lines ("compiling ...").
SPECIALIZE_CHILD = f"""
    import json, logging, torch
    logging.basicConfig()
    logging.getLogger("inverseflow.jit").setLevel(logging.DEBUG)
    import inverseflow, oracle
    from inverseflow.ops import _dispatch
    names = inverseflow.jit.specialize({KERNEL}, {CHANNELS}, "{ORDER}")
    g = torch.Generator().manual_seed(7)
    w = oracle.random_weight({CHANNELS}, {KERNEL[0]}, {KERNEL[1]}, "{ORDER}", g)
    y = torch.randn(3, {CHANNELS}, 4, 5, generator=g, dtype=torch.float64)
    x, name = _dispatch.solve(y, w, "{ORDER}")
    err = oracle.rel_err(x, oracle.inv_conv(y, w, "{ORDER}"))
    print(json.dumps({{"names": names, "ran": name, "err": err}}))
"""


def test_specialize_names_the_kernels_of_both_dtypes_and_directions(compiled):
    _, names = compiled
    assert sorted(names) == sorted(f"{STEM}_{d}_{r}_cpu" for d in ("f32", "f64")
                                   for r in DIRECTIONS)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_run_time_kernel_matches_the_oracle_and_is_dispatched(compiled, dtype, rng):
    _, names = compiled
    short = {torch.float64: "f64", torch.float32: "f32"}[dtype]
    weight = oracle.random_weight(CHANNELS, *KERNEL, ORDER, rng, dtype=dtype)
    y = torch.randn(5, CHANNELS, 6, 7, generator=rng, dtype=torch.float64).to(dtype)

    x, name = _dispatch.solve(y, weight, ORDER)
    assert name == f"{STEM}_{short}_solve_cpu" and name in names
    assert oracle.rel_err(x, oracle.inv_conv(y.double(), weight.double(), ORDER)) < TOL[dtype]

    u, name = _dispatch.solve(y, weight, ORDER, _dispatch.TRANSPOSED)
    assert name == f"{STEM}_{short}_transposed_cpu"
    expected = oracle.inv_conv_transposed(y.double(), weight.double(), ORDER)
    assert oracle.rel_err(u, expected) < TOL[dtype]

    _, generic = _dispatch.solve(y, weight, ORDER, force_generic=True)
    assert generic == "generic"


def test_public_op_and_its_gradient_use_the_run_time_kernel(compiled, rng):
    weight = oracle.random_weight(CHANNELS, *KERNEL, ORDER, rng).requires_grad_()
    y = torch.randn(2, CHANNELS, 4, 5, generator=rng, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: inverseflow.inv_conv2d(a, b, ORDER),
                                    (y, weight))
    x = inverseflow.inv_conv2d(y, weight, ORDER)
    assert oracle.rel_err(x, oracle.inv_conv(y.detach(), weight.detach(), ORDER)) < 1e-10


def test_a_second_process_reuses_the_cache_without_compiling(compiled, tmp_path):
    cache, names = compiled
    entry = _entry(cache)
    manifest_before = (entry / "manifest.json").read_text()
    library = entry / json.loads(manifest_before)["library"]
    stat_before = library.stat()

    result, err = _finish(_python(SPECIALIZE_CHILD, tmp_path, INVERSEFLOW_CACHE=str(cache)))
    assert "compiling" not in err, err
    assert result["names"] == names and result["ran"] == f"{STEM}_f64_solve_cpu"
    assert result["err"] < 1e-10
    assert (entry / "manifest.json").read_text() == manifest_before
    assert (library.stat().st_ino, library.stat().st_mtime_ns) == (stat_before.st_ino,
                                                                    stat_before.st_mtime_ns)


def test_two_processes_compiling_the_same_key_both_succeed_and_the_entry_is_sound(tmp_path):
    cache = tmp_path / "cache"
    children = [_python(SPECIALIZE_CHILD, tmp_path, INVERSEFLOW_CACHE=str(cache))
                for _ in range(2)]
    results = [_finish(child) for child in children]
    for result, _ in results:
        assert result["ran"] == f"{STEM}_f64_solve_cpu" and result["err"] < 1e-10
    # The lock let exactly one of them compile; the other loaded its entry.
    assert sum(err.count("compiling kernel") for _, err in results) == 1
    entry = _entry(cache)
    manifest, problem = _cache.inspect(entry)
    assert problem is None and manifest["stem"] == STEM
    assert not list((cache / "jit" / ".tmp").iterdir())  # no half-written workspace left


def test_a_truncated_module_is_detected_and_rebuilt(compiled, tmp_path):
    source_cache, _ = compiled
    cache = tmp_path / "cache"
    shutil.copytree(source_cache / "jit", cache / "jit",
                    ignore=shutil.ignore_patterns(".locks"))
    entry = _entry(cache)
    library = entry / json.loads((entry / "manifest.json").read_text())["library"]
    library.write_bytes(library.read_bytes()[: library.stat().st_size // 3])
    assert _cache.inspect(entry)[1] is not None

    result, err = _finish(_python(SPECIALIZE_CHILD, tmp_path, INVERSEFLOW_CACHE=str(cache)))
    assert "rebuilding the cache entry" in err and "compiling kernel" in err, err
    assert result["ran"] == f"{STEM}_f64_solve_cpu" and result["err"] < 1e-10
    manifest, problem = _cache.inspect(_entry(cache))
    assert problem is None and manifest["library_sha256"] == _cache.sha256_file(library)


# INVERSEFLOW_JIT=1 with no compiler on PATH: two unspecialized shapes, each run twice with
# the background work awaited in between; the generic kernel's results against the oracle.
NO_COMPILER_CHILD = """
    import json, torch, warnings
    warnings.simplefilter("always")
    import inverseflow, oracle
    from inverseflow.ops import _dispatch
    g = torch.Generator().manual_seed(3)
    report = []
    for channels, order in ((5, "TL"), (16, "BR")):   # no built 3x3 g5 or g16
        w = oracle.random_weight(channels, 3, 3, order, g)
        y = torch.randn(2, channels, 5, 4, generator=g, dtype=torch.float64)
        for _ in range(2):
            x, name = _dispatch.solve(y, w, order)
            inverseflow.jit.wait()
            report.append([name, oracle.rel_err(x, oracle.inv_conv(y, w, order))])
        x = inverseflow.inv_conv2d(y, w, order)
        report.append(["public", oracle.rel_err(x, oracle.inv_conv(y, w, order))])
    print(json.dumps(report))
"""


def test_no_compiler_on_path_gives_one_warning_and_the_generic_kernel(tmp_path):
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("CXX", "CUDACXX")}
    env.update(PATH=str(empty_bin), INVERSEFLOW_JIT="1", PYTHONPATH=str(TESTS),
               INVERSEFLOW_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(NO_COMPILER_CHILD)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [name for name, _ in report if name != "public"] == ["generic"] * 4
    assert all(err < 1e-10 for _, err in report), report
    assert proc.stderr.count("JitWarning") == 1, proc.stderr
    assert "not on PATH" in proc.stderr
    assert proc.stderr.count("in the background") == 1, proc.stderr


def test_explicit_specialize_without_a_compiler_raises_a_clear_error(cache_env, monkeypatch,
                                                                     tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.delenv("CUDACXX", raising=False)
    with pytest.raises(jit.ToolchainError, match="not on PATH"):
        jit.specialize(3, 5, "TR")
    with pytest.raises(jit.ToolchainError, match="nvcc"):
        jit.specialize(3, 5, "TR", device="cuda")


@pytest.fixture
def failing_compiler(tmp_path, monkeypatch):
    """CXX that answers --version but fails every compile with a recognisable message."""
    script = tmp_path / "broken-c++"
    script.write_text('#!/bin/sh\nif [ "$1" = "--version" ]; then echo "broken-c++ 1.0"; '
                      'exit 0; fi\necho "error: the test compiler refuses" >&2\nexit 1\n')
    script.chmod(0o755)
    monkeypatch.setenv("CXX", str(script))
    return script


def test_a_compiler_error_is_reported_and_leaves_no_entry(cache_env, failing_compiler):
    with pytest.raises(jit.CompileError, match="the test compiler refuses") as info:
        jit.specialize(3, 5, "BL")
    assert "full log" in str(info.value)
    assert not [p for p in (cache_env / "jit").iterdir() if not p.name.startswith(".")]
    assert not list((cache_env / "jit" / ".tmp").iterdir())


def test_background_compile_error_warns_once_and_never_raises(cache_env, failing_compiler, rng):
    weight = oracle.random_weight(10, 3, 3, "BL", rng)
    y = torch.randn(2, 10, 4, 4, generator=rng, dtype=torch.float64)
    jit.enable(True)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            names = []
            for _ in range(3):
                x, name = _dispatch.solve(y, weight, "BL")
                jit.wait()
                names.append(name)
    finally:
        jit.enable(False)
    assert names == ["generic"] * 3
    assert oracle.rel_err(x, oracle.inv_conv(y, weight, "BL")) < 1e-10
    jit_warnings = [w for w in caught if issubclass(w.category, jit.JitWarning)]
    assert len(jit_warnings) == 1, [str(w.message) for w in caught]
    assert "the test compiler refuses" in str(jit_warnings[0].message)


def test_background_mode_switches_to_the_run_time_kernel(compiled, monkeypatch, rng):
    """With the module in the cache, INVERSEFLOW_JIT picks it up without an explicit call."""
    cache, _ = compiled
    monkeypatch.setenv(jit.CACHE_ENV, str(cache))
    child = _python(f"""
        import json, torch, oracle
        import inverseflow
        from inverseflow.ops import _dispatch
        g = torch.Generator().manual_seed(5)
        w = oracle.random_weight({CHANNELS}, {KERNEL[0]}, {KERNEL[1]}, "{ORDER}", g)
        y = torch.randn(2, {CHANNELS}, 3, 4, generator=g, dtype=torch.float64)
        first = _dispatch.solve(y, w, "{ORDER}")[1]
        inverseflow.jit.wait()
        x, later = _dispatch.solve(y, w, "{ORDER}")
        print(json.dumps({{"first": first, "later": later,
                           "err": oracle.rel_err(x, oracle.inv_conv(y, w, "{ORDER}"))}}))
    """, cache, INVERSEFLOW_JIT="1")
    result, err = _finish(child)
    assert result["first"] == "generic" and result["later"] == f"{STEM}_f64_solve_cpu", err
    assert result["err"] < 1e-10


@pytest.mark.parametrize("args, field", [
    ((0, 4, "tl"), "kernel"),
    ((3, 4, "diag"), "pattern"),
    ((3, 6, "quad"), "channels"),
    ((3, 0, "tl"), "channels"),
    (("3y3", 4, "tl"), "kernel"),
])
def test_codegen_spec_errors_reach_the_user_unchanged(args, field, cache_env):
    from codegen.spec import SpecError, layer_from_entry

    with pytest.raises(SpecError) as expected:
        layer_from_entry({"kernel": args[0], "channels": args[1], "pattern": args[2]})
    with pytest.raises(SpecError) as raised:
        jit.specialize(*args)
    assert str(raised.value) == str(expected.value) and str(raised.value).startswith(field)
    assert not (cache_env / "jit").exists()  # nothing was compiled or cached


def test_unknown_device_is_a_value_error():
    with pytest.raises(ValueError, match="device"):
        jit.specialize(3, 6, "tl", device="tpu")


def test_a_shape_the_build_specializes_needs_no_compile(cache_env):
    names = jit.specialize(3, 12, "TL")
    assert sorted(names) == sorted(f"invconv_k3x3_g12_{d}_{r}_cpu"
                                   for d in ("f32", "f64") for r in DIRECTIONS)
    assert not (cache_env / "jit").exists()


@pytest.mark.skipif(shutil.which("nvcc") is None and not os.environ.get("CUDACXX"),
                    reason="needs nvcc")
def test_cuda_module_compiles_with_nvcc(compiled, tmp_path):
    """The CUDA module of the shared shape compiles, links and imports (it runs only on a GPU)."""
    cache, _ = compiled
    saved = _set_cache(cache)
    try:
        names = jit.specialize(KERNEL, CHANNELS, ORDER, device="cuda")
    finally:
        _restore_cache(saved)
    assert sorted(names) == sorted(f"{STEM}_{d}_{r}_cuda" for d in ("f32", "f64")
                                   for r in DIRECTIONS)
    manifest, problem = _cache.inspect(_entry(cache, "cuda"))
    assert problem is None and Path(manifest["compiler"]).name == "nvcc"
    assert any(flag.startswith("--generate-code") for flag in manifest["flags"])


@pytest.mark.parametrize("order", ["TL", "BR", "TR"])
def test_one_run_time_module_serves_every_corner_of_its_group_size(compiled, order, rng):
    """The cache is keyed like the build (kernel, group channels): the module specialized
    for quad C=8 (2 per group) runs every corner with C=2, and asking for one of them again
    finds it without a compile (DESIGN.md §17)."""
    cache, names = compiled
    saved = _set_cache(cache)
    try:
        before = sorted(p.name for p in (cache / "jit").iterdir())
        assert sorted(jit.specialize(KERNEL, CHANNELS // 4, order)) == sorted(names)
        assert sorted(p.name for p in (cache / "jit").iterdir()) == before
    finally:
        _restore_cache(saved)
    weight = oracle.random_weight(CHANNELS // 4, *KERNEL, order, rng)
    y = torch.randn(3, CHANNELS // 4, 5, 6, generator=rng, dtype=torch.float64)
    x, name = _dispatch.solve(y, weight, order)
    assert name == f"{STEM}_f64_solve_cpu"
    assert oracle.rel_err(x, oracle.inv_conv(y, weight, order)) < 1e-10


def test_cli_lists_and_clears_the_cache_and_info_shows_it(compiled, tmp_path, monkeypatch,
                                                         capsys):
    from inverseflow import cli, info

    source_cache, _ = compiled
    shutil.copytree(source_cache / "jit", tmp_path / "jit",
                    ignore=shutil.ignore_patterns(".locks"))
    monkeypatch.setenv(jit.CACHE_ENV, str(tmp_path))
    assert cli.main(["jit", "--list"]) == 0
    assert STEM in capsys.readouterr().out
    rows = info.collect()["jit"]["specializations"]["cpu"]
    assert {(r["kernel"], r["group_channels"], r["source"]) for r in rows} >= {
        ("2x3", CHANNELS // 4, "jit")}
    assert all(f"quad C={CHANNELS}" in r["serves"] for r in rows if r["source"] == "jit")
    assert cli.main(["jit", "--clear"]) == 0
    assert "removed" in capsys.readouterr().out
    assert jit.cached() == []


def test_background_mode_is_safe_under_torch_compile(compiled, monkeypatch, rng):
    """The dispatch (and its hook) runs inside the op's real kernel, never while tracing with
    fake tensors; a compiled graph picks up a shape specialized at run time."""
    monkeypatch.setenv(jit.CACHE_ENV, str(compiled[0]))
    weight = oracle.random_weight(CHANNELS, *KERNEL, ORDER, rng).requires_grad_()
    y = torch.randn(3, CHANNELS, 5, 4, generator=rng, dtype=torch.float64)
    torch._dynamo.reset()
    jit.enable(True)
    try:
        step = torch.compile(lambda a, b: inverseflow.inv_conv2d(a, b, ORDER).square().sum(),
                             fullgraph=True, backend="aot_eager")
        loss = step(y, weight)
        loss.backward()
        jit.wait()
    finally:
        jit.enable(False)
    x = oracle.inv_conv(y, weight.detach(), ORDER)
    assert torch.allclose(loss.detach(), x.square().sum(), rtol=1e-10)
    weight_ref = weight.detach().clone().requires_grad_()
    oracle.inv_conv(y, weight_ref, ORDER).square().sum().backward()
    assert oracle.rel_err(weight.grad, weight_ref.grad) < 1e-8


def test_bench_jit_section_structure(monkeypatch, tmp_path):
    """`inverseflow bench --jit` plumbing, on a shape the build has (no compile needed)."""
    from inverseflow.bench import jit_speedup

    monkeypatch.setattr(jit_speedup, "SHAPES", [(8, "quad")])
    result = jit_speedup.run("cpu", quick=True)
    (row,) = result["shapes"]
    assert row["kernel_after"] == "invconv_k3x3_g2_f32_solve_cpu"
    assert row["max_abs_difference"] < 1e-5
    assert row["speedup_solve"] > 0 and row["timings"]["jit_solve"]["rounds"] == 5
    assert "C=8 quad" in jit_speedup.format_report(result)
    saved = json.loads(jit_speedup.write(result, tmp_path).read_text())
    assert saved["shapes"][0]["kernel_after"] == row["kernel_after"]
    with pytest.raises(ValueError, match="device"):
        jit_speedup.run("cuda")


def test_build_records_the_toolchain_the_jit_uses(compiled):
    """The run-time module is compiled with the compiler and flags the build recorded."""
    from inverseflow.ops import _backends

    recorded = _backends.build_info()["toolchain"]
    cache, _ = compiled
    manifest, _ = _cache.inspect(_entry(cache))
    assert Path(manifest["compiler"]).name == Path(recorded["cxx"]).name
    assert manifest["flags"] == recorded["cxx_flags"].split()
    assert "-O3" in manifest["flags"] and "-fvisibility=hidden" in manifest["flags"]


@pytest.mark.skipif(shutil.which("readelf") is None, reason="needs readelf")
def test_run_time_module_does_not_link_libtorch(compiled):
    cache, _ = compiled
    entry = _entry(cache)
    library = entry / json.loads((entry / "manifest.json").read_text())["library"]
    needed = subprocess.run(["readelf", "-d", str(library)], capture_output=True, text=True,
                            check=True).stdout
    libs = [line for line in needed.splitlines() if "(NEEDED)" in line]
    assert libs and not any("torch" in line or "c10" in line for line in libs), libs


# 1-D and 3-D shapes (docs/nd-design.md) go through the same generator and cache.
ND_SHAPES = [((2, 3, 2), 8, "FBL", (3, 4, 5)), ((4,), 6, "pair", (11,))]


@pytest.mark.parametrize("kernel, channels, order, spatial", ND_SHAPES,
                         ids=[s[2] for s in ND_SHAPES])
def test_nd_shape_is_specialized_and_matches_the_dense_oracle(cache_env, kernel, channels,
                                                              order, spatial, rng):
    import oracle_nd

    names = jit.specialize(kernel, channels, order)
    groups = 2 ** len(kernel) if order in ("pair", "oct") else 1
    stem = f"invconv_k{'x'.join(map(str, kernel))}_g{channels // groups}"
    assert sorted(names) == sorted(f"{stem}_{d}_{r}_cpu" for d in ("f32", "f64")
                                   for r in DIRECTIONS)
    weight = 0.3 / max(kernel) * torch.randn(channels, channels // groups, *kernel,
                                             generator=rng, dtype=torch.float64)
    y = torch.randn(3, channels, *spatial, generator=rng, dtype=torch.float64)
    dense = oracle_nd.dense(weight, order, spatial)
    for direction, matrix in ((_dispatch.SOLVE, dense), (_dispatch.TRANSPOSED, dense.T)):
        x, name = _dispatch.solve(y, weight, order, direction)
        assert name == f"{stem}_f64_{'solve' if direction == 0 else 'transposed'}_cpu"
        ref = torch.linalg.solve(matrix, y.reshape(3, -1).T).T.reshape(y.shape)
        assert oracle.rel_err(x, ref) < 1e-10
    assert _dispatch.solve(y, weight, order, force_generic=True)[1] == "generic"


def test_background_hook_names_an_nd_shape_by_its_own_kernel(monkeypatch):
    """The dispatch hook reports the weight's own kernel sizes (one per spatial axis)."""
    heard = []
    monkeypatch.setattr(_dispatch, "_unspecialized_hook", lambda *args: heard.append(args))
    weight = torch.zeros(4, 4, 2, 1, 3, dtype=torch.float64)
    _dispatch.solve(torch.ones(1, 4, 2, 2, 3, dtype=torch.float64), weight, "NTR")
    assert heard == [("cpu", (2, 1, 3), 4, "NTR")]
