"""The CUDA kernels, run on the CPU, against the CPU kernel and the dense oracle (DESIGN.md §8).

No GPU needed: cuda_emulation.py compiles the real kernel bodies (csrc/invconv/
cuda_solve_kernels.cuh), the generated CUDA files and the generated registry as host C++
against csrc/emu/ (one std::thread per CUDA thread, a real barrier for __syncthreads(),
per-block dynamic shared memory), with the project's compiler and CPU flags. A fake device
with settable limits forces each of the launcher's three paths (plan_launch in
csrc/invconv/cuda_launch_plan.h): x in shared memory, x in global memory, and the folded
weights in a global workspace. Its grid holds two samples, so larger batches make blocks
stride over samples.

Between barriers the emulated threads run one at a time in descending threadIdx order, so a
missing barrier gives wrong numbers on every run; the ThreadSanitizer check
(csrc/emu/tsan_check.cpp) runs them concurrently instead and must report no race.

Both backends sum in the same order (same folding, taps in the same order, channels
ascending), so the emulation must agree bit for bit with the CPU kernel built from its
sources with the same compiler and flags (both without FMA contraction, see
cuda_emulation.py), and within the parity tolerances of test_cuda_parity.py with the
shipped CPU module.
"""

from __future__ import annotations

import subprocess

import pytest
import torch

from inverseflow.ops import _dispatch

import cuda_emulation
import oracle
from test_cuda_parity import TOL

pytestmark = pytest.mark.skipif(
    cuda_emulation.find_compiler() is None,
    reason="no C++ compiler found (looked for the project's CMAKE_CXX_COMPILER, $CXX, c++, "
           "g++, clang++): the CUDA emulation cannot be built")

ORDERS = ("TL", "TR", "BL", "BR", "quad")
PATHS = ("shared_x", "global_x", "global_workspace")
DTYPES = (torch.float32, torch.float64)
# The solve, its transpose, and the generated causal conv y = T x (DESIGN.md §15).
DIRECTIONS = (_dispatch.SOLVE, _dispatch.TRANSPOSED, _dispatch.CONV)
ORACLE = {_dispatch.SOLVE: oracle.inv_conv, _dispatch.TRANSPOSED: oracle.inv_conv_transposed,
          _dispatch.CONV: oracle.causal_conv}
GRID_SAMPLES = 2  # samples per grid on the fake device: batches above this stride

# (batch, channels, height, width, kh, kw). The first four have generated specializations
# (tl and quad); the others only the generic kernel serves.
SHAPES = [
    (3, 4, 5, 5, 3, 3),    # quad leaves one channel per group
    (5, 8, 4, 4, 2, 2),
    (2, 12, 4, 5, 3, 3),   # batch within the grid: no striding
    (3, 8, 1, 7, 3, 3),    # H = 1: the kernel is taller than the image
    (3, 4, 4, 6, 2, 3),    # kh != kw
    (2, 4, 3, 5, 1, 3),    # 1 x k
    (3, 8, 5, 3, 3, 1),    # k x 1
    (2, 4, 2, 2, 4, 5),    # kernel larger than the image
    (3, 5, 3, 4, 2, 2),    # odd C: no quad
    (3, 12, 2, 3, 1, 1),   # 1 x 1
]
# 1-D and 3-D (docs/nd-design.md): (batch, channels, spatial sizes, kernel sizes). The
# first of each dimension has generated specializations (l and pair; ntl and oct).
ND_SHAPES = [
    (3, 8, (9,), (3,)),
    (2, 4, (6,), (4,)),           # generic
    (3, 8, (3, 3, 4), (2, 2, 2)),
    (2, 4, (3, 4, 3), (3, 3, 3)),
    (3, 8, (2, 3, 5), (2, 3, 1)),  # generic, kd != kh != kw
    (2, 8, (4, 1, 3), (2, 1, 2)),  # H = 1
]
ND_PATTERNS = {1: ("l", "pair"), 3: ("ntl", "oct")}
STEMS = cuda_emulation.specialization_stems(
    [(c, kh, kw, pattern) for _, c, _, _, kh, kw in SHAPES for pattern in ("tl", "quad")]
    + [(c, *kernel, pattern) for _, c, _, kernel in ND_SHAPES
       for pattern in ND_PATTERNS[len(kernel)]])


def _shape_id(shape):
    return "B{}C{}H{}W{}k{}x{}".format(*shape)


def _cases():
    for shape in SHAPES:
        for order in ORDERS:
            if order == "quad" and shape[1] % 4:
                continue
            for path in PATHS:
                yield pytest.param(shape, order, path, id=f"{_shape_id(shape)}-{order}-{path}")


@pytest.fixture(scope="module")
def emu():
    try:
        module = cuda_emulation.load_module(STEMS)
    except cuda_emulation.BuildError as exc:
        pytest.fail(str(exc))
    yield module
    module.set_device()


@pytest.fixture(scope="module")
def cpu_ref():
    try:
        return cuda_emulation.load_cpu_reference(STEMS)
    except cuda_emulation.BuildError as exc:
        pytest.fail(str(exc))


def _groups(order):
    return 4 if order == "quad" else 1


def _force_path(emu, path, shape, order, dtype, schedule="serial_reverse"):
    """Fake-device limits at the boundaries of plan_launch that select `path`."""
    _, channels, height, width, kh, kw = shape
    cg, elem = channels // _groups(order), torch.finfo(dtype).bits // 8
    weight_bytes = (kh * kw + 1) * cg * cg * elem
    buf_bytes = (height + kh - 1) * (width + kw - 1) * cg * elem
    smem, sms = {"shared_x": (weight_bytes + buf_bytes, 132),
                 "global_x": (weight_bytes + buf_bytes - 1, 132),
                 "global_workspace": (weight_bytes - 1, 1)}[path]
    emu.set_device(smem_optin=smem, sm_count=sms, max_grid_x=GRID_SAMPLES * _groups(order),
                   schedule=schedule)


def _expected_blocks(path, batch, order):
    samples = min(batch, GRID_SAMPLES)
    if path == "global_workspace":  # 2 blocks per SM, one SM
        samples = max(1, min(2 // _groups(order), samples))
    return samples * _groups(order)


def _inputs(shape, order, dtype, rng):
    batch, channels, height, width, kh, kw = shape
    weight = oracle.random_weight(channels, kh, kw, order, rng, dtype=dtype).contiguous()
    y = torch.randn(batch, channels, height, width, generator=rng, dtype=torch.float64)
    return y.to(dtype).contiguous(), weight


def _solve(module, y, weight, order, direction, force_generic=False):
    """module.solve on host pointers (NaN-filled output, so an unwritten element shows);
    1-D, 2-D or 3-D data, passed as the kernels take it: 3-D with leading sizes of 1."""
    missing = 5 - y.dim()
    depth, height, width = (1,) * missing + tuple(y.shape[2:])
    kd, kh, kw = (1,) * missing + tuple(weight.shape[2:])
    x = torch.full_like(y, float("nan"))
    name = module.solve(y.data_ptr(), weight.data_ptr(), x.data_ptr(), y.shape[0], y.shape[1],
                        depth, height, width, kd, kh, kw,
                        _dispatch.PATTERN_CODE[order], _dispatch.DTYPE_CODE[y.dtype],
                        direction, 1, 0, force_generic)
    return x, name


def _emulated(emu, y, weight, order, direction, force_generic=False):
    emu.launches()
    x, name = _solve(emu, y, weight, order, direction, force_generic)
    return x, name, emu.launches()


def _mismatch(x, ref):
    bad = (x != ref) & ~(x.isnan() & ref.isnan())
    return f"{int(bad.sum())}/{x.numel()} elements differ, rel err {oracle.rel_err(x, ref):.3e}"


@pytest.mark.parametrize("shape,order,path", list(_cases()))
def test_emulated_matches_cpu(emu, cpu_ref, shape, order, path, rng):
    batch = shape[0]
    for dtype in DTYPES:
        for direction in DIRECTIONS:
            what = f"{_shape_id(shape)} {order} {path} {dtype} direction={direction}"
            y, weight = _inputs(shape, order, dtype, rng)
            x_cpu, cpu_name = _solve(cpu_ref, y, weight, order, direction)
            x_shipped, _ = _dispatch.solve(y, weight, order, direction)
            _force_path(emu, path, shape, order, dtype)
            x, name, launches = _emulated(emu, y, weight, order, direction)

            assert name == cpu_name.replace("_cpu", "_cuda"), (what, name, cpu_name)
            assert len(launches) == 1, (what, launches)
            launch = launches[0]
            assert launch["path"] == path, (what, launch)
            assert launch["blocks"] == _expected_blocks(path, batch, order), (what, launch)
            if batch > GRID_SAMPLES:
                assert launch["blocks"] < batch * _groups(order), (what, launch)
            specialized_kernel = path == "shared_x" and name != "generic"
            assert ("cg=rt" not in launch["kernel"]) == specialized_kernel, (what, launch)
            assert torch.equal(x, x_cpu), f"{what} ({name}): {_mismatch(x, x_cpu)}"
            err = oracle.rel_err(x, x_shipped)
            assert err <= TOL[dtype], f"{what} ({name}) vs the shipped CPU module: {err:.3e}"


@pytest.mark.parametrize("order,channels", [("TL", 12), ("TR", 12), ("BL", 12), ("BR", 12),
                                            ("quad", 48)])
def test_folded_registry_serves_every_corner_and_quad(emu, order, channels, rng):
    """One <12, 3x3> instantiation (the emulation is built with the stems of STEMS, which
    hold it once, for TL C=12) runs TL/TR/BL/BR C=12 and quad C=48 (DESIGN.md §17), on the
    shared-x path, against the dense oracle; a group size with none runs the generic kernel."""
    assert "invconv_k3x3_g12" in STEMS
    shape = (2, channels, 4, 5, 3, 3)
    for dtype in DTYPES:
        for direction in DIRECTIONS:
            y, weight = _inputs(shape, order, dtype, rng)
            _force_path(emu, "shared_x", shape, order, dtype)
            x, name, launches = _emulated(emu, y, weight, order, direction)
            assert name.startswith("invconv_k3x3_g12_") and name.endswith("_cuda"), name
            assert "cg=rt" not in launches[0]["kernel"], launches
            expected = ORACLE[direction](y.double(), weight.double(), order)
            assert oracle.rel_err(x, expected) <= TOL[dtype], (order, dtype, direction, name)
    shape = (2, 20, 4, 5, 3, 3)   # quad C=20: 5 channels per group, built nowhere
    y, weight = _inputs(shape, "quad", torch.float64, rng)
    _force_path(emu, "shared_x", shape, "quad", torch.float64)
    x, name = _solve(emu, y, weight, "quad", _dispatch.SOLVE)
    assert name == "generic"
    assert oracle.rel_err(x, oracle.inv_conv(y, weight, "quad")) <= TOL[torch.float64]


@pytest.mark.parametrize("order", ["TL", "quad"])
@pytest.mark.parametrize("shape", SHAPES[:4], ids=_shape_id)  # the specialized ones
def test_generic_kernel_on_specialized_shapes(emu, cpu_ref, shape, order, rng):
    """force_generic runs the generic kernel on the shared-x path where a specialization exists."""
    for dtype in DTYPES:
        for direction in DIRECTIONS:
            y, weight = _inputs(shape, order, dtype, rng)
            x_cpu, _ = _solve(cpu_ref, y, weight, order, direction, force_generic=True)
            _force_path(emu, "shared_x", shape, order, dtype)
            x, name, launches = _emulated(emu, y, weight, order, direction, force_generic=True)
            assert name == "generic" and "cg=rt" in launches[0]["kernel"], (name, launches)
            assert launches[0]["path"] == "shared_x"
            assert torch.equal(x, x_cpu), f"{shape} {order} {dtype}: {_mismatch(x, x_cpu)}"


ORACLE_SHAPES = [(3, 4, 3, 4, 2, 2), (2, 8, 3, 3, 3, 3), (3, 4, 2, 4, 2, 3)]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("shape", ORACLE_SHAPES, ids=_shape_id)
def test_emulated_against_dense_oracle(emu, shape, path, rng):
    """A bug shared with the CPU kernel cannot hide behind bit-for-bit agreement."""
    for order in ORDERS:
        for direction in DIRECTIONS:
            y, weight = _inputs(shape, order, torch.float64, rng)
            _force_path(emu, path, shape, order, torch.float64)
            x, name, _ = _emulated(emu, y, weight, order, direction)
            err = oracle.rel_err(x, ORACLE[direction](y, weight, order))
            assert err <= 1e-10, f"{shape} {order} {path} direction={direction} ({name}): {err:.3e}"


@pytest.mark.parametrize("path", PATHS)
def test_concurrent_schedule(emu, cpu_ref, path, rng):
    """Threads running freely between barriers (as on a GPU) give the same bits."""
    shape = (5, 8, 4, 4, 2, 2)
    for order in ("TL", "quad", "BR"):
        for direction in DIRECTIONS:
            y, weight = _inputs(shape, order, torch.float32, rng)
            x_cpu, _ = _solve(cpu_ref, y, weight, order, direction)
            _force_path(emu, path, shape, order, torch.float32, schedule="concurrent")
            x, name, _ = _emulated(emu, y, weight, order, direction)
            assert torch.equal(x, x_cpu), f"{order} {path} ({name}): {_mismatch(x, x_cpu)}"


def test_default_device_plans_the_shared_path_for_every_sample(emu):
    emu.set_device()
    plan = emu.plan(batch=7, channels=12, height=16, width=16, kh=3, kw=3,
                    pattern=_dispatch.PATTERN_CODE["quad"], elem_bytes=4)
    assert plan == {"path": "shared_x", "blocks": 28, "threads": 64,
                    "smem_bytes": (10 * 9 + 18 * 18 * 3) * 4, "workspace_bytes": 0}


def test_fake_device_rejects_bad_limits(emu):
    with pytest.raises(ValueError, match="smem_optin"):
        emu.set_device(smem_optin=emu.shared_capacity + 1)
    with pytest.raises(ValueError, match="schedule"):
        emu.set_device(schedule="random")
    emu.set_device()


def test_thread_sanitizer_finds_no_race():
    """Small cases of every path with concurrent threads under -fsanitize=thread."""
    try:
        exe = cuda_emulation.build_tsan_check(
            cuda_emulation.specialization_stems([(4, 3, 3, "tl"), (4, 3, 3, "quad"),
                                                 (8, 2, 2, 2, "oct"), (8, 3, "pair")]))
    except cuda_emulation.BuildError as exc:
        pytest.fail(str(exc))
    # First, that this build reports a race at all: a kernel with a missing barrier.
    proc = subprocess.run([str(exe), "--self-test"], capture_output=True, text=True, timeout=60)
    assert "ThreadSanitizer: data race" in proc.stderr, proc.stdout + proc.stderr[-4000:]
    proc = subprocess.run([str(exe)], capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert "ThreadSanitizer" not in out and proc.returncode == 0, out[-8000:]
    assert "0 of 126 cases wrong" in proc.stdout, proc.stdout[-4000:]


# --- 1-D and 3-D: the same kernels with depth (and height) of 1 or more (docs/nd-design.md)

ND_ORDERS = {1: ("L", "R", "pair"),
             3: ("NTL", "NTR", "NBL", "NBR", "FTL", "FTR", "FBL", "FBR", "oct")}


def _nd_id(shape):
    batch, channels, spatial, kernel = shape
    return (f"B{batch}C{channels}S{'x'.join(map(str, spatial))}"
            f"k{'x'.join(map(str, kernel))}")


def _nd_inputs(shape, order, dtype, rng):
    batch, channels, spatial, kernel = shape
    groups = 2 ** len(kernel) if order in ("pair", "oct") else 1
    scale = 0.3 / max(kernel)
    weight = scale * torch.randn(channels, channels // groups, *kernel, generator=rng,
                                 dtype=torch.float64)
    y = torch.randn(batch, channels, *spatial, generator=rng, dtype=torch.float64)
    return y.to(dtype), weight.to(dtype)


def _force_nd_path(emu, path, shape, order, dtype, schedule="serial_reverse"):
    _, channels, spatial, kernel = shape
    groups = 2 ** len(kernel) if order in ("pair", "oct") else 1
    cg, elem = channels // groups, torch.finfo(dtype).bits // 8
    taps, padded = 1, 1
    for n, k in zip(spatial, kernel):
        taps, padded = taps * k, padded * (n + k - 1)
    weight_bytes = (taps + 1) * cg * cg * elem
    buf_bytes = padded * cg * elem
    smem, sms = {"shared_x": (weight_bytes + buf_bytes, 132),
                 "global_x": (weight_bytes + buf_bytes - 1, 132),
                 "global_workspace": (weight_bytes - 1, 1)}[path]
    emu.set_device(smem_optin=smem, sm_count=sms, max_grid_x=GRID_SAMPLES * groups,
                   schedule=schedule)


def _nd_cases():
    for shape in ND_SHAPES:
        for order in ND_ORDERS[len(shape[3])]:
            if order in ("pair", "oct") and shape[1] % 2 ** len(shape[3]):
                continue
            for path in PATHS:
                yield pytest.param(shape, order, path, id=f"{_nd_id(shape)}-{order}-{path}")


@pytest.mark.parametrize("shape,order,path", list(_nd_cases()))
def test_nd_emulated_matches_cpu_and_oracle(emu, cpu_ref, shape, order, path, rng):
    """Every 1-D and 3-D order on every path: bit for bit the CPU kernel, and in float64
    the dense oracle's solve (tests/oracle_nd.py, independent of both kernels)."""
    import oracle_nd

    for dtype in DTYPES:
        for direction in DIRECTIONS:
            what = f"{_nd_id(shape)} {order} {path} {dtype} direction={direction}"
            y, weight = _nd_inputs(shape, order, dtype, rng)
            x_cpu, cpu_name = _solve(cpu_ref, y, weight, order, direction)
            _force_nd_path(emu, path, shape, order, dtype)
            x, name, launches = _emulated(emu, y, weight, order, direction)
            assert name == cpu_name.replace("_cpu", "_cuda"), (what, name, cpu_name)
            assert len(launches) == 1 and launches[0]["path"] == path, (what, launches)
            assert torch.equal(x, x_cpu), f"{what} ({name}): {_mismatch(x, x_cpu)}"
            if dtype == torch.float64:
                dense = oracle_nd.dense(weight, order, shape[2])
                flat = y.reshape(y.shape[0], -1).T
                if direction == _dispatch.CONV:
                    ref = (dense @ flat).T.reshape(y.shape)
                else:
                    matrix = dense if direction == _dispatch.SOLVE else dense.T
                    ref = torch.linalg.solve(matrix, flat).T.reshape(y.shape)
                err = oracle.rel_err(x, ref)
                assert err <= 1e-10, f"{what} ({name}) vs the dense oracle: {err:.3e}"


@pytest.mark.parametrize("path", PATHS)
def test_nd_concurrent_schedule(emu, cpu_ref, path, rng):
    """3-D hyperplanes span several depths: threads running freely between barriers must
    still give the CPU kernel's bits."""
    shape = (3, 8, (3, 3, 4), (2, 2, 2))
    for order in ("FBR", "oct", "NTL"):
        for direction in DIRECTIONS:
            y, weight = _nd_inputs(shape, order, torch.float32, rng)
            x_cpu, _ = _solve(cpu_ref, y, weight, order, direction)
            _force_nd_path(emu, path, shape, order, torch.float32, schedule="concurrent")
            x, name, _ = _emulated(emu, y, weight, order, direction)
            assert torch.equal(x, x_cpu), f"{order} {path} ({name}): {_mismatch(x, x_cpu)}"


def test_nd_plan_counts_the_volume(emu):
    """The shared path holds the padded volume: (D+kd−1)(H+kh−1)(W+kw−1)·cg values."""
    emu.set_device()
    plan = emu.plan(batch=2, channels=8, height=6, width=7, kh=3, kw=2,
                    pattern=_dispatch.PATTERN_CODE["oct"], elem_bytes=8, depth=5, kd=2)
    assert plan["path"] == "shared_x" and plan["blocks"] == 16
    assert plan["smem_bytes"] == (2 * 3 * 2 + 1) * 1 * 8 + (5 + 1) * (6 + 2) * (7 + 1) * 8
