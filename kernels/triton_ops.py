"""Launchers, ``torch.library`` custom ops and autograd for the Triton SWR and fused Phalanx core.

The kernels (``triton_swr``) compute the SWR of each sequence from a zero state, with blocks aligned to
the sequence's first token shifted back by its phase, and, for inference, the final state from a zero
initial state. Continuation is linear and touches few tokens, so it is done here in PyTorch by reusing
``swr_torch``: the initial-state contribution covers only the first ``W`` aligned blocks, and the final
state (when it needs gradients or continues an initial state) depends only on the last ``W`` aligned blocks.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import triton

from .swr_torch import SWRState, _split_core_inputs, check_swr_args, swr_torch
from .triton_swr import _swr_bwd_kernel, _swr_fwd_kernel

def launch_config(num_heads: int, head_dim: int, block_len: int, fused: bool = False) -> dict[str, dict[str, int]]:
    """Launch parameters of the forward (``fwd``) and backward (``bwd``) kernels of the plain SWR or the fused
    core: ``NB`` blocks of ``HB`` heads per program on ``num_warps`` warps, and optionally ``VEC`` channels per
    thread (else ``HB * DP / threads``, which keeps the block axis in each thread's registers).

    On an H100 at D = 16, BL = 16 the sweep of results/run11 (GPU time, graph replay) chose for the SWR 8 heads
    on one warp (VEC 4: 64 values of each tile per thread; 32 blocks per program forward, 16 backward) and for
    the fused core, which holds about three times as many tiles, 4 heads on one warp (VEC 2) over 32 blocks.
    Wider heads or longer blocks take fewer heads and, past one head, more warps.
    """
    dp = triton.next_power_of_2(head_dim)
    max_heads, per_thread = (4, 32) if fused else (8, 64)  # heads per program, values of a tile per thread
    hb = 1
    while hb * 2 <= max_heads and num_heads % (hb * 2) == 0 and hb * 2 * dp * block_len <= 32 * per_thread:
        hb *= 2
    cfg = {"HB": hb, "num_warps": max(1, hb * dp * block_len // (32 * per_thread))}
    return {"fwd": {"NB": 512 // block_len, **cfg}, "bwd": {"NB": (512 if fused else 256) // block_len, **cfg}}


def kernel_meta(
    shape: tuple[int, int, int], block_len: int, window_blocks: int, fused: bool, cfg: dict[str, int]
) -> dict:
    """Compile-time parameters of a kernel for (heads, gate groups, head dim) and one direction's launch
    configuration ``cfg``: heads per program clamped to a divisor of the head count, and ``VEC`` = the
    configuration's, else ``HB * DP / threads`` (at least 2, which makes channels Triton's fastest axis)."""
    heads, gate_groups, head_dim = shape
    hb = math.gcd(cfg["HB"], heads)  # a program's heads must tile the head count
    dp = triton.next_power_of_2(head_dim)
    return dict(
        H=heads,
        HG=gate_groups,
        REP=heads // gate_groups,
        D=head_dim,
        DP=dp,
        BL=block_len,
        W=window_blocks,
        WP=triton.next_power_of_2(max(window_blocks - 1, 1)),
        NB=cfg["NB"],
        HB=hb,
        VEC=min(cfg.get("VEC") or max(hb * dp // (32 * cfg["num_warps"]), 2), 8, dp),
        FUSED=fused,
        num_warps=cfg["num_warps"],
    )


def _launch(
    fwd: bool,
    tensors: tuple[torch.Tensor | None, ...],
    rows_info: tuple[torch.Tensor | None, torch.Tensor | None, int, int, int],
    shape: tuple[int, int, int],
    strides: tuple[int, ...],
    block_len: int,
    window_blocks: int,
    fused: bool,
    log_cap: float,
) -> None:
    """Launch the forward or backward kernel over (sequences x head groups, chunks)."""
    cu, phase, seq_len, max_len, num_seqs = rows_info
    heads, _, head_dim = shape
    cfg = launch_config(heads, head_dim, block_len, fused)["fwd" if fwd else "bwd"]
    max_blocks = -(-(max_len + (block_len - 1 if phase is not None else 0)) // block_len)
    meta = kernel_meta(shape, block_len, window_blocks, fused, cfg)
    meta.update(VARLEN=cu is not None, HAS_PHASE=phase is not None)
    if fwd:
        meta["FINAL"] = tensors[3] is not None
    row_names = ("X_ROW", "G_ROW", "Y_ROW") if fwd else ("X_ROW", "G_ROW", "DY_ROW", "DX_ROW", "DG_ROW")
    meta.update(dict(zip(row_names, strides)))
    grid = (num_seqs * (heads // meta["HB"]), triton.cdiv(max_blocks, cfg["NB"]))
    (_swr_fwd_kernel if fwd else _swr_bwd_kernel)[grid](*tensors, cu, phase, seq_len, math.exp(log_cap), **meta)


def _rows_info(
    x: torch.Tensor, cu_seqlens: torch.Tensor | None, phase: torch.Tensor | None, max_len: int
) -> tuple[torch.Tensor | None, torch.Tensor | None, int, int, int]:
    batch, seqlen = x.shape[:2]
    cu = None if cu_seqlens is None else cu_seqlens.to(device=x.device, dtype=torch.int32)
    ph = None if phase is None else phase.to(device=x.device, dtype=torch.int32)
    num_seqs = batch if cu is None else cu.numel() - 1
    return cu, ph, seqlen, max_len, num_seqs


# ----------------------------------------------------------------------------------------------
# Custom ops: the SWR from a zero state (per-sequence phase) and the fused core.
# ----------------------------------------------------------------------------------------------

# Op namespace = this package's import name: `phalanx_kernels` when installed, the unique module name the
# `kernels` library gives a Hub copy, so both can be loaded in one process without a clash.
OP_NAMESPACE = __name__.split(".")[0]


def _final_buffer(
    with_final: bool, num_seqs: int, heads: int, window_blocks: int, dim: int, like: torch.Tensor
) -> torch.Tensor:
    """Final-state output (N, H, W, D) fp32 of the forward kernel, or an empty tensor when not asked for."""
    shape = (num_seqs, heads, window_blocks, dim) if with_final else (0,)
    return like.new_empty(shape, dtype=torch.float32)


@torch.library.custom_op(f"{OP_NAMESPACE}::swr_fwd", mutates_args=())
def swr_fwd_op(
    x: torch.Tensor,
    log_gates: torch.Tensor,
    cu_seqlens: torch.Tensor | None,
    phase: torch.Tensor | None,
    max_len: int,
    block_len: int,
    window_blocks: int,
    with_final: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """y = SWR(x, log_gates) from a zero state; x (B, T, H, D), blocks shifted back by ``phase`` (N,).

    Also returns the final state from a zero initial state (N, H, W, D) when ``with_final`` (else an
    empty tensor); it is not differentiable.
    """
    x, log_gates = x.contiguous(), log_gates.contiguous()
    _, _, heads, dim = x.shape
    y = torch.empty_like(x)
    info = _rows_info(x, cu_seqlens, phase, max_len)
    final = _final_buffer(with_final, info[-1], heads, window_blocks, dim, x)
    _launch(
        True, (x, log_gates, y, final if with_final else None), info, (heads, heads, dim),
        (heads * dim, heads, heads * dim), block_len, window_blocks, False, 0.0,
    )
    return y, final


@swr_fwd_op.register_fake
def _(x, log_gates, cu_seqlens, phase, max_len, block_len, window_blocks, with_final):
    num_seqs = x.shape[0] if cu_seqlens is None else cu_seqlens.shape[0] - 1
    return torch.empty_like(x), _final_buffer(with_final, num_seqs, x.shape[2], window_blocks, x.shape[3], x)


@torch.library.custom_op(f"{OP_NAMESPACE}::swr_bwd", mutates_args=())
def swr_bwd_op(
    x: torch.Tensor,
    log_gates: torch.Tensor,
    dy: torch.Tensor,
    cu_seqlens: torch.Tensor | None,
    phase: torch.Tensor | None,
    max_len: int,
    block_len: int,
    window_blocks: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(dx, d log_gates) of ``swr_fwd`` recomputing the forward in fp32."""
    x, log_gates, dy = x.contiguous(), log_gates.contiguous(), dy.contiguous()
    _, _, heads, dim = x.shape
    dx = torch.empty_like(x)
    dg = torch.empty_like(log_gates)
    _launch(
        False, (x, log_gates, dy, dx, dg, None), _rows_info(x, cu_seqlens, phase, max_len),
        (heads, heads, dim), (heads * dim, heads, heads * dim, heads * dim, heads), block_len, window_blocks,
        False, 0.0,
    )
    return dx, dg


@swr_bwd_op.register_fake
def _(x, log_gates, dy, cu_seqlens, phase, max_len, block_len, window_blocks):
    return torch.empty_like(x), torch.empty_like(log_gates)


def _swr_setup_context(ctx, inputs, output) -> None:
    x, log_gates, cu_seqlens, phase, max_len, block_len, window_blocks, _ = inputs
    ctx.save_for_backward(x, log_gates, cu_seqlens, phase)
    ctx.args = (max_len, block_len, window_blocks)
    ctx.mark_non_differentiable(output[1])


def _swr_backward(ctx, dy, _dfinal):
    x, log_gates, cu_seqlens, phase = ctx.saved_tensors
    dx, dg = swr_bwd_op(x, log_gates, dy, cu_seqlens, phase, *ctx.args)
    return dx, dg, None, None, None, None, None, None


swr_fwd_op.register_autograd(_swr_backward, setup_context=_swr_setup_context)


@torch.library.custom_op(f"{OP_NAMESPACE}::core_fwd", mutates_args=())
def core_fwd_op(
    proj: torch.Tensor,
    cu_seqlens: torch.Tensor | None,
    phase: torch.Tensor | None,
    max_len: int,
    num_heads: int,
    head_dim: int,
    num_gate_groups: int,
    block_len: int,
    window_blocks: int,
    log_cap: float,
    with_final: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused Phalanx core from a zero state: proj (B, T, F) -> (B, T, H*D) in proj's dtype, plus the final
    SWR state (N, H, W, D) when ``with_final`` (not differentiable; else an empty tensor)."""
    proj = proj.contiguous()
    batch, seqlen, feat = proj.shape
    out = proj.new_empty(batch, seqlen, num_heads * head_dim)
    info = _rows_info(proj, cu_seqlens, phase, max_len)
    final = _final_buffer(with_final, info[-1], num_heads, window_blocks, head_dim, proj)
    _launch(
        True, (proj, proj, out, final if with_final else None), info, (num_heads, num_gate_groups, head_dim),
        (feat, feat, num_heads * head_dim), block_len, window_blocks, True, log_cap,
    )
    return out, final


@core_fwd_op.register_fake
def _(proj, cu_seqlens, phase, max_len, num_heads, head_dim, num_gate_groups, block_len, window_blocks, log_cap,
      with_final):
    num_seqs = proj.shape[0] if cu_seqlens is None else cu_seqlens.shape[0] - 1
    out = proj.new_empty(proj.shape[0], proj.shape[1], num_heads * head_dim)
    return out, _final_buffer(with_final, num_seqs, num_heads, window_blocks, head_dim, proj)


@torch.library.custom_op(f"{OP_NAMESPACE}::core_bwd", mutates_args=())
def core_bwd_op(
    proj: torch.Tensor,
    dout: torch.Tensor,
    cu_seqlens: torch.Tensor | None,
    phase: torch.Tensor | None,
    max_len: int,
    num_heads: int,
    head_dim: int,
    num_gate_groups: int,
    block_len: int,
    window_blocks: int,
    log_cap: float,
) -> torch.Tensor:
    """d(proj) of ``core_fwd``, recomputing gates, gated input and the SWR in fp32."""
    proj, dout = proj.contiguous(), dout.contiguous()
    batch, seqlen, feat = proj.shape
    hd = num_heads * head_dim
    dproj = torch.empty_like(proj)
    rep = num_heads // num_gate_groups
    # With several heads per gate group the kernel writes per-head gate/readout gradients, summed below.
    per_head = proj.new_empty(batch, seqlen, 2 * hd, dtype=torch.float32) if rep > 1 else None
    _launch(
        False, (proj, proj, dout, dproj, dproj, per_head), _rows_info(proj, cu_seqlens, phase, max_len),
        (num_heads, num_gate_groups, head_dim), (feat, feat, hd, feat, feat), block_len, window_blocks, True,
        log_cap,
    )
    if per_head is not None:
        grouped = per_head.view(batch, seqlen, 2, num_gate_groups, rep, head_dim).sum(dim=4)
        gd = num_gate_groups * head_dim
        dproj[..., num_heads : num_heads + 2 * gd] = grouped.reshape(batch, seqlen, 2 * gd).to(proj.dtype)
    return dproj


@core_bwd_op.register_fake
def _(proj, dout, cu_seqlens, phase, max_len, num_heads, head_dim, num_gate_groups, block_len, window_blocks,
      log_cap):
    return torch.empty_like(proj)


def _core_setup_context(ctx, inputs, output) -> None:
    proj, cu_seqlens, phase, *args, _ = inputs
    ctx.save_for_backward(proj, cu_seqlens, phase)
    ctx.args = tuple(args)
    ctx.mark_non_differentiable(output[1])


def _core_backward(ctx, dout, _dfinal):
    proj, cu_seqlens, phase = ctx.saved_tensors
    return (core_bwd_op(proj, dout, cu_seqlens, phase, *ctx.args),) + (None,) * 10


core_fwd_op.register_autograd(_core_backward, setup_context=_core_setup_context)


# ----------------------------------------------------------------------------------------------
# Continuation: initial-state contribution and final state, in PyTorch.
# ----------------------------------------------------------------------------------------------

# Maps flat row indices to the SWR inputs of those rows: (u (n, H, D), log_gates (n, H), readout or None).
RowInputs = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]


def _initial_state_terms(
    inputs: RowInputs, starts: torch.Tensor, lengths: torch.Tensor, state: SWRState, block_len: int, window: int,
    total_rows: int, max_len: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Rows of the first ``W`` aligned blocks of each sequence and what the initial state adds to their SWR output."""
    span = min(window * block_len, max_len + block_len)  # the state reaches no further
    offs = torch.arange(span, device=starts.device)
    n_head = torch.clamp(span - state.pos.to(starts.device) % block_len, max=lengths)
    valid = offs[None, :] < n_head[:, None]
    rows = (starts[:, None] + offs[None, :]).clamp(max=total_rows - 1)
    u, log_g, readout = inputs(rows.reshape(-1))
    num_seqs = rows.shape[0]
    log_g = torch.where(valid[..., None], log_g.view(num_seqs, span, -1).float(), 0.0)
    zeros = log_g.new_zeros(num_seqs, span, *u.shape[1:])
    corr = swr_torch(zeros, log_g, block_len=block_len, window_blocks=window, initial_state=state)
    readout = None if readout is None else readout.view(num_seqs, span, *u.shape[1:])[valid]
    return rows[valid], corr[valid], readout


def _final_state(
    inputs: RowInputs, starts: torch.Tensor, lengths: torch.Tensor, state: SWRState | None, block_len: int,
    window: int, num_seqs: int, heads: int, dim: int,
) -> SWRState:
    """Final state from the last ``W`` aligned blocks of each sequence (earlier tokens cannot reach it)."""
    device = starts.device
    pos0 = state.pos.to(device) if state is not None else torch.zeros(num_seqs, dtype=torch.long, device=device)
    phase = pos0 % block_len
    last = (phase + lengths - 1) // block_len
    tail_block = torch.clamp(last - window + 1, min=0)
    tail_start = torch.clamp(tail_block * block_len - phase, min=0)
    counts = lengths - tail_start
    cu = torch.nn.functional.pad(torch.cumsum(counts, 0), (1, 0))
    total = int(cu[-1])
    seg = torch.repeat_interleave(torch.arange(num_seqs, device=device), counts, output_size=total)
    rows = starts[seg] + tail_start[seg] + torch.arange(total, device=device) - cu[:-1][seg]
    u, log_g, _ = inputs(rows)
    from_start = tail_block == 0
    if state is not None and state.h is not None:
        h0 = torch.where(from_start.view(-1, 1, 1, 1), state.h.to(device, torch.float32), 0.0)
    else:
        h0 = torch.zeros(num_seqs, heads, window, dim, device=device)
    start_state = SWRState(h0, torch.where(from_start, pos0, 0))
    _, final = swr_torch(
        u.unsqueeze(0), log_g.unsqueeze(0), block_len=block_len, window_blocks=window, cu_seqlens=cu,
        initial_state=start_state, output_final_state=True,
    )
    return SWRState(final.h, pos0 + lengths)


def _end_pos(state: SWRState | None, lengths: torch.Tensor) -> torch.Tensor:
    """Position after each sequence: its start (0, or the zero state's ``pos``) plus its length."""
    return lengths if state is None else state.pos.to(lengths.device, torch.long) + lengths


def _kernel_window(window_blocks: int, max_len: int, block_len: int) -> int:
    """Window the kernels run with: one that spans every block of the longest sequence already sees all a
    larger one would, so a huge ``window_blocks`` costs no more work (nor a larger compile-time ring)."""
    return min(window_blocks, (max_len + 2 * block_len - 2) // block_len)


def _widen(final: torch.Tensor, window_blocks: int) -> torch.Tensor:
    """Final state (N, H, w, D) of a capped window to ``window_blocks`` slots: slots reaching past the first
    block restart at the sequence start, so they repeat the last one."""
    extra = window_blocks - final.shape[2]
    return final if extra == 0 else torch.cat([final, final[:, :, -1:].expand(-1, -1, extra, -1)], dim=2)


def _needs_grad(*tensors: torch.Tensor) -> bool:
    """Whether autograd tracks these inputs (the kernels' final state is then not used: it has no gradient)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _max_len(seqlen: int, cu_seqlens: torch.Tensor | None, max_seqlen: int | None) -> int:
    """Longest sequence (tokens), which sizes the launch grid: the caller's ``max_seqlen`` when given, else read
    from ``cu_seqlens`` (a host sync)."""
    if cu_seqlens is None:
        return seqlen
    if max_seqlen is not None:
        return max_seqlen
    return int((cu_seqlens[1:] - cu_seqlens[:-1]).max())


def _sequences(
    batch: int, seqlen: int, cu_seqlens: torch.Tensor | None, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """First row and length of every sequence (for the continuation terms)."""
    if cu_seqlens is None:
        starts = torch.arange(batch, device=device) * seqlen
        return starts, torch.full((batch,), seqlen, device=device, dtype=torch.long)
    cu = cu_seqlens.to(device=device, dtype=torch.long)
    return cu[:-1], cu[1:] - cu[:-1]


def swr_triton(
    x: torch.Tensor,
    log_gates: torch.Tensor,
    *,
    block_len: int = 16,
    window_blocks: int = 2,
    cu_seqlens: torch.Tensor | None = None,
    initial_state: SWRState | None = None,
    output_final_state: bool = False,
    max_seqlen: int | None = None,
) -> torch.Tensor | tuple[torch.Tensor, SWRState]:
    """SWR through the Triton kernels (CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``).

    Same signature and semantics as ``swr_torch.swr_torch``.
    """
    num_seqs = check_swr_args(x, log_gates, block_len, window_blocks, cu_seqlens, initial_state, max_seqlen)
    batch, seqlen, heads, dim = x.shape
    phase = None if initial_state is None else initial_state.pos.to(x.device) % block_len
    zero_start = initial_state is None or initial_state.h is None  # no history: the kernel's final state is exact
    kernel_final = output_final_state and zero_start and not _needs_grad(x, log_gates)
    max_len = _max_len(seqlen, cu_seqlens, max_seqlen)
    y, final = swr_fwd_op(x, log_gates, cu_seqlens, phase, max_len, block_len,
                          _kernel_window(window_blocks, max_len, block_len), kernel_final)
    if zero_start and not output_final_state:
        return y
    starts, lengths = _sequences(batch, seqlen, cu_seqlens, x.device)
    if kernel_final:
        return y, SWRState(_widen(final, window_blocks), _end_pos(initial_state, lengths))

    def inputs(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        return x.reshape(-1, heads, dim)[rows].float(), log_gates.reshape(-1, heads)[rows].float(), None

    if not zero_start:
        rows, corr, _ = _initial_state_terms(inputs, starts, lengths, initial_state, block_len, window_blocks,
                                             batch * seqlen, max_len)
        y = y.reshape(-1, heads, dim).index_add(0, rows, corr.to(y.dtype)).view(batch, seqlen, heads, dim)
    if not output_final_state:
        return y
    return y, _final_state(inputs, starts, lengths, initial_state, block_len, window_blocks, num_seqs, heads, dim)


def phalanx_core_triton(
    proj: torch.Tensor,
    *,
    num_heads: int,
    head_dim: int,
    num_gate_groups: int,
    block_len: int = 16,
    window_blocks: int = 2,
    cu_seqlens: torch.Tensor | None = None,
    initial_state: SWRState | None = None,
    output_final_state: bool = False,
    decay_cap: float | None = None,
    max_seqlen: int | None = None,
) -> torch.Tensor | tuple[torch.Tensor, SWRState]:
    """Fused Phalanx core through the Triton kernels; same signature as ``phalanx_core_torch``."""
    if not isinstance(proj, torch.Tensor) or proj.dim() != 3:
        raise ValueError(f"proj must be a tensor of shape (B, T, F), got {getattr(proj, 'shape', type(proj))}")
    batch, seqlen, _ = proj.shape

    def inputs(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        log_a, u, c, _ = _split_core_inputs(proj.reshape(-1, proj.shape[-1])[rows], num_heads, head_dim,
                                            num_gate_groups, decay_cap)
        return u.float(), log_a.float(), c.float()

    if not proj.is_floating_point():
        raise TypeError(f"proj must be a floating-point tensor (bf16/fp16/fp32), got dtype {proj.dtype}")
    # Head counts and feature width through the one splitter (on zero rows), the SWR arguments on meta tensors.
    _split_core_inputs(proj[:1, :0], num_heads, head_dim, num_gate_groups, decay_cap)
    meta_x = torch.empty(batch, seqlen, num_heads, head_dim, device="meta", dtype=proj.dtype)
    num_seqs = check_swr_args(meta_x, meta_x[..., 0], block_len, window_blocks, cu_seqlens, initial_state, max_seqlen)
    if decay_cap is not None and not 0.0 < decay_cap <= 1.0:
        raise ValueError(f"decay_cap must be in (0, 1], got {decay_cap}")
    log_cap = 0.0 if decay_cap is None else math.log(decay_cap)
    phase = None if initial_state is None else initial_state.pos.to(proj.device) % block_len
    zero_start = initial_state is None or initial_state.h is None  # no history: the kernel's final state is exact
    kernel_final = output_final_state and zero_start and not _needs_grad(proj)
    max_len = _max_len(seqlen, cu_seqlens, max_seqlen)
    out, final = core_fwd_op(proj, cu_seqlens, phase, max_len, num_heads, head_dim, num_gate_groups, block_len,
                             _kernel_window(window_blocks, max_len, block_len), log_cap, kernel_final)
    if zero_start and not output_final_state:
        return out
    starts, lengths = _sequences(batch, seqlen, cu_seqlens, proj.device)
    if kernel_final:
        return out, SWRState(_widen(final, window_blocks), _end_pos(initial_state, lengths))
    if not zero_start:
        rows, corr, readout = _initial_state_terms(inputs, starts, lengths, initial_state, block_len, window_blocks,
                                                   batch * seqlen, max_len)
        width = num_heads * head_dim
        add = (corr * readout).reshape(-1, width).to(out.dtype)
        out = out.reshape(-1, width).index_add(0, rows, add).view(batch, seqlen, width)
    if not output_final_state:
        return out
    state = _final_state(inputs, starts, lengths, initial_state, block_len, window_blocks, num_seqs, num_heads,
                         head_dim)
    return out, state
