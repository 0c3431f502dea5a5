"""The Triton programs of the solve, the transposed solve and the causal conv (DESIGN §18).

Reviewed, hand-written logic; ``generated/triton/`` only lists which constexprs to
specialize. One program holds one channel group of ``samples`` consecutive samples
(program id 0: the sample block, id 1: the group). Every direction is one walk:

    out[p] = B · rhs[p] + Σ_{taps t ≠ centre} A_t · src[p + off_t]

- conv: ``rhs = src = x``, ``B`` the masked centre, ``A_t = W_t``: no recurrence, so the
  walk is a single step over every position.
- solve: ``rhs = y``, ``src = out``, ``B = L⁻¹``, ``A_t = −L⁻¹ W_t`` (DESIGN §2's folded
  form, so a position needs no channel recurrence), walked over the hyperplanes
  ``d' + h' + w' = s`` (``D + H + W − 2`` steps), a barrier after each: a step reads only
  what earlier steps stored.
- transposed: the solve from the opposite corner with the taps reversed and each matrix
  transposed; the launcher (:mod:`.launch`) prepares ``A``, ``B`` and the corner so that
  the program is the solve's.

The corner of each group is a flip per axis (``corner_ptr[g]``: bit 2 far depth, bit 1 far
height, bit 0 far width), so TL/TR/BL/BR and quad with C/4 = CG run the same program
(DESIGN §17). Canonical coordinates ``i' = far ? n − 1 − i : i`` make every dependency point
to a smaller ``d' + h' + w'``. A tap at index ``k`` on an axis reads offset ``k − (K − 1)``
on a near axis and ``+k`` on a far one; the centre is the tap at offset 0 and is never read
from ``src`` (for the solve that position is not written yet, and a masked centre's NaN
must never reach a result).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _walk(out_ptr, src_ptr, rhs_ptr, center_ptr, taps_ptr, corner_ptr,
          N, C, D, H, W, samples, KD, KH, KW, CG,
          RECURRENT: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    sample_block = tl.program_id(0)
    g = tl.program_id(1)
    corner = tl.load(corner_ptr + g)
    far_d = (corner >> 2) & 1
    far_h = (corner >> 1) & 1
    far_w = corner & 1
    taps = KD * KH * KW
    volume = D * H * W
    first_sample = sample_block * samples
    if RECURRENT:
        # A lane is (sample, d', h'); its w' follows from the step.
        lanes = samples * D * H
        steps = D + H + W - 2
    else:
        # A lane is (sample, position): every position at once.
        lanes = samples * volume
        steps = 1
    for step in range(0, steps):
        for lane0 in range(0, lanes, BLOCK_P):
            lane = lane0 + tl.arange(0, BLOCK_P)
            if RECURRENT:
                j = lane // (D * H)
                rest = lane % (D * H)
                dc = rest // H
                hc = rest % H
                wc = step - dc - hc
            else:
                j = lane // volume
                rest = lane % volume
                dc = rest // (H * W)
                hc = (rest // W) % H
                wc = rest % W
            n = first_sample + j
            valid = (lane < lanes) & (n < N) & (wc >= 0) & (wc < W)
            d = dc + far_d * (D - 1 - 2 * dc)
            h = hc + far_h * (H - 1 - 2 * hc)
            w = wc + far_w * (W - 1 - 2 * wc)
            base = n.to(tl.int64) * C * volume + g * CG * volume
            pos = (d * H + h) * W + w
            for c0 in range(0, CG, BLOCK_C):
                co = c0 + tl.arange(0, BLOCK_C)
                co_ok = co < CG
                acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=out_ptr.dtype.element_ty)
                for i0 in range(0, CG, BLOCK_C):
                    # Input channels as a third tile axis, summed away: one block operation
                    # per tap and channel block, not one per channel.
                    ci = i0 + tl.arange(0, BLOCK_C)
                    ci_ok = ci < CG
                    matrix_ok = co_ok[:, None] & ci_ok[None, :]
                    matrix = co[:, None] * CG + ci[None, :]   # (co, ci) in a CG×CG matrix
                    v = tl.load(rhs_ptr + (base + pos)[:, None] + ci[None, :] * volume,
                                mask=valid[:, None] & ci_ok[None, :], other=0.0)
                    b = tl.load(center_ptr + g * CG * CG + matrix, mask=matrix_ok, other=0.0)
                    acc += tl.sum(v[:, None, :] * b[None, :, :], axis=2)
                    for kd in range(0, KD):
                        sd = d + kd - (1 - far_d) * (KD - 1)
                        ok_d = valid & (sd >= 0) & (sd < D)
                        for kh in range(0, KH):
                            sh = h + kh - (1 - far_h) * (KH - 1)
                            ok_dh = ok_d & (sh >= 0) & (sh < H)
                            for kw in range(0, KW):
                                tap = (kd * KH + kh) * KW + kw
                                sw = w + kw - (1 - far_w) * (KW - 1)
                                # The centre is the tap at offset 0 on every axis.
                                ok = ok_dh & (sw >= 0) & (sw < W) & (
                                    (sd != d) | (sh != h) | (sw != w))
                                spos = (sd * H + sh) * W + sw
                                v = tl.load(src_ptr + (base + spos)[:, None]
                                            + ci[None, :] * volume,
                                            mask=ok[:, None] & ci_ok[None, :], other=0.0)
                                a = tl.load(taps_ptr + (g * taps + tap) * CG * CG + matrix,
                                            mask=matrix_ok, other=0.0)
                                acc += tl.sum(v[:, None, :] * a[None, :, :], axis=2)
                tl.store(out_ptr + (base + pos)[:, None] + co[None, :] * volume, acc,
                         mask=valid[:, None] & co_ok[None, :])
        # Orders this step's stores before the next step's loads (on a GPU; the
        # interpreter runs a program's block as one numpy step).
        tl.debug_barrier()


@triton.jit
def walk_specialized(out_ptr, src_ptr, rhs_ptr, center_ptr, taps_ptr, corner_ptr,
                     N, C, D, H, W, samples,
                     KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, CG: tl.constexpr,
                     RECURRENT: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """Kernel sizes and group channels are compile-time constants (the loops' trip counts
    are known, so the compiler unrolls the tap and channel loops)."""
    _walk(out_ptr, src_ptr, rhs_ptr, center_ptr, taps_ptr, corner_ptr, N, C, D, H, W,
          samples, KD, KH, KW, CG, RECURRENT, BLOCK_P, BLOCK_C)


@triton.jit
def walk_generic(out_ptr, src_ptr, rhs_ptr, center_ptr, taps_ptr, corner_ptr,
                 N, C, D, H, W, samples, KD, KH, KW, CG,
                 RECURRENT: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """Kernel sizes and group channels at run time: every other layer shape."""
    _walk(out_ptr, src_ptr, rhs_ptr, center_ptr, taps_ptr, corner_ptr, N, C, D, H, W,
          samples, KD, KH, KW, CG, RECURRENT, BLOCK_P, BLOCK_C)
