"""Forward SWR (plain and fused core) with an associative scan per block instead of a transfer matrix.

Same semantics, launch grid and helpers as ``triton_swr._swr_fwd_kernel``; only the per-block solve
differs. The local solve of a block from a zero state is the first-order recurrence itself, computed by
``tl.associative_scan`` over token pairs ``(a, x)`` with ``(a1, x1), (a2, x2) -> (a1 a2, a2 x1 + x2)``:
it yields both the local states ``L`` and the gate prefix products ``A``, so ``y = L + A * carry``
needs no ``exp`` of prefix differences, no BL x BL matrix and no tensor-core layout conversions.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .triton_swr import _load_block, _load_readout, _ring_push, _ring_read, _seq_setup


@triton.jit
def _first_order(a1, x1, a2, x2):
    """Compose h -> a1 h + x1 then h -> a2 h + x2."""
    return a1 * a2, a2 * x1 + x2


@triton.jit
def _swr_scan_fwd_kernel(
    X, G, Y, CU, PHASE, T, LOGCAP,
    X_ROW: tl.constexpr, G_ROW: tl.constexpr, Y_ROW: tl.constexpr,
    H: tl.constexpr, HG: tl.constexpr, REP: tl.constexpr, D: tl.constexpr, DP: tl.constexpr,
    BL: tl.constexpr, W: tl.constexpr, WP: tl.constexpr, NB: tl.constexpr, HB: tl.constexpr,
    FUSED: tl.constexpr, VARLEN: tl.constexpr, HAS_PHASE: tl.constexpr,
):
    """y = SWR(x, g) (fused: SWR(sigmoid(zb) v, logsigmoid(za)) * c + v) for NB blocks x HB heads."""
    bos, length, phase, nblocks, h_idx = _seq_setup(CU, PHASE, T, VARLEN, HAS_PHASE, BL, HB, H)
    c0 = tl.program_id(0) * NB
    if c0 >= nblocks:
        return
    c1 = tl.minimum(c0 + NB, nblocks)
    t_in = tl.arange(0, BL)
    d = tl.arange(0, DP)
    mask_d = d < D
    slots = tl.arange(0, WP)
    ring = tl.zeros((WP, HB, DP), dtype=tl.float32)
    for blk in range(tl.maximum(c0 - (W - 1), 0), c1):
        tok = blk * BL + t_in - phase
        mask_t = (tok >= 0) & (tok < length)
        rows = bos + tok
        x, g = _load_block(X, G, rows, mask_t, h_idx, d, mask_d, LOGCAP, X_ROW, G_ROW, H, HG, REP, D, FUSED)
        a = tl.broadcast_to(tl.exp(g)[:, :, None], (HB, BL, DP))
        prefix, local = tl.associative_scan((a, x), axis=1, combine_fn=_first_order)
        if W > 1:
            carry = _ring_read(ring, slots, (blk + WP - (W - 1) % WP) % WP)
            y = local + prefix * carry[:, None, :]
            term = tl.sum(tl.where((t_in == BL - 1)[None, :, None], local, 0.0), axis=1)
            ring = _ring_push(ring, slots, blk % WP, tl.exp(tl.sum(g, axis=1)), term)
        else:
            y = local
        if blk >= c0:
            m3 = mask_t[None, :, None] & mask_d[None, None, :]
            if FUSED:
                c, v = _load_readout(X, rows, mask_t, h_idx, d, mask_d, X_ROW, H, HG, REP, D)
                y = y * c + v
            out = Y + rows[None, :, None] * Y_ROW + h_idx[:, None, None] * D + d[None, None, :]
            tl.store(out, y.to(Y.dtype.element_ty), mask=m3)
