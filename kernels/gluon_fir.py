"""Gluon (Hopper) kernel of the Hyena-MR forward walk: ``y = q * (h * (k * v))`` for rows that are not packed, bf16
rows and filter, featurizers of up to 3 taps, filters of up to 129 taps shared by groups of 16k channels.

The same walk as ``triton_fir._hyena_mr_kernel`` (64-row tiles, each tile's z pushed into the next two tiles'
outputs through the filter's three Toeplitz blocks on tensor cores), with what that kernel leaves to Triton staged
by hand, because the walk is bound by L1 and shared-memory traffic (Nsight Compute, ``hyena_h200_s24/``): each
tile's q, k, v rows, shifted for each featurizer tap, arrive by TMA in shared memory one tile ahead (two stages,
an mbarrier each; rows outside the batch row arrive as zeros, so nothing is masked), and the featurizers read them
as contiguous 32-byte rows; the featurizer taps wait in shared memory (not registers: 4 programs an SM); z goes to
shared memory once for the three wgmma, whose Toeplitz blocks stay in registers as their A operands; q is
featurized in the accumulator's layout, and y leaves through shared memory by TMA. H200, 8 x 4096 x 2048, 128 taps:
0.246 ms against 0.287 for the Triton walk in the same process, outputs bitwise equal
(``benchmarks/results/hyena_h200_s25/``).

A shared-memory view may only be cut at multiples of its length, so each tap's shifted rows get their own TMA copy
(rows [t0 - j, t0 - j + 64)) instead of one copy read at three offsets. Imports only torch and Triton; runs on
sm_90 only (``fir_ops`` falls back to the Triton walk elsewhere).
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
BLOCK_C = 16  # channels of a program: the wgmma's N; groups of 16k channels share a filter
MAX_FEATURIZER_TAPS = 3  # the taps the kernel reads (each a TMA copy of the shifted rows)


@gluon.jit
def _issue(PD, bufs, bar, stage, b, t0, col, W: gl.constexpr, KF: gl.constexpr, BT: gl.constexpr,
           BC: gl.constexpr, pred):
    """TMA copies of rows [t0 - j, t0 - j + BT) of q, k, v for each tap j into stage ``stage``'s buffers (input
    i, tap j: ``(stage * 3 + i) * KF + j``), signalling ``bar``; rows outside the batch row arrive as zeros."""
    mbarrier.expect(bar, 3 * KF * BT * BC * 2, pred=pred)
    for i in gl.static_range(3):
        for j in gl.static_range(KF):
            _tma_load(PD, [b, t0 - j, i * W + col], bar, bufs.index((stage * 3 + i) * KF + j), pred=pred)


@gluon.jit
def _featurize(bufs, first, taps, inp: gl.constexpr, KF: gl.constexpr, BT: gl.constexpr, BC: gl.constexpr,
               layout: gl.constexpr):
    """``sum_j f_j x[t - j]`` (BT, BC) fp32 of input ``inp`` from its staged taps (buffers first, first + 1, ...)
    and its taps' rows 3 inp + j of ``taps``, summed in the Triton walk's order."""
    acc = gl.zeros([BT, BC], gl.float32, layout)
    for j in gl.static_range(KF):
        x = bufs.index(first + j).reshape([BT, BC]).load(layout).to(gl.float32)
        acc += taps.slice(3 * inp + j, 1).load(layout) * x
    return acc


@gluon.jit
def _toeplitz(HG, group, blk: gl.constexpr, K: gl.constexpr, BT: gl.constexpr, layout: gl.constexpr):
    """Toeplitz block ``blk`` of the group's filter, ``h[i - j + blk * BT]`` (BT, BT), zero outside the taps."""
    i = gl.expand_dims(gl.arange(0, BT, layout=gl.SliceLayout(1, layout)), 1)
    j = gl.expand_dims(gl.arange(0, BT, layout=gl.SliceLayout(0, layout)), 0)
    lag = i - j + blk * BT
    return gl.load(HG + group * K + lag, mask=(lag >= 0) & (lag < K), other=0.0)


@gluon.jit
def _store_tile(YD, buf, y, b, t0, col, PENDING: gl.constexpr, BT: gl.constexpr, BC: gl.constexpr):
    """y (BT, BC) to rows [t0, t0 + BT) of batch row b, channels from col, by TMA through ``buf`` (1, BT, BC), once
    at most PENDING earlier stores are in flight (0 for one buffer: the last store has left it)."""
    tma.store_wait(PENDING)
    _cta_barrier()
    buf.reshape([BT, BC]).store(y)
    fence_async_shared()
    _cta_barrier()
    _tma_store(YD, [b, t0, col], buf)


@gluon.jit
def _hyena_mr_gluon_kernel(PD, YD, FT, HG, T, W: gl.constexpr, KF: gl.constexpr, K: gl.constexpr,
                           D: gl.constexpr, L: gl.constexpr, BT: gl.constexpr, BC: gl.constexpr,
                           num_warps: gl.constexpr):
    """Program (j, c, b) writes rows [j L, min(j L + L, T)) of batch row b, channels [c BC, c BC + BC), after
    walking the two tiles before them (their z feed the partial outputs only). PD, YD: TMA descriptors of proj
    (B, T, 3W) and y (B, T, W), boxes (1, BT, BC) unswizzled; FT (KF, 3W) fp32 featurizer taps; HG (W / D, K) bf16
    filters."""
    gl.static_assert((BT == 64) & (BC == 16))
    gl.static_assert(K <= 2 * BT + 1)
    gl.static_assert(KF <= 3)  # MAX_FEATURIZER_TAPS
    acc_l: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, BC, 16])
    a_l: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=acc_l, k_width=2)
    row_l: gl.constexpr = gl.BlockedLayout([1, 8], [16, 2], [4, 1], [1, 0])  # 16-byte vectors of a row
    taps_l: gl.constexpr = gl.BlockedLayout([1, 4], [8, 4], [4, 1], [1, 0])

    lo = gl.program_id(0) * L
    col = gl.program_id(1) * BC
    b = gl.program_id(2)
    hi = gl.minimum(lo + L, T)
    group = col // D
    h0 = _toeplitz(HG, group, 0, K, BT, a_l)
    h1 = _toeplitz(HG, group, 1, K, BT, a_l)
    h2 = _toeplitz(HG, group, 2, K, BT, a_l)
    taps = gl.allocate_shared_memory(gl.float32, [16, BC], gl.SwizzledSharedLayout(1, 1, 1, [1, 0]))
    r = gl.expand_dims(gl.arange(0, 16, layout=gl.SliceLayout(1, taps_l)), 1)  # row 3 i + j: input i's tap j
    c = gl.expand_dims(gl.arange(0, BC, layout=gl.SliceLayout(0, taps_l)), 0)
    taps.store(gl.load(FT + (r % 3) * 3 * W + (r // 3) * W + col + c, mask=(r < 9) & (r % 3 < KF), other=0.0))
    _cta_barrier()

    bufs = gl.allocate_shared_memory(gl.bfloat16, [2 * 3 * KF, 1, BT, BC], PD.layout)  # (stage, input, tap)
    z_smem = gl.allocate_shared_memory(gl.bfloat16, [BT, BC], gl.NVMMASharedLayout.get_default_for([BT, BC],
                                                                                                   gl.bfloat16))
    y_smem = gl.allocate_shared_memory(gl.bfloat16, [1, BT, BC], YD.layout)
    bars = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    mbarrier.init(bars.index(0), count=1)
    mbarrier.init(bars.index(1), count=1)

    start = gl.maximum(lo - 2 * BT, 0)
    n = gl.cdiv(hi - start, BT)
    _issue(PD, bufs, bars.index(0), 0, b, start, col, W, KF, BT, BC, True)
    c1 = gl.zeros([BT, BC], gl.float32, acc_l)  # partial outputs of the next tile and the one after
    c2 = gl.zeros([BT, BC], gl.float32, acc_l)
    for i in range(n):
        t0 = start + i * BT
        stage = i % 2
        _cta_barrier()  # every warp is done with the other stage (read last tile) before TMA refills it
        fence_async_shared()
        _issue(PD, bufs, bars.index(1 - stage), 1 - stage, b, t0 + BT, col, W, KF, BT, BC, i + 1 < n)
        mbarrier.wait(bars.index(stage), (i // 2) & 1)
        z = (_featurize(bufs, (stage * 3 + 1) * KF, taps, 1, KF, BT, BC, row_l)
             * _featurize(bufs, (stage * 3 + 2) * KF, taps, 2, KF, BT, BC, row_l)).to(gl.bfloat16)
        z_smem.store(z)
        fence_async_shared()
        _cta_barrier()
        acc = warpgroup_mma(h0, z_smem, c1, is_async=True)
        c1 = warpgroup_mma(h1, z_smem, c2, is_async=True)
        c2 = warpgroup_mma(h2, z_smem, gl.zeros([BT, BC], gl.float32, acc_l), use_acc=False, is_async=True)
        acc, c1, c2 = warpgroup_mma_wait(0, deps=(acc, c1, c2))
        if t0 >= lo:
            y = (_featurize(bufs, stage * 3 * KF, taps, 0, KF, BT, BC, acc_l) * acc).to(gl.bfloat16)
            _store_tile(YD, y_smem, y, b, t0, col, 0, BT, BC)
    tma.store_wait(0)
    mbarrier.invalidate(bars.index(0))
    mbarrier.invalidate(bars.index(1))


def launch_mr_forward(proj: torch.Tensor, feat_t: torch.Tensor, weight: torch.Tensor,
                      rows_per_program: int = 4096) -> torch.Tensor:
    """y (B, T, W) bf16 from proj (B, T, 3W) bf16 (contiguous), feat_t (KF <= 3, 3W) and the filter weight
    (W / D, K <= 129) bf16 shared by groups of D = 16k channels, ``rows_per_program`` rows a program (a multiple of
    64; 4096 was the fastest of 2048 and 4096 on the H200, ``benchmarks/results/hyena_h200_s25/``)."""
    batch, seqlen, features = proj.shape
    width = features // 3
    groups, taps = weight.shape
    y = proj.new_empty(batch, seqlen, width)
    flat = gl.NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=16, rank=3)
    pd = TensorDescriptor(proj, [batch, seqlen, features], [seqlen * features, features, 1], [1, BLOCK_T, BLOCK_C],
                          flat)
    yd = TensorDescriptor(y, [batch, seqlen, width], [seqlen * width, width, 1], [1, BLOCK_T, BLOCK_C], flat)
    _hyena_mr_gluon_kernel[(triton.cdiv(seqlen, rows_per_program), width // BLOCK_C, batch)](
        pd, yd, feat_t.float().contiguous(), weight.contiguous(), seqlen, W=width, KF=feat_t.shape[0], K=taps,
        D=width // groups, L=rows_per_program, BT=BLOCK_T, BC=BLOCK_C, num_warps=4,
    )
    return y
