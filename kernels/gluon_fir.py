"""Gluon (Hopper) kernel of the Hyena-MR forward walk: ``y = q * (h * (k * v))`` for rows that are not packed, bf16
rows, bf16 or fp32 filters of up to 129 taps shared by groups of 16k channels, featurizers of up to 3 taps.

The same walk as ``triton_fir._hyena_mr_kernel`` (64-row tiles, each tile's z pushed into the next two tiles'
outputs through the filter's three Toeplitz blocks on tensor cores), with what that kernel leaves to Triton staged
by hand, because the walk is bound by on-chip traffic and per-tile overhead, not by HBM:

- One TMA copy brings a tile's q, k and v rows into shared memory (proj viewed as (B, 3, T, W)), one tile ahead
  (two stages, an mbarrier each), and a second copy the two rows before each 16-row block (proj viewed as
  (B, 3, T / 16, 16, W)). Rows outside the batch row arrive as zeros, so nothing is masked.
- The featurizers read each row once: in the tile layout a warp holds a 16-row block, lane l row l // 2, so the
  rows shifted by tap j come from lane (l - 2j) mod 32 by a warp shuffle, the lanes that would wrap sending the
  block before's rows instead. (A Gluon shared-memory view may only start at a multiple of its length, so reading
  one copy at three row offsets is not possible; a copy a tap was 9 copies a tile and 0.260 ms at 8 x 4096 x 2048.)
- With a bf16 filter, two tiles an iteration share the copies, the CTA barriers (Triton puts one beside every TMA
  copy), the mbarrier wait and one 128-row y store: fewer instructions and barriers a tile. An fp32 filter takes
  the Triton walk's split (each Toeplitz block's bf16 high part on wgmma from registers, then its bf16 remainder
  from shared memory), one tile an iteration.

H200, 8 x 4096 x 2048, 128 taps, outputs bitwise equal to the Triton walk's: 0.217 ms with a bf16 filter and 0.287
with an fp32 one, against 0.285 and 0.488 for the Triton walk in the same process; Nsight Compute puts the bf16
walk at 81% of the L2's tag-lookup rate (each program's 16 channels make 32-byte rows, one sector a request)
(``benchmarks/results/hyena_h200_s28/``). Imports only torch and Triton; runs on sm_90 only (``fir_ops`` falls
back to the Triton walk elsewhere).
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
WARPGROUPS = 2  # warpgroups a program with a bf16 filter, each 16 channels (the wgmma's N) with its own filter
MAX_FEATURIZER_TAPS = 3  # taps a warp shuffle reaches (rows t - 1, t - 2 from the block before's last two rows)
MIN_ROWS = 16  # rows of a batch row: the boundary view needs one 16-row block
SWIZZLE_ROWS = False  # q, k, v's rows in shared memory swizzled (their width in bytes) against bank conflicts
SWIZZLE_Y = False  # y's rows likewise
MAXNREG = 128  # registers a thread: 4 programs an SM (an fp32 filter's split needs the cap; a bf16 one fits)


@gluon.jit
def _issue(PD, BD, rows, bnds, bar, stage, b, t0, col, KF: gl.constexpr, RT: gl.constexpr, BC: gl.constexpr,
           pred):
    """Stage ``stage``'s copies of rows [t0, t0 + RT), signalling ``bar``: q, k and v's rows in one box (PD views
    proj as (B, 3, T, W); a box dimension must be a power of two, so its fourth input lies past the view and
    arrives as zeros) and, for featurizers of more than one tap, rows 16 m - 2, 16 m - 1 before each 16-row block
    m (BD views proj as (B, 3, T / 16, 16, W)). The bytes expected count whole boxes, zeros included."""
    mbarrier.expect(bar, (4 * RT * BC + (4 * (RT // 16) * 2 * BC if KF > 1 else 0)) * 2, pred=pred)
    _tma_load(PD, [b, 0, t0, col], bar, rows.index(stage), pred=pred)
    if KF > 1:
        _tma_load(BD, [b, 0, t0 // 16 - 1, 14, col], bar, bnds.index(stage), pred=pred)


@gluon.jit
def _shift(x, bnd, j: gl.constexpr):
    """Rows t - j of the tile x (4 warps, 8, 2, BC) for tap j in 1, 2: lane l takes lane (l - 2j) mod 32's value;
    the lanes holding rows 16 - j.. of their warp's block (lanes 32 - 2j..) send ``bnd``, the block before's last
    rows, so that the first rows of each block get them. One select and one shuffle a pair of bf16 (the select on
    the lane, inside the asm)."""
    if j == 1:
        out = gl.inline_asm_elementwise(
            "{ .reg .u32 %ls, %sv; .reg .pred %pw; mov.u32 %ls, %laneid; setp.ge.u32 %pw, %ls, 30; "
            "selp.b32 %sv, $2, $1, %pw; sub.u32 %ls, %ls, 2; and.b32 %ls, %ls, 31; "
            "shfl.sync.idx.b32 $0, %sv, %ls, 31, -1; }", "=r,r,r", [x, bnd], dtype=gl.bfloat16, is_pure=True, pack=2)
    else:
        out = gl.inline_asm_elementwise(
            "{ .reg .u32 %ls, %sv; .reg .pred %pw; mov.u32 %ls, %laneid; setp.ge.u32 %pw, %ls, 28; "
            "selp.b32 %sv, $2, $1, %pw; sub.u32 %ls, %ls, 4; and.b32 %ls, %ls, 31; "
            "shfl.sync.idx.b32 $0, %sv, %ls, 31, -1; }", "=r,r,r", [x, bnd], dtype=gl.bfloat16, is_pure=True, pack=2)
    return out


@gluon.jit
def _widen(x):
    """bf16 -> fp32 (exact) two at a time: the low one shifted up, the high one masked (two instructions a pair
    where the compiler's conversion takes three)."""
    return gl.inline_asm_elementwise("{ shl.b32 $0, $2, 16; and.b32 $1, $2, 0xffff0000; }", "=r,=r,r", [x],
                                     dtype=gl.float32, is_pure=True, pack=2)


@gluon.jit
def _featurize(rows, bnds, stage, taps, inp: gl.constexpr, h: gl.constexpr, KF: gl.constexpr, RT: gl.constexpr,
               BC: gl.constexpr, l4: gl.constexpr):
    """``sum_j f_j x[t - j]`` (4, 8, 2, BC) fp32 of input ``inp`` (0 q, 1 k, 2 v) for tile h of the iteration
    staged in ``stage``, in the tile layout l4, summed in the Triton walk's order; taps (16, 1, 1, BC): row
    3 inp + j. Views are reshaped before they are cut (Gluon cannot reshape a cut view)."""
    first: gl.constexpr = inp * RT // 16 + 4 * h  # the tile's first 16-row block among the stage's 4 inputs
    x = rows.index(stage).reshape([4 * RT // 16, 8, 2, BC]).slice(first, 4).load(l4)
    acc = gl.zeros([4, 8, 2, BC], gl.float32, l4)
    acc += taps.slice(3 * inp, 1).load(l4) * _widen(x)
    if KF > 1:
        bnd = bnds.index(stage).reshape([4 * RT // 16, 1, 2, BC]).slice(first, 4).load(l4)
        acc += taps.slice(3 * inp + 1, 1).load(l4) * _widen(_shift(x, bnd, 1))
        if KF > 2:
            acc += taps.slice(3 * inp + 2, 1).load(l4) * _widen(_shift(x, bnd, 2))
    return acc


@gluon.jit
def _warpgroup(x):
    """The warpgroup (``%tid.x // 128``) of the thread holding each element of x, as int32."""
    return gl.inline_asm_elementwise("{ .reg .u32 %t; mov.u32 %t, %tid.x; shr.u32 $0, %t, 7; }", "=r,r", [x],
                                     dtype=gl.int32, is_pure=True, pack=1)


@gluon.jit
def _toeplitz(HG, col, blk: gl.constexpr, K: gl.constexpr, D: gl.constexpr, BT: gl.constexpr,
              layout: gl.constexpr):
    """Toeplitz block ``blk``, ``h[i - j + blk * BT]`` (BT, BT), zero outside the taps, of the filter of channels
    [col + 16 w, col + 16 w + 16) for the warpgroup w holding it. With several warpgroups the wgmma's A layout
    repeats the block in each (they split N, the channels), so each warpgroup loads its own channels' filter into
    its copy: one program serves several filter groups with the same registers a thread."""
    i = gl.expand_dims(gl.arange(0, BT, layout=gl.SliceLayout(1, layout)), 1)
    j = gl.expand_dims(gl.arange(0, BT, layout=gl.SliceLayout(0, layout)), 0)
    lag = i - j + blk * BT
    group = (col + 16 * _warpgroup(lag)) // D
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
                           num_warps: gl.constexpr):
    """Program (j, c, b) writes rows [j L, min(j L + L, T)) of batch row b, channels [c BC, c BC + BC), after
    walking the two tiles before them (their z feed the partial outputs only). PD, BD, YD: TMA descriptors of proj
    viewed as (B, 3, T, W) and as (B, 3, T / 16, 16, W) (``_issue``), and of y (B, T, W), boxes of an iteration's
    rows, unswizzled; FT (KF, 3W) fp32 featurizer taps; HG (W / D, K) bf16 or fp32 filters (fp32: one tile an
    iteration, else two)."""
    WG: gl.constexpr = BC // 16  # warpgroups: each takes 16 channels (the wgmma's N) with its own filter
    gl.static_assert((BT == 64) & (BC == 16 * WG) & (num_warps == 4 * WG))
    gl.static_assert(K <= 2 * BT + 1)
    gl.static_assert(KF <= 3)  # MAX_FEATURIZER_TAPS
    H32: gl.constexpr = HG.dtype.element_ty == gl.float32
    TILES: gl.constexpr = 1 if H32 else 2  # tiles an iteration
    RT: gl.constexpr = TILES * BT
    gl.static_assert(L % RT == 0)
    gl.static_assert((WG == 1) | (not H32))  # an fp32 filter's remainders are A operands in shared memory: one
    acc_l: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, WG], instr_shape=[16, 16, 16])
    a_l: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=acc_l, k_width=2)
    # (warp, row // 2, row % 2, channel): lane l of a warp holds row l // 2 of the warp's 16-row block
    l4: gl.constexpr = gl.BlockedLayout([1, 1, 1, 8], [1, 8, 2, 2], [4, 1, 1, WG], [3, 2, 1, 0])
    taps_l: gl.constexpr = gl.BlockedLayout([1, 4], [8, 4], [4, WG], [1, 0])
    toe_l: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [4, 1], [1, 0])  # remainders on their way to smem

    lo = gl.program_id(0) * L
    col = gl.program_id(1) * BC
    b = gl.program_id(2)
    hi = gl.minimum(lo + L, T)
    h0 = _toeplitz(HG, col, 0, K, D, BT, a_l).to(gl.bfloat16)
    h1 = _toeplitz(HG, col, 1, K, D, BT, a_l).to(gl.bfloat16)
    h2 = _toeplitz(HG, col, 2, K, D, BT, a_l).to(gl.bfloat16)
    taps = gl.allocate_shared_memory(gl.float32, [16, 1, 1, BC], gl.SwizzledSharedLayout(1, 1, 1, [3, 2, 1, 0]))
    if H32:  # the remainders wait in shared memory (A operands from there: registers hold the high parts)
        lo_s = gl.allocate_shared_memory(gl.bfloat16, [3, BT, BT],
                                         gl.NVMMASharedLayout.get_default_for([BT, BT], gl.bfloat16))
        for blk in gl.static_range(3):
            toe = _toeplitz(HG, col, blk, K, D, BT, toe_l)
            lo_s.index(blk).store((toe - toe.to(gl.bfloat16).to(gl.float32)).to(gl.bfloat16))
    else:
        lo_s = taps  # not read
    r = gl.expand_dims(gl.arange(0, 16, layout=gl.SliceLayout(1, taps_l)), 1)  # row 3 i + j: input i's tap j
    c = gl.expand_dims(gl.arange(0, BC, layout=gl.SliceLayout(0, taps_l)), 0)
    taps.reshape([16, BC]).store(gl.load(FT + (r % 3) * 3 * W + (r // 3) * W + col + c,
                                         mask=(r < 9) & (r % 3 < KF), other=0.0))
    _cta_barrier()

    rows = gl.allocate_shared_memory(gl.bfloat16, [2, 1, 4, RT, BC], PD.layout)  # (stage): q, k, v, zeros
    bnds = gl.allocate_shared_memory(gl.bfloat16, [2, 1, 4, RT // 16, 2, BC], BD.layout)
    z_smem = gl.allocate_shared_memory(gl.bfloat16, [RT, BC], gl.NVMMASharedLayout.get_default_for([RT, BC],
                                                                                                   gl.bfloat16))
    y_smem = gl.allocate_shared_memory(gl.bfloat16, [1, RT, BC], YD.layout)
    bars = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    mbarrier.init(bars.index(0), count=1)
    mbarrier.init(bars.index(1), count=1)

    start = gl.maximum(lo - 2 * BT, 0)
    n = gl.cdiv(hi - start, RT)
    _issue(PD, BD, rows, bnds, bars.index(0), 0, b, start, col, KF, RT, BC, True)
    c1 = gl.zeros([BT, BC], gl.float32, acc_l)  # partial outputs of the next tile and the one after
    c2 = gl.zeros([BT, BC], gl.float32, acc_l)
    for i in range(n):
        t0 = start + i * RT
        stage = i % 2
        _cta_barrier()  # every warp is done with the other stage (read last iteration) before TMA refills it
        fence_async_shared()
        _issue(PD, BD, rows, bnds, bars.index(1 - stage), 1 - stage, b, t0 + RT, col, KF, RT, BC, i + 1 < n)
        mbarrier.wait(bars.index(stage), (i // 2) & 1)
        for h in gl.static_range(TILES):
            z = _featurize(rows, bnds, stage, taps, 1, h, KF, RT, BC, l4) * _featurize(rows, bnds, stage, taps, 2, h,
                                                                                       KF, RT, BC, l4)
            z_smem.slice(h * BT, BT).store(gl.reshape(z, [BT, BC]).to(gl.bfloat16))
        fence_async_shared()
        _cta_barrier()
        zeros = gl.zeros([BT, BC], gl.float32, acc_l)
        acc, c1, c2 = _push(h0, h1, h2, lo_s, z_smem.slice(0, BT), c1, c2, zeros, H32)
        if TILES == 2:
            acc_b, c1, c2 = _push(h0, h1, h2, lo_s, z_smem.slice(BT, BT), c1, c2, zeros, H32)
            acc, acc_b, c1, c2 = warpgroup_mma_wait(0, deps=(acc, acc_b, c1, c2))
        else:
            acc, c1, c2 = warpgroup_mma_wait(0, deps=(acc, c1, c2))
        if t0 >= lo:  # y = q * out, through shared memory by TMA once the last store has left it
            tma.store_wait(0)
            _cta_barrier()
            y_rows = y_smem.reshape([RT, BC])
            q = gl.convert_layout(gl.reshape(_featurize(rows, bnds, stage, taps, 0, 0, KF, RT, BC, l4), [BT, BC]),
                                  acc_l)
            y_rows.slice(0, BT).store((q * acc).to(gl.bfloat16))
            if TILES == 2:
                q = gl.convert_layout(gl.reshape(_featurize(rows, bnds, stage, taps, 0, 1, KF, RT, BC, l4),
                                                 [BT, BC]), acc_l)
                y_rows.slice(BT, BT).store((q * acc_b).to(gl.bfloat16))
            fence_async_shared()
            _cta_barrier()
            _tma_store(YD, [b, t0, col], y_smem)
    tma.store_wait(0)
    mbarrier.invalidate(bars.index(0))
    mbarrier.invalidate(bars.index(1))


def launch_mr_forward(proj: torch.Tensor, feat_t: torch.Tensor, weight: torch.Tensor,
                      rows_per_program: int = 4096, warpgroups: int | None = None) -> torch.Tensor:
    """y (B, T >= 16, W) bf16 from proj (B, T, 3W) bf16 (contiguous), feat_t (KF <= 3, 3W) and the filter weight
    (W / D, K <= 129) bf16 or fp32, shared by groups of D = 16k channels; ``rows_per_program`` rows a program, a
    multiple of 128 (of 64 for an fp32 filter): 4096 was the fastest of 1024, 2048 and 4096 on the H200
    (``benchmarks/results/hyena_h200_s28/``); ``warpgroups`` of 16 channels each a program (one with an fp32
    filter), by default the most of ``WARPGROUPS`` that divide the channels."""
    batch, seqlen, features = proj.shape
    width = features // 3
    groups, taps = weight.shape
    if warpgroups is None:
        warpgroups = 1 if weight.dtype == torch.float32 else max(g for g in (1, WARPGROUPS) if width % (16 * g) == 0)
    if warpgroups not in (1, 2, 4) or width % (16 * warpgroups) or (warpgroups > 1 and weight.dtype == torch.float32):
        raise ValueError(f"warpgroups must be 1, 2 or 4 (1 with an fp32 filter) and divide the {width} channels into "
                         f"16-channel blocks, got {warpgroups}")
    rows_per_iteration = BLOCK_T * (1 if weight.dtype == torch.float32 else 2)
    if rows_per_program % rows_per_iteration:
        raise ValueError(f"rows_per_program must be a multiple of {rows_per_iteration}, got {rows_per_program}")
    if seqlen < MIN_ROWS:
        raise ValueError(f"the Gluon walk needs at least {MIN_ROWS} rows a batch row, got {seqlen}")
    y = proj.new_empty(batch, seqlen, width)
    channels = 16 * warpgroups
    flat = [gl.NVMMASharedLayout(swizzle_byte_width=2 * channels if swizzled else 0, element_bitwidth=16, rank=rank)
            for rank, swizzled in ((3, SWIZZLE_Y), (4, SWIZZLE_ROWS), (5, SWIZZLE_ROWS))]
    # proj as (B, 3, T, W): input i's row t at [b, i, t]; and as (B, 3, T / 16, 16, W) for the rows before blocks
    # (a last partial block needs only the full one before it)
    pd = TensorDescriptor(proj, [batch, 3, seqlen, width], [seqlen * features, width, features, 1],
                          [1, 4, rows_per_iteration, channels], flat[1])
    bd = TensorDescriptor(proj, [batch, 3, seqlen // 16, 16, width], [seqlen * features, width, 16 * features,
                                                                      features, 1],
                          [1, 4, rows_per_iteration // 16, 2, channels], flat[2])
    yd = TensorDescriptor(y, [batch, seqlen, width], [seqlen * width, width, 1], [1, rows_per_iteration, channels],
                          flat[0])
    _hyena_mr_gluon_kernel[(triton.cdiv(seqlen, rows_per_program), width // channels, batch)](
        pd, bd, yd, feat_t.float().contiguous(), weight.contiguous(), seqlen, W=width, KF=feat_t.shape[0], K=taps,
        D=width // groups, L=rows_per_program, BT=BLOCK_T, BC=channels, num_warps=4 * warpgroups, maxnreg=MAXNREG,
    )
    return y
