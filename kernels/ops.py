"""Device dispatch between the PyTorch SWR (``swr_torch``) and the Triton kernels."""

from __future__ import annotations

import os

import torch

from .swr_torch import (
    SWRState,
    phalanx_core_step_torch,
    phalanx_core_torch,
    swr_step as swr_step_torch,
    swr_torch,
)

try:
    from .triton_decode import phalanx_core_step_triton, swr_step_triton
    from .triton_ops import phalanx_core_triton, swr_triton

    HAS_TRITON = True
except ImportError:  # triton missing or unusable on this platform: the PyTorch path serves every device
    HAS_TRITON = False


def _flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


def _use_triton(t: torch.Tensor) -> bool:
    """Triton runs CUDA tensors unless it is missing or ``PHALANX_FORCE_TORCH`` is set to a true value.
    ``PHALANX_FORCE_TRITON=1`` sends CPU tensors to it too: for tests under the Triton interpreter
    (``TRITON_INTERPRET=1``), which run the Triton path of a whole model on CPU."""
    return HAS_TRITON and (t.is_cuda or _flag("PHALANX_FORCE_TRITON")) and not _flag("PHALANX_FORCE_TORCH")


def _use_triton_step(state: SWRState, *tensors: torch.Tensor) -> bool:
    """The Triton decode step serves CUDA inference with a float32 state; autograd keeps the PyTorch step."""
    if not isinstance(state, SWRState) or not all(isinstance(t, torch.Tensor) for t in tensors):
        return False
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (*tensors, state.h))
    return _use_triton(tensors[0]) and state.h.dtype == torch.float32 and not needs_grad


def _check_log_gates(log_gates: torch.Tensor) -> None:
    """Refuse log-gates above 0 or NaN (gates must lie in [0, 1]). It reads the values (a reduction and a host
    sync), so it runs only in eager calls of the public operator: never while compiling or capturing a CUDA
    graph, nor in the model's path (which computes its gates itself)."""
    if not isinstance(log_gates, torch.Tensor) or not log_gates.is_floating_point() or torch.compiler.is_compiling():
        return
    if log_gates.is_cuda and torch.cuda.is_current_stream_capturing():
        return
    if not bool((log_gates <= 0).all()):
        raise ValueError("log_gates must be <= 0 (gates a = exp(log_gates) in [0, 1]); got positive or NaN values")


def swr(
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
    """Sliding window recurrence (DESIGN.md section 2), differentiable in ``x`` and ``log_gates``.

    x (B, T, H, D), log_gates (B, T, H) <= 0; ``cu_seqlens`` packs sequences (B = 1), checked with a host copy
    unless the caller vouches for it with ``max_seqlen`` (its longest sequence); ``initial_state`` continues
    sequences; returns y in x's dtype (and the final state when asked).
    """
    impl = swr_triton if isinstance(x, torch.Tensor) and _use_triton(x) else swr_torch
    _check_log_gates(log_gates)
    return impl(
        x, log_gates, block_len=block_len, window_blocks=window_blocks, cu_seqlens=cu_seqlens,
        initial_state=initial_state, output_final_state=output_final_state, max_seqlen=max_seqlen,
    )


def swr_step(
    x: torch.Tensor, log_gates: torch.Tensor, state: SWRState, block_len: int
) -> tuple[torch.Tensor, SWRState]:
    """One decode step: x (N, H, D), log_gates (N, H) -> y (N, H, D) and the new state."""
    _check_log_gates(log_gates)
    if _use_triton_step(state, x, log_gates):
        return swr_step_triton(x, log_gates, state, block_len)
    return swr_step_torch(x, log_gates, state, block_len)


def phalanx_core(
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
    """Phalanx mixer core (DESIGN.md section 3): proj (B, T, H + 2*Hg*D + H*D) -> (B, T, H*D); ``max_seqlen`` as
    in :func:`swr`."""
    kwargs = dict(
        num_heads=num_heads,
        head_dim=head_dim,
        num_gate_groups=num_gate_groups,
        block_len=block_len,
        window_blocks=window_blocks,
        cu_seqlens=cu_seqlens,
        initial_state=initial_state,
        output_final_state=output_final_state,
        decay_cap=decay_cap,
        max_seqlen=max_seqlen,
    )
    if not isinstance(proj, torch.Tensor) or not _use_triton(proj):
        return phalanx_core_torch(proj, **kwargs)
    return phalanx_core_triton(proj, **kwargs)


def phalanx_core_step(
    proj: torch.Tensor,
    state: SWRState,
    *,
    num_heads: int,
    head_dim: int,
    num_gate_groups: int,
    block_len: int = 16,
    decay_cap: float | None = None,
) -> tuple[torch.Tensor, SWRState]:
    """One decode step of the Phalanx core: proj (N, F) -> (N, H*D) and the new state."""
    step = phalanx_core_step_triton if _use_triton_step(state, proj) else phalanx_core_step_torch
    return step(
        proj, state, num_heads=num_heads, head_dim=head_dim, num_gate_groups=num_gate_groups, block_len=block_len,
        decay_cap=decay_cap,
    )
