"""Gluon (Hopper) kernel of the Hyena-MR forward walk: ``y = q * (h * (k * v))`` for rows that are not packed, bf16
rows, bf16 or fp32 filters of up to 129 taps shared by groups of 16k channels, featurizers of up to 3 taps.

The same walk as ``triton_fir._hyena_mr_kernel`` (64-row tiles, each tile's z pushed into the next two tiles'
outputs through the filter's three Toeplitz blocks on tensor cores), with what that kernel leaves to Triton staged
by hand, because the walk is bound by on-chip traffic and per-tile overhead, not by HBM:

- One TMA copy brings a tile's q, k and v rows into shared memory (proj viewed as (B, 3, T, W)), one tile ahead
  (two stages, an mbarrier each), and a second copy the two rows before each 16-row block (proj viewed as
  (B, 3, T / 16, 16, W)). Rows outside the batch row arrive as zeros, so nothing is masked. (``permuted=True``
  instead stores each 16-row block's rows transposed, to take out the shared-memory bank conflicts that Nsight
  Compute shows, a warp's rows lying 128 bytes apart: about 10% faster at 8 x 4096 x 2048 on an H100.)
- The featurizers read each row once and keep their taps in registers: a thread holds 4 consecutive rows of 2
  channels (a warp a 16-row block), so rows t - 1 and t - 2 are its own but for the first rows of each 4, which come
  from the lane 8 before by a warp shuffle, the lanes that would wrap sending the block before's rows instead. (A
  Gluon shared-memory view may only start at a multiple of its length, so reading one copy at three row offsets is
  not possible; a copy a tap was 9 copies a tile and 0.260 ms at 8 x 4096 x 2048. A thread of 1 row and 8 channels
  shuffled every shifted row and read its taps from shared memory: 664 instructions an iteration against 507.) q
  goes to the wgmma's layout through shared memory, written before the barrier that precedes the wgmma.
- With a bf16 filter, two tiles an iteration share the copies, the CTA barriers (Triton puts one beside every TMA
  copy), the mbarrier wait and one 128-row y store: fewer instructions and barriers a tile. An fp32 filter takes
  the Triton walk's split (each Toeplitz block's bf16 high part on wgmma from registers, then its bf16 remainder
  from shared memory), one tile an iteration.

H200, 8 x 4096 x 2048, 128 taps, outputs bitwise equal to the Triton walk's: 0.210 ms with a bf16 filter and 0.284
with an fp32 one, against 0.284 and 0.484 for the Triton walk in the same process (1.68x the memory floor). Nsight
Compute puts the bf16 walk at 82% of the L2's tag-lookup rate (each program's 16 channels make 32-byte rows, one
sector a request) and its issue slots at 36% (48% with the 1-row featurizers, same time), which points at the L2's
requests, not the SM; programs of 32 or 64 channels whose warps share the CTA barriers were slower (0.231 / 0.334 ms)
(``benchmarks/results/hyena_h200_s28/``, ``_s29/``). Programs of 64 channels with a warp-specialized partition for
each 16, tied only by mbarriers (``_hyena_mr_ws_kernel``, bf16 filters), halve the L2's requests without that cost:
on an H100 0.193 ms at 8 x 4096 x 2048 against 0.231 for the permuted 16-channel walk, 1.05x the floor at the copy
bandwidth measured in the same run, with DRAM at 80% of its peak (``hyena_h200_s32/``; through ``hyena_core``
1.06-1.10x, ``hyena_h100_s33/``). Imports only torch and Triton; runs on sm_90 only (``fir_ops`` falls back to the
Triton walk elsewhere).
"""

from __future__ import annotations

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_wait,
)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

# Gluon's names moved between Triton releases: 3.6 has ``gl.thread_barrier`` and ``tma.async_copy_*``, later ones
# ``gl.barrier``, ``tma.async_load`` and ``tma.async_store`` (same arguments).
_cta_barrier = gl.barrier if hasattr(gl, "barrier") else gl.thread_barrier
_tma_load = tma.async_load if hasattr(tma, "async_load") else tma.async_copy_global_to_shared
_tma_store = tma.async_store if hasattr(tma, "async_store") else tma.async_copy_shared_to_global
BLOCK_T = 64  # rows of a tile (the Triton walk's MR_BLOCK_T)
MAX_FEATURIZER_TAPS = 3  # taps a warp shuffle reaches (rows t - 1, t - 2 from the block before's last two rows)
MIN_ROWS = 16  # rows of a batch row: the boundary view needs one 16-row block
MAXNREG = 128  # registers a thread: 4 programs an SM (an fp32 filter's split needs the cap; a bf16 one fits)
# y's rows of the permuted walk, swizzled by 32 bytes: the wgmma accumulator's 8 rows a store phase then fall in
# distinct banks (unswizzled, rows 4 apart share them)
Y_PERMUTED_LAYOUT = gl.NVMMASharedLayout(swizzle_byte_width=32, element_bitwidth=16, rank=5)


@gluon.jit
def _issue(PD, BD, rows, bnds, bar, stage, b, t0, col, KF: gl.constexpr, RT: gl.constexpr, BC: gl.constexpr,
           pred, W: gl.constexpr, PERM: gl.constexpr = False):
    """Stage ``stage``'s copies of rows [t0, t0 + RT), signalling ``bar``: q, k and v's rows in one box (PD views
    proj as (B, 3, T, W); a box dimension must be a power of two, so its fourth input lies past the view and
    arrives as zeros), or with PERM one box an input (PD views proj as (B, T / 16, 4, 4, 3W), each 16-row block's
    rows 4 g + r stored at 4 r + g: ``descriptors``) into stages 3 stage + input; and, for featurizers of more than
    one tap, rows 16 m - 2, 16 m - 1 before each 16-row block m (BD views proj as (B, 3, T / 16, 16, W)). The bytes
    expected count whole boxes, zeros included."""
    INPUTS: gl.constexpr = 3 if PERM else 4
    mbarrier.expect(bar, (INPUTS * RT * BC + (4 * (RT // 16) * 2 * BC if KF > 1 else 0)) * 2, pred=pred)
    if PERM:
        for inp in gl.static_range(3):
            _tma_load(PD, [b, t0 // 16, 0, 0, inp * W + col], bar, rows.index(3 * stage + inp), pred=pred)
    else:
        _tma_load(PD, [b, 0, t0, col], bar, rows.index(stage), pred=pred)
    if KF > 1:
        _tma_load(BD, [b, 0, t0 // 16 - 1, 14, col], bar, bnds.index(stage), pred=pred)


@gluon.jit
def _from_previous(x, bnd):
    """Row 4 g - 1 (or - 2) for row group g from x, row 3 (or 2) of each group: lane l takes lane (l - 8) mod 32's
    value; lanes 24.. (the last group of their warp's 16-row block) send ``bnd``, the block before's row instead, so
    that each block's first group gets it. One select and one shuffle a pair of bf16 (the select inside the asm)."""
    return gl.inline_asm_elementwise(
        "{ .reg .u32 %ls, %sv; .reg .pred %pw; mov.u32 %ls, %laneid; setp.ge.u32 %pw, %ls, 24; "
        "selp.b32 %sv, $2, $1, %pw; sub.u32 %ls, %ls, 8; and.b32 %ls, %ls, 31; "
        "shfl.sync.idx.b32 $0, %sv, %ls, 31, -1; }", "=r,r,r", [x, bnd], dtype=gl.bfloat16, is_pure=True, pack=2)


@gluon.jit
def _widen(x):
    """bf16 -> fp32 (exact) two at a time: the low one shifted up, the high one masked (two instructions a pair
    where the compiler's conversion takes three)."""
    return gl.inline_asm_elementwise("{ shl.b32 $0, $2, 16; and.b32 $1, $2, 0xffff0000; }", "=r,=r,r", [x],
                                     dtype=gl.float32, is_pure=True, pack=2)


@gluon.jit
def _featurize(rows, bnds, stage, f0, f1, f2, inp: gl.constexpr, h: gl.constexpr, KF: gl.constexpr,
               RT: gl.constexpr, BC: gl.constexpr, c0: gl.constexpr, rl: gl.constexpr, PERM: gl.constexpr = False):
    """``sum_j f_j x[t - j]`` of input ``inp`` (0 q, 1 k, 2 v) for tile h of the iteration staged in ``stage``,
    channels [c0, c0 + 16) of the stage's BC, as its rows 4 g + r for r = 0..3: four (block, g, 1, 16) fp32 in the
    row layout rl (with PERM, where each block's rows are stored transposed, (block, 1, g, 16)), where a thread holds
    4 consecutive rows of 2 channels, so that rows t - 1 and t - 2 are its own but for each group's first rows (two
    shuffles, ``_from_previous``). Taps f0, f1, f2 (1, 1, 1, 16) fp32; summed in the Triton walk's order. Views are
    reshaped before they are cut (Gluon cannot reshape a cut view)."""
    first: gl.constexpr = inp * RT // 16 + 4 * h  # the tile's first 16-row block among the stage's 4 inputs
    RD: gl.constexpr = 1 if PERM else 2  # the dimension of r in the view
    if PERM:  # (block, r, g, channel): a warp's load of one r reads 4 adjacent rows (no bank conflicts)
        view = rows.index(3 * stage + inp).reshape([RT // 16, 4, 4, BC]).slice(4 * h, 4)
    else:  # (block, g, r, channel): a warp's load of one r reads 4 rows 128 bytes apart (4-way conflicts)
        view = rows.index(stage).reshape([4 * RT // 16, 4, 4, BC]).slice(first, 4)
    if BC > 16:
        view = view.slice(c0, 16, dim=3)
    x0 = view.slice(0, 1, dim=RD).load(rl)
    x1 = view.slice(1, 1, dim=RD).load(rl)
    x2 = view.slice(2, 1, dim=RD).load(rl)
    x3 = view.slice(3, 1, dim=RD).load(rl)
    w0 = _widen(x0)
    w1 = _widen(x1)
    w2 = _widen(x2)
    zero = gl.zeros_like(w0)
    o0 = zero + f0 * w0
    o1 = zero + f0 * w1
    o2 = zero + f0 * w2
    o3 = zero + f0 * _widen(x3)
    if KF > 1:
        before = bnds.index(stage).reshape([4 * RT // 16, 1, 2, BC]).slice(first, 4)
        if BC > 16:
            before = before.slice(c0, 16, dim=3)
        _, b1 = gl.broadcast(x3, before.slice(1, 1, dim=2).load(rl))
        p1 = _widen(_from_previous(x3, b1))  # row 4 g - 1
        o0 += f1 * p1
        o1 += f1 * w0
        o2 += f1 * w1
        o3 += f1 * w2
        if KF > 2:
            _, b2 = gl.broadcast(x2, before.slice(0, 1, dim=2).load(rl))
            o0 += f2 * _widen(_from_previous(x2, b2))  # row 4 g - 2
            o1 += f2 * p1
            o2 += f2 * w0
            o3 += f2 * w1
    return o0, o1, o2, o3


@gluon.jit
def _tap(FT, inp: gl.constexpr, j: gl.constexpr, col, W: gl.constexpr, KF: gl.constexpr, BC: gl.constexpr,
         rl: gl.constexpr):
    """Featurizer tap j of input inp for channels [col, col + BC), (1, 1, 1, BC) fp32 in the row layout (zeros
    past the KF taps)."""
    c = gl.arange(0, BC, layout=gl.SliceLayout(0, gl.SliceLayout(0, gl.SliceLayout(0, rl))))
    c = gl.expand_dims(gl.expand_dims(gl.expand_dims(c, 0), 0), 0)
    return gl.load(FT + j * 3 * W + inp * W + col + c, mask=(c < BC) & (j < KF), other=0.0)


@gluon.jit
def _tile(o0, o1, o2, o3, PERM: gl.constexpr = False):
    """The rows 4 g + r (r = 0..3, ``_featurize``'s order) as one (block, g, 4, BC) tensor, or with PERM in the
    stored order (block, 4, g, BC), each thread's rows still its own (one store, where a store a row makes the
    compiler fence each from the next)."""
    t = gl.join(gl.join(o0, o2), gl.join(o1, o3))  # (block, g, 1, BC, a, b) or (block, 1, g, BC, a, b): r = 2 a + b
    if PERM:
        t = gl.permute(t, [0, 4, 5, 1, 2, 3])
        t = gl.reshape(t, [t.shape[0], 4, t.shape[4], t.shape[5]])
    else:
        t = gl.permute(t, [0, 1, 2, 4, 5, 3])
        t = gl.reshape(t, [t.shape[0], t.shape[1], 4, t.shape[5]])
    return t


@gluon.jit
def _stored_row(i):
    """Where row i of a tile sits when each 16-row block is stored transposed as 4 x 4 (PERM): 4 g + r -> 4 r + g
    (its own inverse)."""
    return (i // 16) * 16 + (i % 4) * 4 + (i // 4) % 4


@gluon.jit
def _toeplitz(HG, group, blk: gl.constexpr, K: gl.constexpr, BT: gl.constexpr, layout: gl.constexpr,
              PERM: gl.constexpr = False):
    """Toeplitz block ``blk`` of the group's filter, ``h[i - j + blk * BT]`` (BT, BT), zero outside the taps; with
    PERM its rows and columns in the stored order (``_stored_row``), so that z, q and y stay in it."""
    i = gl.expand_dims(gl.arange(0, BT, layout=gl.SliceLayout(1, layout)), 1)
    j = gl.expand_dims(gl.arange(0, BT, layout=gl.SliceLayout(0, layout)), 0)
    if PERM:
        i = _stored_row(i)
        j = _stored_row(j)
    lag = i - j + blk * BT
    return gl.load(HG + group * K + lag, mask=(lag >= 0) & (lag < K), other=0.0)


@gluon.jit
def _push(h0, h1, h2, lo_s, z, c1, c2, zeros, H32: gl.constexpr):
    """Issue the wgmma that push one tile's z (shared memory) through the three Toeplitz blocks: its own output
    (``c1`` plus block 0's part) and the next two tiles' partial outputs; with an fp32 filter each block's bf16
    remainder (``lo_s``) follows its high part; ``zeros`` starts the last. Returns (output, next c1, next c2), not
    yet waited for."""
    acc = warpgroup_mma(h0, z, c1, is_async=True)
    if H32:
        acc = warpgroup_mma(lo_s.index(0), z, acc, is_async=True)
    c1 = warpgroup_mma(h1, z, c2, is_async=True)
    if H32:
        c1 = warpgroup_mma(lo_s.index(1), z, c1, is_async=True)
    c2 = warpgroup_mma(h2, z, zeros, use_acc=False, is_async=True)
    if H32:
        c2 = warpgroup_mma(lo_s.index(2), z, c2, is_async=True)
    return acc, c1, c2


@gluon.jit
def _hyena_mr_gluon_kernel(PD, BD, YD, FT, HG, T, W: gl.constexpr, KF: gl.constexpr, K: gl.constexpr,
                           D: gl.constexpr, L: gl.constexpr, BT: gl.constexpr, BC: gl.constexpr,
                           num_warps: gl.constexpr, PERM: gl.constexpr = False):
    """Program (j, c, b) writes rows [j L, min(j L + L, T)) of batch row b, channels [c BC, c BC + BC), after
    walking the two tiles before them (their z feed the partial outputs only). PD, BD, YD: TMA descriptors of proj
    viewed as (B, 3, T, W) and as (B, 3, T / 16, 16, W) (``_issue``), and of y (B, T, W), boxes of an iteration's
    rows, unswizzled; FT (KF, 3W) fp32 featurizer taps; HG (W / D, K) bf16 or fp32 filters (fp32: one tile an
    iteration, else two). PERM (``descriptors(permuted=True)``): every tile buffer (q, k, v, z, q's featurized rows,
    y) holds each 16-row block's rows 4 g + r at 4 r + g and the Toeplitz blocks are permuted alike
    (``_stored_row``), so that a warp's featurizer loads and z and q stores touch 4 adjacent rows (no bank
    conflicts), q's rows are swizzled for the accumulator's reads, q, k and v come in one copy each (no box of
    zeros), and the sums are unchanged but for their order within each 16-row block."""
    gl.static_assert((BT == 64) & (BC == 16) & (num_warps == 4))
    gl.static_assert(K <= 2 * BT + 1)
    gl.static_assert(KF <= 3)  # MAX_FEATURIZER_TAPS
    H32: gl.constexpr = HG.dtype.element_ty == gl.float32
    TILES: gl.constexpr = 1 if H32 else 2  # tiles an iteration
    RT: gl.constexpr = TILES * BT
    gl.static_assert(L % RT == 0)
    acc_l: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, BC, 16])
    a_l: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=acc_l, k_width=2)
    # (block, row group g, row r, channel) of a tile, row 16 block + 4 g + r: lane l of warp w holds rows 4 (l // 8)
    # .. + 3 of block w, channels 2 (l % 8) and + 1 (``_featurize`` takes one row r at a time)
    rl: gl.constexpr = gl.BlockedLayout([1, 1, 1, 2], [1, 1, 4, 8] if PERM else [1, 4, 1, 8], [4, 1, 1, 1],
                                        [3, 2, 1, 0])  # with PERM, dimensions (block, r, g, channel)
    toe_l: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [4, 1], [1, 0])  # remainders on their way to smem

    lo = gl.program_id(0) * L
    col = gl.program_id(1) * BC
    b = gl.program_id(2)
    hi = gl.minimum(lo + L, T)
    group = col // D
    h0 = _toeplitz(HG, group, 0, K, BT, a_l, PERM).to(gl.bfloat16)
    h1 = _toeplitz(HG, group, 1, K, BT, a_l, PERM).to(gl.bfloat16)
    h2 = _toeplitz(HG, group, 2, K, BT, a_l, PERM).to(gl.bfloat16)
    qf0 = _tap(FT, 0, 0, col, W, KF, BC, rl)  # the featurizers' taps stay in registers: 2 channels a thread
    qf1 = _tap(FT, 0, 1, col, W, KF, BC, rl)
    qf2 = _tap(FT, 0, 2, col, W, KF, BC, rl)
    kf0 = _tap(FT, 1, 0, col, W, KF, BC, rl)
    kf1 = _tap(FT, 1, 1, col, W, KF, BC, rl)
    kf2 = _tap(FT, 1, 2, col, W, KF, BC, rl)
    vf0 = _tap(FT, 2, 0, col, W, KF, BC, rl)
    vf1 = _tap(FT, 2, 1, col, W, KF, BC, rl)
    vf2 = _tap(FT, 2, 2, col, W, KF, BC, rl)

    if PERM:  # (3 stage + input): each 16-row block's rows stored transposed
        rows = gl.allocate_shared_memory(gl.bfloat16, [6, 1, RT // 16, 4, 4, BC], PD.layout)
    else:  # (stage): q, k, v, zeros
        rows = gl.allocate_shared_memory(gl.bfloat16, [2, 1, 4, RT, BC], PD.layout)
    bnds = gl.allocate_shared_memory(gl.bfloat16, [2, 1, 4, RT // 16, 2, BC], BD.layout)
    z_smem = gl.allocate_shared_memory(gl.bfloat16, [RT, BC], gl.NVMMASharedLayout.get_default_for([RT, BC],
                                                                                                   gl.bfloat16))
    # q's rows on their way to the wgmma's layout (written before the barrier that precedes the wgmma); with PERM
    # rows 2 and 3 of every 4 swap their 32-byte halves, so that the accumulator layout's reads of 8 rows of 64
    # bytes fall in distinct banks in each half-warp
    q_smem = gl.allocate_shared_memory(gl.float32, [RT // 16, 4, 4, BC], gl.SwizzledSharedLayout(
        8, 2, 2, [3, 2, 1, 0]) if PERM else gl.SwizzledSharedLayout(1, 1, 1, [3, 2, 1, 0]))
    if PERM:
        y_smem = gl.allocate_shared_memory(gl.bfloat16, [1, RT // 16, 4, 4, BC], YD.layout)
    else:
        y_smem = gl.allocate_shared_memory(gl.bfloat16, [1, RT, BC], YD.layout)
    if H32:  # the remainders wait in shared memory (A operands from there: registers hold the high parts)
        lo_s = gl.allocate_shared_memory(gl.bfloat16, [3, BT, BT],
                                         gl.NVMMASharedLayout.get_default_for([BT, BT], gl.bfloat16))
        for blk in gl.static_range(3):
            toe = _toeplitz(HG, group, blk, K, BT, toe_l, PERM)
            lo_s.index(blk).store((toe - toe.to(gl.bfloat16).to(gl.float32)).to(gl.bfloat16))
    else:
        lo_s = z_smem  # not read
    bars = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    mbarrier.init(bars.index(0), count=1)
    mbarrier.init(bars.index(1), count=1)

    start = gl.maximum(lo - 2 * BT, 0)
    n = gl.cdiv(hi - start, RT)
    _issue(PD, BD, rows, bnds, bars.index(0), 0, b, start, col, KF, RT, BC, True, W, PERM)
    c1 = gl.zeros([BT, BC], gl.float32, acc_l)  # partial outputs of the next tile and the one after
    c2 = gl.zeros([BT, BC], gl.float32, acc_l)
    for i in range(n):
        t0 = start + i * RT
        stage = i % 2
        _cta_barrier()  # every warp is done with the other stage (read last iteration) before TMA refills it
        fence_async_shared()
        _issue(PD, BD, rows, bnds, bars.index(1 - stage), 1 - stage, b, t0 + RT, col, KF, RT, BC, i + 1 < n, W,
               PERM)
        mbarrier.wait(bars.index(stage), (i // 2) & 1)
        for h in gl.static_range(TILES):
            k0, k1, k2, k3 = _featurize(rows, bnds, stage, kf0, kf1, kf2, 1, h, KF, RT, BC, 0, rl, PERM)
            v0, v1, v2, v3 = _featurize(rows, bnds, stage, vf0, vf1, vf2, 2, h, KF, RT, BC, 0, rl, PERM)
            z_smem.reshape([RT // 16, 4, 4, BC]).slice(4 * h, 4).store(
                _tile(k0 * v0, k1 * v1, k2 * v2, k3 * v3, PERM).to(gl.bfloat16))
        out = t0 >= lo  # the tiles' outputs are wanted (not a tile before the program's rows)
        if out:
            for h in gl.static_range(TILES):
                q0, q1, q2, q3 = _featurize(rows, bnds, stage, qf0, qf1, qf2, 0, h, KF, RT, BC, 0, rl, PERM)
                q_smem.slice(4 * h, 4).store(_tile(q0, q1, q2, q3, PERM))
            tma.store_wait(0)  # the last y has left y_smem before the barrier below lets it be rewritten
        fence_async_shared()
        _cta_barrier()
        zeros = gl.zeros([BT, BC], gl.float32, acc_l)
        acc, c1, c2 = _push(h0, h1, h2, lo_s, z_smem.slice(0, BT), c1, c2, zeros, H32)
        if TILES == 2:
            acc_b, c1, c2 = _push(h0, h1, h2, lo_s, z_smem.slice(BT, BT), c1, c2, zeros, H32)
            acc, acc_b, c1, c2 = warpgroup_mma_wait(0, deps=(acc, acc_b, c1, c2))
        else:
            acc, c1, c2 = warpgroup_mma_wait(0, deps=(acc, c1, c2))
        if out:  # y = q * out, through shared memory by TMA
            y_rows = y_smem.reshape([RT, BC])
            q_rows = q_smem.reshape([RT, BC])
            y_rows.slice(0, BT).store((q_rows.slice(0, BT).load(acc_l) * acc).to(gl.bfloat16))
            if TILES == 2:
                y_rows.slice(BT, BT).store((q_rows.slice(BT, BT).load(acc_l) * acc_b).to(gl.bfloat16))
            fence_async_shared()
            _cta_barrier()
            if PERM:
                _tma_store(YD, [b, t0 // 16, 0, 0, col], y_smem)
            else:
                _tma_store(YD, [b, t0, col], y_smem)
    tma.store_wait(0)
    mbarrier.invalidate(bars.index(0))
    mbarrier.invalidate(bars.index(1))


@gluon.jit
def _mr_partition(PD, BD, YD, FT, HG, lo, start, n, col, b, rows, bnds, z_all, q_all, y_all, ready, empty,
                  W: gl.constexpr, KF: gl.constexpr, K: gl.constexpr, D: gl.constexpr, BT: gl.constexpr,
                  BC: gl.constexpr, wg: gl.constexpr):
    """Warpgroup wg of ``_hyena_mr_ws_kernel``: the walk of channels [col + 16 wg, + 16) with their filter group
    over the stages of q, k, v rows that all warpgroups share, its own z, q and y in shared memory. Warpgroup 0 also
    refills a stage for iteration i + 1 once every warpgroup has arrived on its ``empty`` mbarrier after iteration
    i - 1 (a fresh mbarrier passes a wait on parity 1, so the first refill does not wait). Only mbarriers tie the
    warpgroups together, so each runs at its own pace within a stage of the others."""
    RT: gl.constexpr = 2 * BT
    acc_l: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, 16, 16])
    a_l: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=acc_l, k_width=2)
    rl: gl.constexpr = gl.BlockedLayout([1, 1, 1, 2], [1, 4, 1, 8], [4, 1, 1, 1], [3, 2, 1, 0])  # the 16-channel walk's
    c0 = col + 16 * wg
    h0 = _toeplitz(HG, c0 // D, 0, K, BT, a_l).to(gl.bfloat16)
    h1 = _toeplitz(HG, c0 // D, 1, K, BT, a_l).to(gl.bfloat16)
    h2 = _toeplitz(HG, c0 // D, 2, K, BT, a_l).to(gl.bfloat16)
    qf0 = _tap(FT, 0, 0, c0, W, KF, 16, rl)
    qf1 = _tap(FT, 0, 1, c0, W, KF, 16, rl)
    qf2 = _tap(FT, 0, 2, c0, W, KF, 16, rl)
    kf0 = _tap(FT, 1, 0, c0, W, KF, 16, rl)
    kf1 = _tap(FT, 1, 1, c0, W, KF, 16, rl)
    kf2 = _tap(FT, 1, 2, c0, W, KF, 16, rl)
    vf0 = _tap(FT, 2, 0, c0, W, KF, 16, rl)
    vf1 = _tap(FT, 2, 1, c0, W, KF, 16, rl)
    vf2 = _tap(FT, 2, 2, c0, W, KF, 16, rl)
    z_s = z_all.index(wg)
    q_s = q_all.index(wg)
    y_s = y_all.index(wg)
    c1 = gl.zeros([BT, 16], gl.float32, acc_l)
    c2 = gl.zeros([BT, 16], gl.float32, acc_l)
    for i in range(n):
        t0 = start + i * RT
        stage = i % 2
        if wg == 0:
            mbarrier.wait(empty.index(1 - stage), ((i + 1) // 2 + 1) & 1)
            _issue(PD, BD, rows, bnds, ready.index(1 - stage), 1 - stage, b, t0 + RT, col, KF, RT, BC, i + 1 < n,
                   W)
        mbarrier.wait(ready.index(stage), (i // 2) & 1)
        for h in gl.static_range(2):
            k0, k1, k2, k3 = _featurize(rows, bnds, stage, kf0, kf1, kf2, 1, h, KF, RT, BC, 16 * wg, rl)
            v0, v1, v2, v3 = _featurize(rows, bnds, stage, vf0, vf1, vf2, 2, h, KF, RT, BC, 16 * wg, rl)
            z_s.reshape([RT // 16, 4, 4, 16]).slice(4 * h, 4).store(_tile(k0 * v0, k1 * v1, k2 * v2, k3 * v3)
                                                                    .to(gl.bfloat16))
        out = t0 >= lo
        if out:
            for h in gl.static_range(2):
                q0, q1, q2, q3 = _featurize(rows, bnds, stage, qf0, qf1, qf2, 0, h, KF, RT, BC, 16 * wg, rl)
                q_s.slice(4 * h, 4).store(_tile(q0, q1, q2, q3))
            tma.store_wait(0)
        fence_async_shared()  # this warpgroup's reads of the stage and writes of z come before the async proxy's
        mbarrier.arrive(empty.index(stage), count=1)
        _cta_barrier()  # inside a partition: the warpgroup's own barrier
        zeros = gl.zeros([BT, 16], gl.float32, acc_l)
        acc, c1, c2 = _push(h0, h1, h2, z_s, z_s.slice(0, BT), c1, c2, zeros, False)
        acc_b, c1, c2 = _push(h0, h1, h2, z_s, z_s.slice(BT, BT), c1, c2, zeros, False)
        acc, acc_b, c1, c2 = warpgroup_mma_wait(0, deps=(acc, acc_b, c1, c2))
        if out:
            y_rows = y_s.reshape([RT, 16])
            q_rows = q_s.reshape([RT, 16])
            y_rows.slice(0, BT).store((q_rows.slice(0, BT).load(acc_l) * acc).to(gl.bfloat16))
            y_rows.slice(BT, BT).store((q_rows.slice(BT, BT).load(acc_l) * acc_b).to(gl.bfloat16))
            fence_async_shared()
            _cta_barrier()
            _tma_store(YD, [b, t0, c0], y_s)
    tma.store_wait(0)


@gluon.jit
def _hyena_mr_ws_kernel(PD, BD, YD, FT, HG, T, W: gl.constexpr, KF: gl.constexpr, K: gl.constexpr,
                        D: gl.constexpr, L: gl.constexpr, BT: gl.constexpr, BC: gl.constexpr,
                        num_warps: gl.constexpr):
    """``_hyena_mr_gluon_kernel``'s walk (rows in their order) for a bf16 filter with programs of BC = 32 or 64
    channels, one warp-specialized partition of 4 warps for each 16 (``_mr_partition``), so that one TMA row brings
    64 or 128 bytes where a 16-channel program's brings 32 (each an L2 request). YD's boxes are one warpgroup's 16
    channels."""
    G: gl.constexpr = BC // 16
    gl.static_assert((BT == 64) & ((G == 2) | (G == 4)) & (num_warps == 4))
    gl.static_assert(K <= 2 * BT + 1)
    gl.static_assert(KF <= 3)  # MAX_FEATURIZER_TAPS
    RT: gl.constexpr = 2 * BT
    gl.static_assert(L % RT == 0)
    lo = gl.program_id(0) * L
    col = gl.program_id(1) * BC
    b = gl.program_id(2)
    start = gl.maximum(lo - 2 * BT, 0)
    n = gl.cdiv(gl.minimum(lo + L, T) - start, RT)
    rows = gl.allocate_shared_memory(gl.bfloat16, [2, 1, 4, RT, BC], PD.layout)
    bnds = gl.allocate_shared_memory(gl.bfloat16, [2, 1, 4, RT // 16, 2, BC], BD.layout)
    z_all = gl.allocate_shared_memory(gl.bfloat16, [G, RT, 16], gl.NVMMASharedLayout.get_default_for([RT, 16],
                                                                                                     gl.bfloat16))
    q_all = gl.allocate_shared_memory(gl.float32, [G, RT // 16, 4, 4, 16], gl.SwizzledSharedLayout(1, 1, 1,
                                                                                                   [3, 2, 1, 0]))
    y_all = gl.allocate_shared_memory(gl.bfloat16, [G, 1, RT, 16], YD.layout)
    ready = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    for s in gl.static_range(2):
        mbarrier.init(ready.index(s), count=1)
        mbarrier.init(empty.index(s), count=G)
    _issue(PD, BD, rows, bnds, ready.index(0), 0, b, start, col, KF, RT, BC, True, W)
    if G == 2:  # the worker partitions' warps and registers (MAXNREG)
        gl.warp_specialize([
            (_mr_partition, (PD, BD, YD, FT, HG, lo, start, n, col, b, rows, bnds, z_all, q_all, y_all, ready, empty,
                             W, KF, K, D, BT, BC, 0)),
            (_mr_partition, (PD, BD, YD, FT, HG, lo, start, n, col, b, rows, bnds, z_all, q_all, y_all, ready, empty,
                             W, KF, K, D, BT, BC, 1)),
        ], [4], [128])
    else:
        gl.warp_specialize([
            (_mr_partition, (PD, BD, YD, FT, HG, lo, start, n, col, b, rows, bnds, z_all, q_all, y_all, ready, empty,
                             W, KF, K, D, BT, BC, 0)),
            (_mr_partition, (PD, BD, YD, FT, HG, lo, start, n, col, b, rows, bnds, z_all, q_all, y_all, ready, empty,
                             W, KF, K, D, BT, BC, 1)),
            (_mr_partition, (PD, BD, YD, FT, HG, lo, start, n, col, b, rows, bnds, z_all, q_all, y_all, ready, empty,
                             W, KF, K, D, BT, BC, 2)),
            (_mr_partition, (PD, BD, YD, FT, HG, lo, start, n, col, b, rows, bnds, z_all, q_all, y_all, ready, empty,
                             W, KF, K, D, BT, BC, 3)),
        ], [4, 4, 4], [128, 128, 128])

def descriptors(proj: torch.Tensor, y: torch.Tensor, rows_per_iteration: int, channels: int,
                permuted: bool = False) -> tuple[TensorDescriptor, TensorDescriptor, TensorDescriptor]:
    """The TMA descriptors of a walk with boxes of an iteration's rows and ``channels`` channels: proj (B, T, 3W)
    viewed as (B, 3, T, W), input i's row t at [b, i, t], and as (B, 3, T / 16, 16, W) for the rows before each
    16-row block (a last partial block needs only the full one before it); y (B, T, W) with 16-channel boxes.
    With ``permuted`` (T a multiple of 16), proj and y are viewed as (B, T / 16, 4, 4, 3W) and (B, T / 16, 4, 4, W)
    with the row strides of the two 4s swapped, so that a box holds each 16-row block's rows 4 g + r at 4 r + g.
    Unswizzled but for the permuted y (``Y_PERMUTED_LAYOUT``)."""
    batch, seqlen, features = proj.shape
    width = features // 3
    flat = [gl.NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=16, rank=rank) for rank in (3, 4, 5)]
    if permuted:
        pd = TensorDescriptor(proj, [batch, seqlen // 16, 4, 4, features], [seqlen * features, 16 * features,
                                                                            features, 4 * features, 1],
                              [1, rows_per_iteration // 16, 4, 4, channels], flat[2])
        yd = TensorDescriptor(y, [batch, seqlen // 16, 4, 4, width], [seqlen * width, 16 * width, width, 4 * width,
                                                                      1], [1, rows_per_iteration // 16, 4, 4, 16],
                              Y_PERMUTED_LAYOUT)
    else:
        pd = TensorDescriptor(proj, [batch, 3, seqlen, width], [seqlen * features, width, features, 1],
                              [1, 4, rows_per_iteration, channels], flat[1])
        yd = TensorDescriptor(y, [batch, seqlen, width], [seqlen * width, width, 1], [1, rows_per_iteration, 16],
                              flat[0])
    bd = TensorDescriptor(proj, [batch, 3, seqlen // 16, 16, width], [seqlen * features, width, 16 * features,
                                                                      features, 1],
                          [1, 4, rows_per_iteration // 16, 2, channels], flat[2])
    return pd, bd, yd


def launch_mr_forward(proj: torch.Tensor, feat_t: torch.Tensor, weight: torch.Tensor,
                      rows_per_program: int | None = None, permuted: bool = False,
                      warpgroups: int = 1) -> torch.Tensor:
    """y (B, T >= 16, W) bf16 from proj (B, T, 3W) bf16 (contiguous), feat_t (KF <= 3, 3W) and the filter weight
    (W / D, K <= 129) bf16 or fp32, shared by groups of D = 16k channels.

    ``warpgroups`` 2 or 4 (a bf16 filter, W a multiple of 32 or 64) takes the warp-specialized walk, programs of 32
    or 64 channels (``_hyena_mr_ws_kernel``): bitwise the same y, at 1.04-1.08x the copy-bandwidth floor with 4 on
    an H100 where the 16-channel walks took 1.26-1.80x (``benchmarks/results/hyena_h200_s32/``). Otherwise one
    16-channel program; ``permuted`` (T a multiple of 16) then stores each 16-row block's rows transposed in shared
    memory, so that the featurizers' loads and z's stores meet no bank conflicts (the Toeplitz blocks are permuted
    to match): bitwise the same y, faster at 8 x 4096 x 2048, not at one 32K sequence (``hyena_h200_s30``, ``_s32``).
    ``rows_per_program``: a multiple of 128 (of 64 for an fp32 filter); by default 8192 for the warp-specialized walk
    (the fastest of 2048-8192 on the H100) and 4096 for the other (of 1024-4096 on the H200, ``hyena_h200_s28/``)."""
    batch, seqlen, features = proj.shape
    width = features // 3
    groups, taps = weight.shape
    if warpgroups not in (1, 2, 4):
        raise ValueError(f"warpgroups must be 1, 2 or 4, got {warpgroups}")
    if warpgroups > 1 and (weight.dtype != torch.bfloat16 or permuted or width % (16 * warpgroups)):
        raise ValueError(f"the warp-specialized Gluon walk needs a bf16 filter, rows in their order and channels a "
                         f"multiple of {16 * warpgroups}; got a {weight.dtype} filter, permuted={permuted}, {width} "
                         "channels")
    if rows_per_program is None:
        rows_per_program = 8192 if warpgroups > 1 else 4096
    rows_per_iteration = BLOCK_T * (1 if weight.dtype == torch.float32 else 2)
    if rows_per_program % rows_per_iteration:
        raise ValueError(f"rows_per_program must be a multiple of {rows_per_iteration}, got {rows_per_program}")
    if seqlen < MIN_ROWS:
        raise ValueError(f"the Gluon walk needs at least {MIN_ROWS} rows a batch row, got {seqlen}")
    if permuted and seqlen % 16:
        raise ValueError(f"the permuted Gluon walk needs a multiple of 16 rows a batch row, got {seqlen}")
    y = proj.new_empty(batch, seqlen, width)
    channels = 16 * warpgroups
    grid = (triton.cdiv(seqlen, rows_per_program), width // channels, batch)
    args = (*descriptors(proj, y, rows_per_iteration, channels, permuted), feat_t.float().contiguous(),
            weight.contiguous(), seqlen)
    meta = dict(W=width, KF=feat_t.shape[0], K=taps, D=width // groups, L=rows_per_program, BT=BLOCK_T, BC=channels,
                num_warps=4, maxnreg=MAXNREG)
    if warpgroups > 1:
        _hyena_mr_ws_kernel[grid](*args, **meta)
    else:
        _hyena_mr_gluon_kernel[grid](*args, **meta, PERM=permuted)
    return y
