"""Triton kernels for the causal depthwise FIR convolution of the Hyena mixers (SE, MR and the featurizers).

Per channel c and token t of a sequence, ``y[t, c] = sum_{k < K} w[k, c] * x[t - k, c]`` with x = 0 before the
sequence's first token (a continued sequence's earlier inputs are added by the launcher, in PyTorch).

Layout: token-major rows (``R = B * T`` rows of ``C`` channels, or the packed rows of ``cu_seqlens``), taps
transposed to ``(K, C)`` so that a tap's channels are contiguous. A program owns ``BT`` rows by ``BC`` channels
and walks the taps, each a shifted (BT, BC) tile of the input, masked to its sequence; neighbouring taps read
overlapping rows, which stay in L1/L2. Arithmetic is fp32 whatever the storage dtype.

Backward: ``dx[s] = sum_k w[k] dy[s + k]`` (the same walk towards the sequence's end) and
``dw[k, c] = sum_t dy[t, c] x[t - k, c]``, reduced by programs over (token chunk, tap block, channel block)
from the block's shifted (BT, BC) input tiles, one tap at a time (rows or taps in the outer loop); the launcher
sums the chunks' partials.

The fused Hyena core (below) adds, for filters longer than 32 taps shared by groups of 16k channels (the launcher's
choice), tensor-core versions of the
filter, its transpose and its gradient (Toeplitz blocks times tiles, as StripedHyena 2's two-stage kernels).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _bounds(rows, mask_r, SEQ, CU, T, VARLEN: tl.constexpr):
    """First row and one past the last row of the sequence holding each row."""
    if VARLEN:
        seq = tl.load(SEQ + rows, mask=mask_r, other=0)
        start = tl.load(CU + seq)
        end = tl.load(CU + seq + 1)
    else:
        start = (rows // T) * T
        end = start + T
    return start, end


@triton.jit
def _fir_kernel(
    X, WT, Y, SEQ, CU, R, T,
    C: tl.constexpr, K: tl.constexpr, VARLEN: tl.constexpr, REVERSE: tl.constexpr, BT: tl.constexpr,
    BC: tl.constexpr,
):
    """Forward ``Y[t] = sum_k WT[k] X[t - k]`` or, with REVERSE, the input gradient ``Y[s] = sum_k WT[k] X[s + k]``
    (X then holds dy), both restricted to each row's sequence."""
    rows = tl.program_id(0) * BT + tl.arange(0, BT)
    cols = tl.program_id(1) * BC + tl.arange(0, BC)
    mask_r = rows < R
    mask_c = cols < C
    start, end = _bounds(rows, mask_r, SEQ, CU, T, VARLEN)
    acc = tl.zeros((BT, BC), dtype=tl.float32)
    for k in range(K):
        w = tl.load(WT + k * C + cols, mask=mask_c, other=0.0).to(tl.float32)
        if REVERSE:
            src = rows + k
            inside = src < end
        else:
            src = rows - k
            inside = src >= start
        m = (mask_r & inside)[:, None] & mask_c[None, :]
        xv = tl.load(X + src.to(tl.int64)[:, None] * C + cols[None, :], mask=m, other=0.0).to(tl.float32)
        acc += w[None, :] * xv
    out = rows.to(tl.int64)[:, None] * C + cols[None, :]
    tl.store(Y + out, acc.to(Y.dtype.element_ty), mask=mask_r[:, None] & mask_c[None, :])


@triton.jit
def _dy_tile(DY, base, offset, R, SEQ, CU, T, cols, mask_c, C: tl.constexpr, VARLEN: tl.constexpr, BT: tl.constexpr):
    """The rows ``base + offset + [0, BT)``, their mask and sequence starts, and DY there (BT, BC) in fp32."""
    rows = base + offset + tl.arange(0, BT)
    mask_r = rows < R
    start, _ = _bounds(rows, mask_r, SEQ, CU, T, VARLEN)
    m2 = mask_r[:, None] & mask_c[None, :]
    dy = tl.load(DY + rows.to(tl.int64)[:, None] * C + cols[None, :], mask=m2, other=0.0).to(tl.float32)
    return rows, mask_r, start, dy


@triton.jit
def _shifted_tile(X, rows, mask_r, start, tap, K, cols, mask_c, C: tl.constexpr):
    """X at ``rows - tap`` (BT, BC) in fp32, zero before each row's sequence start and for taps past K - 1."""
    src = rows - tap
    ok = mask_r & (src >= start) & (src > rows - K)  # the last: tap < K
    xv = tl.load(X + src.to(tl.int64)[:, None] * C + cols[None, :], mask=ok[:, None] & mask_c[None, :], other=0.0)
    return xv.to(tl.float32)


@triton.jit
def _fir_dw_kernel(
    X, DY, DWP, SEQ, CU, R, T, CHUNK,
    C: tl.constexpr, K: tl.constexpr, VARLEN: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BC: tl.constexpr,
    TAPS_OUTER: tl.constexpr,
):
    """Partial filter gradient ``DWP[chunk, k, c] = sum_{t in chunk} DY[t, c] X[t - k, c]`` (fp32; the chunk's
    rows are ``CHUNK`` consecutive rows, a multiple of BT). The program's BK taps are a static loop of shifted 2D
    (BT, BC) tiles: no 3D tile of inputs or indices, so the registers hold one tile at a time. Two loop orders:
    rows outer (each dy tile read once, one sum over rows per tap and tile) or, ``TAPS_OUTER``, taps outer (dy
    read once per tap, products summed elementwise over the chunk, one sum over rows per tap)."""
    pid_chunk = tl.program_id(0)
    k0 = tl.program_id(1) * BK
    cols = tl.program_id(2) * BC + tl.arange(0, BC)
    taps = k0 + tl.arange(0, BK)
    mask_c = cols < C
    acc = tl.zeros((BK, BC), dtype=tl.float32)
    base = pid_chunk * CHUNK
    if TAPS_OUTER:
        for j in tl.static_range(BK):
            prods = tl.zeros((BT, BC), dtype=tl.float32)
            for offset in range(0, CHUNK, BT):
                rows, mask_r, start, dy = _dy_tile(DY, base, offset, R, SEQ, CU, T, cols, mask_c, C, VARLEN, BT)
                prods += dy * _shifted_tile(X, rows, mask_r, start, k0 + j, K, cols, mask_c, C)
            acc += tl.where(tl.arange(0, BK)[:, None] == j, tl.sum(prods, axis=0)[None, :], 0.0)
    else:
        for offset in range(0, CHUNK, BT):
            rows, mask_r, start, dy = _dy_tile(DY, base, offset, R, SEQ, CU, T, cols, mask_c, C, VARLEN, BT)
            for j in tl.static_range(BK):
                part = tl.sum(dy * _shifted_tile(X, rows, mask_r, start, k0 + j, K, cols, mask_c, C), axis=0)
                acc += tl.where(tl.arange(0, BK)[:, None] == j, part[None, :], 0.0)
    out = pid_chunk.to(tl.int64) * K * C + taps[:, None] * C + cols[None, :]
    tl.store(DWP + out, acc, mask=(taps < K)[:, None] & mask_c[None, :])


# ---------------------------------------------------------------------------------------------------------------
# Fused Hyena core (training forward): proj (R, 3W) = [u_q | u_k | u_v] -> y = q * (h * (k * v)), in two passes.
# Pass 1 writes z = k * v (featurizers applied on the fly); pass 2 recomputes q and filters z. DRAM traffic per
# token and channel: read u_k, u_v, write z; read u_q, z, write y (6 values; the floor is 4: read 3, write 1).
# ---------------------------------------------------------------------------------------------------------------


@triton.jit
def _featurize(P, FT, rows, mask_r, start, cols, mask_c, OFF: tl.constexpr, W: tl.constexpr, KF: tl.constexpr,
               BT: tl.constexpr, BC: tl.constexpr):
    """Featurizer output (BT, BC) fp32 of the projection columns ``OFF + cols``: ``sum_j F[j] u[t - j]``."""
    acc = tl.zeros((BT, BC), dtype=tl.float32)
    for j in range(KF):
        f = tl.load(FT + j * 3 * W + OFF + cols, mask=mask_c, other=0.0).to(tl.float32)
        src = rows - j
        m = (mask_r & (src >= start))[:, None] & mask_c[None, :]
        u = tl.load(P + src.to(tl.int64)[:, None] * (3 * W) + OFF + cols[None, :], mask=m, other=0.0)
        acc += f[None, :] * u.to(tl.float32)
    return acc


@triton.jit
def _hyena_gate_kernel(
    P, FT, Z, SEQ, CU, R, T,
    W: tl.constexpr, KF: tl.constexpr, VARLEN: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr,
):
    """Pass 1: ``Z = k * v`` with k, v the featurized second and third thirds of the projection rows P."""
    rows = tl.program_id(0) * BT + tl.arange(0, BT)
    cols = tl.program_id(1) * BC + tl.arange(0, BC)
    mask_r = rows < R
    mask_c = cols < W
    start, _ = _bounds(rows, mask_r, SEQ, CU, T, VARLEN)
    k = _featurize(P, FT, rows, mask_r, start, cols, mask_c, W, W, KF, BT, BC)
    v = _featurize(P, FT, rows, mask_r, start, cols, mask_c, 2 * W, W, KF, BT, BC)
    out = rows.to(tl.int64)[:, None] * W + cols[None, :]
    tl.store(Z + out, (k * v).to(Z.dtype.element_ty), mask=mask_r[:, None] & mask_c[None, :])


@triton.jit
def _hyena_out_kernel(
    P, FT, Z, HT, Y, SEQ, CU, R, T,
    W: tl.constexpr, KF: tl.constexpr, K: tl.constexpr, VARLEN: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr,
):
    """Pass 2: ``Y = q * sum_k HT[k] Z[t - k]`` with q the featurized first third of the projection rows P."""
    rows = tl.program_id(0) * BT + tl.arange(0, BT)
    cols = tl.program_id(1) * BC + tl.arange(0, BC)
    mask_r = rows < R
    mask_c = cols < W
    start, _ = _bounds(rows, mask_r, SEQ, CU, T, VARLEN)
    acc = tl.zeros((BT, BC), dtype=tl.float32)
    for k in range(K):
        h = tl.load(HT + k * W + cols, mask=mask_c, other=0.0).to(tl.float32)
        src = rows - k
        m = (mask_r & (src >= start))[:, None] & mask_c[None, :]
        z = tl.load(Z + src.to(tl.int64)[:, None] * W + cols[None, :], mask=m, other=0.0).to(tl.float32)
        acc += h[None, :] * z
    q = _featurize(P, FT, rows, mask_r, start, cols, mask_c, 0, W, KF, BT, BC)
    out = rows.to(tl.int64)[:, None] * W + cols[None, :]
    tl.store(Y + out, (q * acc).to(Y.dtype.element_ty), mask=mask_r[:, None] & mask_c[None, :])


@triton.jit
def _fir_tc_kernel(
    P, FT, X, HG, Y, SEQ, CU, R, T,
    W: tl.constexpr, KF: tl.constexpr, K: tl.constexpr, D: tl.constexpr, NB: tl.constexpr, VARLEN: tl.constexpr,
    REVERSE: tl.constexpr, GATE_Q: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr,
):
    """The filter on tensor cores for filters shared by groups of D channels (HG: (W / D, K) fp32), the two-stage
    blocked convolution of StripedHyena 2: per block b of BT inputs b blocks back, ``Y += Toeplitz_b(h) @ X_b``
    with ``Toeplitz_b[i, j] = h[i - j + b * BT]`` (zero outside the taps and across sequence starts). REVERSE
    applies the transpose (the input gradient: blocks ahead, ``h[j - i + b * BT]``, up to each sequence's end);
    GATE_Q multiplies by q, the featurized first third of the projection rows P (the fused core's pass 2). The
    filter enters 16-bit dots as a high part plus a remainder, so the result keeps its fp32 precision."""
    pid_t = tl.program_id(0)
    rows = pid_t * BT + tl.arange(0, BT)
    cols = tl.program_id(1) * BC + tl.arange(0, BC)
    group = (tl.program_id(1) * BC) // D
    mask_r = rows < R
    mask_c = cols < W
    start, end = _bounds(rows, mask_r, SEQ, CU, T, VARLEN)
    acc = tl.zeros((BT, BC), dtype=tl.float32)
    offs = tl.arange(0, BT)
    for b in tl.static_range(NB):
        if REVERSE:
            src = pid_t * BT + b * BT + offs  # input rows of block b
            lag = offs[None, :] - offs[:, None] + b * BT
            inside = src[None, :] < end[:, None]
        else:
            src = pid_t * BT - b * BT + offs
            lag = offs[:, None] - offs[None, :] + b * BT
            inside = src[None, :] >= start[:, None]
        ok = (lag >= 0) & (lag < K) & inside & mask_r[:, None]
        toe = tl.load(HG + group * K + lag, mask=ok, other=0.0)
        m = ((src >= 0) & (src < R))[:, None] & mask_c[None, :]
        xb = tl.load(X + src.to(tl.int64)[:, None] * W + cols[None, :], mask=m, other=0.0)
        if X.dtype.element_ty == tl.float32:
            acc += tl.dot(toe, xb, input_precision="ieee")
        else:
            hi = toe.to(X.dtype.element_ty)
            lo = (toe - hi.to(tl.float32)).to(X.dtype.element_ty)
            acc += tl.dot(hi, xb) + tl.dot(lo, xb)
    if GATE_Q:
        acc = acc * _featurize(P, FT, rows, mask_r, start, cols, mask_c, 0, W, KF, BT, BC)
    out = rows.to(tl.int64)[:, None] * W + cols[None, :]
    tl.store(Y + out, acc.to(Y.dtype.element_ty), mask=mask_r[:, None] & mask_c[None, :])


@triton.jit
def _fir_tc_dw_kernel(
    X, DY, SP, SEQ, CU, R, T, CHUNK,
    W: tl.constexpr, K: tl.constexpr, VARLEN: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr,
):
    """Filter gradient of the tensor-core pass, before its diagonal sums: for block offset b (grid axis 2) and the
    BC channels of one filter group, ``SP[chunk, cblock, b, i, j] = sum_tiles sum_c DY[t0 + i, c] X[t0 - b * BT +
    j, c]`` over the chunk's row tiles, restricted to pairs in one sequence at lag ``i - j + b * BT < K``. The
    gradient of tap k is the sum of the entries at lag k (done by the launcher), since the lag does not depend
    on the tile."""
    pid_chunk = tl.program_id(0)
    pid_c = tl.program_id(1)
    b = tl.program_id(2)
    cols = pid_c * BC + tl.arange(0, BC)
    offs = tl.arange(0, BT)
    lag = offs[:, None] - offs[None, :] + b * BT
    acc = tl.zeros((BT, BT), dtype=tl.float32)
    for offset in range(0, CHUNK, BT):
        rows = pid_chunk * CHUNK + offset + offs
        mask_r = rows < R
        start, _ = _bounds(rows, mask_r, SEQ, CU, T, VARLEN)
        dy = tl.load(DY + rows.to(tl.int64)[:, None] * W + cols[None, :], mask=mask_r[:, None], other=0.0)
        src = rows - b * BT
        m = (src >= 0) & (src < R)
        xb = tl.load(X + src.to(tl.int64)[:, None] * W + cols[None, :], mask=m[:, None], other=0.0)
        if X.dtype.element_ty == tl.float32:
            s = tl.dot(dy, tl.trans(xb), input_precision="ieee")
        else:
            s = tl.dot(dy, tl.trans(xb))
        ok = (lag >= 0) & (lag < K) & (src[None, :] >= start[:, None]) & mask_r[:, None]
        acc += tl.where(ok, s, 0.0)
    out = ((pid_chunk * tl.num_programs(1) + pid_c) * tl.num_programs(2) + b).to(tl.int64) * BT * BT
    tl.store(SP + out + offs[:, None] * BT + offs[None, :], acc)


@triton.jit
def _toeplitz_dot(acc, HG, group, lag, ok, zb, K: tl.constexpr):
    """``acc + Toeplitz @ zb`` with ``Toeplitz[i, j] = h[lag[i, j]]`` where ``ok``: fp32 dots for fp32 tiles, else
    16-bit dots of the filter's high part and remainder (fp32 precision of the filter)."""
    toe = tl.load(HG + group * K + lag, mask=ok & (lag >= 0) & (lag < K), other=0.0)
    if zb.dtype == tl.float32:
        return acc + tl.dot(toe, zb, input_precision="ieee")
    hi = toe.to(zb.dtype)
    lo = (toe - hi.to(tl.float32)).to(zb.dtype)
    return acc + tl.dot(hi, zb) + tl.dot(lo, zb)


@triton.jit
def _hyena_fused_tc_kernel(
    P, FT, HG, Y, SEQ, CU, R, T,
    W: tl.constexpr, KF: tl.constexpr, K: tl.constexpr, D: tl.constexpr, HALO: tl.constexpr, VARLEN: tl.constexpr,
    BT: tl.constexpr, BC: tl.constexpr,
):
    """The whole Hyena core in one pass for filters shared by groups of D channels (HG: (W / D, K) fp32, HALO >=
    K - 1): z = k * v is computed in registers for the tile's BT rows and the HALO rows before them (featurizers
    on the fly, rounded to the storage dtype as the two-pass path stores it), filtered by two Toeplitz blocks on
    tensor cores and gated by q. DRAM traffic: the projection rows once (plus the halo, mostly from L2) and y."""
    pid_t = tl.program_id(0)
    rows = pid_t * BT + tl.arange(0, BT)
    halo = pid_t * BT - HALO + tl.arange(0, HALO)
    cols = tl.program_id(1) * BC + tl.arange(0, BC)
    group = (tl.program_id(1) * BC) // D
    mask_r = rows < R
    mask_h = (halo >= 0) & (halo < R)
    mask_c = cols < W
    start, _ = _bounds(rows, mask_r, SEQ, CU, T, VARLEN)
    start_h, _ = _bounds(halo, mask_h, SEQ, CU, T, VARLEN)
    dt = Y.dtype.element_ty
    z = (_featurize(P, FT, rows, mask_r, start, cols, mask_c, W, W, KF, BT, BC)
         * _featurize(P, FT, rows, mask_r, start, cols, mask_c, 2 * W, W, KF, BT, BC)).to(dt)
    zh = (_featurize(P, FT, halo, mask_h, start_h, cols, mask_c, W, W, KF, HALO, BC)
          * _featurize(P, FT, halo, mask_h, start_h, cols, mask_c, 2 * W, W, KF, HALO, BC)).to(dt)
    offs = tl.arange(0, BT)
    offs_h = tl.arange(0, HALO)
    acc = tl.zeros((BT, BC), dtype=tl.float32)
    ok = (rows[None, :] >= start[:, None]) & mask_r[:, None]
    acc = _toeplitz_dot(acc, HG, group, offs[:, None] - offs[None, :], ok, z, K)
    ok_h = (halo[None, :] >= start[:, None]) & mask_r[:, None] & mask_h[None, :]
    acc = _toeplitz_dot(acc, HG, group, offs[:, None] + HALO - offs_h[None, :], ok_h, zh, K)
    q = _featurize(P, FT, rows, mask_r, start, cols, mask_c, 0, W, KF, BT, BC)
    out = rows.to(tl.int64)[:, None] * W + cols[None, :]
    tl.store(Y + out, (q * acc).to(dt), mask=mask_r[:, None] & mask_c[None, :])
