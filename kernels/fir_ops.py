"""Launchers, ``torch.library`` custom ops and autograd for the Triton causal depthwise FIR (``triton_fir``).

``causal_fir(x, weight, cu_seqlens=..., initial_state=..., output_final_state=...) -> (y, final_state)`` is
the convolution of the Hyena mixers (``modeling_phalanx.hyena_phalanx``): the SE / MR filter on ``k * v`` and
the featurizers on the projections. The kernels compute each sequence from zero inputs before its start; a
continued sequence's earlier inputs (``initial_state``, the last ``K - 1`` inputs, what the Hyena cache
stores) only reach its first ``K - 1`` outputs, so their contribution and the final state are computed here
in PyTorch (differentiable, traceable by ``torch.compile``).

``hyena_core(proj, featurizer, weight, cu_seqlens=...) -> y`` is the whole Hyena-SE / -MR core
``q * (h * (k * v))`` from zero states (training), fused: its forward scans rows in one pass for filters of up to
8 taps (Hyena-SE), and walks 64-row tiles in one pass, with the filter's Toeplitz blocks on tensor cores, for
filters of 33-129 taps shared by groups of 16k channels (Hyena-MR; on Hopper, for bf16 rows, a Gluon
version of that walk, ``gluon_fir``); longer shared filters take two tensor-core passes.

Runs CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1`` (the tests).
"""

from __future__ import annotations

import math
import warnings

import torch
import triton

from .triton_ops import OP_NAMESPACE, _sequences
from .triton_fir import (
    _fir_dw_kernel,
    _fir_kernel,
    _fir_tc_dw_kernel,
    _fir_tc_kernel,
    _hyena_mr_bwd_kernel,
    _hyena_mr_kernel,
    _hyena_gate_kernel,
    _hyena_out_kernel,
    _hyena_scan_bwd_kernel,
    _hyena_scan_kernel,
)

try:  # the Gluon forward of the Hyena-MR walk (Hopper); Triton's Gluon API is experimental
    from .gluon_fir import MAX_FEATURIZER_TAPS as _GLUON_MAX_FEATURIZER_TAPS
    from .gluon_fir import MIN_ROWS as _GLUON_MIN_ROWS
    from .gluon_fir import launch_mr_forward as _launch_mr_gluon
except (ImportError, AttributeError):  # a Triton without it: the Triton walk runs everywhere
    _launch_mr_gluon, _GLUON_MAX_FEATURIZER_TAPS, _GLUON_MIN_ROWS = None, 0, 0
_GLUON_FAILED: list[Exception] = []  # the error that turned the Gluon walk off in this process, if one did

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
DW_CHUNKS = 64  # token chunks of the filter-gradient reduction (partials: chunks x K x C fp32)
TC_MIN_TAPS = 32  # filters longer than this, shared by a multiple of 16 channels, go through the tensor-core passes
# (shorter ones through the direct kernels: at 7 taps on the H200 their forward took 0.32 ms against the first
# one-pass tensor-core core's 0.53, bound by its Toeplitz gathers through L1; benchmarks/results/hyena_h200_s13)
SCAN_MAX_TAPS, SCAN_MAX_FEATURIZER_TAPS = 8, 3  # the scan core's register histories (triton_fir)
MR_BLOCK_T = 64  # rows of the Hyena-MR walk's tiles
MR_MAXNREG = 128  # registers a thread of the MR forward walk may use on 16-bit rows, not packed: 4 programs an SM
FUSED_MAX_TAPS = 2 * MR_BLOCK_T + 1  # shared filters up to this length run the one-pass walk (3 Toeplitz blocks)


def _seq_index(cu_seqlens: torch.Tensor | None, rows: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(sequence of every row, cu_seqlens) as int32 for the kernels; placeholders without packing."""
    if cu_seqlens is None:
        dummy = torch.zeros(1, dtype=torch.int32, device=device)
        return dummy, dummy
    cu = cu_seqlens.to(device=device, dtype=torch.int32)
    token = torch.arange(rows, device=device, dtype=torch.int32)
    seq = torch.searchsorted(cu[1:], token, right=True).clamp_(max=cu.numel() - 2)
    return seq.to(torch.int32), cu


def _launch_fir(
    x: torch.Tensor, weight: torch.Tensor, cu_seqlens: torch.Tensor | None, reverse: bool, *, block_t: int = 64,
    block_c: int = 128, num_warps: int = 4,
) -> torch.Tensor:
    """Forward (or, ``reverse``, input-gradient) kernel over x (B, T, C) with taps weight (C, K). The launch
    configuration is swept on the GPU by ``benchmarks/sweep_fir.py``; its default was the fastest of 18 in all four
    passes of Hyena-SE's backward on the H200 (1.35x the old 64-channel tiles at 6144 x 3, 1.15x at 2048 x 7;
    ``benchmarks/results/hyena_h200_s15/``)."""
    batch, seqlen, channels = x.shape
    rows = batch * seqlen
    out = torch.empty_like(x)
    if rows == 0:
        return out
    seq, cu = _seq_index(cu_seqlens, rows, x.device)
    block_c = min(block_c, triton.next_power_of_2(channels))
    grid = (triton.cdiv(rows, block_t), triton.cdiv(channels, block_c))
    _fir_kernel[grid](
        x, weight.t().contiguous(), out, seq, cu, rows, seqlen, C=channels, K=weight.shape[1],
        VARLEN=cu_seqlens is not None, REVERSE=reverse, BT=block_t, BC=block_c, num_warps=num_warps,
    )
    return out


def _launch_gate(
    proj: torch.Tensor, feat_t: torch.Tensor, seq: torch.Tensor, cu: torch.Tensor, varlen: bool, *,
    block_t: int = 64, block_c: int = 64, num_warps: int = 4,
) -> torch.Tensor:
    """z = k * v (B, T, W), featurized, from proj (B, T, 3W): the first pass of the two-pass Hyena cores."""
    batch, seqlen, features = proj.shape
    width, rows = features // 3, batch * seqlen
    z = proj.new_empty(batch, seqlen, width)
    block_c = min(block_c, triton.next_power_of_2(width))
    _hyena_gate_kernel[(triton.cdiv(rows, block_t), triton.cdiv(width, block_c))](
        proj, feat_t, z, seq, cu, rows, seqlen, W=width, KF=feat_t.shape[0], VARLEN=varlen, BT=block_t, BC=block_c,
        num_warps=num_warps,
    )
    return z


def _launch_direct_core(
    proj: torch.Tensor, feat_t: torch.Tensor, weight: torch.Tensor, cu_seqlens: torch.Tensor | None, *,
    block_t: int = 64, block_c: int = 64, num_warps: int = 4,
) -> torch.Tensor:
    """Hyena core y (B, T, W) from proj (B, T, 3W) through the direct kernels: z = k * v (pass 1), then the filter
    ``weight`` (G, K) on z gated by q (pass 2). The launch configuration is swept by ``benchmarks/sweep_fir.py``."""
    batch, seqlen, features = proj.shape
    width, rows = features // 3, batch * seqlen
    seq, cu = _seq_index(cu_seqlens, rows, proj.device)
    varlen = cu_seqlens is not None
    z = _launch_gate(proj, feat_t, seq, cu, varlen, block_t=block_t, block_c=block_c, num_warps=num_warps)
    y = proj.new_empty(batch, seqlen, width)
    block_c = min(block_c, triton.next_power_of_2(width))
    per_channel = weight.repeat_interleave(width // weight.shape[0], dim=0).t().contiguous()
    _hyena_out_kernel[(triton.cdiv(rows, block_t), triton.cdiv(width, block_c))](
        proj, feat_t, z, per_channel, y, seq, cu, rows, seqlen, W=width, KF=feat_t.shape[0], K=weight.shape[1],
        VARLEN=varlen, BT=block_t, BC=block_c, num_warps=num_warps,
    )
    return y


def _launch_scan_core(
    proj: torch.Tensor, feat_t: torch.Tensor, weight: torch.Tensor, cu_seqlens: torch.Tensor | None, *,
    rows_per_program: int = 512, unroll: int = 8, block_c: int = 512, num_warps: int = 4,
) -> torch.Tensor:
    """Hyena core y (B, T, W) from proj (B, T, 3W) in one pass: each program scans ``rows_per_program`` rows of
    ``block_c`` channels (filters of up to 8 taps, featurizers of up to 3). The launch configuration is swept by
    ``benchmarks/sweep_fir.py``: its default was the fastest of 36 on the H200 at 8 x 4096 x 2048, 0.171 ms (1.3x the
    memory floor; the two-pass direct core 0.304 at best; ``benchmarks/results/hyena_h200_s17/``)."""
    batch, seqlen, features = proj.shape
    width, rows = features // 3, batch * seqlen
    y = proj.new_empty(batch, seqlen, width)
    first = torch.zeros(1, dtype=torch.int8, device=proj.device)
    if cu_seqlens is not None:  # 1 at each sequence's first row (an empty sequence's start may be row B * T)
        first = first.new_zeros(rows + 1).index_fill_(0, cu_seqlens.to(proj.device, torch.long)[:-1], 1)
    block_c = min(block_c, triton.next_power_of_2(width))
    per_channel = weight.repeat_interleave(width // weight.shape[0], dim=0).t().float().contiguous()
    span, batches = (rows, 1) if cu_seqlens is not None else (seqlen, batch)  # packed rows: one batch row
    _hyena_scan_kernel[(triton.cdiv(span, rows_per_program), triton.cdiv(width, block_c), batches)](
        proj, feat_t, per_channel, y, first, span, W=width, KF=feat_t.shape[0], K=weight.shape[1],
        VARLEN=cu_seqlens is not None, L=rows_per_program, U=unroll, BC=block_c, num_warps=num_warps,
    )
    return y


def _launch_mr_core(
    proj: torch.Tensor, feat_t: torch.Tensor, weight: torch.Tensor, cu_seqlens: torch.Tensor | None, *,
    rows_per_program: int | None = None, strands: int | None = None, num_warps: int = 4, maxnreg: int | None = None,
) -> torch.Tensor:
    """Hyena core y (B, T, W) from proj (B, T, 3W) in one pass for filters of 33-129 taps shared by groups of 16k
    channels: each program walks ``rows_per_program`` rows (a multiple of 64; by default 2048, 4096 for packed rows)
    of one group's channels in 64-row tiles, with the filter's Toeplitz blocks built once (one part when the filter
    is stored in proj's 16-bit dtype, else a high part and a remainder) and ``strands`` batch rows side by side
    (by default 2, with either filter; segments of a batch row when there are fewer rows, ``_segments``). The launch
    configuration is swept by ``benchmarks/sweep_fir.py``; ``maxnreg`` caps the registers of a thread (Triton's
    launch option; by default ``MR_MAXNREG`` on 16-bit rows that are not packed, none otherwise), and the walk runs
    with one stage (Triton's software pipelining would stage its loads through shared memory, the resource that
    bounds it). On the H200 with 128 taps the walk that pushes each tile's z into the next tiles' outputs took 0.284
    ms at 8 x 4096 x 2048 with a bf16 filter and 0.490 with an fp32 one, against 0.301 and 0.500 in the same run for
    the walk that carried the last tiles' z (packed rows: 0.715 and 0.902 against 0.724 and 0.867;
    ``benchmarks/results/hyena_h200_s24/``), and 1.160 for the one-pass tensor-core kernel that walk replaced.
    The cap keeps 4 programs on an SM where ptxas would take 154 registers; lower caps (112 and 96 here, 96-72 for
    the walk before) were slower, and packed rows (then 255 registers) slowed down under one (``hyena_h200_s23/``).
    Packed rows take each sequence's own z through the same Toeplitz blocks instead of gathering the blocks again
    masked (110 registers instead of 255 with a bf16 filter): 0.523 ms against 0.697 at 8 x 4096 x 2048 on an H100,
    outputs bitwise equal (``benchmarks/results/hyena_h200_s32/``).
    Neither channel-major program order, 8 warps nor Triton's pipelining paid (``hyena_h200_s19/``-``s21/``)."""
    if rows_per_program is None:
        rows_per_program = 4096 if cu_seqlens is not None else 2048
    if maxnreg is None and cu_seqlens is None and proj.element_size() == 2:
        maxnreg = MR_MAXNREG
    y = proj.new_empty(*proj.shape[:-1], proj.shape[-1] // 3)
    _launch_walk(_hyena_mr_kernel, proj, feat_t, weight, (y,), cu_seqlens, rows_per_program, strands, 2, num_warps,
                 maxnreg, num_stages=1)
    return y


def _mr_gluon_eligible(proj: torch.Tensor, feat_t: torch.Tensor, weight: torch.Tensor,
                       cu_seqlens: torch.Tensor | None) -> bool:
    """Whether the Hyena-MR forward takes the Gluon walk (``gluon_fir``; 0.210 ms against 0.284 for the Triton walk
    with a bf16 filter, 0.284 against 0.484 with an fp32 one, on the H200 at 8 x 4096 x 2048,
    ``benchmarks/results/hyena_h200_s29/``): Hopper, bf16 rows, a bf16 or fp32 filter, rows that are not packed,
    16-byte aligned (TMA) and at least 16 a batch row, featurizers of up to 3 taps, and a Triton whose Gluon builds
    it (a failure turns it off for the process, with a warning). Which of its walks: ``_gluon_walk``."""
    return (_launch_mr_gluon is not None and not _GLUON_FAILED and cu_seqlens is None
            and proj.dtype == torch.bfloat16 and weight.dtype in (torch.bfloat16, torch.float32)
            and feat_t.shape[0] <= _GLUON_MAX_FEATURIZER_TAPS and proj.shape[1] >= _GLUON_MIN_ROWS
            and proj.data_ptr() % 16 == 0 and proj.is_cuda and torch.cuda.get_device_capability(proj.device) == (9, 0))


def _gluon_walk(seqlen: int, width: int, weight: torch.Tensor) -> dict[str, bool | int]:
    """Which Gluon walk (``launch_mr_forward``'s options) the forward takes: the warp-specialized one, 64 channels a
    program, for a bf16 filter and channels a multiple of 64 (1.04-1.08x the memory floor on an H100); else the
    16-channel walk, its rows permuted where batch rows are whole 16-row blocks (``benchmarks/results/
    hyena_h200_s32/``)."""
    if weight.dtype == torch.bfloat16 and width % 64 == 0:
        return {"permuted": False, "warpgroups": 4}
    return {"permuted": seqlen % 16 == 0, "warpgroups": 1}


def _launch_walk(
    kernel, proj: torch.Tensor, feat_t: torch.Tensor, weight: torch.Tensor, io: tuple[torch.Tensor, ...],
    cu_seqlens: torch.Tensor | None, rows_per_program: int, strands: int | None, default_strands: int,
    num_warps: int, maxnreg: int | None, num_stages: int = 3,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch an MR walk ``kernel`` (forward or backward: ``io`` its tensors after the filter) over proj's rows,
    ``default_strands`` side by side unless ``strands`` says; returns the (sequence index, cu_seqlens) it was
    given."""
    if rows_per_program % MR_BLOCK_T:
        raise ValueError(f"rows_per_program must be a multiple of {MR_BLOCK_T}, got {rows_per_program}")
    batch, seqlen, features = proj.shape
    width, rows = features // 3, batch * seqlen
    groups, taps = weight.shape
    seq, cu = _seq_index(cu_seqlens, rows, proj.device)
    block_c = math.gcd(width // groups, 64)  # a program's channels share one filter
    span, batches = (rows, 1) if cu_seqlens is not None else (seqlen, batch)  # packed rows: one batch row
    ns = _num_strands(strands, default_strands)
    segs = 1 if cu_seqlens is not None else _segments(ns, batches, span)
    ns = min(ns, triton.next_power_of_2(batches * segs))
    kernel[(triton.cdiv(span // segs, rows_per_program), width // block_c, triton.cdiv(batches * segs, ns))](
        proj, feat_t, _walk_filter(weight, proj.dtype), *io, seq, cu, span, batches, W=width, KF=feat_t.shape[0],
        K=taps, D=width // groups, NB=triton.cdiv(taps - 1, MR_BLOCK_T) + 1, VARLEN=cu_seqlens is not None,
        L=rows_per_program, BT=MR_BLOCK_T, BC=block_c, NS=ns, SEGS=segs, num_warps=num_warps, maxnreg=maxnreg,
        num_stages=num_stages,
    )
    return seq, cu


def _num_strands(strands: int | None, default: int) -> int:
    """Strands an MR walk's program takes side by side (a power of two): ``strands``, else ``default``."""
    if strands is None:
        strands = default
    if strands < 1 or strands & (strands - 1):
        raise ValueError(f"strands must be a power of two, got {strands}")
    return strands


def _segments(strands: int, batches: int, span: int) -> int:
    """Segments an MR walk cuts each batch row into, so that fewer batch rows than strands (one long sequence)
    still fill them: a power of two, each segment whole 64-row tiles and at least the two tiles that a walk
    reaches past its rows (``triton_fir._strands``)."""
    segs = 1
    while batches * segs * 2 <= strands and span % (2 * segs * MR_BLOCK_T) == 0 and span >= 4 * segs * MR_BLOCK_T:
        segs *= 2
    return segs


def _walk_filter(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The filter as the MR walks read it: as stored when that is the rows' dtype (one Toeplitz part), else fp32."""
    return (weight if weight.dtype == dtype else weight.float()).contiguous()


def _launch_mr_bwd(
    proj: torch.Tensor, featurizer: torch.Tensor, weight: torch.Tensor, dy: torch.Tensor,
    cu_seqlens: torch.Tensor | None, *, rows_per_program: int = 4096, strands: int | None = None,
    num_warps: int = 4, maxnreg: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dproj, dfeaturizer, dweight fp32) of ``_launch_mr_core``: one walk over 64-row tiles (``rows_per_program``
    rows a program, a multiple of 64) writes the featurizer outputs' gradients, z and dm = dy * q; then the filter
    gradient on tensor cores (``_launch_tc_dw``) and the featurizers' backward (``fir_bwd_op``). On the H200 at
    8 x 4096 x 2048 with 128 taps: 2.21 ms with an fp32 filter, 1.72 with a bf16 one (2 strands), against 3.71 for
    the multi-pass backward; packed rows 4.05 against 4.06 (``benchmarks/results/hyena_h200_s22/``: the row phases
    took 3-7% off the walk, but added 3% to packed rows; loading the rows before a tile's phases once took 10% off
    the packed walk with a bf16 filter, ``hyena_h200_s24/``). ``maxnreg`` as there, uncapped by default: 128
    registers at one strand took 1.69 ms against 1.71, and spilled at two (``hyena_h200_s23/``). Packed rows gather
    the blocks again, masked, for tiles that a sequence boundary reaches: 1.89 ms with a bf16 filter on an H100 (41
    documents in 8 x 4096 rows). Taking each sequence's own z and dm instead, as the forward does, faulted on the GPU
    (Triton 3.6 read a dot's shared memory out of bounds, ``hyena_h200_s32/``)."""
    dfeats = torch.empty_like(proj)  # [dy * m | dz * v | dz * k]
    z = proj.new_empty(*proj.shape[:-1], proj.shape[-1] // 3)
    dm = torch.empty_like(z)
    one_part = weight.dtype == proj.dtype  # an fp32 filter's two parts leave no registers for wider tiles
    seq, cu = _launch_walk(_hyena_mr_bwd_kernel, proj, featurizer.t().float().contiguous(), weight, (dy, dfeats, z, dm),
                           cu_seqlens, rows_per_program, strands, 2 if one_part else 1, num_warps, maxnreg)
    dweight = _launch_tc_dw(z, dm, weight, seq, cu, cu_seqlens is not None)
    dproj, dfeaturizer = fir_bwd_op(proj, featurizer, dfeats, cu_seqlens)
    return dproj, dfeaturizer, dweight


def _launch_scan_bwd(
    proj: torch.Tensor, featurizer: torch.Tensor, weight: torch.Tensor, dy: torch.Tensor, *,
    rows_per_program: int = 512, unroll: int = 4, block_c: int = 128, num_warps: int = 4,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dproj, dfeaturizer fp32, dweight fp32) of the scanned core, rows of a batch row one sequence: one pass
    that recomputes the forward and writes dproj, plus per-chunk partial filter and featurizer gradients summed
    here. The launch configuration is swept by ``benchmarks/sweep_fir.py``: its default was the fastest of 24 on the
    H200 at 8 x 4096 x 2048, 1.47 ms against 3.32 for the multi-pass backward
    (``benchmarks/results/hyena_h200_s17/``)."""
    batch, seqlen, features = proj.shape
    width = features // 3
    groups, taps = weight.shape
    chunks = triton.cdiv(seqlen, rows_per_program)
    block_c = min(block_c, triton.next_power_of_2(width))
    dproj = torch.empty_like(proj)
    dh_parts = proj.new_empty(batch * chunks, taps, width, dtype=torch.float32)
    df_parts = proj.new_empty(batch * chunks, featurizer.shape[1], features, dtype=torch.float32)
    per_channel = weight.repeat_interleave(width // groups, dim=0).t().float().contiguous()
    _hyena_scan_bwd_kernel[(chunks, triton.cdiv(width, block_c), batch)](
        proj, featurizer.t().contiguous(), per_channel, dy, dproj, dh_parts, df_parts, seqlen, W=width,
        KF=featurizer.shape[1], K=taps, L=rows_per_program, U=unroll, BC=block_c, num_warps=num_warps,
    )
    dweight = dh_parts.sum(0).t().reshape(groups, width // groups, taps).sum(1)
    return dproj, df_parts.sum(0).t(), dweight


def _launch_dw(
    x: torch.Tensor, dy: torch.Tensor, taps: int, cu_seqlens: torch.Tensor | None, *, block_t: int = 128,
    block_c: int = 64, num_warps: int = 4, chunks: int = DW_CHUNKS, taps_outer: bool = False,
) -> torch.Tensor:
    """Filter gradient (C, K) in fp32: partials of about ``chunks`` token chunks from the kernel, summed here. The
    launch configuration (a tile's rows and channels, warps, chunks, the kernel's loop order) is swept on the GPU
    by ``benchmarks/sweep_fir.py``."""
    batch, seqlen, channels = x.shape
    rows = batch * seqlen
    if rows == 0:
        return x.new_zeros(channels, taps, dtype=torch.float32)
    seq, cu = _seq_index(cu_seqlens, rows, x.device)
    block_k, block_c = min(8, triton.next_power_of_2(taps)), min(block_c, triton.next_power_of_2(channels))
    chunk = block_t * triton.cdiv(triton.cdiv(rows, chunks), block_t)
    num_chunks = triton.cdiv(rows, chunk)
    partials = x.new_empty(num_chunks, taps, channels, dtype=torch.float32)
    grid = (num_chunks, triton.cdiv(taps, block_k), triton.cdiv(channels, block_c))
    _fir_dw_kernel[grid](
        x, dy, partials, seq, cu, rows, seqlen, chunk, C=channels, K=taps, VARLEN=cu_seqlens is not None,
        BT=block_t, BK=block_k, BC=block_c, TAPS_OUTER=taps_outer, num_warps=num_warps,
    )
    return partials.sum(0).t()


@torch.library.custom_op(f"{OP_NAMESPACE}::fir_fwd", mutates_args=())
def fir_fwd_op(x: torch.Tensor, weight: torch.Tensor, cu_seqlens: torch.Tensor | None) -> torch.Tensor:
    """y (B, T, C) in x's dtype: causal depthwise FIR of x (B, T, C) with weight (C, K), zero before each
    sequence (rows of the batch, or the sequences of ``cu_seqlens`` over the flattened rows)."""
    return _launch_fir(x.contiguous(), weight, cu_seqlens, reverse=False)


@fir_fwd_op.register_fake
def _(x, weight, cu_seqlens):
    return torch.empty_like(x)


@torch.library.custom_op(f"{OP_NAMESPACE}::fir_bwd", mutates_args=())
def fir_bwd_op(
    x: torch.Tensor, weight: torch.Tensor, dy: torch.Tensor, cu_seqlens: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(dx in x's dtype, dweight in weight's dtype) of ``fir_fwd``, accumulated in fp32."""
    x, dy = x.contiguous(), dy.contiguous().to(x.dtype)
    dx = _launch_fir(dy, weight, cu_seqlens, reverse=True)
    return dx, _launch_dw(x, dy, weight.shape[1], cu_seqlens).to(weight.dtype)


@fir_bwd_op.register_fake
def _(x, weight, dy, cu_seqlens):
    return torch.empty_like(x), torch.empty_like(weight)


def _fir_setup_context(ctx, inputs, output) -> None:
    x, weight, cu_seqlens = inputs
    ctx.save_for_backward(x, weight, cu_seqlens)


def _fir_backward(ctx, dy):
    x, weight, cu_seqlens = ctx.saved_tensors
    dx, dw = fir_bwd_op(x, weight, dy, cu_seqlens)
    return dx, dw, None


fir_fwd_op.register_autograd(_fir_backward, setup_context=_fir_setup_context)


def _use_tensor_cores(width: int, weight: torch.Tensor) -> bool:
    """Whether the filter passes of the fused core run on tensor cores (``_fir_tc_kernel``)."""
    return (width // weight.shape[0]) % 16 == 0 and weight.shape[1] > TC_MIN_TAPS


def _launch_tc(
    proj: torch.Tensor, feat_t: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, seq: torch.Tensor,
    cu: torch.Tensor, varlen: bool, reverse: bool, gate_q: bool,
) -> torch.Tensor:
    """Tensor-core filter pass over x (B, T, W) with the group filter weight (G, K): forward or transposed, times
    the featurized q of proj when ``gate_q``."""
    batch, seqlen, width = x.shape
    rows = batch * seqlen
    groups, taps = weight.shape
    group_size, block_t = width // groups, 64
    block_c = math.gcd(group_size, 64)  # a program's channels share one filter
    out = torch.empty_like(x)
    _fir_tc_kernel[(triton.cdiv(rows, block_t), width // block_c)](
        proj, feat_t, x, weight.float().contiguous(), out, seq, cu, rows, seqlen, W=width, KF=feat_t.shape[0],
        K=taps, D=group_size, NB=triton.cdiv(taps - 1, block_t) + 1, VARLEN=varlen, REVERSE=reverse,
        GATE_Q=gate_q, BT=block_t, BC=block_c, num_warps=4,
    )
    return out


def _launch_tc_dw(x: torch.Tensor, dy: torch.Tensor, weight: torch.Tensor, seq: torch.Tensor, cu: torch.Tensor,
                  varlen: bool) -> torch.Tensor:
    """Gradient (G, K) fp32 of the group filter of the tensor-core pass: per (chunk, channel block, block offset)
    the masked products ``dy_tile @ x_block^T`` from the kernel, summed here over chunks, along their diagonals
    (lags) and over each group's channel blocks."""
    batch, seqlen, width = x.shape
    rows = batch * seqlen
    groups, taps = weight.shape
    block_t = 64
    block_c = math.gcd(width // groups, 64)
    num_blocks = triton.cdiv(taps - 1, block_t) + 1
    per_chunk = (width // block_c) * num_blocks
    chunk = block_t * triton.cdiv(rows, block_t * max(1, min(triton.cdiv(rows, block_t), 4096 // per_chunk)))
    num_chunks = triton.cdiv(rows, chunk)
    partials = x.new_empty(num_chunks, width // block_c, num_blocks, block_t, block_t, dtype=torch.float32)
    _fir_tc_dw_kernel[(num_chunks, width // block_c, num_blocks)](
        x, dy, partials, seq, cu, rows, seqlen, chunk, W=width, K=taps, VARLEN=varlen, BT=block_t, BC=block_c,
        num_warps=4,
    )
    offs = torch.arange(block_t, device=x.device)
    lag = (offs[:, None] - offs[None, :]) + block_t * torch.arange(num_blocks, device=x.device)[:, None, None]
    # Pairs outside the filter go to a dropped column: no boolean indexing, so no host sync (CUDA-graph capture).
    lag = torch.where((lag >= 0) & (lag < taps), lag, taps).flatten()
    grads = partials.new_zeros(width // block_c, taps + 1).index_add_(1, lag, partials.sum(0).flatten(1))
    return grads[:, :taps].reshape(groups, -1, taps).sum(1)


def _scans(weight: torch.Tensor, featurizer: torch.Tensor) -> bool:
    """Whether the core runs as a scan over rows: filters and featurizers that fit its register histories."""
    return weight.shape[1] <= SCAN_MAX_TAPS and featurizer.shape[1] <= SCAN_MAX_FEATURIZER_TAPS


@torch.library.custom_op(f"{OP_NAMESPACE}::hyena_core_fwd", mutates_args=())
def hyena_core_fwd_op(
    proj: torch.Tensor, featurizer: torch.Tensor, weight: torch.Tensor, cu_seqlens: torch.Tensor | None
) -> torch.Tensor:
    """Fused Hyena core y (B, T, W) in proj's dtype from proj (B, T, 3W), featurizer (3W, Kf) and the filter
    weight (G, K) shared by groups of W / G consecutive channels: one scan over rows for up to 8 taps (and
    featurizers of up to 3), one walk over 64-row tiles with tensor-core Toeplitz blocks for groups of 16k channels
    and 33 to 129 taps, else z = k * v (pass 1) then the filter gated by q (pass 2, on tensor cores for groups of
    16k channels past 32 taps)."""
    proj = proj.contiguous()
    batch, seqlen, features = proj.shape
    width, rows = features // 3, batch * seqlen
    taps = weight.shape[1]
    if rows == 0:
        return proj.new_empty(batch, seqlen, width)
    feat_t = featurizer.t().contiguous()
    if not _use_tensor_cores(width, weight):
        if _scans(weight, featurizer):
            return _launch_scan_core(proj, feat_t, weight, cu_seqlens)
        return _launch_direct_core(proj, feat_t, weight, cu_seqlens)
    if taps <= FUSED_MAX_TAPS:
        if _mr_gluon_eligible(proj, feat_t, weight, cu_seqlens):
            try:
                return _launch_mr_gluon(proj, feat_t, weight, **_gluon_walk(seqlen, width, weight))
            except Exception as err:  # noqa: BLE001 - Gluon's API moves between Triton releases: keep the Triton walk
                _GLUON_FAILED.append(err)
                first_line = next(iter(str(err).splitlines()), "")
                warnings.warn(f"the Gluon Hyena-MR forward failed ({type(err).__name__}: {first_line}); using the "
                              "Triton walk from now on", RuntimeWarning, stacklevel=2)
        return _launch_mr_core(proj, feat_t, weight, cu_seqlens)
    seq, cu = _seq_index(cu_seqlens, rows, proj.device)
    z = _launch_gate(proj, feat_t, seq, cu, cu_seqlens is not None)
    return _launch_tc(proj, feat_t, z, weight, seq, cu, cu_seqlens is not None, reverse=False, gate_q=True)


@hyena_core_fwd_op.register_fake
def _(proj, featurizer, weight, cu_seqlens):
    return proj.new_empty(*proj.shape[:-1], proj.shape[-1] // 3)


def _hyena_core_setup_context(ctx, inputs, output) -> None:
    proj, featurizer, weight, cu_seqlens = inputs
    ctx.save_for_backward(proj, featurizer, weight, cu_seqlens)


@torch.library.custom_op(f"{OP_NAMESPACE}::hyena_core_bwd", mutates_args=())
def hyena_core_bwd_op(
    proj: torch.Tensor, featurizer: torch.Tensor, weight: torch.Tensor, dy: torch.Tensor,
    cu_seqlens: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dproj, dfeaturizer, dweight) of ``hyena_core_fwd`` (only proj is kept between forward and backward): one
    scan over rows for the scanned core's filters when the rows are not packed, the walk over 64-row tiles where
    the forward walked, else recompute q, k, v, z and the filter output m, then dm = dy * q -> dz (the filter's
    transpose, on tensor cores for groups of 16k channels), the filter gradient, and the featurizers' backward."""
    proj, dy = proj.contiguous(), dy.contiguous().to(proj.dtype)
    width, taps = proj.shape[-1] // 3, weight.shape[1]
    if proj.numel() == 0:
        return torch.zeros_like(proj), torch.zeros_like(featurizer), torch.zeros_like(weight)
    if cu_seqlens is None and _scans(weight, featurizer):
        dproj, dfeaturizer, dweight = _launch_scan_bwd(proj, featurizer, weight, dy)
        return dproj, dfeaturizer.to(featurizer.dtype), dweight.to(weight.dtype)
    if _use_tensor_cores(width, weight) and taps <= FUSED_MAX_TAPS:
        dproj, dfeaturizer, dweight = _launch_mr_bwd(proj, featurizer, weight, dy, cu_seqlens)
        return dproj, dfeaturizer, dweight.to(weight.dtype)
    return _multi_pass_bwd(proj, featurizer, weight, dy, cu_seqlens)


def _multi_pass_bwd(
    proj: torch.Tensor, featurizer: torch.Tensor, weight: torch.Tensor, dy: torch.Tensor,
    cu_seqlens: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``hyena_core_bwd_op`` in passes over memory, for any filter and rows (proj, dy contiguous, same dtype)."""
    width = proj.shape[-1] // 3
    groups, taps = weight.shape
    group_size = width // groups
    q, k, v = fir_fwd_op(proj, featurizer, cu_seqlens).chunk(3, dim=-1)
    z, dm = k * v, dy * q
    if _use_tensor_cores(width, weight):
        seq, cu = _seq_index(cu_seqlens, z.shape[0] * z.shape[1], z.device)
        tc = (featurizer.t(), seq, cu, cu_seqlens is not None)  # the featurizer is not read without gate_q
        m = _launch_tc(proj, tc[0], z, weight, *tc[1:], reverse=False, gate_q=False)
        dz = _launch_tc(proj, tc[0], dm, weight, *tc[1:], reverse=True, gate_q=False)
        dweight = _launch_tc_dw(z, dm, weight, seq, cu, cu_seqlens is not None)
    else:
        per_channel = weight.repeat_interleave(group_size, dim=0)
        m = fir_fwd_op(z, per_channel, cu_seqlens)
        dz, dweight = fir_bwd_op(z, per_channel, dm, cu_seqlens)
        dweight = dweight.float().view(groups, group_size, taps).sum(1)
    dfeats = torch.empty_like(proj)  # [dy * m | dz * v | dz * k], written in place (no concatenation copy)
    torch.mul(dy, m, out=dfeats[..., :width])
    torch.mul(dz, v, out=dfeats[..., width:2 * width])
    torch.mul(dz, k, out=dfeats[..., 2 * width:])
    dproj, dfeaturizer = fir_bwd_op(proj, featurizer, dfeats, cu_seqlens)
    return dproj, dfeaturizer, dweight.to(weight.dtype)


@hyena_core_bwd_op.register_fake
def _(proj, featurizer, weight, dy, cu_seqlens):
    return torch.empty_like(proj), torch.empty_like(featurizer), torch.empty_like(weight)


def _hyena_core_backward(ctx, dy):
    proj, featurizer, weight, cu_seqlens = ctx.saved_tensors
    return (*hyena_core_bwd_op(proj, featurizer, weight, dy, cu_seqlens), None)


hyena_core_fwd_op.register_autograd(_hyena_core_backward, setup_context=_hyena_core_setup_context)


def _check_taps(weight: torch.Tensor, name: str, channels: int, device: torch.device) -> None:
    """Refuse taps that are not (channels, K >= 1) float32 / float16 / bfloat16 on ``device``."""
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or weight.shape[0] != channels:
        raise ValueError(f"{name} must have shape (C={channels}, K), got {getattr(weight, 'shape', type(weight))}")
    if weight.dtype not in DTYPES:
        raise TypeError(f"{name} must be float32, float16 or bfloat16, got {weight.dtype}")
    if weight.shape[1] < 1:
        raise ValueError(f"{name} must have at least one tap (K >= 1)")
    if weight.device != device:
        raise ValueError(f"{name} is on {weight.device}, the input on {device}")


def _check_args(
    x: torch.Tensor, weight: torch.Tensor, cu_seqlens: torch.Tensor | None, initial_state: torch.Tensor | None,
    names: tuple[str, str] = ("x", "weight"),
) -> int:
    """Refuse bad shapes and dtypes with one-line errors naming the argument; returns the number of sequences."""
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        raise ValueError(f"{names[0]} must be a tensor of shape (B, T, C), got {getattr(x, 'shape', type(x))}")
    if x.dtype not in DTYPES:
        raise TypeError(f"{names[0]} must be float32, float16 or bfloat16, got {x.dtype}")
    channels = x.shape[-1]
    _check_taps(weight, names[1], channels, x.device)
    num_seqs = x.shape[0]
    if cu_seqlens is not None:
        if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2 or cu_seqlens.is_floating_point():
            raise ValueError(f"cu_seqlens must be a 1D integer tensor of N + 1 offsets, got {cu_seqlens.shape}")
        num_seqs = cu_seqlens.numel() - 1
        # Under compile or CUDA-graph capture the host read is impossible; is_compiling() goes first so
        # dynamo never traces the capture query (it returns a bool, which breaks the graph).
        traced = torch.compiler.is_compiling() or (x.is_cuda and torch.cuda.is_current_stream_capturing())
        if not traced and int(cu_seqlens[-1]) != x.shape[0] * x.shape[1]:
            raise ValueError(f"cu_seqlens must end at B * T = {x.shape[0] * x.shape[1]}, got {int(cu_seqlens[-1])}")
    if initial_state is not None:
        want = (num_seqs, channels, weight.shape[1] - 1)
        if tuple(initial_state.shape) != want:
            raise ValueError(f"initial_state must have shape (N, C, K - 1) = {want}, got {tuple(initial_state.shape)}")
    return num_seqs


def _add_initial(
    y: torch.Tensor, weight: torch.Tensor, state: torch.Tensor, packed: tuple[torch.Tensor, torch.Tensor] | None
) -> torch.Tensor:
    """y plus what each sequence's earlier inputs ``state`` (N, C, K - 1) add to its first K - 1 outputs; ``packed``
    is the (starts, lengths) of ``cu_seqlens``'s sequences, None when each row of y is one sequence."""
    batch, seqlen, channels = y.shape
    width = weight.shape[1] - 1
    # Output p < K - 1 of a sequence: sum_{k > p} w[k] state[K - 1 + p - k]: a valid convolution of [state, 0].
    padded = torch.cat([state.float(), state.new_zeros(state.shape, dtype=torch.float32)], dim=-1)
    corr = torch.nn.functional.conv1d(padded, weight.float().flip(-1).unsqueeze(1), groups=channels)
    if packed is None:  # plain slices: what the compiled decode step runs (see _final_state)
        head = min(width, seqlen)
        return torch.cat([y[:, :head] + corr[..., :head].transpose(1, 2).to(y.dtype), y[:, head:]], dim=1)
    starts, lengths = packed
    offs = torch.arange(width, device=y.device)
    corr = corr * (offs < lengths[:, None])[:, None, :]  # (N, C, K - 1); nothing past a sequence's end
    rows = (starts[:, None] + offs).clamp(max=batch * seqlen - 1)
    add = corr.transpose(1, 2).reshape(-1, channels).to(y.dtype)
    flat = y.reshape(-1, channels).index_add(0, rows.reshape(-1), add)
    return flat.view(batch, seqlen, channels)


def _final_state(
    x: torch.Tensor, width: int, state: torch.Tensor | None, packed: tuple[torch.Tensor, torch.Tensor] | None
) -> torch.Tensor:
    """The last ``width`` inputs (N, C, width) of every sequence, reaching into ``state`` (or zeros) when it is
    shorter: what a continuation needs. Rows that are whole sequences (``packed`` None) take plain slices: the
    gather form, fused by inductor with the static cache's slices into one kernel, failed in its CUDA code
    generation on torch 2.11 (``'((-2)) - 1' is not comparable``; tests/test_hyena.py, the compiled decode)."""
    channels = x.shape[-1]
    if packed is None:
        if state is None:
            state = x.new_zeros(x.shape[0], channels, width)
        return torch.cat([state.to(x.dtype), x.transpose(1, 2)], dim=-1)[..., -width:]
    starts, lengths = packed
    pos = lengths[:, None] - width + torch.arange(width, device=x.device)  # (N, width), relative to the start
    rows = (starts[:, None] + pos).clamp(0, x.shape[0] * x.shape[1] - 1)
    inside = (pos >= 0)[:, None, :]
    from_x = x.reshape(-1, channels)[rows].transpose(1, 2)  # (N, C, width)
    if state is None:
        return torch.where(inside, from_x, 0.0).to(x.dtype)
    index = (width + pos).clamp(0, width - 1)[:, None, :].expand(-1, channels, -1)
    return torch.where(inside, from_x, state.to(x.dtype).gather(-1, index))


def causal_fir(
    x: torch.Tensor,
    weight: torch.Tensor,
    *,
    cu_seqlens: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Causal depthwise FIR ``y[t, c] = sum_{k < K} weight[c, k] * x[t - k, c]`` through the Triton kernels.

    x: (B, T, C) float32 / float16 / bfloat16; weight: (C, K) (any of those dtypes; fp32 arithmetic);
    cu_seqlens: (N + 1,) offsets of packed sequences over the B * T flattened rows (no sequence sees another);
    initial_state: (N, C, K - 1) the inputs before each sequence, oldest first (zeros when None).
    Returns y (B, T, C) in x's dtype and, when ``output_final_state``, the last K - 1 inputs of each sequence
    (N, C, K - 1) in x's dtype, else None. Differentiable in x, weight and initial_state.
    """
    num_seqs = _check_args(x, weight, cu_seqlens, initial_state)
    y = fir_fwd_op(x, weight, cu_seqlens)
    width = weight.shape[1] - 1
    if (initial_state is None or width == 0) and not output_final_state:
        return y, None
    if x.numel() == 0 or width == 0:  # nothing to continue or nothing kept: the state passes through
        final = x.new_zeros(num_seqs, x.shape[-1], width) if initial_state is None else initial_state.to(x.dtype)
        return y, final if output_final_state else None
    packed = None if cu_seqlens is None else _sequences(*x.shape[:2], cu_seqlens, x.device)
    if initial_state is not None:
        y = _add_initial(y, weight, initial_state, packed)
    if not output_final_state:
        return y, None
    return y, _final_state(x, width, initial_state, packed)


def hyena_core(
    proj: torch.Tensor, featurizer: torch.Tensor, weight: torch.Tensor, *, cu_seqlens: torch.Tensor | None = None
) -> torch.Tensor:
    """Hyena-SE / -MR core ``q * (h * (k * v))`` from zero inputs before each sequence, fused.

    proj: (B, T, 3W) = [u_q | u_k | u_v] (the mixer's ``in_proj`` output); featurizer: (3W, Kf) causal taps on proj;
    weight: (G, K) the filter h, shared by groups of W / G consecutive channels (G = W: one per channel); filters
    longer than 32 taps shared by a multiple of 16 channels run on tensor cores (the forward in one pass up to 129
    taps); cu_seqlens as for ``causal_fir``.
    Returns y (B, T, W) in proj's dtype; differentiable in all three (the backward recomputes from proj). For
    continued sequences and cache states compose ``causal_fir`` calls instead.
    """
    if not isinstance(proj, torch.Tensor) or proj.dim() != 3 or proj.shape[-1] % 3 != 0 or proj.shape[-1] == 0:
        raise ValueError(f"proj must be a tensor of shape (B, T, 3W), got {getattr(proj, 'shape', type(proj))}")
    _check_args(proj, featurizer, cu_seqlens, None, names=("proj", "featurizer"))
    width = proj.shape[-1] // 3
    groups = weight.shape[0] if isinstance(weight, torch.Tensor) and weight.dim() == 2 else 0
    if groups == 0 or width % groups != 0:
        got = getattr(weight, "shape", type(weight))
        raise ValueError(f"weight must have shape (G, K) with G dividing W = {width}, got {got}")
    _check_taps(weight, "weight", groups, proj.device)
    return hyena_core_fwd_op(proj, featurizer, weight, cu_seqlens)
