"""Independent dense float64 oracle for the inverseflow ops, written from DESIGN.md §2.

Nothing here imports inverseflow: the mask, the corner geometry and the dense matrix of the
causal convolution are rebuilt from the table in DESIGN.md §2 by explicit index arithmetic.

For one sample, flatten NCHW as ``n = c*H*W + h*W + w``. The causal conv of that sample is
``y = A x`` with the dense ``(C*H*W) x (C*H*W)`` matrix ``A = A(M(W))``; the inverse is
``x = A^-1 y``, the transposed solve is ``u = A^-T g``.
"""

from __future__ import annotations

import functools

import torch

CORNERS = ("TL", "TR", "BL", "BR")
ORDERS = CORNERS + ("quad",)


def tap_offset(corner: str, i: int, j: int, kh: int, kw: int) -> tuple[int, int]:
    """(dh, dw) such that tap [i, j] reads x[h + dh, w + dw] (DESIGN.md §2 table)."""
    if corner == "TL":
        return i - (kh - 1), j - (kw - 1)
    if corner == "TR":
        return i - (kh - 1), j
    if corner == "BL":
        return i, j - (kw - 1)
    if corner == "BR":
        return i, j
    raise AssertionError(corner)


def center_tap(corner: str, kh: int, kw: int) -> tuple[int, int]:
    """The tap [i, j] whose offset is (0, 0)."""
    for i in range(kh):
        for j in range(kw):
            if tap_offset(corner, i, j, kh, kw) == (0, 0):
                return i, j
    raise AssertionError("no center tap")


def group_layout(order: str, channels: int) -> list[tuple[str, int, int]]:
    """(corner, first channel, channels in group) for each channel group."""
    if order == "quad":
        assert channels % 4 == 0
        cg = channels // 4
        return [(corner, g * cg, cg) for g, corner in enumerate(CORNERS)]
    return [(order, 0, channels)]


def weight_rows_cols(order: str, channels: int) -> tuple[int, int]:
    return (channels, channels // 4) if order == "quad" else (channels, channels)


@functools.lru_cache(maxsize=None)
def _mask_parts(order: str, rows: int, cols: int, kh: int, kw: int):
    """Boolean ``free`` (entries of W that M keeps) and float ``diag`` (M's forced ones)."""
    channels = rows
    free = torch.ones(rows, cols, kh, kw, dtype=torch.bool)
    diag = torch.zeros(rows, cols, kh, kw, dtype=torch.float64)
    for corner, start, cg in group_layout(order, channels):
        ci, cj = center_tap(corner, kh, kw)
        for r in range(cg):          # output channel inside the group
            for q in range(cg):      # input channel inside the group (column of weight)
                if q >= r:
                    free[start + r, q, ci, cj] = False
                if q == r:
                    diag[start + r, q, ci, cj] = 1.0
    return free, diag


def masked_positions(weight_shape, order: str) -> torch.Tensor:
    """Boolean tensor: True where M overrides the stored weight (center diagonal and above)."""
    rows, cols, kh, kw = weight_shape
    free, _ = _mask_parts(order, rows, cols, kh, kw)
    return ~free


def mask(weight: torch.Tensor, order: str) -> torch.Tensor:
    """M(W) in float64; differentiable in the free entries, masked entries replaced."""
    rows, cols, kh, kw = weight.shape
    free, diag = _mask_parts(order, rows, cols, kh, kw)
    w = weight.to(torch.float64)
    # torch.where, not a multiply: a non-finite stored value at a masked place is dropped.
    return torch.where(free.to(w.device), w, diag.to(w.device))


@functools.lru_cache(maxsize=None)
def _dense_indices(order: str, channels: int, height: int, width: int, kh: int, kw: int):
    """Index triples (row of A, column of A, flat index into M(W)) for every weight use."""
    rows_w, cols_w = weight_rows_cols(order, channels)
    hw = height * width
    rows, cols, widx = [], [], []
    for corner, start, cg in group_layout(order, channels):
        for i in range(kh):
            for j in range(kw):
                dh, dw = tap_offset(corner, i, j, kh, kw)
                for h in range(height):
                    hs = h + dh
                    if not 0 <= hs < height:
                        continue          # zero padding
                    for w in range(width):
                        ws = w + dw
                        if not 0 <= ws < width:
                            continue
                        for r in range(cg):
                            c_out = start + r
                            for q in range(cg):
                                c_in = start + q
                                rows.append(c_out * hw + h * width + w)
                                cols.append(c_in * hw + hs * width + ws)
                                widx.append(((c_out * cols_w + q) * kh + i) * kw + j)
    return (torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long),
            torch.tensor(widx, dtype=torch.long))


def dense_matrix(weight: torch.Tensor, order: str, height: int, width: int) -> torch.Tensor:
    """Dense float64 matrix A of the causal conv of one (C, H, W) sample; differentiable."""
    rows_w, _, kh, kw = weight.shape
    channels = rows_w
    n = channels * height * width
    rows, cols, widx = _dense_indices(order, channels, height, width, kh, kw)
    m = mask(weight, order).reshape(-1)
    a = torch.zeros(n, n, dtype=torch.float64, device=weight.device)
    return a.index_put((rows, cols), m[widx], accumulate=True)


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.float64).reshape(t.shape[0], -1).T   # (n, B)


def _unflat(cols: torch.Tensor, shape) -> torch.Tensor:
    return cols.T.reshape(shape)


def causal_conv(x: torch.Tensor, weight: torch.Tensor, order: str) -> torch.Tensor:
    """y = A x, float64."""
    a = dense_matrix(weight, order, x.shape[2], x.shape[3])
    return _unflat(a @ _flat(x), x.shape)


def inv_conv(y: torch.Tensor, weight: torch.Tensor, order: str) -> torch.Tensor:
    """x = A^-1 y, float64 (torch.linalg.solve)."""
    a = dense_matrix(weight, order, y.shape[2], y.shape[3])
    return _unflat(torch.linalg.solve(a, _flat(y)), y.shape)


def inv_conv_transposed(g: torch.Tensor, weight: torch.Tensor, order: str) -> torch.Tensor:
    """u = A^-T g, float64."""
    a = dense_matrix(weight, order, g.shape[2], g.shape[3])
    return _unflat(torch.linalg.solve(a.T, _flat(g)), g.shape)


def dependency_cone(weight: torch.Tensor, order: str, height: int, width: int,
                    channel: int, h: int, w: int, transposed: bool = False) -> torch.Tensor:
    """Boolean (C, H, W): entries of x = A^-1 y that structurally depend on y[channel, h, w].

    x[q] = y[q] - sum_{r != q} A[q, r] x[r] (A has unit diagonal), so x[q] depends on x[r]
    whenever A[q, r] != 0. The cone is the set reachable from the source in that graph.
    With ``transposed`` it is the cone of u = A^-T g (the graph of A^T).
    """
    a = dense_matrix(weight.detach(), order, height, width)
    if transposed:
        a = a.T
    channels = weight.shape[0]
    n = channels * height * width
    adj = (a != 0) & ~torch.eye(n, dtype=torch.bool)   # adj[q, r]: q reads r
    reached = torch.zeros(n, dtype=torch.bool)
    reached[channel * height * width + h * width + w] = True
    while True:
        new = reached | adj[:, reached].any(dim=1)
        if torch.equal(new, reached):
            break
        reached = new
    return reached.reshape(channels, height, width)


def random_weight(channels: int, kh: int, kw: int, order: str, generator: torch.Generator,
                  dtype=torch.float64, scale: float | None = None) -> torch.Tensor:
    """A random weight of the right shape with small off-center taps (DESIGN "Stability").

    Every stored entry (masked ones too) is random, so the mask must really be applied.
    """
    rows, cols = weight_rows_cols(order, channels)
    if scale is None:
        scale = 0.1 / max(kh, kw)
    w = torch.randn(rows, cols, kh, kw, generator=generator, dtype=torch.float64) * scale
    return w.to(dtype)


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected|, in float64 (NaN if anything is NaN)."""
    actual = actual.detach().to(torch.float64)
    expected = expected.detach().to(torch.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    if expected.numel() == 0:
        return 0.0
    scale = expected.abs().max().item()
    diff = (actual - expected).abs().max().item()
    if diff != diff:
        return float("nan")
    return diff / scale if scale > 0 else diff


def param_id(value) -> str:
    """pytest id: (B, C, H, W, kh, kw) tuples become B3C12H4W5k3x3, other values str()."""
    if isinstance(value, tuple) and len(value) == 6 and all(isinstance(v, int) for v in value):
        return "B{}C{}H{}W{}k{}x{}".format(*value)
    return str(value)
