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
choice), tensor-core versions of the filter, its transpose and its gradient (Toeplitz blocks times tiles, as
StripedHyena 2's two-stage kernels), and a one-pass forward that walks row tiles with the blocks built once.
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
    """Featurizer output (BT, BC) fp32 of the projection columns ``OFF + cols``: ``sum_j F[j] u[t - j]`` over the
    rows ``u >= start`` (per row) of the rows where ``mask_r``."""
    acc = tl.zeros((BT, BC), dtype=tl.float32)
    for j in tl.static_range(KF):
        f = tl.load(FT + j * 3 * W + OFF + cols, mask=mask_c, other=0.0).to(tl.float32)
        src = rows - j
        m = (mask_r & (src >= start))[:, None] & mask_c[None, :]
        u = tl.load(P + src.to(tl.int64)[:, None] * (3 * W) + (OFF + cols)[None, :], mask=m, other=0.0)
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
def _split(toe, dt: tl.constexpr):
    """The operands of ``_parts_dot`` for a filter block and dt tiles: a 16-bit block's dt high part and remainder,
    so that 16-bit dots keep an fp32 filter's precision; the block itself (twice) for fp32 tiles or a filter stored
    in dt, whose remainder is zero."""
    if dt == tl.float32 or toe.dtype == dt:
        return toe.to(dt), toe.to(dt)
    hi = toe.to(dt)
    return hi, (toe - hi.to(tl.float32)).to(dt)


@triton.jit
def _parts_dot(acc, hi, lo, zb, hdt: tl.constexpr):
    """``acc + block @ zb`` from the parts of ``_split`` of a filter stored in hdt."""
    if zb.dtype == tl.float32:
        return acc + tl.dot(hi, zb, input_precision="ieee")
    if hdt == zb.dtype:
        return acc + tl.dot(hi, zb)
    return acc + tl.dot(hi, zb) + tl.dot(lo, zb)


@triton.jit
def _toeplitz_dot(acc, HG, group, lag, ok, zb, K: tl.constexpr):
    """``acc + Toeplitz @ zb`` with ``Toeplitz[i, j] = h[lag[i, j]]`` where ``ok`` (a block gathered per tile)."""
    hi, lo = _split(tl.load(HG + group * K + lag, mask=ok & (lag >= 0) & (lag < K), other=0.0), zb.dtype)
    return _parts_dot(acc, hi, lo, zb, HG.dtype.element_ty)


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
        m = ((src >= 0) & (src < R))[:, None] & mask_c[None, :]
        xb = tl.load(X + src.to(tl.int64)[:, None] * W + cols[None, :], mask=m, other=0.0)
        acc = _toeplitz_dot(acc, HG, group, lag, inside & mask_r[:, None], xb, K)
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


# ---------------------------------------------------------------------------------------------------------------
# Hyena-MR core as a walk over row tiles (training; filters of 33-129 taps shared by groups of 16k channels): a
# program owns L consecutive rows of one group's channels. It builds the filter's Toeplitz blocks once, then walks
# the rows BT at a time, computing z = k * v for each tile and multiplying it by every block at once: block 0
# completes the tile's output, blocks 1 and 2 start the next two tiles', carried as fp32 partial outputs (z goes to
# shared memory for the dots once; the shared-memory traffic of the dots' operands and of the featurizers' loads
# through L1 is what bounds the walk, Nsight Compute on the H200, hyena_h200_s24/). So each projection value is
# read once from DRAM, y written once, and z computed once per row (plus NB - 1 halo tiles per program). A tile's
# featurizer inputs are loaded as four phases of rows 4s + r and the two row blocks before them (rows 4s - 1,
# 4s - 2), which the taps share: 6 quarter tiles per input for KF = 3 instead of KF = 3 shifted tiles (12). The
# backward walks the same way, keeping the last tiles' z, with the filter's transpose trailing two tiles behind.
# ---------------------------------------------------------------------------------------------------------------


@triton.jit
def _toeplitz_parts(HG, group, b: tl.constexpr, K: tl.constexpr, BT: tl.constexpr, dt: tl.constexpr):
    """Toeplitz block b of the group's filter, ``h[i - j + b * BT]`` (zero outside the taps), split for dt tiles
    (``_split``)."""
    offs = tl.arange(0, BT)
    lag = offs[:, None] - offs[None, :] + b * BT
    return _split(tl.load(HG + group * K + lag, mask=(lag >= 0) & (lag < K), other=0.0), dt)


@triton.jit
def _strands(T, NBATCH, W: tl.constexpr, BC: tl.constexpr, NS: tl.constexpr, SEGS: tl.constexpr):
    """The columns of an MR walk's tiles: NS strands of the BC channels of channel block ``program_id(1)``, side by
    side, so that one Toeplitz block multiplies NS times the columns. Strand ``program_id(2) * NS + s`` is segment
    ``% SEGS`` of batch row ``// SEGS``, each batch row cut into SEGS segments of T / SEGS rows (more than one when
    there are fewer batch rows than strands). A walk's rows count from each column's segment start. Returns each
    column's channel, mask, element offsets of its segment start in proj (3W a row) and in y (W), and its batch
    row's rows ``[first, end)``."""
    lane = tl.arange(0, NS * BC)
    cols = tl.program_id(1) * BC + lane % BC
    strand = tl.program_id(2) * NS + lane // BC
    batch = strand // SEGS
    seg = (strand % SEGS) * (T // SEGS)  # the segment's first row in its batch row
    row0 = batch.to(tl.int64) * T + seg
    return cols, (cols < W) & (batch < NBATCH), row0 * (3 * W), row0 * W, -seg, T - seg


@triton.jit
def _walk_from(lo, back: tl.constexpr, SEGS: tl.constexpr):
    """The first row of a walk that needs the ``back`` rows before lo: none before a batch row's first, but a
    segment's (SEGS > 1) are its batch row's rows or masked."""
    row = lo - back
    if SEGS == 1:
        row = tl.maximum(row, 0)
    return row


@triton.jit
def _reach(start, first, VARLEN: tl.constexpr):
    """The first row a walk's tile entry may read: its row's sequence start (packed rows; (S, 1)), else its
    column's batch row's first row ((1, BN))."""
    lower = first[None, :]
    if VARLEN:
        lower = start[:, None]
    return lower


@triton.jit
def _rows_tile(P, src, lower, end, cols, mask_c, base, OFF: tl.constexpr, W: tl.constexpr):
    """Projection columns ``OFF + cols`` of the rows src (S,), zero outside each column's rows [lower, end)."""
    m = (src[:, None] >= lower) & (src[:, None] < end[None, :]) & mask_c[None, :]
    return tl.load(P + src.to(tl.int64)[:, None] * (3 * W) + (base + OFF + cols)[None, :], mask=m, other=0.0)


@triton.jit
def _pick(m: tl.constexpr, x0, x1, x2, x3):
    """x_m of four tiles (m a constexpr)."""
    if m == 0:
        x = x0
    elif m == 1:
        x = x1
    elif m == 2:
        x = x2
    else:
        x = x3
    return x


@triton.jit
def _phases(t0, SEQ, CU, T, first, BT: tl.constexpr, VARLEN: tl.constexpr):
    """The walk tile at row t0 as four phases of rows ``srow + r``, ``srow = t0 + 4s``: srow (BT / 4,) and each
    phase's ``_reach``, shared by the tile's featurizers."""
    srow = t0 + tl.arange(0, BT // 4) * 4
    start0, _ = _bounds(srow, srow < T, SEQ, CU, T, VARLEN)
    start1, _ = _bounds(srow + 1, srow + 1 < T, SEQ, CU, T, VARLEN)
    start2, _ = _bounds(srow + 2, srow + 2 < T, SEQ, CU, T, VARLEN)
    start3, _ = _bounds(srow + 3, srow + 3 < T, SEQ, CU, T, VARLEN)
    return (srow, _reach(start0, first, VARLEN), _reach(start1, first, VARLEN), _reach(start2, first, VARLEN),
            _reach(start3, first, VARLEN))


@triton.jit
def _phase_featurize(P, FT, srow, r: tl.constexpr, x0, x1, x2, x3, u1, u2, lower, end, cols, mask_c, base,
                     OFF: tl.constexpr, W: tl.constexpr, KF: tl.constexpr, VARLEN: tl.constexpr):
    """Featurizer output (S, BN) fp32 of phase r's rows ``srow + r`` from the phases' tiles x_m (rows srow + m) and
    the tiles u_1, u_2 of rows ``srow - 1``, ``srow - 2``: taps reaching further back load their rows."""
    acc = tl.zeros(x0.shape, dtype=tl.float32)
    for j in tl.static_range(KF):
        f = tl.load(FT + j * 3 * W + OFF + cols, mask=mask_c, other=0.0).to(tl.float32)
        src = srow + r - j
        if j <= r:
            u = _pick(r - j, x0, x1, x2, x3)
        elif j - r == 1:
            u = u1
        elif j - r == 2:
            u = u2
        else:
            u = _rows_tile(P, src, lower, end, cols, mask_c, base, OFF, W)
        if VARLEN:  # the rows of an earlier sequence than phase r's (loaded for phase 0's)
            u = tl.where(src[:, None] >= lower, u, 0.0)
        acc += f[None, :] * u.to(tl.float32)
    return acc


@triton.jit
def _interleave(a0, a1, a2, a3):
    """The (4S, BN) tile whose row 4s + r is row s of a_r."""
    x = tl.join(tl.join(a0, a2), tl.join(a1, a3))  # [s, n, i, k] = a_{2i+k}[s, n]
    return tl.reshape(tl.permute(x, (0, 2, 3, 1)), (4 * a0.shape[0], a0.shape[1]))


@triton.jit
def _featurize_phases(P, FT, srow, x0, x1, x2, x3, u1, u2, l0, l1, l2, l3, end, cols, mask_c, base,
                      OFF: tl.constexpr, W: tl.constexpr, KF: tl.constexpr, VARLEN: tl.constexpr):
    """Featurizer output (4S, BN) fp32 of a tile from its phase tiles x_m (rows srow + m) and the rows before them
    (u_1, u_2): each phase's ``_phase_featurize`` (reaches l0..l3), joined back into row order."""
    return _interleave(
        _phase_featurize(P, FT, srow, 0, x0, x1, x2, x3, u1, u2, l0, end, cols, mask_c, base, OFF, W, KF, VARLEN),
        _phase_featurize(P, FT, srow, 1, x0, x1, x2, x3, u1, u2, l1, end, cols, mask_c, base, OFF, W, KF, VARLEN),
        _phase_featurize(P, FT, srow, 2, x0, x1, x2, x3, u1, u2, l2, end, cols, mask_c, base, OFF, W, KF, VARLEN),
        _phase_featurize(P, FT, srow, 3, x0, x1, x2, x3, u1, u2, l3, end, cols, mask_c, base, OFF, W, KF, VARLEN))


@triton.jit
def _featurize_tile(P, FT, srow, l0, l1, l2, l3, end, cols, mask_c, base, OFF: tl.constexpr, W: tl.constexpr,
                    KF: tl.constexpr, VARLEN: tl.constexpr):
    """Featurizer output (BT, BN) fp32 of the walk tile of ``_phases`` (``_featurize`` of its rows, zero outside
    each column's rows): the four phases and the two row blocks before them loaded once and shared by the taps."""
    x0 = _rows_tile(P, srow, l0, end, cols, mask_c, base, OFF, W)
    x1 = _rows_tile(P, srow + 1, l1, end, cols, mask_c, base, OFF, W)
    x2 = _rows_tile(P, srow + 2, l2, end, cols, mask_c, base, OFF, W)
    x3 = _rows_tile(P, srow + 3, l3, end, cols, mask_c, base, OFF, W)
    u1 = x3  # taps past the first reach back (rows srow - 1, srow - 2)
    u2 = x3
    if KF > 1:
        u1 = _rows_tile(P, srow - 1, l0, end, cols, mask_c, base, OFF, W)
    if KF > 2:
        u2 = _rows_tile(P, srow - 2, l0, end, cols, mask_c, base, OFF, W)
    return _featurize_phases(P, FT, srow, x0, x1, x2, x3, u1, u2, l0, l1, l2, l3, end, cols, mask_c, base, OFF, W,
                             KF, VARLEN)


@triton.jit
def _tile_z(P, FT, srow, l0, l1, l2, l3, end, cols, mask_c, base, W: tl.constexpr, KF: tl.constexpr,
            VARLEN: tl.constexpr, dt: tl.constexpr):
    """z = k * v (BT, BN) of the walk tile of ``_phases``, rounded to dt as the two-pass path stores it."""
    return (_featurize_tile(P, FT, srow, l0, l1, l2, l3, end, cols, mask_c, base, W, W, KF, VARLEN)
            * _featurize_tile(P, FT, srow, l0, l1, l2, l3, end, cols, mask_c, base, 2 * W, W, KF, VARLEN)).to(dt)


@triton.jit
def _by_sequence(acc, hi, lo, x, seq, first, last, hdt: tl.constexpr):
    """``acc`` plus a block (parts hi, lo) applied to one tile's x, sequence by sequence: each sequence ``first``
    ..``last`` with rows in the tile (``seq``: each row's, -1 outside the rows) gets the block applied to its own
    rows of x, on its own rows (a causal block within one tile)."""
    for s in range(first, last + 1):  # most tiles hold one sequence
        mine = (seq == s)[:, None]
        acc = tl.where(mine, _parts_dot(acc, hi, lo, tl.where(mine, x, tl.zeros_like(x)), hdt), acc)
    return acc


@triton.jit
def _mr_filter(HG, group, h0, l0, h1, l1, h2, l2, z, z1, z2, rows, start, valid, t0, K: tl.constexpr,
               NB: tl.constexpr, VARLEN: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr):
    """m = h * z (BT, BC) fp32 of a tile from its z and the two tiles' before (z1, z2), through the Toeplitz block
    parts; a packed tile whose reach holds a sequence start gathers the blocks again, masked to each row's
    sequence. (``_mr_push``'s per-sequence dots, here and in ``_mr_filter_t``, faulted on the GPU: Triton 3.6 read
    their shared memory out of bounds, ``benchmarks/results/hyena_h200_s32/``.)"""
    acc = tl.zeros((BT, BC), dtype=tl.float32)
    crosses = False
    if VARLEN:  # starts grow with the rows: the last valid row's start is the latest
        crosses = tl.max(tl.where(valid, start, 0)) > t0 - (NB - 1) * BT
    if crosses:  # holding masked copies of h0..l2 spills
        lag = tl.arange(0, BT)[:, None] - tl.arange(0, BT)[None, :]
        acc = _toeplitz_dot(acc, HG, group, lag, rows[None, :] >= start[:, None], z, K)
        acc = _toeplitz_dot(acc, HG, group, lag + BT, (rows - BT)[None, :] >= start[:, None], z1, K)
        if NB > 2:
            acc = _toeplitz_dot(acc, HG, group, lag + 2 * BT, (rows - 2 * BT)[None, :] >= start[:, None], z2, K)
    else:
        acc = _parts_dot(acc, h0, l0, z, HG.dtype.element_ty)
        acc = _parts_dot(acc, h1, l1, z1, HG.dtype.element_ty)
        if NB > 2:
            acc = _parts_dot(acc, h2, l2, z2, HG.dtype.element_ty)
    return acc


@triton.jit
def _mr_push(HG, h0, l0, h1, l1, h2, l2, z, c1, c2, t0, SEQ, CU, T, NB: tl.constexpr, VARLEN: tl.constexpr,
             BT: tl.constexpr):
    """The tile's output and the next two tiles' partial outputs, ``(c1 + h_0 z, c2 + h_1 z, h_2 z)``, fp32, from the
    z of the tile at row t0 through the Toeplitz block parts. Packed rows take each sequence's own z: the tile's
    output rows of each sequence with rows in the tile from that sequence's rows of z (one dot a sequence, the block
    being causal), and the next tiles' rows from the last sequence's only (the others end in the tile), masked to
    its rows. The blocks held in registers serve every sequence: nothing is gathered again."""
    zero = tl.zeros_like(c2)
    hdt: tl.constexpr = HG.dtype.element_ty
    if VARLEN:
        rows = t0 + tl.arange(0, BT)
        seq = tl.load(SEQ + rows, mask=rows < T, other=-1)
        last = tl.load(SEQ + tl.minimum(t0 + BT, T) - 1)
        acc = _by_sequence(c1, h0, l0, z, seq, tl.load(SEQ + t0), last, hdt)
        zs = tl.where((seq == last)[:, None], z, tl.zeros_like(z))  # the last sequence's rows of z
        reach = tl.load(CU + last + 1)  # the last sequence's end: its rows in the next tiles take its z
        c1 = tl.where((rows + BT < reach)[:, None], _parts_dot(c2, h1, l1, zs, hdt), c2)
        c2 = zero
        if NB > 2:
            c2 = tl.where((rows + 2 * BT < reach)[:, None], _parts_dot(zero, h2, l2, zs, hdt), zero)
    else:
        acc = _parts_dot(c1, h0, l0, z, hdt)
        c1 = _parts_dot(c2, h1, l1, z, hdt)
        c2 = zero
        if NB > 2:
            c2 = _parts_dot(zero, h2, l2, z, hdt)
    return acc, c1, c2


@triton.jit
def _mr_filter_t(HG, group, h0, l0, h1, l1, h2, l2, dm2, dm1, dm, rows2, end2, valid2, t0, K: tl.constexpr,
                 NB: tl.constexpr, VARLEN: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr):
    """dz = h^T * dm (BT, BC) fp32 of the tile two back (rows2) from its dm and the two tiles' after (dm1, dm: the
    current tile), through the transposed block parts; a packed tile whose reach holds a sequence's end gathers
    them again, masked."""
    acc = tl.zeros((BT, BC), dtype=tl.float32)
    crosses = False
    if VARLEN:  # ends grow with the rows: the first valid row's end is the earliest
        crosses = tl.min(tl.where(valid2, end2, 2147483647)) < t0 + BT
    if crosses:
        lag = tl.arange(0, BT)[None, :] - tl.arange(0, BT)[:, None]
        acc = _toeplitz_dot(acc, HG, group, lag, rows2[None, :] < end2[:, None], dm2, K)
        acc = _toeplitz_dot(acc, HG, group, lag + BT, (rows2 + BT)[None, :] < end2[:, None], dm1, K)
        if NB > 2:
            acc = _toeplitz_dot(acc, HG, group, lag + 2 * BT, (rows2 + 2 * BT)[None, :] < end2[:, None], dm, K)
    else:
        acc = _parts_dot(acc, tl.trans(h0), tl.trans(l0), dm2, HG.dtype.element_ty)
        acc = _parts_dot(acc, tl.trans(h1), tl.trans(l1), dm1, HG.dtype.element_ty)
        if NB > 2:
            acc = _parts_dot(acc, tl.trans(h2), tl.trans(l2), dm, HG.dtype.element_ty)
    return acc


@triton.jit
def _walk_program(HG, T, NBATCH, W: tl.constexpr, K: tl.constexpr, D: tl.constexpr, L: tl.constexpr,
                  BT: tl.constexpr, BC: tl.constexpr, NS: tl.constexpr, SEGS: tl.constexpr, dt: tl.constexpr):
    """Program (j, c, b) of an MR walk: its rows ``[lo, hi)`` (from each column's segment start), its columns
    (``_strands``), its filter group and the group's Toeplitz block parts 0-2 for dt tiles."""
    lo = tl.program_id(0) * L
    cols, mask_c, base, ybase, first, end = _strands(T, NBATCH, W, BC, NS, SEGS)
    group = (tl.program_id(1) * BC) // D
    h0, l0 = _toeplitz_parts(HG, group, 0, K, BT, dt)
    h1, l1 = _toeplitz_parts(HG, group, 1, K, BT, dt)
    h2, l2 = _toeplitz_parts(HG, group, 2, K, BT, dt)
    return lo, tl.minimum(lo + L, T // SEGS), cols, mask_c, base, ybase, first, end, group, h0, l0, h1, l1, h2, l2


@triton.jit
def _hyena_mr_kernel(
    P, FT, HG, Y, SEQ, CU, T, NBATCH,
    W: tl.constexpr, KF: tl.constexpr, K: tl.constexpr, D: tl.constexpr, NB: tl.constexpr, VARLEN: tl.constexpr,
    L: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr, NS: tl.constexpr, SEGS: tl.constexpr,
):
    """``Y = q * (h * (k * v))`` for filters of K <= 2 * BT + 1 taps (NB = 2 or 3 Toeplitz blocks) shared by groups
    of D channels (HG: (W / D, K), fp32 or the tiles' dtype). Program (j, c, b) writes the rows
    ``[lo, min(lo + L, T / SEGS))``, ``lo = j * L``, of its strands (``_strands``; rows count from each column's
    segment start), after walking the NB - 1 tiles before lo. Each tile's z is multiplied by all NB blocks at once:
    block 0 completes the tile's output, blocks 1 and 2 start the next two tiles', carried as fp32 partial outputs,
    so z is stored to shared memory for the dots once (carrying the last tiles' z instead stores each of them again
    every tile: H200, ``benchmarks/results/hyena_h200_s24/``). With VARLEN (one strand: one batch row of T packed
    rows), each sequence's output rows take its own rows of z (``_mr_push``)."""
    tl.static_assert(NS == 1 or not VARLEN)
    dt = Y.dtype.element_ty
    lo, hi, cols, mask_c, base, ybase, first, end, _, h0, l0, h1, l1, h2, l2 = _walk_program(
        HG, T, NBATCH, W, K, D, L, BT, BC, NS, SEGS, dt)
    offs = tl.arange(0, BT)
    c1 = tl.zeros((BT, NS * BC), dtype=tl.float32)  # partial outputs of the next tile and the one after
    c2 = tl.zeros((BT, NS * BC), dtype=tl.float32)
    for t0 in range(_walk_from(lo, (NB - 1) * BT, SEGS), hi, BT):  # the NB - 1 tiles before lo feed c1, c2 only
        srow, p0, p1, p2, p3 = _phases(t0, SEQ, CU, T, first, BT, VARLEN)
        z = _tile_z(P, FT, srow, p0, p1, p2, p3, end, cols, mask_c, base, W, KF, VARLEN, dt)
        acc, c1, c2 = _mr_push(HG, h0, l0, h1, l1, h2, l2, z, c1, c2, t0, SEQ, CU, T, NB, VARLEN, BT)
        if t0 >= lo:
            rows = t0 + offs
            q = _featurize_tile(P, FT, srow, p0, p1, p2, p3, end, cols, mask_c, base, 0, W, KF, VARLEN)
            out = rows.to(tl.int64)[:, None] * W + (ybase + cols)[None, :]
            tl.store(Y + out, (q * acc).to(dt), mask=(rows < hi)[:, None] & mask_c[None, :])


@triton.jit
def _hyena_mr_bwd_kernel(
    P, FT, HG, DY, DF, Z, DM, SEQ, CU, T, NBATCH,
    W: tl.constexpr, KF: tl.constexpr, K: tl.constexpr, D: tl.constexpr, NB: tl.constexpr, VARLEN: tl.constexpr,
    L: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr, NS: tl.constexpr, SEGS: tl.constexpr,
):
    """Backward of ``_hyena_mr_kernel`` up to its featurizers, for the rows ``[lo, hi)`` of program (j, c, b) as
    there: the gradients of the featurizer outputs, ``DF = [dy * m | dz * v | dz * k]`` (R, 3W), and, for the filter
    gradient, ``Z = z`` and ``DM = dm = dy * q`` (R, W), with ``m = h * z`` and ``dz = h^T * dm``. The walk starts
    two tiles before lo (their z feed m) and ends two tiles after hi (their dm feed dz, which trails the walk by two
    tiles, with the tiles' k and v kept for it)."""
    tl.static_assert(NS == 1 or not VARLEN)
    dt = DF.dtype.element_ty
    lo, hi, cols, mask_c, base, ybase, first, end, group, h0, l0, h1, l1, h2, l2 = _walk_program(
        HG, T, NBATCH, W, K, D, L, BT, BC, NS, SEGS, dt)
    offs = tl.arange(0, BT)
    BN: tl.constexpr = NS * BC
    z1 = tl.zeros((BT, BN), dtype=dt)  # one tile back; z2, two back (as dm, k, v)
    z2 = tl.zeros((BT, BN), dtype=dt)
    dm1 = tl.zeros((BT, BN), dtype=dt)
    dm2 = tl.zeros((BT, BN), dtype=dt)
    k1 = tl.zeros((BT, BN), dtype=dt)
    k2 = tl.zeros((BT, BN), dtype=dt)
    v1 = tl.zeros((BT, BN), dtype=dt)
    v2 = tl.zeros((BT, BN), dtype=dt)
    for t0 in range(_walk_from(lo, 2 * BT, SEGS), hi + 2 * BT, BT):
        rows = t0 + offs
        valid = rows < T
        start, _ = _bounds(rows, valid, SEQ, CU, T, VARLEN)
        inside = (rows[:, None] >= first[None, :]) & (rows[:, None] < end[None, :])  # the column's batch row
        srow, p0, p1, p2, p3 = _phases(t0, SEQ, CU, T, first, BT, VARLEN)
        k = _featurize_tile(P, FT, srow, p0, p1, p2, p3, end, cols, mask_c, base, W, W, KF, VARLEN).to(dt)
        v = _featurize_tile(P, FT, srow, p0, p1, p2, p3, end, cols, mask_c, base, 2 * W, W, KF, VARLEN).to(dt)
        q = _featurize_tile(P, FT, srow, p0, p1, p2, p3, end, cols, mask_c, base, 0, W, KF, VARLEN)
        z = (k.to(tl.float32) * v.to(tl.float32)).to(dt)
        out = rows.to(tl.int64)[:, None] * W + (ybase + cols)[None, :]
        dy = tl.load(DY + out, mask=inside & mask_c[None, :], other=0.0).to(tl.float32)
        dm = (dy * q).to(dt)
        m = _mr_filter(HG, group, h0, l0, h1, l1, h2, l2, z, z1, z2, rows, start, valid, t0, K, NB, VARLEN, BT, BN)
        own = (rows >= lo)[:, None] & (rows < hi)[:, None] & mask_c[None, :]
        tl.store(Z + out, z, mask=own)
        tl.store(DM + out, dm, mask=own)
        tl.store(DF + rows.to(tl.int64)[:, None] * (3 * W) + (base + cols)[None, :], (dy * m).to(dt), mask=own)
        rows2 = rows - 2 * BT
        valid2 = (rows2 >= 0) & (rows2 < T)
        _, end2 = _bounds(rows2, valid2, SEQ, CU, T, VARLEN)
        dz = _mr_filter_t(HG, group, h0, l0, h1, l1, h2, l2, dm2, dm1, dm, rows2, end2, valid2, t0, K, NB, VARLEN,
                          BT, BN)
        own2 = (rows2 >= lo)[:, None] & (rows2 < hi)[:, None] & mask_c[None, :]
        at2 = rows2.to(tl.int64)[:, None] * (3 * W) + (base + cols)[None, :]
        tl.store(DF + at2 + W, (dz * v2.to(tl.float32)).to(dt), mask=own2)
        tl.store(DF + at2 + 2 * W, (dz * k2.to(tl.float32)).to(dt), mask=own2)
        z2, z1 = z1, z
        dm2, dm1 = dm1, dm
        k2, k1 = k1, k
        v2, v1 = v1, v


# ---------------------------------------------------------------------------------------------------------------
# Hyena core as a scan over time (training, short filters: K <= 8 taps, featurizers of KF <= 3): a program owns L
# consecutive rows by BC channels and walks them one row at a time, keeping the featurizers' last raw inputs, the
# filter's last z values (and, backward, the gradients' recent values) in registers. It starts HALO = K - 1 + KF - 1
# rows early to rebuild those histories, so every projection value is read once from DRAM (plus the halo, mostly
# from L2) and every output written once: 4 values per token and channel forward (the memory floor), 7 backward
# (proj and dy read, dproj written), and no shifted tile re-read through L1.
# ---------------------------------------------------------------------------------------------------------------


@triton.jit
def _tap(WT, j: tl.constexpr, n: tl.constexpr, stride, cols, mask_c):
    """Tap j (fp32 vector over cols) of taps stored ``(n, stride)``; zeros past the last tap."""
    return tl.load(WT + j * stride + cols, mask=mask_c & (j < n), other=0.0).to(tl.float32)


@triton.jit
def _fresh(BC: tl.constexpr):
    """A new (BC,) fp32 zero vector. Histories start from separate ones: Triton's front end carries a variable
    through a loop only if its value object changes, so histories that all began as one ``zeros`` and shift into
    each other (z5 <- z1 across four unrolled rows) would silently stay zero."""
    return tl.zeros((BC,), dtype=tl.float32)


@triton.jit
def _fresh_flag(P):
    """A new int32 scalar zero (see ``_fresh``); P is any pointer argument, only to build it from."""
    return tl.program_id(0) * 0


@triton.jit
def _inside(t, lo, hi, cols, mask_c):
    """The mask of row t's columns where ``lo <= t < hi`` (built from the row as a vector: masks from a scalar row
    come out non-boolean in the interpreter)."""
    tv = t + tl.zeros_like(cols)
    return mask_c & (tv >= lo) & (tv < hi)


@triton.jit
def _taps8(HT, K: tl.constexpr, W: tl.constexpr, cols, mask_c):
    """The filter's taps 0..7 (fp32 vectors over cols; zeros past K) from HT (K, W)."""
    return (_tap(HT, 0, K, W, cols, mask_c), _tap(HT, 1, K, W, cols, mask_c), _tap(HT, 2, K, W, cols, mask_c),
            _tap(HT, 3, K, W, cols, mask_c), _tap(HT, 4, K, W, cols, mask_c), _tap(HT, 5, K, W, cols, mask_c),
            _tap(HT, 6, K, W, cols, mask_c), _tap(HT, 7, K, W, cols, mask_c))


@triton.jit
def _taps3(FT, KF: tl.constexpr, off: tl.constexpr, W: tl.constexpr, cols, mask_c):
    """The featurizer's taps 0..2 of the projection columns ``off + cols`` (zeros past KF) from FT (KF, 3W)."""
    return (_tap(FT, 0, KF, 3 * W, off + cols, mask_c), _tap(FT, 1, KF, 3 * W, off + cols, mask_c),
            _tap(FT, 2, KF, 3 * W, off + cols, mask_c))


@triton.jit
def _hsum4(h0, h1, h2, h3, x0, x1, x2, x3, N: tl.constexpr):
    """``sum_{k < min(N, 4)} h_k x_k``."""
    acc = h0 * x0
    if N > 1:
        acc += h1 * x1
    if N > 2:
        acc += h2 * x2
    if N > 3:
        acc += h3 * x3
    return acc


@triton.jit
def _hsum(h0, h1, h2, h3, h4, h5, h6, h7, x0, x1, x2, x3, x4, x5, x6, x7, K: tl.constexpr):
    """``sum_{k < K} h_k x_k`` for K <= 8."""
    acc = _hsum4(h0, h1, h2, h3, x0, x1, x2, x3, K)
    if K > 4:
        acc += _hsum4(h4, h5, h6, h7, x4, x5, x6, x7, K - 4)
    return acc


@triton.jit
def _fsum(f0, f1, f2, x0, x1, x2, KF: tl.constexpr):
    """``sum_{j < KF} f_j x_j`` for KF <= 3 (the fourth term is never read)."""
    return _hsum4(f0, f1, f2, f0, x0, x1, x2, x0, KF)


@triton.jit
def _axpy3(a0, a1, a2, g, x0, x1, x2):
    """``a_j + g * x_j`` for three running sums."""
    return a0 + g * x0, a1 + g * x1, a2 + g * x2


@triton.jit
def _axpy4(a0, a1, a2, a3, g, x0, x1, x2, x3):
    """``a_j + g * x_j`` for four running sums."""
    return a0 + g * x0, a1 + g * x1, a2 + g * x2, a3 + g * x3


@triton.jit
def _store4(OUT, stride, mask_c, x0, x1, x2, x3, N: tl.constexpr):
    """Store the first min(N, 4) of x0..x3 at ``OUT + j * stride``."""
    tl.store(OUT, x0, mask=mask_c)
    if N > 1:
        tl.store(OUT + stride, x1, mask=mask_c)
    if N > 2:
        tl.store(OUT + 2 * stride, x2, mask=mask_c)
    if N > 3:
        tl.store(OUT + 3 * stride, x3, mask=mask_c)


@triton.jit
def _scan_program(T, L: tl.constexpr, HALO: tl.constexpr, W: tl.constexpr, BC: tl.constexpr):
    """Program (j, c, b) of a scan: the first row of its batch row, its first own row ``c0 = b * T + j * L``, the
    rows it reads ``[lo, hi)`` (from HALO rows before c0, within the batch row), its columns and their mask."""
    seq0 = tl.program_id(2) * T
    c0 = seq0 + tl.program_id(0) * L
    cols = tl.program_id(1) * BC + tl.arange(0, BC)
    return seq0, c0, tl.maximum(c0 - HALO, seq0), tl.minimum(c0 + L, seq0 + T), cols, cols < W


@triton.jit
def _featurizer_taps(FT, KF: tl.constexpr, W: tl.constexpr, cols, mask_c):
    """The featurizer's taps 0..2 for q, k and v (zeros past KF) from FT (KF, 3W)."""
    fq0, fq1, fq2 = _taps3(FT, KF, 0, W, cols, mask_c)
    fk0, fk1, fk2 = _taps3(FT, KF, W, W, cols, mask_c)
    fv0, fv1, fv2 = _taps3(FT, KF, 2 * W, W, cols, mask_c)
    return fq0, fq1, fq2, fk0, fk1, fk2, fv0, fv1, fv2


@triton.jit
def _queue(ptrs, ok, n1, n2, n3, n4):
    """The row due now (n1) and the queue moved up by one, with the row at ``ptrs`` (fp32, zero where not ok) last."""
    return n1, n2, n3, n4, tl.load(ptrs, mask=ok, other=0.0).to(tl.float32)


@triton.jit
def _hyena_scan_kernel(
    P, FT, HT, Y, FIRST, T,
    W: tl.constexpr, KF: tl.constexpr, K: tl.constexpr, VARLEN: tl.constexpr, L: tl.constexpr, U: tl.constexpr,
    BC: tl.constexpr,
):
    """``Y = q * sum_k HT[k] (k * v)[t - k]`` for K <= 8 filter taps and KF <= 3 featurizer taps (FT: (KF, 3W)).
    Program (j, c, b) scans the rows ``[c0 - HALO, min(c0 + L, b * T + T))``, ``c0 = b * T + j * L``, of the T rows
    of batch row b in steps of U unrolled rows, loading each row AHEAD rows before it is computed (the loads of a
    row wait for the stores before them: the compiler cannot tell Y from P), rows outside those T read as zeros.
    With VARLEN (one batch row of T packed rows) the histories restart at each sequence's first row, where
    FIRST[t] != 0."""
    HALO: tl.constexpr = K + KF - 2
    AHEAD: tl.constexpr = 4  # rows loaded ahead of the one computed, so that their loads precede its store
    START: tl.constexpr = U * ((HALO + AHEAD + U - 1) // U)
    seq0, c0, lo, hi, cols, mask_c = _scan_program(T, L, HALO, W, BC)
    h0, h1, h2, h3, h4, h5, h6, h7 = _taps8(HT, K, W, cols, mask_c)
    fq0, fq1, fq2, fk0, fk1, fk2, fv0, fv1, fv2 = _featurizer_taps(FT, KF, W, cols, mask_c)
    zero = tl.zeros((BC,), dtype=tl.float32)
    q1, q2, k1, k2, v1, v2 = _fresh(BC), _fresh(BC), _fresh(BC), _fresh(BC), _fresh(BC), _fresh(BC)
    z1, z2, z3, z4 = _fresh(BC), _fresh(BC), _fresh(BC), _fresh(BC)
    z5, z6, z7 = _fresh(BC), _fresh(BC), _fresh(BC)
    nq1, nq2, nq3, nq4, nk1, nk2 = _fresh(BC), _fresh(BC), _fresh(BC), _fresh(BC), _fresh(BC), _fresh(BC)
    nk3, nk4, nv1, nv2, nv3, nv4 = _fresh(BC), _fresh(BC), _fresh(BC), _fresh(BC), _fresh(BC), _fresh(BC)
    if VARLEN:
        nf1, nf2, nf3, nf4 = _fresh_flag(P), _fresh_flag(P), _fresh_flag(P), _fresh_flag(P)
    for base in range(c0 - START, hi, U):  # rows past hi (up to U - 1, masked) end the last step
        for i in tl.static_range(U):
            t = base + i
            ahead = t + AHEAD  # loaded now, computed AHEAD rows later
            ok = _inside(ahead, lo, hi, cols, mask_c)
            uq, nq1, nq2, nq3, nq4 = _queue(P + ahead.to(tl.int64) * (3 * W) + cols, ok, nq1, nq2, nq3, nq4)
            uk, nk1, nk2, nk3, nk4 = _queue(P + ahead.to(tl.int64) * (3 * W) + W + cols, ok, nk1, nk2, nk3, nk4)
            uv, nv1, nv2, nv3, nv4 = _queue(P + ahead.to(tl.int64) * (3 * W) + 2 * W + cols, ok, nv1, nv2, nv3, nv4)
            if VARLEN:
                flag = tl.load(FIRST + ahead, mask=(ahead >= lo) & (ahead < hi), other=0).to(tl.int32)
                first, nf1, nf2, nf3, nf4 = nf1, nf2, nf3, nf4, flag
                if first != 0:
                    q1, q2, k1, k2, v1, v2 = zero, zero, zero, zero, zero, zero
                    z1, z2, z3, z4, z5, z6, z7 = zero, zero, zero, zero, zero, zero, zero
            z = _fsum(fk0, fk1, fk2, uk, k1, k2, KF) * _fsum(fv0, fv1, fv2, uv, v1, v2, KF)
            mix = _hsum(h0, h1, h2, h3, h4, h5, h6, h7, z, z1, z2, z3, z4, z5, z6, z7, K)
            y = _fsum(fq0, fq1, fq2, uq, q1, q2, KF) * mix
            tl.store(Y + t.to(tl.int64) * W + cols, y.to(Y.dtype.element_ty), mask=_inside(t, c0, hi, cols, mask_c))
            q2, q1, k2, k1, v2, v1 = q1, uq, k1, uk, v1, uv
            z7, z6, z5, z4, z3, z2, z1 = z6, z5, z4, z3, z2, z1, z


@triton.jit
def _hyena_scan_bwd_kernel(
    P, FT, HT, DY, DP, DHP, DFP, T,
    W: tl.constexpr, KF: tl.constexpr, K: tl.constexpr, L: tl.constexpr, U: tl.constexpr, BC: tl.constexpr,
):
    """Backward of the scanned Hyena core (K <= 8, KF <= 3; rows of one batch row are one sequence): program
    (j, c, b) recomputes the forward over rows ``[c0 - HALO, hi + 9)``, ``c0 = b * T + j * L``, ``hi = min(c0 + L,
    b * T + T)`` (loading each row AHEAD rows before it is computed), and walks the gradients behind it with fixed
    delays: at row t, dm = dy * q and dq = dy * m of row t, dz of row
    ``t - 7`` (``sum_k h_k dm[t - 7 + k]``), then dk = dz * v and dv = dz * k there, and the projection gradients of
    row ``t - 2`` (q) and ``t - 9`` (k, v). It writes DP for its rows ``[c0, hi)`` and its partial filter and
    featurizer gradients DHP[chunk] (K, W) and DFP[chunk] (KF, 3W), the terms of its own rows."""
    HALO: tl.constexpr = K + KF - 2
    AHEAD: tl.constexpr = 4  # rows loaded ahead of the one computed, so that their loads precede its stores
    START: tl.constexpr = U * ((HALO + AHEAD + U - 1) // U)
    seq0, c0, lo, hi, cols, mask_c = _scan_program(T, L, HALO, W, BC)
    h0, h1, h2, h3, h4, h5, h6, h7 = _taps8(HT, K, W, cols, mask_c)
    fq0, fq1, fq2, fk0, fk1, fk2, fv0, fv1, fv2 = _featurizer_taps(FT, KF, W, cols, mask_c)
    zero = tl.zeros((BC,), dtype=tl.float32)
    uq1, uq2, daq1, daq2, dak1, dak2 = _fresh(BC), _fresh(BC), _fresh(BC), _fresh(BC), _fresh(BC), _fresh(BC)
    dav1, dav2, uk1, uk2, uk3, uk4 = _fresh(BC), _fresh(BC), _fresh(BC), _fresh(BC), _fresh(BC), _fresh(BC)
    uk5, uk6, uk7, uk8, uk9, uv1 = _fresh(BC), _fresh(BC), _fresh(BC), _fresh(BC), _fresh(BC), _fresh(BC)
    uv2, uv3, uv4, uv5, uv6, uv7 = _fresh(BC), _fresh(BC), _fresh(BC), _fresh(BC), _fresh(BC), _fresh(BC)
    uv8, uv9, ak1, ak2, ak3, ak4 = _fresh(BC), _fresh(BC), _fresh(BC), _fresh(BC), _fresh(BC), _fresh(BC)
    ak5, ak6, ak7, av1, av2, av3 = _fresh(BC), _fresh(BC), _fresh(BC), _fresh(BC), _fresh(BC), _fresh(BC)
    av4, av5, av6, av7, z1, z2 = _fresh(BC), _fresh(BC), _fresh(BC), _fresh(BC), _fresh(BC), _fresh(BC)
    z3, z4, z5, z6, z7, dm1 = _fresh(BC), _fresh(BC), _fresh(BC), _fresh(BC), _fresh(BC), _fresh(BC)
    dm2, dm3, dm4, dm5, dm6, dm7 = _fresh(BC), _fresh(BC), _fresh(BC), _fresh(BC), _fresh(BC), _fresh(BC)
    dh0, dh1, dh2, dh3, dh4, dh5 = _fresh(BC), _fresh(BC), _fresh(BC), _fresh(BC), _fresh(BC), _fresh(BC)
    dh6, dh7, dfq0, dfq1, dfq2, dfk0 = _fresh(BC), _fresh(BC), _fresh(BC), _fresh(BC), _fresh(BC), _fresh(BC)
    dfk1, dfk2, dfv0, dfv1, dfv2 = _fresh(BC), _fresh(BC), _fresh(BC), _fresh(BC), _fresh(BC)
    nq1, nq2, nq3, nq4, nk1, nk2 = _fresh(BC), _fresh(BC), _fresh(BC), _fresh(BC), _fresh(BC), _fresh(BC)
    nk3, nk4, nv1, nv2, nv3, nv4 = _fresh(BC), _fresh(BC), _fresh(BC), _fresh(BC), _fresh(BC), _fresh(BC)
    ndy1, ndy2, ndy3, ndy4 = _fresh(BC), _fresh(BC), _fresh(BC), _fresh(BC)
    for base in range(c0 - START, hi + 9, U):  # the k and v gradients of row hi - 1 come nine rows later
        for i in tl.static_range(U):
            t = base + i
            tv = t + tl.zeros_like(cols)  # the row as a vector: masks from it stay boolean in the interpreter
            ahead = t + AHEAD  # loaded now, computed AHEAD rows later
            ok = _inside(ahead, lo, seq0 + T, cols, mask_c)
            uq, nq1, nq2, nq3, nq4 = _queue(P + ahead.to(tl.int64) * (3 * W) + cols, ok, nq1, nq2, nq3, nq4)
            uk, nk1, nk2, nk3, nk4 = _queue(P + ahead.to(tl.int64) * (3 * W) + W + cols, ok, nk1, nk2, nk3, nk4)
            uv, nv1, nv2, nv3, nv4 = _queue(P + ahead.to(tl.int64) * (3 * W) + 2 * W + cols, ok, nv1, nv2, nv3, nv4)
            dy, ndy1, ndy2, ndy3, ndy4 = _queue(DY + ahead.to(tl.int64) * W + cols, ok, ndy1, ndy2, ndy3, ndy4)
            # forward of row t
            aq = _fsum(fq0, fq1, fq2, uq, uq1, uq2, KF)
            ak = _fsum(fk0, fk1, fk2, uk, uk1, uk2, KF)
            av = _fsum(fv0, fv1, fv2, uv, uv1, uv2, KF)
            z = ak * av
            mix = _hsum(h0, h1, h2, h3, h4, h5, h6, h7, z, z1, z2, z3, z4, z5, z6, z7, K)
            dm = dy * aq
            daq = dy * mix
            own = (tv >= c0) & (tv < hi)  # terms of row t belong to this program
            dm_own = tl.where(own, dm, 0.0)
            daq_own = tl.where(own, daq, 0.0)
            dh0, dh1, dh2, dh3 = _axpy4(dh0, dh1, dh2, dh3, dm_own, z, z1, z2, z3)
            dh4, dh5, dh6, dh7 = _axpy4(dh4, dh5, dh6, dh7, dm_own, z4, z5, z6, z7)
            dfq0, dfq1, dfq2 = _axpy3(dfq0, dfq1, dfq2, daq_own, uq, uq1, uq2)
            # row s = t - 7: dz, then dk and dv
            dz = _hsum(h0, h1, h2, h3, h4, h5, h6, h7, dm7, dm6, dm5, dm4, dm3, dm2, dm1, dm, K)
            dak = dz * av7
            dav = dz * ak7
            own_s = (tv - 7 >= c0) & (tv - 7 < hi)
            dak_own = tl.where(own_s, dak, 0.0)
            dav_own = tl.where(own_s, dav, 0.0)
            dfk0, dfk1, dfk2 = _axpy3(dfk0, dfk1, dfk2, dak_own, uk7, uk8, uk9)
            dfv0, dfv1, dfv2 = _axpy3(dfv0, dfv1, dfv2, dav_own, uv7, uv8, uv9)
            # projection gradients: q of row t - 2, k and v of row t - 9
            duq = _fsum(fq0, fq1, fq2, daq2, daq1, daq, KF)
            duk = _fsum(fk0, fk1, fk2, dak2, dak1, dak, KF)
            duv = _fsum(fv0, fv1, fv2, dav2, dav1, dav, KF)
            m_q = mask_c & (tv - 2 >= c0) & (tv - 2 < hi)
            tl.store(DP + (t - 2).to(tl.int64) * (3 * W) + cols, duq.to(DP.dtype.element_ty), mask=m_q)
            m_kv = mask_c & (tv - 9 >= c0) & (tv - 9 < hi)
            out = DP + (t - 9).to(tl.int64) * (3 * W) + cols
            tl.store(out + W, duk.to(DP.dtype.element_ty), mask=m_kv)
            tl.store(out + 2 * W, duv.to(DP.dtype.element_ty), mask=m_kv)
            # histories
            uq2, uq1 = uq1, uq
            uk9, uk8, uk7, uk6, uk5, uk4, uk3, uk2, uk1 = uk8, uk7, uk6, uk5, uk4, uk3, uk2, uk1, uk
            uv9, uv8, uv7, uv6, uv5, uv4, uv3, uv2, uv1 = uv8, uv7, uv6, uv5, uv4, uv3, uv2, uv1, uv
            ak7, ak6, ak5, ak4, ak3, ak2, ak1 = ak6, ak5, ak4, ak3, ak2, ak1, ak
            av7, av6, av5, av4, av3, av2, av1 = av6, av5, av4, av3, av2, av1, av
            z7, z6, z5, z4, z3, z2, z1 = z6, z5, z4, z3, z2, z1, z
            dm7, dm6, dm5, dm4, dm3, dm2, dm1 = dm6, dm5, dm4, dm3, dm2, dm1, dm
            daq2, daq1 = daq1, daq
            dak2, dak1 = dak1, dak
            dav2, dav1 = dav1, dav
    chunk = (tl.program_id(2) * tl.num_programs(0) + tl.program_id(0)).to(tl.int64)
    _store4(DHP + chunk * K * W + cols, W, mask_c, dh0, dh1, dh2, dh3, K)
    if K > 4:
        _store4(DHP + chunk * K * W + 4 * W + cols, W, mask_c, dh4, dh5, dh6, dh7, K - 4)
    df = DFP + chunk * KF * 3 * W + cols
    _store4(df, 3 * W, mask_c, dfq0, dfq1, dfq2, zero, KF)
    _store4(df + W, 3 * W, mask_c, dfk0, dfk1, dfk2, zero, KF)
    _store4(df + 2 * W, 3 * W, mask_c, dfv0, dfv1, dfv2, zero, KF)
