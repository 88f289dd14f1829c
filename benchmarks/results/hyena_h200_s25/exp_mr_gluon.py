"""Experiment (issue 20, session 25; its best variant, taps in shared memory and q in the accumulator's layout, is
``kernels/gluon_fir.py``): a Gluon (Hopper) Hyena-MR forward walk. Rows that are not packed, bf16 rows, featurizers
of <= 3 taps, filters of <= 129 taps shared by groups of 16 channels. A program walks rows [lo, lo + L) of one
batch row and one filter group in 64-row tiles (after the two tiles before lo), as ``triton_fir._hyena_mr_kernel``
does, but stages its inputs itself: each tile's q, k, v rows, shifted for each featurizer tap, arrive by TMA in
shared memory one tile ahead (two stages, one mbarrier each); the featurizers read them from there (contiguous
32-byte rows, 16-byte vectors); z goes to shared memory once for the three Toeplitz-block wgmma
(the blocks held in registers as their A operands); y leaves through shared memory by TMA. Run on the H200 from
the repository root, Triton 3.6 (``_reinterpret``, ``thread_barrier``):
``python benchmarks/results/hyena_h200_s25/exp_mr_gluon.py`` (checks against the Triton walk, then times both)."""
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
from phalanx_kernels import fir_ops  # noqa: E402
from phalanx_kernels.gluon_fir import _toeplitz  # noqa: E402 - the adopted kernel's, unchanged since

@gluon.jit
def _issue(PD, bufs, bar, stage, b, t0, col, W: gl.constexpr, KF: gl.constexpr, BT: gl.constexpr,
           BC: gl.constexpr, pred):
    """TMA copies of rows [t0 - j, t0 - j + BT) of q, k, v for each tap j into stage ``stage``'s buffers (input i,
    tap j: ``(stage * 3 + i) * KF + j``), signalling ``bar``; rows outside the batch row arrive as zeros. (A
    shared-memory view may only be cut at multiples of its length, so each tap's shifted rows get their own copy.)"""
    mbarrier.expect(bar, 3 * KF * BT * BC * 2, pred=pred)
    for i in gl.static_range(3):
        for j in gl.static_range(KF):
            tma.async_copy_global_to_shared(PD, [b, t0 - j, i * W + col], bar, bufs.index((stage * 3 + i) * KF + j),
                                            pred=pred)


@gluon.jit
def _taps(TS, FT, off, r: gl.constexpr, KF: gl.constexpr, W: gl.constexpr, BC: gl.constexpr,
          layout: gl.constexpr, TAPS_SMEM: gl.constexpr):
    """The featurizer's taps 0-2 as (1, BC) fp32 rows for the columns from ``off`` (zero past KF): from global
    memory, or (TAPS_SMEM) from rows 3r.. of the shared copy TS, so that they need no registers between tiles."""
    cols = gl.arange(0, BC, layout=gl.SliceLayout(0, layout))
    if TAPS_SMEM:
        f0 = TS.slice(3 * r, 1).load(layout)
        f1 = TS.slice(3 * r + 1, 1).load(layout)
        f2 = TS.slice(3 * r + 2, 1).load(layout)
    else:
        f0 = gl.expand_dims(gl.load(FT + off + cols), 0)
        f1 = f0 * 0.0
        f2 = f0 * 0.0
        if KF > 1:
            f1 = gl.expand_dims(gl.load(FT + 3 * W + off + cols), 0)
        if KF > 2:
            f2 = gl.expand_dims(gl.load(FT + 6 * W + off + cols), 0)
    return f0, f1, f2


@gluon.jit
def _featurize(bufs, first, f0, f1, f2, KF: gl.constexpr, BT: gl.constexpr, BC: gl.constexpr,
               layout: gl.constexpr):
    """``f0 x[t] + f1 x[t - 1] + f2 x[t - 2]`` (BT, BC) fp32 from the staged taps (buffers first, first + 1, ...),
    in the Triton walk's order of sums; TMA wrote them unswizzled (row-major)."""
    plain: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [1, 0])
    acc = f0 * bufs.index(first)._reinterpret(gl.bfloat16, [BT, BC], plain).load(layout).to(gl.float32)
    if KF > 1:
        acc += f1 * bufs.index(first + 1)._reinterpret(gl.bfloat16, [BT, BC], plain).load(layout).to(gl.float32)
    if KF > 2:
        acc += f2 * bufs.index(first + 2)._reinterpret(gl.bfloat16, [BT, BC], plain).load(layout).to(gl.float32)
    return acc


@gluon.jit
def _hyena_mr_gluon_kernel(PD, YD, FT, HG, T, W: gl.constexpr, KF: gl.constexpr, K: gl.constexpr,
                           D: gl.constexpr, L: gl.constexpr, BT: gl.constexpr, BC: gl.constexpr,
                           STAGES: gl.constexpr, TAPS_SMEM: gl.constexpr, Q_ACC: gl.constexpr,
                           num_warps: gl.constexpr):
    gl.static_assert(BC == 16)
    gl.static_assert(K <= 2 * BT + 1)
    acc_l: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, BC, 16])
    a_l: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=acc_l, k_width=2)
    row_l: gl.constexpr = gl.BlockedLayout([1, 8], [16, 2], [4, 1], [1, 0])  # 16-byte vectors of one row
    z_sl: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BT, BC], gl.bfloat16)
    plain: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [1, 0])
    q_l: gl.constexpr = acc_l if Q_ACC else row_l

    lo = gl.program_id(0) * L
    col = gl.program_id(1) * BC
    b = gl.program_id(2)
    hi = gl.minimum(lo + L, T)
    group = col // D
    h0 = _toeplitz(HG, group, 0, K, BT, a_l).to(gl.bfloat16)
    h1 = _toeplitz(HG, group, 1, K, BT, a_l).to(gl.bfloat16)
    h2 = _toeplitz(HG, group, 2, K, BT, a_l).to(gl.bfloat16)
    taps = gl.allocate_shared_memory(gl.float32, [16, BC], plain)  # row 3 i + j: input i's tap j
    if TAPS_SMEM:
        tl_l: gl.constexpr = gl.BlockedLayout([1, 4], [8, 4], [4, 1], [1, 0])
        r = gl.expand_dims(gl.arange(0, 16, layout=gl.SliceLayout(1, tl_l)), 1)
        c = gl.expand_dims(gl.arange(0, BC, layout=gl.SliceLayout(0, tl_l)), 0)
        taps.store(gl.load(FT + (r % 3) * 3 * W + (r // 3) * W + col + c, mask=(r < 9) & (r % 3 < KF) & (c < BC),
                           other=0.0))
        gl.thread_barrier()

    bufs = gl.allocate_shared_memory(gl.bfloat16, [STAGES * 3 * KF, 1, BT, BC], PD.layout)  # (stage, input, tap)
    z_smem = gl.allocate_shared_memory(gl.bfloat16, [BT, BC], z_sl)
    y_smem = gl.allocate_shared_memory(gl.bfloat16, [1, BT, BC], YD.layout)
    bars = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for p in gl.static_range(STAGES):
        mbarrier.init(bars.index(p), count=1)

    start = gl.maximum(lo - 2 * BT, 0)
    n = gl.cdiv(hi - start, BT)
    for p in gl.static_range(STAGES - 1):
        _issue(PD, bufs, bars.index(p), p, b, start + p * BT, col, W, KF, BT, BC, p < n)
    c1 = gl.zeros([BT, BC], gl.float32, acc_l)
    c2 = gl.zeros([BT, BC], gl.float32, acc_l)
    for i in range(n):
        t0 = start + i * BT
        stage = i % STAGES
        gl.thread_barrier()  # every warp is done with the stage read last tile before TMA refills it
        fence_async_shared()
        nxt = i + STAGES - 1
        _issue(PD, bufs, bars.index(nxt % STAGES), nxt % STAGES, b, start + nxt * BT, col, W, KF, BT, BC, nxt < n)
        mbarrier.wait(bars.index(stage), (i // STAGES) & 1)
        fk0, fk1, fk2 = _taps(taps, FT, W + col, 1, KF, W, BC, row_l, TAPS_SMEM)
        fv0, fv1, fv2 = _taps(taps, FT, 2 * W + col, 2, KF, W, BC, row_l, TAPS_SMEM)
        z = (_featurize(bufs, (stage * 3 + 1) * KF, fk0, fk1, fk2, KF, BT, BC, row_l)
             * _featurize(bufs, (stage * 3 + 2) * KF, fv0, fv1, fv2, KF, BT, BC, row_l)).to(gl.bfloat16)
        z_smem.store(z)
        fence_async_shared()
        gl.thread_barrier()
        acc = warpgroup_mma(h0, z_smem, c1, is_async=True)
        c1 = warpgroup_mma(h1, z_smem, c2, is_async=True)
        c2 = warpgroup_mma(h2, z_smem, gl.zeros([BT, BC], gl.float32, acc_l), use_acc=False, is_async=True)
        acc, c1, c2 = warpgroup_mma_wait(0, deps=(acc, c1, c2))
        if t0 >= lo:
            fq0, fq1, fq2 = _taps(taps, FT, col, 0, KF, W, BC, q_l, TAPS_SMEM)
            q = _featurize(bufs, stage * 3 * KF, fq0, fq1, fq2, KF, BT, BC, q_l)
            y = (q * gl.convert_layout(acc, q_l)).to(gl.bfloat16)
            tma.store_wait(0)
            gl.thread_barrier()
            y_smem.reshape([BT, BC]).store(y)
            fence_async_shared()
            gl.thread_barrier()
            tma.async_copy_shared_to_global(YD, [b, t0, col], y_smem)
    tma.store_wait(0)
    for p in gl.static_range(STAGES):
        mbarrier.invalidate(bars.index(p))


def launch(proj: torch.Tensor, feat_t: torch.Tensor, weight: torch.Tensor, rows: int = 2048,
           num_warps: int = 4, maxnreg: int | None = None, stages: int = 2, taps_smem: bool = False,
           q_acc: bool = False) -> torch.Tensor:
    """y (B, T, W) of the Gluon walk; proj (B, T, 3W) bf16, feat_t (KF <= 3, 3W) fp32, weight (W / 16k, K)."""
    B, T, F = proj.shape
    W = F // 3
    groups, taps = weight.shape
    bt, bc = fir_ops.MR_BLOCK_T, 16
    y = proj.new_empty(B, T, W)
    flat = gl.NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=16, rank=3)
    pd = TensorDescriptor(proj, [B, T, F], [T * F, F, 1], [1, bt, bc], flat)
    yd = TensorDescriptor(y, [B, T, W], [T * W, W, 1], [1, bt, bc], flat)
    _hyena_mr_gluon_kernel[(triton.cdiv(T, rows), W // bc, B)](
        pd, yd, feat_t, weight.contiguous(), T, W=W, KF=feat_t.shape[0], K=taps, D=W // groups, L=rows,
        BT=bt, BC=bc, STAGES=stages, TAPS_SMEM=taps_smem, Q_ACC=q_acc, num_warps=num_warps, maxnreg=maxnreg)
    return y


VARIANTS = [dict(rows=r, stages=st, taps_smem=ts, q_acc=qa) for r, st, ts, qa in [
    (2048, 2, False, False), (4096, 2, False, False), (2048, 2, True, False), (4096, 2, True, False),
    (4096, 2, True, True), (4096, 2, False, True), (4096, 3, True, False), (2048, 3, False, False)]]

if __name__ == "__main__":
    from bench_swr import gpu_ms
    torch.manual_seed(0)
    for (B, T, C, K), kw in [((2, 1000, 64, 128), VARIANTS[0]), ((3, 4096, 256, 100), VARIANTS[4]),
                             ((1, 8192, 128, 65), VARIANTS[6]), ((2, 777, 32, 128), VARIANTS[3]),
                             ((8, 4096, 2048, 128), VARIANTS[5])]:
        proj = torch.randn(B, T, 3 * C, device="cuda", dtype=torch.bfloat16)
        feat_t = (torch.randn(3 * C, 3, device="cuda") / 3**0.5).t().contiguous()
        wt = (torch.randn(C // 16, K, device="cuda") / K**0.5).bfloat16()
        ref = fir_ops._launch_mr_core(proj, feat_t, wt, None)
        got = launch(proj, feat_t, wt, **{**kw, "rows": min(kw["rows"], 256 if T < 4096 else kw["rows"])})
        print(f"check B={B} T={T} C={C} K={K} {kw}: max diff {(ref.float() - got.float()).abs().max().item():.3e} "
              f"(max |y| {ref.abs().max().item():.2f})", flush=True)
    print("| shape | kernel | ms | x floor |")
    print("|---|---|---:|---:|")
    for B, T in ((8, 4096), (1, 32768)):
        C, K = 2048, 128
        proj = torch.randn(B, T, 3 * C, device="cuda", dtype=torch.bfloat16)
        feat_t = (torch.randn(3 * C, 3, device="cuda") / 3**0.5).t().contiguous()
        wt = (torch.randn(C // 16, K, device="cuda") / K**0.5).bfloat16()
        floor = 4 * proj.numel() / 3 * 2 / 4.3e12 * 1e3
        ms = gpu_ms(lambda: fir_ops._launch_mr_core(proj, feat_t, wt, None))
        print(f"| {B}x{T} | Triton walk (default) | {ms:.3f} | {ms / floor:.2f} |", flush=True)
        for kw in VARIANTS if B == 8 else VARIANTS[:6]:
            try:
                ms = gpu_ms(lambda: launch(proj, feat_t, wt, **kw))
            except Exception as e:  # noqa: BLE001 - a variant that fails is reported, not fatal
                print(f"| {B}x{T} | Gluon {kw} | failed: {type(e).__name__}: {str(e)[:100]} | |", flush=True)
                continue
            print(f"| {B}x{T} | Gluon {kw} | {ms:.3f} | {ms / floor:.2f} |", flush=True)
