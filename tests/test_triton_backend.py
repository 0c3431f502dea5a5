"""The Triton backend (DESIGN §18) run by Triton's interpreter on CPU tensors.

Every check compares with the dense float64 oracle (tests/oracle_nd.py, which shares no
code with the package) and with the C++ CPU kernel on the same inputs. The shapes are
small, picked so that together they run every path of ``_triton/kernels.py`` and
``_triton/launch.py``:

- directions: solve and transposed (the hyperplane walk, ``RECURRENT``) and conv (one step
  over every position); every order of 1-D (L R pair), 2-D (TL TR BL BR quad) and 3-D (the
  eight corners, oct); float32 and float64;
- the launch table's constexpr kernels (``walk_specialized``: 1-D k3 C=8 and pair C=8,
  2-D 2x2 C=4 and quad C=16, 3-D oct 2x2x2 C=8) and the generic one (every other shape);
  specialized and generic agree bit for bit;
- odd shapes: H != W, size-1 axes, kernels longer than the image, group channels that do
  not fill a channel block (3 in a block of 4) and that need two blocks (40: 32 + 8);
- several samples in one program with a partial last program (``n < N`` masked), and more
  lanes than one block (the lane-chunk loop), in both the walk and the conv;
- strided inputs and NaN in the masked centre (never reaches a result);
- the ops: gradcheck (float64), jvp, vmap, torch.compile(fullgraph=True), with the backend
  set; the package imported and correct with its compiled modules unimportable, and the
  errors without the settings (subprocesses).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

# Triton decides at import whether its own library functions (tl.zeros ...) are interpreted,
# so the interpreter is switched on before anything imports it; the kernels are for CPU
# tensors here, and no other test uses Triton.
if "triton" not in sys.modules:
    os.environ["TRITON_INTERPRET"] = "1"
if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("triton was imported before TRITON_INTERPRET=1 could be set",
                allow_module_level=True)
pytest.importorskip("triton")

import oracle_nd  # noqa: E402
from inverseflow.ops import _backends, _dispatch  # noqa: E402
from inverseflow.ops._triton import launch  # noqa: E402

HERE = Path(__file__).resolve().parent
TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-10}
DIRECTIONS = (_dispatch.SOLVE, _dispatch.TRANSPOSED, _dispatch.CONV)


@pytest.fixture(autouse=True, scope="module")
def triton_backend():
    """The ops run Triton in this module (the Python setting; the environment stays)."""
    _backends.set_backend("triton")
    yield
    _backends.set_backend(None)


def random_case(rng, dims, order, channels, shape, kernel, batch=2):
    groups = 2 ** dims if order == oracle_nd.GROUP_PATTERN[dims] else 1
    weight = 0.3 / len(kernel) * torch.randn(channels, channels // groups, *kernel,
                                             generator=rng, dtype=torch.float64)
    data = torch.randn(batch, channels, *shape, generator=rng, dtype=torch.float64)
    return data, weight


def oracle(direction, data, weight, order):
    """Dense float64: the causal conv T x, T⁻¹ y or T⁻ᵀ g."""
    shape = tuple(data.shape[2:])
    matrix = oracle_nd.dense(weight, order, shape)
    flat = data.reshape(data.shape[0], -1).T
    if direction == _dispatch.CONV:
        out = matrix @ flat
    elif direction == _dispatch.SOLVE:
        out = torch.linalg.solve(matrix, flat)
    else:
        out = torch.linalg.solve(matrix.T, flat)
    return out.T.reshape(data.shape)


def run_backend(backend, data, weight, order, direction, force_generic=False):
    _backends.set_backend(backend)
    try:
        return _dispatch.solve(data, weight, order, direction, force_generic=force_generic)
    finally:
        _backends.set_backend("triton")


def rel_err(actual, expected):
    return ((actual.double() - expected).abs().max() / expected.abs().max().clamp_min(1e-30)).item()


def check_all_directions(data, weight, order, dtype, expect_specialized=None):
    for direction in DIRECTIONS:
        want = oracle(direction, data, weight, order)
        got, name = run_backend("triton", data.to(dtype), weight.to(dtype), order, direction)
        assert got.dtype == dtype and got.shape == data.shape
        assert rel_err(got, want) < TOLERANCE[dtype], (direction, name)
        cpu, _ = run_backend("cpu", data.to(dtype), weight.to(dtype), order, direction)
        assert rel_err(got, cpu.double()) < TOLERANCE[dtype], (direction, name)
        if expect_specialized is not None:
            assert (name != "triton:generic") == expect_specialized, name


# (dims, orders, channels, group-pattern channels, spatial shape, kernel); the channel
# counts make the corners and the group pattern hit launch-table entries where noted.
CASES = [
    (1, ("L", "R"), 8, None, (6,), (3,)),          # specialized walk1d_k3_cg8
    (1, ("pair",), 8, None, (6,), (3,)),           # specialized walk1d_k3_cg4
    (2, ("TL", "TR", "BL", "BR"), 4, None, (3, 4), (2, 2)),   # specialized 2x2 cg4
    (2, ("quad",), 16, None, (3, 4), (2, 2)),      # specialized 2x2 cg4
    (3, ("NTL", "NTR", "NBL", "NBR", "FTL", "FTR", "FBL", "FBR"), 2, None, (2, 3, 2),
     (2, 2, 2)),                                   # generic (cg 2)
    (3, ("oct",), 8, None, (2, 3, 2), (2, 2, 2)),  # specialized walk3d_k2x2x2_cg1
]
ORDER_CASES = [(dims, order, channels, shape, kernel)
               for dims, orders, channels, _, shape, kernel in CASES for order in orders]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("dims,order,channels,shape,kernel", ORDER_CASES,
                         ids=[c[1] for c in ORDER_CASES])
def test_every_order_direction_and_dtype(rng, dims, order, channels, shape, kernel, dtype):
    data, weight = random_case(rng, dims, order, channels, shape, kernel)
    groups = 2 ** dims if order == oracle_nd.GROUP_PATTERN[dims] else 1
    key = (dims, kernel, channels // groups, launch.DTYPE_NAMES[dtype], "solve")
    check_all_directions(data, weight, order, dtype,
                         expect_specialized=key in launch.launch_table())


ODD_CASES = {
    "2d_one_row": (2, "BR", 3, (1, 5), (2, 3)),               # size-1 axis, cg 3 in 4
    "2d_kernel_longer_than_image": (2, "quad", 12, (2, 3), (4, 4)),
    "3d_depth_one": (3, "FTR", 3, (1, 3, 2), (2, 2, 2)),
    "1d_two_channel_blocks": (1, "R", 40, (4,), (2,)),         # 40 = 32 + a partial 8
    "1d_kernel_longer_than_sequence": (1, "pair", 4, (2,), (5,)),
}


@pytest.mark.parametrize("case", list(ODD_CASES))
def test_odd_shapes_generic(rng, case):
    dims, order, channels, shape, kernel = ODD_CASES[case]
    data, weight = random_case(rng, dims, order, channels, shape, kernel)
    check_all_directions(data, weight, order, torch.float64, expect_specialized=False)


def test_samples_per_program_and_lane_chunks(rng, monkeypatch):
    """With programs of 16 lanes, five 5-row images take two programs of three samples
    (the last one's third masked off); with 8 lanes, a 12-row walk and a 24-position conv
    take two and three lane chunks a step."""
    monkeypatch.setattr(launch, "INTERPRETER_LANES", 16)
    assert launch.tiles(5, 5, 2) == (3, 16)
    data, weight = random_case(rng, 2, "BL", 2, (5, 3), (2, 2), batch=5)
    check_all_directions(data, weight, "BL", torch.float64)
    monkeypatch.setattr(launch, "INTERPRETER_LANES", 8)
    assert launch.tiles(12, 1, 2) == (1, 8)
    data, weight = random_case(rng, 2, "TR", 3, (12, 2), (3, 2), batch=1)
    check_all_directions(data, weight, "TR", torch.float64)


def test_gpu_tiles_bound_the_product_tile(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    for block_c in (1, 4, 16, 32):
        for lanes in (1, 7, 16, 300, 5000):
            samples, block_p = launch.tiles(lanes, 256, block_c)
            assert block_p * block_c * block_c <= launch.GPU_TILE or block_p == 4
            assert block_p & (block_p - 1) == 0 and samples >= 1
            assert samples == 1 or samples * lanes <= launch.WARP_LANES


def test_specialized_equals_generic_bit_for_bit(rng):
    data, weight = random_case(rng, 2, "TL", 4, (3, 3), (2, 2))
    for direction in DIRECTIONS:
        special, name = run_backend("triton", data, weight, "TL", direction)
        generic, generic_name = run_backend("triton", data, weight, "TL", direction,
                                            force_generic=True)
        assert name.startswith("triton:walk2d_k2x2_cg4") and generic_name == "triton:generic"
        assert torch.equal(special, generic)


def test_nan_in_masked_centre_is_ignored(rng):
    for dims, order, channels, shape, kernel in ((2, "quad", 8, (3, 3), (2, 2)),
                                                 (3, "FBL", 3, (2, 2, 2), (2, 2, 2))):
        data, weight = random_case(rng, dims, order, channels, shape, kernel)
        poisoned = weight.clone()
        group_channels = weight.shape[1]
        upper = torch.ones(group_channels, group_channels, dtype=torch.bool).triu()
        for corner, part in oracle_nd.groups(order, channels, dims):
            index = (part, slice(None)) + oracle_nd.center(corner, kernel)
            poisoned[index] = torch.where(upper, float("nan"), weight[index])
        for direction in DIRECTIONS:
            got, _ = run_backend("triton", data, poisoned, order, direction)
            assert torch.isfinite(got).all()
            assert rel_err(got, oracle(direction, data, weight, order)) < 1e-10


def test_ops_on_strided_inputs(rng):
    import inverseflow

    data, weight = random_case(rng, 2, "TR", 3, (4, 3), (2, 2))
    strided = data.transpose(2, 3).contiguous().transpose(2, 3)   # same values, strides swapped
    assert not strided.is_contiguous()
    x = inverseflow.inv_conv2d(strided, weight, "TR")
    assert rel_err(x, oracle(_dispatch.SOLVE, data, weight, "TR")) < 1e-10
    y = inverseflow.causal_conv2d(x[:, :, ::1, :], weight, "TR")
    assert rel_err(y, data) < 1e-10


@pytest.mark.parametrize("dims,order,channels,shape,kernel", [
    (1, "pair", 4, (3,), (2,)), (2, "quad", 4, (2, 2), (2, 2)), (3, "FBR", 2, (1, 2, 2), (1, 2, 2))],
    ids=["1d_pair", "2d_quad", "3d_fbr"])
def test_gradcheck_through_the_ops(rng, dims, order, channels, shape, kernel):
    import inverseflow

    solve = {1: inverseflow.inv_conv1d, 2: inverseflow.inv_conv2d, 3: inverseflow.inv_conv3d}[dims]
    data, weight = random_case(rng, dims, order, channels, shape, kernel, batch=1)
    assert torch.autograd.gradcheck(lambda y, w: solve(y, w, order), fast_mode=True,
                                    inputs=(data.requires_grad_(), weight.requires_grad_()))


def test_jvp_vmap_and_compile_match_the_cpu_backend(rng):
    import inverseflow

    data, weight = random_case(rng, 1, "R", 2, (4,), (2,), batch=3)
    tangent = torch.randn(data.shape, generator=rng, dtype=torch.float64)

    def results():
        primal, jvp = torch.func.jvp(lambda y: inverseflow.inv_conv1d(y, weight, "R"),
                                     (data,), (tangent,))
        mapped = torch.vmap(lambda y: inverseflow.inv_conv1d(y, weight, "R"))(data[:, None])
        compiled = torch.compile(inverseflow.inv_conv1d, fullgraph=True, backend="aot_eager")(
            data, weight, "R")
        return primal, jvp, mapped[:, 0], compiled

    triton_results = results()
    _backends.set_backend("cpu")
    try:
        cpu_results = results()
    finally:
        _backends.set_backend("triton")
    for got, want in zip(triton_results, cpu_results):
        assert rel_err(got, want) < 1e-10


def _run_python(code: str, env: dict) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items()
                if k not in ("INVERSEFLOW_BACKEND", "TRITON_INTERPRET")}
    full_env.update(env)
    full_env["PYTHONPATH"] = os.pathsep.join([str(HERE), full_env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-c", code], env=full_env, capture_output=True,
                          text=True, timeout=600)


_BLOCK_COMPILED = """
import importlib.abc, sys
class BlockCompiled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name in ("inverseflow.ops._cpu", "inverseflow.ops._cuda"):
            raise ImportError(f"{name} is blocked by the test")
sys.meta_path.insert(0, BlockCompiled())
"""


def test_works_without_the_compiled_modules():
    """An AMD user with no C++ build: every dimension and direction against the dense
    oracle, and the gradients of y and the weight against the oracle's autograd."""
    code = _BLOCK_COMPILED + textwrap.dedent("""
        import torch, inverseflow, oracle_nd
        from inverseflow.ops import _backends
        assert _backends.import_error("_cpu") and _backends.import_error("_cuda")
        g = torch.Generator().manual_seed(28)
        cases = {1: ("pair", (5,), (2,), inverseflow.inv_conv1d, inverseflow.causal_conv1d,
                     inverseflow.ops.inv_conv1d_transposed),
                 2: ("BL", (3, 4), (2, 3), inverseflow.inv_conv2d, inverseflow.causal_conv2d,
                     inverseflow.ops.inv_conv2d_transposed),
                 3: ("NTR", (2, 2, 3), (2, 2, 2), inverseflow.inv_conv3d,
                     inverseflow.causal_conv3d, inverseflow.ops.inv_conv3d_transposed)}
        for dims, (order, shape, kernel, solve, conv, transposed) in cases.items():
            channels = 4
            groups = 2 if order == "pair" else 1
            for dtype, tol in ((torch.float32, 1e-5), (torch.float64, 1e-10)):
                w = 0.1 * torch.randn(channels, channels // groups, *kernel, generator=g,
                                      dtype=torch.float64)
                y = torch.randn(2, channels, *shape, generator=g, dtype=torch.float64)
                T = oracle_nd.dense(w, order, shape)
                flat = y.reshape(2, -1).T
                want = {"solve": torch.linalg.solve(T, flat), "conv": T @ flat,
                        "transposed": torch.linalg.solve(T.T, flat)}
                with torch.no_grad():
                    got = {"solve": solve(y.to(dtype), w.to(dtype), order),
                           "conv": conv(y.to(dtype), w.to(dtype), order),
                           "transposed": transposed(y.to(dtype), w.to(dtype), order)}
                for name, value in got.items():
                    expected = want[name].T.reshape(y.shape)
                    err = (value.double() - expected).abs().max() / expected.abs().max()
                    assert err < tol, (dims, dtype, name, err.item())
            yg, wg = y.clone().requires_grad_(), w.clone().requires_grad_()
            r = torch.randn(y.shape, generator=g, dtype=torch.float64)
            (solve(yg, wg, order) * r).sum().backward()
            yo, wo = y.clone().requires_grad_(), w.clone().requires_grad_()
            xo = torch.linalg.solve(oracle_nd.dense(wo, order, shape), yo.reshape(2, -1).T)
            (xo.T.reshape(y.shape) * r).sum().backward()
            assert torch.allclose(yg.grad, yo.grad, rtol=0, atol=1e-10 * yo.grad.abs().max())
            assert torch.allclose(wg.grad, wo.grad, rtol=0, atol=1e-10 * wo.grad.abs().max())
        print("ok")
    """)
    result = _run_python(code, {"INVERSEFLOW_BACKEND": "triton", "TRITON_INTERPRET": "1"})
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]


def test_clear_errors_without_the_settings():
    code = _BLOCK_COMPILED + textwrap.dedent("""
        import torch, inverseflow
        y, w = torch.randn(1, 2, 3, 3), torch.randn(2, 2, 2, 2)
        try:
            inverseflow.inv_conv2d(y, w)
        except (RuntimeError, ValueError) as exc:
            print(type(exc).__name__, exc)
    """)
    no_interpreter = _run_python(code, {"INVERSEFLOW_BACKEND": "triton"})
    assert no_interpreter.returncode == 0, no_interpreter.stderr[-3000:]
    assert no_interpreter.stdout.startswith("ValueError")
    assert "TRITON_INTERPRET=1" in no_interpreter.stdout
    no_backend = _run_python(code, {})
    assert no_backend.returncode == 0, no_backend.stderr[-3000:]
    assert "CPU kernels are not built" in no_backend.stdout
    assert "INVERSEFLOW_BACKEND=triton" in no_backend.stdout


def test_backend_setting_is_validated(monkeypatch):
    with pytest.raises(ValueError, match="backend must be one of"):
        _backends.set_backend("rocm")
    _backends.set_backend(None)
    try:
        monkeypatch.setenv("INVERSEFLOW_BACKEND", "gpu")
        with pytest.raises(ValueError, match="INVERSEFLOW_BACKEND must be one of"):
            _backends.get_backend()
        monkeypatch.setenv("INVERSEFLOW_BACKEND", "cuda")
        with pytest.raises(ValueError, match="runs CUDA tensors only"):
            _backends.backend_for("cpu")
        monkeypatch.setenv("INVERSEFLOW_BACKEND", "auto")
        assert _backends.backend_for("cpu") == "cpu"
    finally:
        _backends.set_backend("triton")


def test_launch_table_folds_layers_by_what_the_program_depends_on():
    """tl C=12 and quad C=48 (3x3) share one entry, as do l C=8 and pair C=16 would; the
    table is what codegen renders from specs.toml."""
    sys.path.insert(0, str(HERE.parent))
    from codegen import triton_target
    from codegen.spec import layer_for

    layers = [layer_for((3, 3), 12, "tl"), layer_for((3, 3), 48, "quad"),
              layer_for((3, 3), 12, "br"), layer_for((3,), 8, "l"),
              layer_for((3,), 16, "pair"), layer_for((2, 2, 2), 8, "oct"),
              layer_for((2, 2, 2), 1, "fbr")]
    specs = triton_target.triton_specs(layers)
    by_key = {s.key: s for s in specs}
    entry = by_key[(2, (3, 3), 12, "float32", "solve")]
    assert entry.layers == ("k3x3_c12_tl", "k3x3_c48_quad", "k3x3_c12_br")
    assert by_key[(1, (3,), 8, "float64", "conv")].layers == ("k3_c8_l", "k3_c16_pair")
    assert by_key[(3, (2, 2, 2), 1, "float64", "transposed")].layers == (
        "k2x2x2_c8_oct", "k2x2x2_c1_fbr")
    assert len(specs) == 3 * 6
    table = launch.launch_table()
    for spec in triton_target.triton_specs(oracle_layers()):
        assert table[spec.key]["name"] == spec.name
        assert table[spec.key]["BLOCK_C"] == spec.block_c
        assert launch.generic_tiles(spec.group_channels) == {"BLOCK_C": spec.block_c,
                                                             "num_warps": spec.num_warps}


def oracle_layers():
    from codegen.spec import load_specs

    return load_specs(HERE.parent / "codegen" / "specs.toml")


def test_auto_on_a_gpu(monkeypatch):
    """auto: the CUDA module on NVIDIA where it is built, else Triton; always Triton on
    ROCm (torch.version.hip set). Decided from the setting, the build and torch alone."""
    _backends.set_backend("auto")
    try:
        monkeypatch.setattr(_backends, "triton_version", lambda: "3.9.0")
        for hip, cuda_error, want in ((None, None, "cuda"), (None, "ImportError: no _cuda", "triton"),
                                      ("6.2", None, "triton"), ("6.2", "ImportError", "triton")):
            monkeypatch.setattr(torch.version, "hip", hip)
            monkeypatch.setattr(_backends, "import_error",
                                lambda name, error=cuda_error: error)
            assert _backends.backend_for("cuda") == want, (hip, cuda_error)
        monkeypatch.setattr(_backends, "triton_version", lambda: None)
        monkeypatch.setattr(torch.version, "hip", None)
        assert _backends.backend_for("cuda") == "cuda"   # whose error says what to build
    finally:
        _backends.set_backend("triton")


def test_codegen_check_covers_the_triton_table(tmp_path):
    import shutil

    sys.path.insert(0, str(HERE.parent))
    from codegen import render

    layers = oracle_layers()
    out = tmp_path / "generated"
    shutil.copytree(render.GENERATED, out)
    assert render.check(layers, out) == []
    table = out / "triton" / "launch_table.py"
    table.write_text(table.read_text().replace('"BLOCK_C": 4', '"BLOCK_C": 8', 1))
    assert render.check(layers, out) == ["out of date: generated/triton/launch_table.py"]
    table.unlink()
    assert render.check(layers, out) == ["missing: generated/triton/launch_table.py"]


def test_triton_not_installed_is_a_clear_error(rng, monkeypatch):
    monkeypatch.setitem(sys.modules, "triton", None)   # import triton raises ImportError
    data, weight = random_case(rng, 1, "L", 2, (3,), (2,))
    with pytest.raises(RuntimeError, match=r"Triton is not installed.*inverseflow\[triton\]"):
        _dispatch.solve(data, weight, "L")


def test_walk_without_triton_op(rng, monkeypatch):
    """torch < 2.6 has neither triton_op nor wrap_triton: the walk is then a plain
    function that launches the program itself."""
    monkeypatch.delattr(torch.library, "triton_op")
    monkeypatch.delattr(torch.library, "wrap_triton")
    plain = launch.walk_op.__wrapped__()
    assert not isinstance(plain, torch._ops.OpOverloadPacket)
    monkeypatch.setattr(launch, "walk_op", lambda: plain)
    data, weight = random_case(rng, 2, "BR", 2, (2, 3), (2, 2))
    check_all_directions(data, weight, "BR", torch.float64)


def test_info_shows_the_triton_backend():
    from inverseflow import info

    entry = info.collect()["triton"]
    assert entry["installed"] and entry["version"] == _backends.triton_version()
    assert entry["interpreted"] is True and entry["setting"] == "triton"
    names = {spec["name"] for spec in entry["specializations"]}
    assert names == {spec["name"] for spec in launch.launch_table().values()}
    assert "walk2d_k3x3_cg12_f32_solve" in names
    report = info.format_report(info.collect(), verbose=True)
    assert f"[triton] Triton {entry['version']}, interpreted (TRITON_INTERPRET=1)" in report
    assert "walk2d_k3x3_cg12_f32_solve (k3x3_c12_tl, k3x3_c48_quad)" in report


def test_folded_weight_follows_in_place_updates(rng):
    """The folded matrices are cached per weight version: an optimizer-style in-place
    update, and a write through .data (which skips the version counter), are both seen."""
    data, weight = random_case(rng, 1, "pair", 4, (4,), (2,))
    for update in (lambda w: w.mul_(-1.5), lambda w: w.data.add_(0.05)):
        before, _ = run_backend("triton", data, weight, "pair", _dispatch.SOLVE)
        update(weight)
        after, _ = run_backend("triton", data, weight, "pair", _dispatch.SOLVE)
        assert not torch.equal(before, after)
        assert rel_err(after, oracle(_dispatch.SOLVE, data, weight, "pair")) < 1e-10
