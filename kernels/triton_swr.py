"""Triton kernels for the SWR (DESIGN.md section 2) and the fused Phalanx core (section 3).

Layout: inputs are token-major rows, one row per token of all sequences (``B * T`` rows, or the packed
rows of ``cu_seqlens``). A program owns ``NB`` aligned blocks of ``BL`` tokens of one sequence for ``HB``
heads. Blocks align to each sequence's first token shifted back by its phase (a continued chunk starts
mid-block); positions outside the sequence load as x = 0, log-gate = 0. Loads are limited to ``VEC``
contiguous channels per thread so that the ``HB x DP`` (head, channel) pairs of a token spread over the
threads and each thread keeps the whole block axis in registers: the scans along it then need no warp
shuffles (``launch_config`` picks ``VEC = HB * DP / threads``).

Forward, per block: the local solve from a zero state is the first-order recurrence itself, computed
by ``tl.associative_scan`` over token pairs ``(a, x)`` with ``(a1, x1), (a2, x2) -> (a1 a2, a2 x1 + x2)``;
it yields both the local states and the gate prefix products ``A``, so ``y = local + A * carry`` needs no
``exp`` of prefix differences and no BL x BL matrix. The carry (the recurrence restarted ``W - 1`` blocks
back, entering the block) lives in a ring of restart states indexed by absolute block number: each block
decays every slot by its gate product, adds its local terminal state, and overwrites the slot of the
oldest restart. Programs are independent: each recomputes the ``W - 1`` blocks before its chunk (the
halo) instead of communicating. The program that owns a sequence's last block can also write the final
state (the ``W`` restarts at the last token), which is what a prefill hands to the decode cache.

Backward: ``dx_s = sum_{t >= s} prod_{r=s+1..t} a_r dy_t`` inside a block is the same scan run in
reverse with the gates shifted by one token; the carry gradient from the next ``W - 1`` blocks comes from
a front that walks ``W - 1`` blocks ahead of the block it completes, its decayed ``sum_i A_i dy_i``
collected per pending block in a second ring. The log-gate gradient uses ``dg_r = sum_{t >= r}
(dy_t . y_t - x_t . dx_t)`` (per head, over channels), accumulated forward from the chunk start, whose
value there comes from the pairs that straddle the chunk boundary.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _mul(a, b):
    return a * b


@triton.jit
def _gates(z, mask, CAP, FUSED: tl.constexpr):
    """Gates ``a = exp(log-gate)`` in fp32 from the loaded values, 1 where masked: plain ``exp(z)``, fused
    ``sigmoid(z) * CAP`` (the decay logit's log-sigmoid plus log CAP, exponentiated: no ``log`` is needed,
    since the kernels only use gates and their products)."""
    if FUSED:
        a = tl.sigmoid(z) * CAP
    else:
        a = tl.exp(z)
    return tl.where(mask, a, 1.0)


@triton.jit
def _load_block(
    X, G, rows, mask_t, h_idx, d, mask_d, CAP,
    X_ROW: tl.constexpr, G_ROW: tl.constexpr, H: tl.constexpr, HG: tl.constexpr, REP: tl.constexpr,
    D: tl.constexpr, FUSED: tl.constexpr,
):
    """SWR inputs of one block: x (HB, BL, DP) and gates (HB, BL) in fp32 (x = 0, gate 1 where masked).

    Fused: x = sigmoid(input-gate logits of the head's group) * values, gate = sigmoid(decay logit) * CAP,
    all read from the projection row [decay (H) | gate (HG*D) | readout (HG*D) | values (H*D)].
    """
    m2 = mask_t[None, :]
    m3 = m2[:, :, None] & mask_d[None, None, :]
    r2 = rows[None, :]
    r3 = rows[None, :, None]
    if FUSED:
        grp = h_idx // REP
        zb = tl.load(X + r3 * X_ROW + H + grp[:, None, None] * D + d[None, None, :], mask=m3, other=0.0)
        v = tl.load(X + r3 * X_ROW + H + 2 * HG * D + h_idx[:, None, None] * D + d[None, None, :], mask=m3, other=0.0)
        x = tl.sigmoid(zb.to(tl.float32)) * v.to(tl.float32)
    else:
        x = tl.load(X + r3 * X_ROW + h_idx[:, None, None] * D + d[None, None, :], mask=m3, other=0.0).to(tl.float32)
    z = tl.load(G + r2 * G_ROW + h_idx[:, None], mask=m2, other=0.0).to(tl.float32)
    return x, _gates(z, m2, CAP, FUSED)


@triton.jit
def _load_readout(X, rows, mask_t, h_idx, d, mask_d, X_ROW: tl.constexpr, H: tl.constexpr, HG: tl.constexpr,
                  REP: tl.constexpr, D: tl.constexpr):
    """Readout c (of the head's group) and values v of one block, fp32 (HB, BL, DP)."""
    m3 = mask_t[None, :, None] & mask_d[None, None, :]
    r3 = rows[None, :, None]
    grp = h_idx // REP
    c = tl.load(X + r3 * X_ROW + H + HG * D + grp[:, None, None] * D + d[None, None, :], mask=m3, other=0.0)
    v = tl.load(X + r3 * X_ROW + H + 2 * HG * D + h_idx[:, None, None] * D + d[None, None, :], mask=m3, other=0.0)
    return c.to(tl.float32), v.to(tl.float32)


@triton.jit
def _ring_read(ring, slots, slot):
    """Slot ``slot`` of a ring (WP, HB, DP) -> (HB, DP)."""
    return tl.sum(tl.where((slots == slot)[:, None, None], ring, 0.0), axis=0)


@triton.jit
def _ring_push(ring, slots, slot, decay, term):
    """Advance every restart state through a block (decay (HB,), local terminal state term (HB, DP)) and
    start a new restart in ``slot`` (its value after the block is the terminal state itself)."""
    ring = ring * decay[None, :, None] + term[None, :, :]
    return tl.where((slots == slot)[:, None, None], term[None, :, :], ring)


@triton.jit
def _seq_setup(CU, PHASE, T, VARLEN: tl.constexpr, HAS_PHASE: tl.constexpr, BL: tl.constexpr, HB: tl.constexpr,
               H: tl.constexpr):
    """Sequence of this program: its index, first row, length, phase, number of aligned blocks, head indices.

    Grid axis 0 runs over (sequence, head group) and axis 1 over chunks, so programs launched together
    read neighbouring heads of the same tokens (whole rows of the token-major layout).
    """
    pid_nh = tl.program_id(0)
    n = pid_nh // (H // HB)
    h_idx = (pid_nh % (H // HB)) * HB + tl.arange(0, HB)
    if VARLEN:
        bos = tl.load(CU + n).to(tl.int64)
        length = (tl.load(CU + n + 1).to(tl.int64) - bos).to(tl.int32)
    else:
        bos = n.to(tl.int64) * T
        length = T
    if HAS_PHASE:
        phase = tl.load(PHASE + n).to(tl.int32)
    else:
        phase = 0
    nblocks = (length + phase + BL - 1) // BL
    return n, bos, length, phase, nblocks, h_idx


@triton.jit
def _load_dy(X, G, DY, rows, mask_t, h_idx, d, mask_d, CAP,
             X_ROW: tl.constexpr, G_ROW: tl.constexpr, DY_ROW: tl.constexpr, H: tl.constexpr, HG: tl.constexpr,
             REP: tl.constexpr, D: tl.constexpr, FUSED: tl.constexpr):
    """Gradient of the SWR output (fused: d(out) * readout) and gates of one block, fp32."""
    m2 = mask_t[None, :]
    m3 = m2[:, :, None] & mask_d[None, None, :]
    r3 = rows[None, :, None]
    dy = tl.load(DY + r3 * DY_ROW + h_idx[:, None, None] * D + d[None, None, :], mask=m3, other=0.0).to(tl.float32)
    if FUSED:
        grp = h_idx // REP
        c = tl.load(X + r3 * X_ROW + H + HG * D + grp[:, None, None] * D + d[None, None, :], mask=m3, other=0.0)
        dy = dy * c.to(tl.float32)
    z = tl.load(G + rows[None, :] * G_ROW + h_idx[:, None], mask=m2, other=0.0).to(tl.float32)
    return dy, _gates(z, m2, CAP, FUSED)


@triton.jit
def _store_grads(X, G, DY, DX, DG, DC, rows, mask_t, h_idx, d, mask_d, y, dx, dg,
                 X_ROW: tl.constexpr, G_ROW: tl.constexpr, DY_ROW: tl.constexpr, DX_ROW: tl.constexpr,
                 DG_ROW: tl.constexpr, H: tl.constexpr, HG: tl.constexpr, REP: tl.constexpr, D: tl.constexpr,
                 FUSED: tl.constexpr):
    """Write the gradients of one block (plain: dx, dg; fused: the four parts of d(proj))."""
    m2 = mask_t[None, :]
    m3 = m2[:, :, None] & mask_d[None, None, :]
    r3 = rows[None, :, None]
    hd = h_idx[:, None, None] * D + d[None, None, :]
    if FUSED:
        grp = h_idx // REP
        gd = grp[:, None, None] * D + d[None, None, :]
        za = tl.load(G + rows[None, :] * G_ROW + h_idx[:, None], mask=m2, other=0.0).to(tl.float32)
        zb = tl.load(X + r3 * X_ROW + H + gd, mask=m3, other=0.0).to(tl.float32)
        v = tl.load(X + r3 * X_ROW + H + 2 * HG * D + hd, mask=m3, other=0.0).to(tl.float32)
        dout = tl.load(DY + r3 * DY_ROW + hd, mask=m3, other=0.0).to(tl.float32)
        sb = tl.sigmoid(zb)
        d_zb = dx * v * sb * (1.0 - sb)
        d_c = dout * y
        ty = DX.dtype.element_ty
        tl.store(DX + rows[None, :] * DX_ROW + h_idx[:, None], (dg * tl.sigmoid(-za)).to(ty), mask=m2)
        tl.store(DX + r3 * DX_ROW + H + 2 * HG * D + hd, (dout + dx * sb).to(ty), mask=m3)
        if REP == 1:
            tl.store(DX + r3 * DX_ROW + H + gd, d_zb.to(ty), mask=m3)
            tl.store(DX + r3 * DX_ROW + H + HG * D + gd, d_c.to(ty), mask=m3)
        else:
            tl.store(DC + r3 * (2 * H * D) + hd, d_zb, mask=m3)
            tl.store(DC + r3 * (2 * H * D) + H * D + hd, d_c, mask=m3)
    else:
        tl.store(DX + r3 * DX_ROW + hd, dx.to(DX.dtype.element_ty), mask=m3)
        tl.store(DG + rows[None, :] * DG_ROW + h_idx[:, None], dg.to(DG.dtype.element_ty), mask=m2)


@triton.jit
def _store_final(HF, n, h_idx, d, mask_d, ring, slots, y_last, blk, H: tl.constexpr, W: tl.constexpr,
                 WP: tl.constexpr, D: tl.constexpr):
    """Write the state at a sequence's last token (padding after it keeps the state: a = 1, x = 0).

    Slot ``k`` is the recurrence restarted at block ``blk - k``: for ``k < W - 1`` the ring after the
    last block's push (a restart before block 0 was never written and holds the one from block 0, as
    ``swr_torch`` defines it), for ``k = W - 1`` the last row of y before any readout.
    """
    base = HF + (n.to(tl.int64) * H + h_idx[:, None]) * (W * D) + d[None, :]
    m2 = mask_d[None, :]
    for k in tl.static_range(W - 1):
        tl.store(base + k * D, _ring_read(ring, slots, (blk + WP * W - k) % WP), mask=m2)
    tl.store(base + (W - 1) * D, y_last, mask=m2)


@triton.jit
def _first_order(a1, x1, a2, x2):
    """Compose h -> a1 h + x1 then h -> a2 h + x2."""
    return a1 * a2, a2 * x1 + x2


@triton.jit
def _prefix_scan(a, x):
    """First-order scan along the block axis of x (HB, BL, DP) with gates a (HB, BL): the states
    ``h_t = a_t h_{t-1} + x_t`` from zero and the gates' prefix products (both (HB, BL, DP))."""
    return tl.associative_scan((tl.broadcast_to(a[:, :, None], x.shape), x), axis=1, combine_fn=_first_order)


@triton.jit
def _suffix_scan(a, x):
    """Reverse first-order scan along the block axis: ``h_s = x_s + a_s h_{s+1}`` and the suffix products of
    the gates a (HB, BL).

    Written as a forward scan between two flips: with the block axis held in each thread's registers
    (``VEC``), the flips are register renames, whereas ``associative_scan(reverse=True)`` reverses through
    warp shuffles (Triton 3.6: 640 shuffles per [4, 16, 16] tile).
    """
    a = tl.broadcast_to(a[:, :, None], x.shape)  # flipped per channel: a flip in registers (a 2D flip shuffles)
    prod, h = tl.associative_scan((tl.flip(a, 1), tl.flip(x, 1)), axis=1, combine_fn=_first_order)
    return tl.flip(prod, 1), tl.flip(h, 1)


@triton.jit
def _swr_fwd_kernel(
    X, G, Y, HF, CU, PHASE, T, CAP,
    X_ROW: tl.constexpr, G_ROW: tl.constexpr, Y_ROW: tl.constexpr,
    H: tl.constexpr, HG: tl.constexpr, REP: tl.constexpr, D: tl.constexpr, DP: tl.constexpr,
    BL: tl.constexpr, W: tl.constexpr, WP: tl.constexpr, NB: tl.constexpr, HB: tl.constexpr, VEC: tl.constexpr,
    FUSED: tl.constexpr, VARLEN: tl.constexpr, HAS_PHASE: tl.constexpr, FINAL: tl.constexpr,
):
    """y = SWR(x, g) (fused: SWR(sigmoid(zb) v, logsigmoid(za)) * c + v) for NB blocks x HB heads; with
    ``FINAL``, also each sequence's final state from a zero initial state into HF (N, H, W, D) fp32."""
    n, bos, length, phase, nblocks, h_idx = _seq_setup(CU, PHASE, T, VARLEN, HAS_PHASE, BL, HB, H)
    c0 = tl.program_id(1) * NB
    if c0 >= nblocks:
        return
    c1 = tl.minimum(c0 + NB, nblocks)
    t_in = tl.arange(0, BL)
    d = tl.max_contiguous(tl.arange(0, DP), VEC)  # VEC channels per thread: the block axis stays in registers
    mask_d = d < D
    slots = tl.arange(0, WP)
    ring = tl.zeros((WP, HB, DP), dtype=tl.float32)
    for blk in range(tl.maximum(c0 - (W - 1), 0), c1):
        tok = blk * BL + t_in - phase
        mask_t = (tok >= 0) & (tok < length)
        rows = bos + tok
        x, a = _load_block(X, G, rows, mask_t, h_idx, d, mask_d, CAP, X_ROW, G_ROW, H, HG, REP, D, FUSED)
        prefix, local = _prefix_scan(a, x)
        if W > 1:
            carry = _ring_read(ring, slots, (blk + WP - (W - 1) % WP) % WP)
            y = local + prefix * carry[:, None, :]
            term = tl.sum(tl.where((t_in == BL - 1)[None, :, None], local, 0.0), axis=1)
            ring = _ring_push(ring, slots, blk % WP, tl.reduce(a, 1, _mul), term)
        else:
            y = local
        if blk >= c0:
            if FINAL:
                if blk == nblocks - 1:
                    y_last = tl.sum(tl.where((t_in == BL - 1)[None, :, None], y, 0.0), axis=1)
                    _store_final(HF, n, h_idx, d, mask_d, ring, slots, y_last, blk, H, W, WP, D)
            m3 = mask_t[None, :, None] & mask_d[None, None, :]
            if FUSED:
                c, v = _load_readout(X, rows, mask_t, h_idx, d, mask_d, X_ROW, H, HG, REP, D)
                y = y * c + v
            out = Y + rows[None, :, None] * Y_ROW + h_idx[:, None, None] * D + d[None, None, :]
            tl.store(out, y.to(Y.dtype.element_ty), mask=m3)


@triton.jit
def _next_gates(G, rows, mask_next, h_idx, CAP, G_ROW: tl.constexpr, FUSED: tl.constexpr):
    """Gates a_{t+1} of the next token inside the block (HB, BL); 1 where masked (block end, sequence end)."""
    m2 = mask_next[None, :]
    z = tl.load(G + (rows + 1)[None, :] * G_ROW + h_idx[:, None], mask=m2, other=0.0).to(tl.float32)
    return _gates(z, m2, CAP, FUSED)


@triton.jit
def _swr_bwd_kernel(
    X, G, DY, DX, DG, DC, CU, PHASE, T, CAP,
    X_ROW: tl.constexpr, G_ROW: tl.constexpr, DY_ROW: tl.constexpr, DX_ROW: tl.constexpr, DG_ROW: tl.constexpr,
    H: tl.constexpr, HG: tl.constexpr, REP: tl.constexpr, D: tl.constexpr, DP: tl.constexpr,
    BL: tl.constexpr, W: tl.constexpr, WP: tl.constexpr, NB: tl.constexpr, HB: tl.constexpr, VEC: tl.constexpr,
    FUSED: tl.constexpr, VARLEN: tl.constexpr, HAS_PHASE: tl.constexpr,
):
    """Gradients for NB blocks x HB heads (plain: dx, dg; fused: d(proj), per-head gate parts in DC when REP > 1).

    The program walks blocks forward with a front ``W - 1`` blocks ahead: the front adds its decayed
    ``sum_i exp(p_i) dy_i`` to the carry gradient of every pending block. The log-gate gradient is
    ``dg_r = sum_{t >= r} (dy_t . y_t - x_t . dx_t)``, started at the chunk from the pairs that straddle it.
    """
    _seq, bos, length, phase, nblocks, h_idx = _seq_setup(CU, PHASE, T, VARLEN, HAS_PHASE, BL, HB, H)
    c0 = tl.program_id(1) * NB
    if c0 >= nblocks:
        return
    c1 = tl.minimum(c0 + NB, nblocks)
    t_in = tl.arange(0, BL)
    d = tl.max_contiguous(tl.arange(0, DP), VEC)  # VEC channels per thread: the block axis stays in registers
    mask_d = d < D
    slots = tl.arange(0, WP)
    ring = tl.zeros((WP, HB, DP), dtype=tl.float32)  # forward restart states
    pend = tl.zeros((WP, HB, DP), dtype=tl.float32)  # carry gradients of pending blocks
    pend_decay = tl.zeros((WP, HB), dtype=tl.float32)

    for blk in range(tl.maximum(c0 - (W - 1), 0), c0):
        tok = blk * BL + t_in - phase
        mask_t = (tok >= 0) & (tok < length)
        x, a = _load_block(X, G, bos + tok, mask_t, h_idx, d, mask_d, CAP, X_ROW, G_ROW, H, HG, REP, D, FUSED)
        _, local = _prefix_scan(a, x)
        term = tl.sum(tl.where((t_in == BL - 1)[None, :, None], local, 0.0), axis=1)
        ring = _ring_push(ring, slots, blk % WP, tl.reduce(a, 1, _mul), term)

    # Log-gate gradient at the chunk start: pairs (s < start <= i) with s in the halo, i in the next W-1 blocks.
    dg_run = tl.zeros((HB,), dtype=tl.float32)
    decay = tl.full((HB,), 1.0, dtype=tl.float32)
    for f in range(c0, c0 + W - 1):
        tok = f * BL + t_in - phase
        mask_t = (tok >= 0) & (tok < length)
        dy, a = _load_dy(X, G, DY, bos + tok, mask_t, h_idx, d, mask_d, CAP, X_ROW, G_ROW, DY_ROW, H, HG, REP, D,
                         FUSED)
        dterm = tl.sum(tl.associative_scan(a, 1, _mul)[:, :, None] * dy, axis=1)
        dg_run += decay * tl.sum(dterm * _ring_read(ring, slots, (f + WP - (W - 1) % WP) % WP), axis=1)
        decay *= tl.reduce(a, 1, _mul)

    for f in range(c0, c1 + W - 1):
        if W > 1:
            tok = f * BL + t_in - phase
            mask_t = (tok >= 0) & (tok < length)
            dy, a = _load_dy(X, G, DY, bos + tok, mask_t, h_idx, d, mask_d, CAP, X_ROW, G_ROW, DY_ROW, H, HG,
                             REP, D, FUSED)
            dterm = tl.sum(tl.associative_scan(a, 1, _mul)[:, :, None] * dy, axis=1)
            pend += pend_decay[:, :, None] * dterm[None, :, :]
            pend_decay *= tl.reduce(a, 1, _mul)[None, :]
        b = f - (W - 1)
        if b >= c0:
            tok = b * BL + t_in - phase
            mask_t = (tok >= 0) & (tok < length)
            rows = bos + tok
            x, a = _load_block(X, G, rows, mask_t, h_idx, d, mask_d, CAP, X_ROW, G_ROW, H, HG, REP, D, FUSED)
            dy, _ = _load_dy(X, G, DY, rows, mask_t, h_idx, d, mask_d, CAP, X_ROW, G_ROW, DY_ROW, H, HG, REP, D,
                             FUSED)
            prefix, y = _prefix_scan(a, x)
            mask_next = (t_in < BL - 1) & (tok + 1 >= 0) & (tok + 1 < length)
            tail, dx = _suffix_scan(_next_gates(G, rows, mask_next, h_idx, CAP, G_ROW, FUSED), dy)
            if W > 1:
                term = tl.sum(tl.where((t_in == BL - 1)[None, :, None], y, 0.0), axis=1)
                y += prefix * _ring_read(ring, slots, (b + WP - (W - 1) % WP) % WP)[:, None, :]
                dx += tail * _ring_read(pend, slots, b % WP)[:, None, :]
                ring = _ring_push(ring, slots, b % WP, tl.reduce(a, 1, _mul), term)
                pend_decay = tl.where((slots == b % WP)[:, None], 0.0, pend_decay)
            q = tl.sum(dy * y - x * dx, axis=2)
            dg = dg_run[:, None] - (tl.cumsum(q, axis=1) - q)
            dg_run -= tl.sum(q, axis=1)
            _store_grads(X, G, DY, DX, DG, DC, rows, mask_t, h_idx, d, mask_d, y, dx, dg, X_ROW, G_ROW, DY_ROW,
                         DX_ROW, DG_ROW, H, HG, REP, D, FUSED)
        if W > 1:
            pend = tl.where((slots == f % WP)[:, None, None], 0.0, pend)
            pend_decay = tl.where((slots == f % WP)[:, None], 1.0, pend_decay)
