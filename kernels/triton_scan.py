"""SWR forward and backward (plain and fused core) with associative scans per block instead of matrices.

Same semantics, launch grid and helpers as the ring kernels of ``triton_swr`` (``_swr_fwd_kernel``,
``_swr_bwd_kernel``); only the per-block solves differ. The local solve of a block from a zero state is
the first-order recurrence itself, computed by ``tl.associative_scan`` over token pairs ``(a, x)`` with
``(a1, x1), (a2, x2) -> (a1 a2, a2 x1 + x2)``: it yields both the local states ``L`` and the gate
prefix products ``A``, so ``y = L + A * carry`` needs no ``exp`` of prefix differences, no BL x BL
matrix and no tensor-core layout conversions. The backward's transposed solve ``dx_s = sum_{t >= s}
prod_{r=s+1..t} a_r dy_t`` is the same scan run in reverse with the gates shifted by one token.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .triton_swr import (
    _load_block,
    _load_dy,
    _load_readout,
    _logsigmoid,
    _ring_push,
    _ring_read,
    _seq_setup,
    _store_grads,
)


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
    c0 = tl.program_id(1) * NB
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


@triton.jit
def _next_gates(G, rows, mask_next, h_idx, LOGCAP, G_ROW: tl.constexpr, FUSED: tl.constexpr):
    """Gates a_{t+1} of the next token inside the block (HB, BL); 1 where masked (block end, sequence end)."""
    m2 = mask_next[None, :]
    z = tl.load(G + (rows + 1)[None, :] * G_ROW + h_idx[:, None], mask=m2, other=0.0).to(tl.float32)
    if FUSED:
        z = tl.where(m2, _logsigmoid(z) + LOGCAP, 0.0)
    return tl.exp(z)


@triton.jit
def _swr_scan_bwd_kernel(
    X, G, DY, DX, DG, DC, CU, PHASE, T, LOGCAP,
    X_ROW: tl.constexpr, G_ROW: tl.constexpr, DY_ROW: tl.constexpr, DX_ROW: tl.constexpr, DG_ROW: tl.constexpr,
    H: tl.constexpr, HG: tl.constexpr, REP: tl.constexpr, D: tl.constexpr, DP: tl.constexpr,
    BL: tl.constexpr, W: tl.constexpr, WP: tl.constexpr, NB: tl.constexpr, HB: tl.constexpr,
    FUSED: tl.constexpr, VARLEN: tl.constexpr, HAS_PHASE: tl.constexpr,
):
    """Gradients for NB blocks x HB heads; outputs as ``triton_swr._swr_bwd_kernel``.

    The program walks blocks forward with a front ``W - 1`` blocks ahead: the front adds its decayed
    ``sum_i exp(p_i) dy_i`` to the carry gradient of every pending block. The log-gate gradient is
    ``dg_r = sum_{t >= r} (dy_t . y_t - x_t . dx_t)``, started at the chunk from the pairs that straddle it.
    """
    bos, length, phase, nblocks, h_idx = _seq_setup(CU, PHASE, T, VARLEN, HAS_PHASE, BL, HB, H)
    c0 = tl.program_id(1) * NB
    if c0 >= nblocks:
        return
    c1 = tl.minimum(c0 + NB, nblocks)
    t_in = tl.arange(0, BL)
    d = tl.arange(0, DP)
    mask_d = d < D
    slots = tl.arange(0, WP)
    ring = tl.zeros((WP, HB, DP), dtype=tl.float32)  # forward restart states
    pend = tl.zeros((WP, HB, DP), dtype=tl.float32)  # carry gradients of pending blocks
    pend_decay = tl.zeros((WP, HB), dtype=tl.float32)

    for blk in range(tl.maximum(c0 - (W - 1), 0), c0):
        tok = blk * BL + t_in - phase
        mask_t = (tok >= 0) & (tok < length)
        x, g = _load_block(X, G, bos + tok, mask_t, h_idx, d, mask_d, LOGCAP, X_ROW, G_ROW, H, HG, REP, D, FUSED)
        a = tl.broadcast_to(tl.exp(g)[:, :, None], (HB, BL, DP))
        _, local = tl.associative_scan((a, x), axis=1, combine_fn=_first_order)
        term = tl.sum(tl.where((t_in == BL - 1)[None, :, None], local, 0.0), axis=1)
        ring = _ring_push(ring, slots, blk % WP, tl.exp(tl.sum(g, axis=1)), term)

    # Log-gate gradient at the chunk start: pairs (s < start <= i) with s in the halo, i in the next W-1 blocks.
    dg_run = tl.zeros((HB,), dtype=tl.float32)
    decay = tl.full((HB,), 1.0, dtype=tl.float32)
    for f in range(c0, c0 + W - 1):
        tok = f * BL + t_in - phase
        mask_t = (tok >= 0) & (tok < length)
        dy, g = _load_dy(X, G, DY, bos + tok, mask_t, h_idx, d, mask_d, LOGCAP, X_ROW, G_ROW, DY_ROW, H, HG, REP, D,
                         FUSED)
        dterm = tl.sum(tl.exp(tl.cumsum(g, axis=1))[:, :, None] * dy, axis=1)
        dg_run += decay * tl.sum(dterm * _ring_read(ring, slots, (f + WP - (W - 1) % WP) % WP), axis=1)
        decay *= tl.exp(tl.sum(g, axis=1))

    for f in range(c0, c1 + W - 1):
        if W > 1:
            tok = f * BL + t_in - phase
            mask_t = (tok >= 0) & (tok < length)
            dy, g = _load_dy(X, G, DY, bos + tok, mask_t, h_idx, d, mask_d, LOGCAP, X_ROW, G_ROW, DY_ROW, H, HG,
                             REP, D, FUSED)
            dterm = tl.sum(tl.exp(tl.cumsum(g, axis=1))[:, :, None] * dy, axis=1)
            pend += pend_decay[:, :, None] * dterm[None, :, :]
            pend_decay *= tl.exp(tl.sum(g, axis=1))[None, :]
        b = f - (W - 1)
        if b >= c0:
            tok = b * BL + t_in - phase
            mask_t = (tok >= 0) & (tok < length)
            rows = bos + tok
            x, g = _load_block(X, G, rows, mask_t, h_idx, d, mask_d, LOGCAP, X_ROW, G_ROW, H, HG, REP, D, FUSED)
            dy, g = _load_dy(X, G, DY, rows, mask_t, h_idx, d, mask_d, LOGCAP, X_ROW, G_ROW, DY_ROW, H, HG, REP, D,
                             FUSED)
            a = tl.broadcast_to(tl.exp(g)[:, :, None], (HB, BL, DP))
            prefix, y = tl.associative_scan((a, x), axis=1, combine_fn=_first_order)
            mask_next = (t_in < BL - 1) & (tok + 1 >= 0) & (tok + 1 < length)
            a_next = tl.broadcast_to(_next_gates(G, rows, mask_next, h_idx, LOGCAP, G_ROW, FUSED)[:, :, None],
                                     (HB, BL, DP))
            tail, dx = tl.associative_scan((a_next, dy), axis=1, combine_fn=_first_order, reverse=True)
            if W > 1:
                term = tl.sum(tl.where((t_in == BL - 1)[None, :, None], y, 0.0), axis=1)
                y += prefix * _ring_read(ring, slots, (b + WP - (W - 1) % WP) % WP)[:, None, :]
                dx += tail * _ring_read(pend, slots, b % WP)[:, None, :]
                ring = _ring_push(ring, slots, b % WP, tl.exp(tl.sum(g, axis=1)), term)
                pend_decay = tl.where((slots == b % WP)[:, None], 0.0, pend_decay)
            q = tl.sum(dy * y - x * dx, axis=2)
            dg = dg_run[:, None] - (tl.cumsum(q, axis=1) - q)
            dg_run -= tl.sum(q, axis=1)
            _store_grads(X, G, DY, DX, DG, DC, rows, mask_t, h_idx, d, mask_d, y, dx, dg, X_ROW, G_ROW, DY_ROW,
                         DX_ROW, DG_ROW, H, HG, REP, D, FUSED)
        if W > 1:
            pend = tl.where((slots == f % WP)[:, None, None], 0.0, pend)
            pend_decay = tl.where((slots == f % WP)[:, None], 1.0, pend_decay)
