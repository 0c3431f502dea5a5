"""Every claim of docs/nd-design.md, checked in float64 against dense matrices and
torch.linalg on tiny 1-D, 2-D and 3-D shapes (tests/oracle_nd.py), before any N-D kernel."""

import pytest
import torch

import oracle_nd as O

# (spatial shape, kernel) per dimension: square, rectangular, and a size-1 axis.
CASES = {
    1: [((7,), (3,)), ((5,), (2,)), ((6,), (1,))],
    2: [((3, 4), (2, 3)), ((4, 3), (3, 1)), ((3, 3), (2, 2))],
    3: [((2, 3, 3), (2, 2, 2)), ((3, 2, 3), (2, 1, 3)), ((2, 2, 3), (1, 2, 2))],
}
PARAMS = [(d, shape, kernel, corner) for d, cases in CASES.items() for shape, kernel in cases
          for corner in O.corners(d)]


def ids(param):
    d, shape, kernel, corner = param
    return f"{d}d-n{'x'.join(map(str, shape))}-k{'x'.join(map(str, kernel))}-{corner}"


def random_weight(channels, cols, kernel, rng, scale=0.3):
    return scale * torch.randn(channels, cols, *kernel, generator=rng, dtype=torch.float64)


def steps_expected(shape, kernel):
    """Σ (n_i − 1) + 1 over the axes with a dependency (k_i ≥ 2): Σ n_i − d + 1 when all
    have one."""
    return sum(n - 1 for n, k in zip(shape, kernel) if k > 1) + 1


@pytest.fixture(params=PARAMS, ids=ids)
def case(request, rng):
    d, shape, kernel, corner = request.param
    channels = int(torch.randint(1, 4, (), generator=rng))
    return d, shape, kernel, corner, channels, random_weight(channels, channels, kernel, rng)


def test_names_cover_every_corner_once_in_one_axis_order():
    assert O.corners(1) == ["L", "R"]
    assert O.corners(2) == ["TL", "TR", "BL", "BR"]     # DESIGN.md §2 and quad's group order
    assert O.corners(3) == ["NTL", "NTR", "NBL", "NBR", "FTL", "FTR", "FBL", "FBR"]
    for d in (1, 2, 3):
        names = O.corners(d)
        # the opposite corner's number is 2^d − 1 − g (the 2-D kernels' `3 - corner`)
        assert [O.opposite(c) for c in names] == names[::-1]
        for g, corner in enumerate(names):   # bit i of g: far side of axis i (axis 0 = MSB)
            assert O.far_sides(corner) == tuple(bool(g >> (d - 1 - i) & 1) for i in range(d))


@pytest.mark.parametrize("order", ["TL", "TR", "BL", "BR", "quad"])
def test_the_2d_oracle_is_the_shipped_2d_op(order, rng):
    """The N-D rules restricted to 2-D are DESIGN.md §2: same padding, mask, groups."""
    from inverseflow import causal_conv2d
    cols = 2 if order == "quad" else 8
    weight = random_weight(8, cols, (2, 3), rng)
    x = torch.randn(2, 8, 4, 5, generator=rng, dtype=torch.float64)
    torch.testing.assert_close(O.causal_conv(x, weight, order), causal_conv2d(x, weight, order))


def test_padding_reads_only_toward_the_corner(case):
    d, shape, kernel, corner, channels, weight = case
    far = O.far_sides(corner)
    for tap, off in O.offsets(corner, kernel).items():
        # a near axis reads offsets ≤ 0 (earlier indices), a far axis ≥ 0
        assert all((o >= 0) if f else (o <= 0) for o, f in zip(off, far))
    assert O.offsets(corner, kernel)[O.center(corner, kernel)] == (0,) * d


def test_triangular_with_unit_diagonal_in_the_corners_order(case):
    d, shape, kernel, corner, channels, weight = case
    matrix = O.dense(weight, corner, shape)
    perm = O.solve_order(corner, channels, shape)
    ordered = matrix[perm][:, perm]
    torch.testing.assert_close(ordered, ordered.tril(), rtol=0, atol=0)
    torch.testing.assert_close(ordered.diagonal(), torch.ones(len(perm), dtype=torch.float64))
    sign, logabsdet = torch.linalg.slogdet(matrix)
    assert sign == 1 and abs(float(logabsdet)) < 1e-12


def test_masked_entries_change_nothing(case):
    d, shape, kernel, corner, channels, weight = case
    noisy = weight.clone()
    idx = (slice(None), slice(None)) + O.center(corner, kernel)
    upper = torch.ones(channels, channels, dtype=torch.bool).triu()
    noisy[idx] = torch.where(upper, noisy[idx] + 5.0, noisy[idx])
    torch.testing.assert_close(O.dense(noisy, corner, shape), O.dense(weight, corner, shape))


def test_the_wavefront_solve_is_the_inverse_in_sum_n_minus_d_plus_1_steps(case, rng):
    d, shape, kernel, corner, channels, weight = case
    y = torch.randn(2, channels, *shape, generator=rng, dtype=torch.float64)
    expected = torch.linalg.solve(O.dense(weight, corner, shape),
                                  y.reshape(2, -1).T).T.reshape(y.shape)
    x, planes = O.wavefront_solve(y, weight, corner)
    torch.testing.assert_close(x, expected, rtol=1e-10, atol=1e-10)
    assert planes == sum(shape) - d + 1


def test_the_folded_form_factors_out_the_centre(case):
    """T = (L ⊗ I) · T(W') with W'_t = L⁻¹ W_t and an identity centre: the one-phase
    recurrence x[p] = L⁻¹y[p] − Σ_t W'_t x[p + off_t]."""
    d, shape, kernel, corner, channels, weight = case
    masked = O.mask(weight, corner)
    centre = (slice(None), slice(None)) + O.center(corner, kernel)
    lower = masked[centre]
    folded = torch.einsum("ab,bc...->ac...", torch.linalg.inv(lower), masked)
    torch.testing.assert_close(folded[centre], torch.eye(channels, dtype=torch.float64))
    n = int(torch.tensor(shape).prod())
    block = torch.kron(lower, torch.eye(n, dtype=torch.float64))
    torch.testing.assert_close(block @ O.dense(folded, corner, shape),
                               O.dense(weight, corner, shape), rtol=1e-12, atol=1e-12)


def test_no_schedule_has_fewer_steps(case):
    """With every tap nonzero, the longest dependency chain is one plane per step: a
    position's level is exactly its hyperplane s = Σ q_i (axes with k_i = 1 collapse)."""
    d, shape, kernel, corner, channels, _ = case
    weight = torch.ones(channels, channels, *kernel, dtype=torch.float64)
    levels = O.dependency_levels(O.dense(weight, corner, shape), channels, shape)
    assert int(levels.max()) == steps_expected(shape, kernel)
    if all(k > 1 for k in kernel):
        torch.testing.assert_close(levels, O.wavefront(corner, shape) + 1)


def test_the_transpose_is_the_opposite_corners_solve(case):
    """Tᵀ = R · T_opposite(W') · R: W' transposes and reverses the channels and flips the
    taps, R reverses the channel order (so the centre Lᵀ becomes unit lower triangular)."""
    d, shape, kernel, corner, channels, weight = case
    n = int(torch.tensor(shape).prod())
    reverse = torch.arange(channels * n).reshape(channels, n).flip(0).reshape(-1)
    transposed = O.dense(O.transposed_weight(O.mask(weight, corner)), O.opposite(corner), shape)
    torch.testing.assert_close(O.dense(weight, corner, shape).T,
                               transposed[reverse][:, reverse], rtol=0, atol=1e-15)


def test_backward_is_a_transposed_solve_and_a_masked_correlation(case, rng):
    d, shape, kernel, corner, channels, weight = case
    batch = 2
    weight = weight.requires_grad_()
    y = torch.randn(batch, channels, *shape, generator=rng, dtype=torch.float64, requires_grad=True)
    g = torch.randn(batch, channels, *shape, generator=rng, dtype=torch.float64)
    matrix = O.dense(weight, corner, shape)
    x = torch.linalg.solve(matrix, y.reshape(batch, -1).T).T.reshape(y.shape)
    grad_y, grad_w = torch.autograd.grad((x * g).sum(), (y, weight))

    # g_y = T⁻ᵀ g: the opposite corner's solve, on channel-reversed data
    reversed_weight = O.transposed_weight(O.mask(weight.detach(), corner))
    solved, _ = O.wavefront_solve(g.flip(1), reversed_weight, O.opposite(corner))
    torch.testing.assert_close(grad_y, solved.flip(1), rtol=1e-10, atol=1e-10)

    # dL/dW = −(correlation of the padded x with g_y), zero at the masked centre entries
    padded = torch.nn.functional.pad(x.detach(), O.padding(corner, kernel))
    conv_weight = {1: torch.nn.grad.conv1d_weight, 2: torch.nn.grad.conv2d_weight,
                   3: torch.nn.grad.conv3d_weight}[d]
    corr = -conv_weight(padded, weight.shape, grad_y)
    idx = (slice(None), slice(None)) + O.center(corner, kernel)
    corr[idx] = corr[idx].tril(-1)
    torch.testing.assert_close(grad_w, corr, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("d", [1, 2, 3])
def test_the_group_pattern_solves_group_g_from_corner_g(d, rng):
    shape, kernel = CASES[d][0]
    groups = 2 ** d
    channels = 2 * groups
    pattern = O.GROUP_PATTERN[d]
    weight = random_weight(channels, channels // groups, kernel, rng)
    matrix = O.dense(weight, pattern, shape)
    n = int(torch.tensor(shape).prod())
    blocks = matrix.reshape(channels, n, channels, n)
    for g, (corner, part) in enumerate(O.groups(pattern, channels, d)):
        assert corner == O.corners(d)[g]
        # the group mixes only its own channels ...
        outside = torch.ones(channels, dtype=torch.bool)
        outside[part] = False
        assert not blocks[part][:, :, outside].any()
        # ... and is that corner's single-group operator on them
        alone = O.dense(weight[part], corner, shape)
        torch.testing.assert_close(blocks[part][:, :, part].reshape(alone.shape), alone)
    assert abs(float(torch.linalg.slogdet(matrix)[1])) < 1e-12
