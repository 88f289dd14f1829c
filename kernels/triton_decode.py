"""Triton decode step for the SWR and the Phalanx core: one launch per step instead of a dozen small ops.

State layout is ``swr_torch.SWRState``: h (N, H, W, D) float32, slot ``k`` the recurrence
restarted ``k`` blocks back; pos (N,) tokens consumed. A token that begins a block (``pos % block_len
== 0``) first shifts the slots by one (slot 0 restarts from zero), then every slot takes
``h = a h + x`` and the output is the oldest slot. The step is for inference: it is not differentiable
(``ops`` keeps the PyTorch step whenever autograd needs one).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .swr_torch import SWRState, check_step_args, check_swr_args, phalanx_projection_sizes


@triton.jit
def _step_kernel(
    X, G, H_IN, POS, Y, H_OUT, LOGCAP,
    F_ROW: tl.constexpr, H: tl.constexpr, HG: tl.constexpr, REP: tl.constexpr, D: tl.constexpr,
    DP: tl.constexpr, W: tl.constexpr, WP: tl.constexpr, BL: tl.constexpr, FUSED: tl.constexpr,
):
    """One token of one (sequence, head): shift on a block start, update every restart slot, emit the oldest."""
    n = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    d = tl.arange(0, DP)
    mask_d = d < D
    k = tl.arange(0, WP)
    if FUSED:
        row = X + n * F_ROW
        za = tl.load(row + h).to(tl.float32)
        g = tl.minimum(za, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(za))) + LOGCAP
        grp = h // REP
        zb = tl.load(row + H + grp * D + d, mask=mask_d, other=0.0).to(tl.float32)
        c = tl.load(row + H + HG * D + grp * D + d, mask=mask_d, other=0.0).to(tl.float32)
        v = tl.load(row + H + 2 * HG * D + h * D + d, mask=mask_d, other=0.0).to(tl.float32)
        x = tl.sigmoid(zb) * v
    else:
        x = tl.load(X + (n * H + h) * D + d, mask=mask_d, other=0.0).to(tl.float32)
        g = tl.load(G + n * H + h).to(tl.float32)
    pos = tl.load(POS + n)
    src = tl.where(pos % BL == 0, k - 1, k)  # slot each new slot is read from
    base = (n * H + h) * W * D
    m2 = ((src >= 0) & (k < W))[:, None] & mask_d[None, :]
    state = tl.load(H_IN + base + src[:, None] * D + d[None, :], mask=m2, other=0.0)
    state = tl.exp(g) * state + x[None, :]
    tl.store(H_OUT + base + k[:, None] * D + d[None, :], state, mask=(k < W)[:, None] & mask_d[None, :])
    y = tl.sum(tl.where((k == W - 1)[:, None], state, 0.0), axis=0)
    if FUSED:
        y = y * c + v
    tl.store(Y + (n * H + h) * D + d, y.to(Y.dtype.element_ty), mask=mask_d)


def _launch(
    x: torch.Tensor, g: torch.Tensor, state: SWRState, out: torch.Tensor, heads: int, groups: int, dim: int,
    block_len: int, log_cap: float, fused: bool,
) -> SWRState:
    num_seqs, _, window, _ = state.h.shape
    h_in = state.h.contiguous()
    h_out = torch.empty_like(h_in)
    _step_kernel[(num_seqs, heads)](
        x, g, h_in, state.pos.contiguous(), out, h_out, log_cap,
        F_ROW=x.shape[-1], H=heads, HG=groups, REP=heads // groups, D=dim, DP=triton.next_power_of_2(dim),
        W=window, WP=triton.next_power_of_2(window), BL=block_len, FUSED=fused,
    )
    return SWRState(h_out, state.pos + 1)


def _check_state(state: SWRState) -> None:
    if not isinstance(state, SWRState):
        raise TypeError(f"state must be an SWRState, got {type(state).__name__}")
    if state.h.dtype != torch.float32:
        raise TypeError(f"state.h must be float32 for the Triton step, got {state.h.dtype}")


def swr_step_triton(
    x: torch.Tensor, log_gates: torch.Tensor, state: SWRState, block_len: int
) -> tuple[torch.Tensor, SWRState]:
    """One decode step: x (N, H, D), log_gates (N, H) -> y (N, H, D) in x's dtype, and the new state."""
    check_step_args(x, log_gates, state, block_len)
    _check_state(state)
    num_seqs, heads, dim = x.shape
    y = torch.empty_like(x)
    new_state = _launch(x.contiguous(), log_gates.contiguous(), state, y, heads, heads, dim, block_len, 0.0, False)
    return y, new_state


def phalanx_core_step_triton(
    proj: torch.Tensor,
    state: SWRState,
    *,
    num_heads: int,
    head_dim: int,
    num_gate_groups: int,
    block_len: int = 16,
    decay_cap: float | None = None,
) -> tuple[torch.Tensor, SWRState]:
    """One fused decode step of the Phalanx core: proj (N, H + 2*Hg*D + H*D) -> (N, H*D) and the new state."""
    if not isinstance(proj, torch.Tensor) or proj.dim() != 2:
        raise ValueError(f"proj must have shape (N, F) for a decode step, got {getattr(proj, 'shape', type(proj))}")
    if num_heads % num_gate_groups != 0:
        raise ValueError(f"num_heads={num_heads} must be divisible by num_gate_groups={num_gate_groups}")
    width = sum(phalanx_projection_sizes(num_heads, head_dim, num_gate_groups))
    if proj.shape[-1] != width:
        raise ValueError(f"proj last dim must be {width} (H + 2*Hg*D + H*D), got {proj.shape[-1]}")
    if decay_cap is not None and not 0.0 < decay_cap <= 1.0:
        raise ValueError(f"decay_cap must be in (0, 1], got {decay_cap}")
    _check_state(state)
    num_seqs = proj.shape[0]
    zero = proj.new_zeros(())
    check_swr_args(
        zero.expand(num_seqs, 1, num_heads, head_dim), zero.expand(num_seqs, 1, num_heads), block_len,
        state.h.shape[2], None, state,
    )
    out = proj.new_empty(num_seqs, num_heads * head_dim)
    log_cap = 0.0 if decay_cap is None else math.log(decay_cap)
    proj = proj.contiguous()
    new_state = _launch(proj, proj, state, out, num_heads, num_gate_groups, head_dim, block_len, log_cap, True)
    return out, new_state
