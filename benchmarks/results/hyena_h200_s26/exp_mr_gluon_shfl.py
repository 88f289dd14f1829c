"""Experiment (issue 20, sessions 26 and 27): the Gluon Hyena-MR forward walk (``kernels/gluon_fir.py``) with each
input's rows copied once a tile instead of once per featurizer tap, and smaller changes, as flags:

- SHFL_KV / SHFL_Q: k and v (and q) arrive by one TMA copy of the tile's rows [t0, t0 + 64) plus one small copy
  of the two rows before each 16-row block (a descriptor over proj viewed as (B, T / 16, 16, 3W), box
  (1, 4, 2, 16)); the rows shifted by tap j are made in registers by a warp shuffle: in the tile layout a warp holds
  16 consecutive rows, lane l row l // 2, so lane l takes lane (l - 2j) mod 32's value, and the lanes that would
  wrap send the block before's rows instead. The adopted walk copies the tile once per tap (a shared-memory view
  may only be cut at multiples of its length), so L2 -> SM traffic is 3x the rows read: about 1.2 GB in 0.246 ms
  (4.9 TB/s) at 8 x 4096 x 2048; this cuts it to 1.1x. With SHFL_Q, q is featurized in the tile layout and
  converted to the accumulator's.
- OVERLAP: q is featurized between issuing the three wgmma and waiting for them.
- Y2: two y buffers, so the store of the tile before may still be in flight (``store_wait(1)``).
- NS stages (session 27): tile i + NS - 1's copies are issued while tile i is computed. The adopted walk has 2
  stages, so 4 programs an SM keep at most 4 x 6 KB of distinct rows in flight; at the measured 1.64 TB/s of reads
  (12.4 KB/us an SM) that would take 1.9 us of latency to bound it by Little's law, so either the loads wait that
  long or each tile's serial chain (barriers, fences, wgmma, the store wait) does. More stages test the first; the
  shuffled copies make a stage 6-10 KB instead of 18 KB, so 3-6 stages fit beside 4 programs an SM.
- TS (session 27): the filter's Toeplitz blocks read by wgmma from shared memory (blocks 0 and 2, or all three)
  instead of registers: 96 or 78 registers a thread instead of 124 (Triton 3.6), so 5 programs an SM instead of 4
  with shuffled k, v and q (shared memory bounds the fifth). That tests the second: more programs hide the chain.
- ONE (session 27; q, k, v all shuffled or none): q, k and v's rows in one TMA copy (proj viewed as (B, 3, T, W), box
  (1, 4, 64, BC): a box dimension must be a power of two, the fourth input is past the view and arrives as zeros),
  their boundary rows in another. Triton 3.6 puts a CTA barrier beside every TMA copy into a buffer indexed at run
  time (its shared-memory hazard pass cannot tell the copies' buffers apart), so the adopted walk waits at 14
  barriers a tile, 10 of them around its 9 copies; this one at 7. Without shuffles: one copy of q, k, v a tap.
- D2 (session 27; ONE with shuffles, no OVERLAP, bf16 filter, rows a program a multiple of 128): two tiles an
  iteration, sharing the two copies, the barriers and one y store of 128 rows: 662 instructions and 9 CTA barriers
  an iteration, 331 and 4.5 a tile (1100 o1 d2: 126 registers, 48 KB of shared memory, 4 programs an SM).

The shuffles select on the lane inside the asm (one select a bf16 pair instead of two selects and three byte
permutes) and widen bf16 to fp32 two at a time (two instructions a pair instead of three): with both, a tile's loop
is 486 SASS instructions for 1100 and 397 with ONE, against 520 for the adopted walk (Triton 3.6, sm_90); the
adopted walk with ONE and the same widening (0000 o1) is 355.

Rows that are not packed, bf16 rows, a bf16 or fp32 filter, T a multiple of 16 (the block view), featurizers of <= 3
taps. Run on the H200 from the repository root: ``python benchmarks/results/hyena_h200_s26/exp_mr_gluon_shfl.py``
(checks every variant against the Triton walk at odd shapes, bf16 and fp32 filters, then times them next to the
adopted kernel and the Triton walk; ``PART=check`` or ``PART=time`` runs one half). Under Nsight Compute,
``PART=ncu`` launches the adopted walk and 1100, 0000 o1, 1100 o1, 1100 o1 t2, 1100 o1 d2 once each at 8x4096x2048:
``ncu --clock-control none --profile-from-start off --set full -o $OUT/mr python3 <this file>`` with PART=ncu."""
import os
import sys
from pathlib import Path

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared, mbarrier, tma, warpgroup_mma, warpgroup_mma_wait)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # benchmarks/, for bench_swr
from phalanx_kernels.gluon_fir import (  # noqa: E402 - the adopted kernel's helpers and shims
    BLOCK_C, BLOCK_T, _cta_barrier, _featurize, _store_tile, _tma_load, _tma_store, _toeplitz)


@gluon.jit
def _issue(PD, BD, mbufs, bbufs, bar, stage, b, t0, col, W: gl.constexpr, KF: gl.constexpr, BT: gl.constexpr,
           BC: gl.constexpr, SHFL_KV: gl.constexpr, SHFL_Q: gl.constexpr, ONE: gl.constexpr, pred):
    """Stage ``stage``'s copies of the tile from row t0: per input, rows [t0, t0 + BT) once (shuffled inputs) or
    rows [t0 - j, t0 - j + BT) for each tap j; for shuffled inputs also rows 16 m - 2, 16 m - 1 of the tile's four
    blocks m (rows before the batch row's start arrive as zeros). ONE: q, k, v's rows in one copy (PD a descriptor
    over proj viewed as (B, 3, T, W), box (1, 4, BT, BC)) and their boundary rows in another (BD over
    (B, 3, T / 16, 16, W), box (1, 4, BT / 16, 2, BC)) when all three are shuffled; one copy a tap when none is."""
    QN: gl.constexpr = 1 if SHFL_Q else KF
    KN: gl.constexpr = 1 if SHFL_KV else KF
    NM: gl.constexpr = QN + 2 * KN
    NB: gl.constexpr = (1 if SHFL_Q else 0) + (2 if SHFL_KV else 0)
    BND: gl.constexpr = NB if KF > 1 else 0
    if ONE and SHFL_KV:  # boxes of 4 inputs (a power of two): the fourth is past the view and arrives as zeros
        mbarrier.expect(bar, (4 * BT * BC + (4 * (BT // 16) * 2 * BC if KF > 1 else 0)) * 2, pred=pred)
        _tma_load(PD, [b, 0, t0, col], bar, mbufs.index(stage), pred=pred)
        if KF > 1:
            _tma_load(BD, [b, 0, t0 // 16 - 1, 14, col], bar, bbufs.index(stage), pred=pred)
    elif ONE:  # q, k, v's rows [t0 - j, t0 - j + BT) in one copy a tap j
        mbarrier.expect(bar, KF * 4 * BT * BC * 2, pred=pred)
        for j in gl.static_range(KF):
            _tma_load(PD, [b, 0, t0 - j, col], bar, mbufs.index(stage * KF + j), pred=pred)
    else:
        mbarrier.expect(bar, (NM * BT * BC + BND * 4 * 2 * BC) * 2, pred=pred)
        for j in gl.static_range(QN):
            _tma_load(PD, [b, t0 - j, col], bar, mbufs.index(stage * NM + j), pred=pred)
        for i in gl.static_range(1, 3):
            for j in gl.static_range(KN):
                _tma_load(PD, [b, t0 - j, i * W + col], bar, mbufs.index(stage * NM + QN + (i - 1) * KN + j),
                          pred=pred)
        if KF > 1:
            for s in gl.static_range(NB):  # inputs q, k, v or k, v
                _tma_load(BD, [b, t0 // 16 - 1, 14, (s + 3 - NB) * W + col], bar, bbufs.index(stage * NB + s),
                          pred=pred)


@gluon.jit
def _shift(x, bnd, j: gl.constexpr):
    """Rows t - j of the tile x (4 warps, 8, 2, BC) for tap j in 1, 2: lane l takes lane (l - 2j) mod 32's value;
    the lanes holding rows 16 - j.. of their warp's block (lanes 32 - 2j..) send ``bnd``, the block before's last
    rows, so that the first rows of each block get them. One select and one shuffle a pair of bf16 (the select on
    the lane, inside the asm: selecting bf16 elements apart costs two selects and three byte permutes a pair)."""
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
    instead of three)."""
    return gl.inline_asm_elementwise("{ shl.b32 $0, $2, 16; and.b32 $1, $2, 0xffff0000; }", "=r,=r,r", [x],
                                     dtype=gl.float32, is_pure=True, pack=2)


@gluon.jit
def _featurize_shfl(mbuf, bbuf, taps, inp: gl.constexpr, KF: gl.constexpr, BC: gl.constexpr, l4: gl.constexpr):
    """``sum_j f_j x[t - j]`` (4, 8, 2, BC) fp32 of input ``inp`` from one staged copy of the tile (mbuf,
    (4, 8, 2, BC)) and the rows before its blocks (bbuf, (4, 1, 2, BC)), in the adopted walk's order of sums; taps
    (16, 1, 1, BC): row 3 inp + j."""
    x = mbuf.load(l4)
    acc = gl.zeros([4, 8, 2, BC], gl.float32, l4)
    acc += taps.slice(3 * inp, 1).load(l4) * _widen(x)
    if KF > 1:
        bnd = bbuf.load(l4)
        acc += taps.slice(3 * inp + 1, 1).load(l4) * _widen(_shift(x, bnd, 1))
        if KF > 2:
            acc += taps.slice(3 * inp + 2, 1).load(l4) * _widen(_shift(x, bnd, 2))
    return acc


@gluon.jit
def _featurize_taps(mbufs, stage, taps, inp: gl.constexpr, KF: gl.constexpr, BT: gl.constexpr, BC: gl.constexpr,
                    layout: gl.constexpr):
    """``gluon_fir._featurize`` from the one-copy-a-tap buffers (ONE, nothing shuffled): input ``inp``'s rows of the
    copy of tap j, (BT, BC) in ``layout``; taps (16, BC)."""
    acc = gl.zeros([BT, BC], gl.float32, layout)
    for j in gl.static_range(KF):
        x = mbufs.index(stage * KF + j).reshape([4 * BT, BC]).slice(inp * BT, BT).load(layout)
        acc += taps.slice(3 * inp + j, 1).load(layout) * _widen(x)
    return acc


@gluon.jit
def _staged(mbufs, bbufs, stage, inp: gl.constexpr, NM: gl.constexpr, NB: gl.constexpr, QN: gl.constexpr,
            KN: gl.constexpr, ONE: gl.constexpr, BT: gl.constexpr, BC: gl.constexpr, RT: gl.constexpr,
            h: gl.constexpr):
    """Shuffled input ``inp``'s staged rows (4, 8, 2, BC) and boundary rows (4, 1, 2, BC) of tile h of the
    iteration (RT rows: one or two tiles) in stage ``stage``, as the tile layout l4 reads them (a view is reshaped
    before it is cut: Gluon cannot reshape a cut view)."""
    if ONE:
        rows = mbufs.index(stage).reshape([4 * RT // 16, 8, 2, BC]).slice(inp * RT // 16 + 4 * h, 4)
        bnd = bbufs.index(stage).reshape([4 * RT // 16, 1, 2, BC]).slice(inp * RT // 16 + 4 * h, 4)
    else:
        rows = mbufs.index(stage * NM + (0 if inp == 0 else QN + (inp - 1) * KN)).reshape([4, 8, 2, BC])
        bnd = bbufs.index(stage * NB + inp - (3 - NB)).reshape([4, 1, 2, BC])
    return rows, bnd


@gluon.jit
def _featurize_q(mbufs, bbufs, stage, taps, NM: gl.constexpr, NB: gl.constexpr, QN: gl.constexpr, KN: gl.constexpr,
                 KF: gl.constexpr, SHFL_Q: gl.constexpr, ONE: gl.constexpr, BT: gl.constexpr, BC: gl.constexpr,
                 l4: gl.constexpr, acc_l: gl.constexpr, RT: gl.constexpr, h: gl.constexpr):
    """q of tile h of the iteration featurized (BT, BC) in the accumulator's layout acc_l, by the path the flags
    pick; taps (16, 1, 1, BC)."""
    if SHFL_Q:
        q_rows, q_bnd = _staged(mbufs, bbufs, stage, 0, NM, NB, QN, KN, ONE, BT, BC, RT, h)
        q = gl.convert_layout(gl.reshape(_featurize_shfl(q_rows, q_bnd, taps, 0, KF, BC, l4), [BT, BC]), acc_l)
    elif ONE:
        q = _featurize_taps(mbufs, stage, taps.reshape([16, BC]), 0, KF, BT, BC, acc_l)
    else:
        q = _featurize(mbufs, stage * NM, taps.reshape([16, BC]), 0, KF, BT, BC, acc_l)
    return q


@gluon.jit
def _mr_kernel(PD, BD, YD, FT, HG, T, W: gl.constexpr, KF: gl.constexpr, K: gl.constexpr, D: gl.constexpr,
               L: gl.constexpr, BT: gl.constexpr, BC: gl.constexpr, SHFL_KV: gl.constexpr, SHFL_Q: gl.constexpr,
               OVERLAP: gl.constexpr, Y2: gl.constexpr, NS: gl.constexpr, TS: gl.constexpr, ONE: gl.constexpr,
               D2: gl.constexpr, num_warps: gl.constexpr):
    """``gluon_fir._hyena_mr_gluon_kernel`` with the flags of the module docstring; PD, BD: TMA descriptors of proj (B,
    T, 3W) and of proj viewed as (B, T / 16, 16, 3W), box (1, 4, 2, BC), or with ONE the views of ``_issue``. HG
    bf16 or fp32 (the Triton walk's split: each Toeplitz block's bf16 high part on wgmma from registers, then its
    bf16 remainder from shared memory). NS stages: tile i + NS - 1's copies are issued while tile i is computed (the
    adopted walk: 2). TS: the filter's Toeplitz blocks (high parts) read by wgmma from shared memory instead of
    registers: none (0, the adopted walk), blocks 0 and 2 (2) or all (3). ONE (q, k, v all shuffled or none): fewer,
    larger copies, see ``_issue``. D2 (with ONE and shuffles, a bf16 filter, no OVERLAP): two tiles an iteration,
    sharing the copies, the barriers and the y store."""
    gl.static_assert((BT == 64) & (BC == 16) & (num_warps == 4) & (NS >= 2) & ((TS == 0) | (TS == 2) | (TS == 3)))
    gl.static_assert(K <= 2 * BT + 1)
    gl.static_assert(KF <= 3)
    gl.static_assert((SHFL_Q == SHFL_KV) | (not ONE))
    gl.static_assert((ONE & SHFL_KV & (not OVERLAP)) | (not D2))
    RT: gl.constexpr = 2 * BT if D2 else BT  # rows an iteration
    acc_l: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, BC, 16])
    a_l: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=acc_l, k_width=2)
    row_l: gl.constexpr = gl.BlockedLayout([1, 8], [16, 2], [4, 1], [1, 0])  # 16-byte vectors of a row
    # The same as row_l on (warp, row // 2, row % 2, channel): lane l holds row l // 2 of its warp's 16-row block.
    l4: gl.constexpr = gl.BlockedLayout([1, 1, 1, 8], [1, 8, 2, 2], [4, 1, 1, 1], [3, 2, 1, 0])
    taps_l: gl.constexpr = gl.BlockedLayout([1, 4], [8, 4], [4, 1], [1, 0])
    QN: gl.constexpr = 1 if SHFL_Q else KF
    KN: gl.constexpr = 1 if SHFL_KV else KF
    NM: gl.constexpr = QN + 2 * KN
    NB: gl.constexpr = (1 if SHFL_Q else 0) + (2 if SHFL_KV else 0)
    NY: gl.constexpr = 2 if Y2 else 1

    lo = gl.program_id(0) * L
    col = gl.program_id(1) * BC
    b = gl.program_id(2)
    hi = gl.minimum(lo + L, T)
    group = col // D
    toe_l: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [4, 1], [1, 0])  # Toeplitz blocks on their way to smem
    toe_s: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BT, BT], gl.bfloat16)
    H32: gl.constexpr = HG.dtype.element_ty == gl.float32  # an fp32 filter: bf16 high parts and remainders
    gl.static_assert(not (D2 & H32))
    if H32:  # the remainders wait in shared memory (A operands from there: registers hold the high parts)
        lo_s = gl.allocate_shared_memory(gl.bfloat16, [3, BT, BT], toe_s)
        for blk in gl.static_range(3):
            toe = _toeplitz(HG, group, blk, K, BT, toe_l)
            lo_s.index(blk).store((toe - toe.to(gl.bfloat16).to(gl.float32)).to(gl.bfloat16))
    if TS > 0:  # blocks 0 and 2 (TS = 2) or all three (TS = 3) from shared memory: 48 registers a thread fewer at 3
        hi_s = gl.allocate_shared_memory(gl.bfloat16, [TS, BT, BT], toe_s)
        for s in gl.static_range(TS):
            hi_s.index(s).store(_toeplitz(HG, group, s * (4 - TS), K, BT, toe_l).to(gl.bfloat16))
        h0 = hi_s.index(0)
        h2 = hi_s.index(TS - 1)
    else:
        h0 = _toeplitz(HG, group, 0, K, BT, a_l).to(gl.bfloat16)
        h2 = _toeplitz(HG, group, 2, K, BT, a_l).to(gl.bfloat16)
    if TS == 3:
        h1 = hi_s.index(1)
    else:
        h1 = _toeplitz(HG, group, 1, K, BT, a_l).to(gl.bfloat16)
    taps = gl.allocate_shared_memory(gl.float32, [16, 1, 1, BC], gl.SwizzledSharedLayout(1, 1, 1, [3, 2, 1, 0]))
    r = gl.expand_dims(gl.arange(0, 16, layout=gl.SliceLayout(1, taps_l)), 1)  # row 3 i + j: input i's tap j
    c = gl.expand_dims(gl.arange(0, BC, layout=gl.SliceLayout(0, taps_l)), 0)
    taps.reshape([16, BC]).store(gl.load(FT + (r % 3) * 3 * W + (r // 3) * W + col + c,
                                         mask=(r < 9) & (r % 3 < KF), other=0.0))
    _cta_barrier()
    taps2 = taps.reshape([16, BC])

    if ONE and SHFL_KV:  # a stage: q, k, v's rows (1, 4, RT, BC) and their boundary rows (1, 4, RT / 16, 2, BC)
        mbufs = gl.allocate_shared_memory(gl.bfloat16, [NS, 1, 4, RT, BC], PD.layout)
        bbufs = gl.allocate_shared_memory(gl.bfloat16, [NS, 1, 4, RT // 16, 2, BC], BD.layout)
    elif ONE:  # a stage: q, k, v's rows shifted by each tap (KF, 1, 4, BT, BC); no boundary rows
        mbufs = gl.allocate_shared_memory(gl.bfloat16, [NS * KF, 1, 4, BT, BC], PD.layout)
        bbufs = mbufs  # not read
    else:
        mbufs = gl.allocate_shared_memory(gl.bfloat16, [NS * NM, 1, BT, BC], PD.layout)
        bbufs = gl.allocate_shared_memory(gl.bfloat16, [NS * NB if NB > 0 else 1, 1, 4, 2, BC], BD.layout)
    z_smem = gl.allocate_shared_memory(gl.bfloat16, [RT, BC], gl.NVMMASharedLayout.get_default_for([RT, BC],
                                                                                                   gl.bfloat16))
    y_smem = gl.allocate_shared_memory(gl.bfloat16, [NY, 1, RT, BC], YD.layout)
    bars = gl.allocate_shared_memory(gl.int64, [NS, 1], mbarrier.MBarrierLayout())
    for s in gl.static_range(NS):
        mbarrier.init(bars.index(s), count=1)

    start = gl.maximum(lo - 2 * BT, 0)
    n = gl.cdiv(hi - start, RT)
    for s in gl.static_range(NS - 1):
        _issue(PD, BD, mbufs, bbufs, bars.index(s), s, b, start + s * RT, col, W, KF, RT, BC, SHFL_KV, SHFL_Q, ONE,
               s < n)
    c1 = gl.zeros([BT, BC], gl.float32, acc_l)
    c2 = gl.zeros([BT, BC], gl.float32, acc_l)
    for i in range(n):
        t0 = start + i * RT
        stage = i % NS
        ahead = (i + NS - 1) % NS  # the stage read by the last tile
        _cta_barrier()  # every warp is done with it before TMA refills it
        fence_async_shared()
        _issue(PD, BD, mbufs, bbufs, bars.index(ahead), ahead, b, t0 + (NS - 1) * RT, col, W, KF, RT, BC, SHFL_KV,
               SHFL_Q, ONE, i + NS - 1 < n)
        mbarrier.wait(bars.index(stage), (i // NS) & 1)
        if D2:  # two tiles: each one's z to its half of z_smem, six wgmma, then each one's q and y, one store
            for h in gl.static_range(2):
                k_rows, k_bnd = _staged(mbufs, bbufs, stage, 1, NM, NB, QN, KN, ONE, BT, BC, RT, h)
                v_rows, v_bnd = _staged(mbufs, bbufs, stage, 2, NM, NB, QN, KN, ONE, BT, BC, RT, h)
                z_smem.slice(h * BT, BT).store(gl.reshape(_featurize_shfl(k_rows, k_bnd, taps, 1, KF, BC, l4)
                                                          * _featurize_shfl(v_rows, v_bnd, taps, 2, KF, BC, l4),
                                                          [BT, BC]).to(gl.bfloat16))
            fence_async_shared()
            _cta_barrier()
            z_a = z_smem.slice(0, BT)
            z_b = z_smem.slice(BT, BT)
            acc = warpgroup_mma(h0, z_a, c1, is_async=True)
            c1 = warpgroup_mma(h1, z_a, c2, is_async=True)
            c2 = warpgroup_mma(h2, z_a, gl.zeros([BT, BC], gl.float32, acc_l), use_acc=False, is_async=True)
            acc_b = warpgroup_mma(h0, z_b, c1, is_async=True)
            c1 = warpgroup_mma(h1, z_b, c2, is_async=True)
            c2 = warpgroup_mma(h2, z_b, gl.zeros([BT, BC], gl.float32, acc_l), use_acc=False, is_async=True)
            acc, acc_b, c1, c2 = warpgroup_mma_wait(0, deps=(acc, acc_b, c1, c2))
            if t0 >= lo:
                y_buf = y_smem.index(((t0 - lo) // RT) % NY)
                tma.store_wait(NY - 1)
                _cta_barrier()
                y_rows = y_buf.reshape([RT, BC])
                y_rows.slice(0, BT).store((_featurize_q(mbufs, bbufs, stage, taps, NM, NB, QN, KN, KF, SHFL_Q, ONE, BT,
                                                        BC, l4, acc_l, RT, 0) * acc).to(gl.bfloat16))
                y_rows.slice(BT, BT).store((_featurize_q(mbufs, bbufs, stage, taps, NM, NB, QN, KN, KF, SHFL_Q, ONE,
                                                         BT, BC, l4, acc_l, RT, 1) * acc_b).to(gl.bfloat16))
                fence_async_shared()
                _cta_barrier()
                _tma_store(YD, [b, t0, col], y_buf)
        else:
            if SHFL_KV:
                k_rows, k_bnd = _staged(mbufs, bbufs, stage, 1, NM, NB, QN, KN, ONE, BT, BC, RT, 0)
                v_rows, v_bnd = _staged(mbufs, bbufs, stage, 2, NM, NB, QN, KN, ONE, BT, BC, RT, 0)
                z = gl.reshape(_featurize_shfl(k_rows, k_bnd, taps, 1, KF, BC, l4)
                               * _featurize_shfl(v_rows, v_bnd, taps, 2, KF, BC, l4), [BT, BC]).to(gl.bfloat16)
            elif ONE:
                z = (_featurize_taps(mbufs, stage, taps2, 1, KF, BT, BC, row_l)
                     * _featurize_taps(mbufs, stage, taps2, 2, KF, BT, BC, row_l)).to(gl.bfloat16)
            else:
                z = (_featurize(mbufs, stage * NM + QN, taps2, 1, KF, BT, BC, row_l)
                     * _featurize(mbufs, stage * NM + QN + KN, taps2, 2, KF, BT, BC, row_l)).to(gl.bfloat16)
            z_smem.store(z)
            fence_async_shared()
            _cta_barrier()
            acc = warpgroup_mma(h0, z_smem, c1, is_async=True)
            if H32:
                acc = warpgroup_mma(lo_s.index(0), z_smem, acc, is_async=True)
            c1 = warpgroup_mma(h1, z_smem, c2, is_async=True)
            if H32:
                c1 = warpgroup_mma(lo_s.index(1), z_smem, c1, is_async=True)
            c2 = warpgroup_mma(h2, z_smem, gl.zeros([BT, BC], gl.float32, acc_l), use_acc=False, is_async=True)
            if H32:
                c2 = warpgroup_mma(lo_s.index(2), z_smem, c2, is_async=True)
            if OVERLAP:
                q = _featurize_q(mbufs, bbufs, stage, taps, NM, NB, QN, KN, KF, SHFL_Q, ONE, BT, BC, l4, acc_l, RT, 0)
            acc, c1, c2 = warpgroup_mma_wait(0, deps=(acc, c1, c2))
            if t0 >= lo:
                if not OVERLAP:
                    q = _featurize_q(mbufs, bbufs, stage, taps, NM, NB, QN, KN, KF, SHFL_Q, ONE, BT, BC, l4, acc_l, RT,
                                     0)
                _store_tile(YD, y_smem.index(((t0 - lo) // BT) % NY), (q * acc).to(gl.bfloat16), b, t0, col, NY - 1, BT,
                            BC)
    tma.store_wait(0)
    for s in gl.static_range(NS):
        mbarrier.invalidate(bars.index(s))


def launch(proj: torch.Tensor, feat_t: torch.Tensor, weight: torch.Tensor, rows: int = 4096,
           shfl_kv: bool = True, shfl_q: bool = False, overlap: bool = False, y2: bool = False, stages: int = 2,
           toeplitz_smem: int = 0, one_copy: bool = False, two_tiles: bool = False,
           maxnreg: int | None = None) -> torch.Tensor:
    """y (B, T, W) bf16 of the experimental walk; proj (B, T, 3W) bf16 with T a multiple of 16, feat_t (KF, 3W),
    weight (W / 16k, K) bf16 or fp32 (offline sm_90 builds, Triton 3.6: 146-149 registers a thread with an fp32
    filter, 3 programs an SM; a cap of 128 spills only before the loop)."""
    B, T, F = proj.shape
    W = F // 3
    groups, taps = weight.shape
    assert T % 16 == 0, "the block view needs T to be a multiple of 16"
    assert shfl_kv or not shfl_q, "shfl_q needs shfl_kv (the boundary buffers hold q, k, v or k, v)"
    assert shfl_q == shfl_kv or not one_copy, "one_copy needs q, k and v all shuffled or none"
    assert not two_tiles or (one_copy and shfl_kv and not overlap and weight.dtype == torch.bfloat16
                             and rows % 128 == 0), "two_tiles: one_copy, shuffles, no overlap, bf16 filter, rows % 128"
    rt = 2 * BLOCK_T if two_tiles else BLOCK_T  # rows an iteration
    y = proj.new_empty(B, T, W)
    flat3 = gl.NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=16, rank=3)
    flat4 = gl.NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=16, rank=4)
    if one_copy:  # proj viewed as (B, 3, T, W) and (B, 3, T / 16, 16, W): q, k, v (and zeros) in one box each
        flat5 = gl.NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=16, rank=5)
        pd = TensorDescriptor(proj, [B, 3, T, W], [T * F, W, F, 1], [1, 4, rt, BLOCK_C], flat4)
        bd = TensorDescriptor(proj, [B, 3, T // 16, 16, W], [T * F, W, 16 * F, F, 1], [1, 4, rt // 16, 2, BLOCK_C],
                              flat5)
    else:
        pd = TensorDescriptor(proj, [B, T, F], [T * F, F, 1], [1, BLOCK_T, BLOCK_C], flat3)
        bd = TensorDescriptor(proj, [B, T // 16, 16, F], [T * F, 16 * F, F, 1], [1, 4, 2, BLOCK_C], flat4)
    yd = TensorDescriptor(y, [B, T, W], [T * W, W, 1], [1, rt, BLOCK_C], flat3)
    _mr_kernel[(triton.cdiv(T, rows), W // BLOCK_C, B)](
        pd, bd, yd, feat_t.float().contiguous(), weight.contiguous(), T, W=W, KF=feat_t.shape[0], K=taps,
        D=W // groups, L=rows, BT=BLOCK_T, BC=BLOCK_C, SHFL_KV=shfl_kv, SHFL_Q=shfl_q, OVERLAP=overlap, Y2=y2,
        NS=stages, TS=toeplitz_smem, ONE=one_copy, D2=two_tiles, num_warps=4, maxnreg=maxnreg)
    return y


FLAGS = ("shfl_kv", "shfl_q", "overlap", "y2")
VARIANTS = ["0000", "0010", "0001", "0011", "1000", "1010", "1001", "1011", "1100", "1110", "1111"]  # 2 stages
# More stages (sN), Toeplitz blocks from shared memory (tN: 5 programs an SM instead of 4 for shuffled k, v, q), one
# copy of q, k, v a tile (o1), two tiles an iteration (d2)
DEEP = ["0000 s3", "1000 s4", "1100 s4", "1111 s4", "1000 t2", "1100 t2", "1100 t3", "1111 t2",
        "1100 o1", "1110 o1", "1111 o1", "1100 o1 s3", "1100 o1 s4", "1100 o1 t2", "1111 o1 t2", "1100 o1 t3",
        "0000 o1", "0010 o1", "0011 o1", "1100 o1 d2", "1101 o1 d2"]


def _kw(key: str) -> dict:
    """launch's keyword arguments of a variant key: the flags' bits, then optionally sN (stages), tN (Toeplitz
    blocks in shared memory), o1 (one copy of q, k, v a tile), d2 (two tiles an iteration)."""
    bits, *more = key.split()
    opts = {w[0]: int(w[1:]) for w in more}
    return {**{f: b == "1" for f, b in zip(FLAGS, bits)}, "stages": opts.get("s", 2), "toeplitz_smem": opts.get("t", 0),
            "one_copy": bool(opts.get("o", 0)), "two_tiles": opts.get("d", 1) == 2}


if __name__ == "__main__":
    from bench_swr import gpu_ms
    from phalanx_kernels import fir_ops
    from phalanx_kernels.gluon_fir import launch_mr_forward

    # KEYS (comma-separated variant keys, or "o1" for those with one copy, "-o1" for those without) runs some
    # variants only: a variant that faults the GPU spoils every launch after it in the same process
    keys_env = os.environ.get("KEYS", "")

    def wanted(key: str) -> bool:
        if keys_env in ("o1", "-o1"):
            return ("o1" in key.split()) == (keys_env == "o1")
        return not keys_env or key in keys_env.split(",")

    part = os.environ.get("PART", "all")  # check, time, all (the checks build about 140 kernels: minutes) or ncu
    torch.manual_seed(0)
    if part == "ncu":  # one launch each of the adopted walk and five variants between cudaProfilerStart and Stop
        proj = torch.randn(8, 4096, 3 * 2048, device="cuda", dtype=torch.bfloat16)
        feat_t = (torch.randn(3 * 2048, 3, device="cuda") / 3**0.5).t().contiguous()
        wt = (torch.randn(2048 // 16, 128, device="cuda") / 128**0.5).bfloat16()
        calls = [lambda: launch_mr_forward(proj, feat_t, wt)] + [
            lambda key=key: launch(proj, feat_t, wt, **_kw(key))
            for key in ("1100", "0000 o1", "1100 o1", "1100 o1 t2", "1100 o1 d2")]
        for call in calls:
            call()  # builds before profiling
        torch.cuda.synchronize()
        torch.cuda.cudart().cudaProfilerStart()
        for call in calls:
            call()
        torch.cuda.synchronize()
        torch.cuda.cudart().cudaProfilerStop()
        sys.exit(0)
    worst, failed = 0.0, []
    # (B, T, C, K, KF, rows a program, deeper pipelines too): 128 rows a program walk 2-4 tiles, fewer than 6 stages
    checks = ((2, 1008, 64, 128, 3, 256, True), (3, 4096, 256, 100, 2, 1024, False),
              (1, 8192, 128, 129, 3, 4096, False), (2, 784, 32, 65, 1, 128, True), (2, 4096, 2048, 128, 3, 4096, True))
    for B, T, C, K, KF, rows, deep in () if part == "time" else checks:
        proj = torch.randn(B, T, 3 * C, device="cuda", dtype=torch.bfloat16)
        feat_t = (torch.randn(3 * C, KF, device="cuda") / KF**0.5).t().contiguous()
        w32 = torch.randn(C // 16, K, device="cuda") / K**0.5
        for wt in (w32.bfloat16(), w32):
            ref = fir_ops._launch_mr_core(proj, feat_t, wt, None)
            if wt.dtype == torch.bfloat16:
                keys = VARIANTS + DEEP * deep
            else:
                keys = ["0000", "1000", "1111", "1111 o1"] + ["1111 s4", "1111 o1 t2"] * deep
            for bits in [k for k in keys if wanted(k)]:
                case = f"check B={B} T={T} C={C} K={K} KF={KF} rows={rows} {str(wt.dtype)[6:]} filter {bits}"
                try:
                    got = launch(proj, feat_t, wt, rows=rows, **_kw(bits))
                    torch.cuda.synchronize()
                except Exception as e:  # noqa: BLE001 - a variant that fails to build or launch is reported
                    failed.append(case)
                    print(f"{case}: failed: {type(e).__name__}: {str(e)[:200]}", flush=True)
                    continue
                diff = (ref.float() - got.float()).abs().max().item()
                worst = max(worst, diff)
                print(f"{case}: max diff {diff:.3e}", flush=True)
    print(f"largest difference from the Triton walk over all checks: {worst:.3e}; {len(failed)} failed to run")
    if part == "check":
        sys.exit(0)
    print("| shape | filter | kernel (shfl_kv shfl_q overlap y2 [stages] [Toeplitz blocks in smem]) | ms | x floor |")
    print("|---|---|---|---:|---:|")
    for shape in os.environ.get("TIME_SHAPES", "8x4096,1x32768").split(","):
        B, T = map(int, shape.split("x"))
        C, K = 2048, 128
        proj = torch.randn(B, T, 3 * C, device="cuda", dtype=torch.bfloat16)
        feat_t = (torch.randn(3 * C, 3, device="cuda") / 3**0.5).t().contiguous()
        w32 = torch.randn(C // 16, K, device="cuda") / K**0.5
        floor = 4 * proj.numel() / 3 * 2 / 4.3e12 * 1e3
        for wt in (w32.bfloat16(), w32):
            h = str(wt.dtype)[6:]
            runs = [("Triton walk", lambda: fir_ops._launch_mr_core(proj, feat_t, wt, None))]
            if wt.dtype == torch.bfloat16:
                runs.append(("Gluon walk (adopted)", lambda: launch_mr_forward(proj, feat_t, wt)))
                # (key, rows a program, register cap): 5 programs an SM (t2, t3) fill 1.55 waves at 4096 rows
                # (1024 programs), so they run at 2048 and 1024 too; 1000 t2 needs the cap of 96 for 5
                cases = [(key, 4096, None) for key in VARIANTS + DEEP] + [
                    (key, rows, None) for key in ("1000", "1111", "1100 s4", "1100 t2", "1100 t3", "1111 t2",
                                                  "1100 o1", "1100 o1 t2", "1111 o1 t2", "0000 o1", "1100 o1 d2")
                    for rows in (2048, 1024)] + [
                    ("1000", 4096, 128), ("1111", 4096, 128), ("1000 t2", 4096, 96), ("1000 t2", 2048, 96)]
            else:
                cases = [(key, 4096, cap) for key in ("0000", "1000", "1100", "1011", "1111", "1111 s4", "1111 t2",
                                                      "1111 o1", "1111 o1 t2") for cap in (None, 128)]
            runs += [(f"{key}, {rows} rows, cap {cap}",
                      lambda key=key, rows=rows, cap=cap: launch(proj, feat_t, wt, rows=rows, maxnreg=cap, **_kw(key)))
                     for key, rows, cap in cases if wanted(key)]
            for name, fn in runs:
                try:
                    ms = gpu_ms(fn)
                except Exception as e:  # noqa: BLE001 - a variant that fails is reported, not fatal
                    print(f"| {B}x{T} | {h} | {name} | failed: {type(e).__name__}: {str(e)[:100]} | |", flush=True)
                    continue
                print(f"| {B}x{T} | {h} | {name} | {ms:.3f} | {ms / floor:.2f} |", flush=True)
