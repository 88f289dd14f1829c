"""Sliding window recurrence (SWR) in plain PyTorch.

This is the one PyTorch implementation of the SWR math (DESIGN.md section 2), owned by ``phalanx_kernels``
(like ``naive.py`` next to an op in flash-linear-attention): the kernels use it for CPU tensors, argument
validation and continuation. ``modeling_phalanx/swr_torch.py`` is a git symlink to this file, so the model
imports it as a sibling module and a Hub bundle (which gets a real copy) runs without the kernels. It
imports only torch.

Semantics, per head and channel: ``h_t = a_t h_{t-1} + x_t`` with ``a_t = exp(g_t)``. A sequence is cut
into blocks of ``block_len`` tokens counted from its own first token; token ``t`` in block ``b`` sees the
exact recurrence restarted from zero at the start of block ``b - window_blocks + 1``.

Continuation state (:class:`SWRState`): after a sequence has consumed ``pos`` tokens, ``h[..., k, :]``
holds the recurrence restarted at the start of block ``cur - k`` (``cur`` = block of the last consumed
token), for ``k = 0 .. window_blocks - 1``. That is exactly what any later token needs, so prefill in
chunks of any sizes followed by single steps equals one full pass.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

SUPPORTED_BLOCK_LENS = (16, 32, 64)
MAX_HEAD_DIM = 128


class SWRState(NamedTuple):
    """State that lets the SWR continue a sequence.

    h:   (N, H, W, D) float32. ``h[:, :, k]`` is the recurrence restarted at the start of the block
         ``k`` blocks before the block of the last consumed token. ``None`` as an initial state: nothing
         consumed yet, the sequence starting at position ``pos`` (a left-padded row whose first token follows
         ``p`` padding tokens starts at ``-p``, so its blocks align to that token without a host read).
    pos: (N,) int64. Tokens of each sequence consumed so far (only ``pos % block_len`` and whether it is
         zero matter for the math).
    """

    h: torch.Tensor | None
    pos: torch.Tensor


def check_swr_args(
    x: torch.Tensor,
    log_gates: torch.Tensor,
    block_len: int,
    window_blocks: int,
    cu_seqlens: torch.Tensor | None = None,
    initial_state: SWRState | None = None,
    max_seqlen: int | None = None,
) -> int:
    """Validate SWR arguments; return the number of sequences. Raises ValueError/TypeError naming the argument.

    ``cu_seqlens``' values are checked with one host copy, unless the caller gives ``max_seqlen`` (its longest
    sequence, as flash-attn's varlen functions take it): then the caller vouches for them, as the model does
    after deriving both once per forward, and nothing here waits for the device.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not isinstance(log_gates, torch.Tensor):
        raise TypeError(f"log_gates must be a torch.Tensor, got {type(log_gates).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor (bf16/fp16/fp32), got dtype {x.dtype}")
    if not log_gates.is_floating_point():
        raise TypeError(f"log_gates must be a floating-point tensor, got dtype {log_gates.dtype}")
    if x.dim() != 4:
        raise ValueError(f"x must have shape (B, T, H, D), got {x.dim()} dims with shape {tuple(x.shape)}")
    if log_gates.dim() != 3:
        raise ValueError(
            f"log_gates must have shape (B, T, H), got {log_gates.dim()} dims with shape {tuple(log_gates.shape)}"
        )
    batch, seqlen, heads, head_dim = x.shape
    if tuple(log_gates.shape) != (batch, seqlen, heads):
        raise ValueError(
            f"log_gates shape {tuple(log_gates.shape)} does not match x shape {tuple(x.shape)}: expected "
            f"{(batch, seqlen, heads)}"
        )
    if log_gates.device != x.device:
        raise ValueError(f"log_gates is on {log_gates.device} but x is on {x.device}")
    if seqlen < 1:
        raise ValueError("x must hold at least one token (T >= 1)")
    if head_dim % 16 != 0 or head_dim > MAX_HEAD_DIM or head_dim < 16:
        raise ValueError(f"head dim D={head_dim} of x is unsupported: it must be a multiple of 16 up to {MAX_HEAD_DIM}")
    if isinstance(block_len, bool) or not isinstance(block_len, int) or block_len not in SUPPORTED_BLOCK_LENS:
        raise ValueError(f"block_len must be one of {SUPPORTED_BLOCK_LENS}, got {block_len!r}")
    if isinstance(window_blocks, bool) or not isinstance(window_blocks, int) or window_blocks < 1:
        raise ValueError(f"window_blocks must be an int >= 1, got {window_blocks!r}")
    num_seqs = batch
    if cu_seqlens is not None:
        if not isinstance(cu_seqlens, torch.Tensor):
            raise TypeError(f"cu_seqlens must be a torch.Tensor, got {type(cu_seqlens).__name__}")
        if cu_seqlens.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"cu_seqlens must be int32 or int64, got {cu_seqlens.dtype}")
        if cu_seqlens.device.type == "meta":
            raise ValueError("cu_seqlens is on the meta device; sequence boundaries need real values")
        if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
            raise ValueError(f"cu_seqlens must be 1-D with at least 2 entries, got shape {tuple(cu_seqlens.shape)}")
        if batch != 1:
            raise ValueError(f"with cu_seqlens, x must have batch size 1 (packed), got batch {batch}")
        if max_seqlen is None:
            cpu = cu_seqlens.detach().cpu()
            if int(cpu[0]) != 0 or int(cpu[-1]) != seqlen:
                raise ValueError(
                    f"cu_seqlens must start at 0 and end at T={seqlen}, got {int(cpu[0])} .. {int(cpu[-1])}"
                )
            if bool((cpu[1:] <= cpu[:-1]).any()):
                raise ValueError("cu_seqlens must be strictly increasing (no empty sequences)")
        num_seqs = cu_seqlens.numel() - 1
    if max_seqlen is not None and (
        isinstance(max_seqlen, bool) or not isinstance(max_seqlen, int) or not 1 <= max_seqlen <= seqlen
    ):
        raise ValueError(f"max_seqlen must be an int in [1, T={seqlen}], got {max_seqlen!r}")
    if initial_state is not None:
        if not isinstance(initial_state, SWRState):
            raise TypeError(f"initial_state must be an SWRState, got {type(initial_state).__name__}")
        if initial_state.h is not None and (
            not isinstance(initial_state.h, torch.Tensor) or not initial_state.h.is_floating_point()
        ):
            raise TypeError("initial_state.h must be a floating-point tensor or None (a zero state)")
        if not isinstance(initial_state.pos, torch.Tensor):
            raise TypeError(f"initial_state.pos must be a torch.Tensor, got {type(initial_state.pos).__name__}")
        expected = (num_seqs, heads, window_blocks, head_dim)
        if initial_state.h is not None and tuple(initial_state.h.shape) != expected:
            raise ValueError(f"initial_state.h must have shape {expected}, got {tuple(initial_state.h.shape)}")
        if tuple(initial_state.pos.shape) != (num_seqs,) or initial_state.pos.is_floating_point():
            raise ValueError(f"initial_state.pos must be an integer tensor of shape {(num_seqs,)}")
    return num_seqs


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _shift_blocks(t: torch.Tensor, k: int = 1) -> torch.Tensor:
    """Shift along the block axis (dim 1) by ``k`` blocks, filling with zeros."""
    if k >= t.shape[1]:
        return torch.zeros_like(t)
    pad = torch.zeros_like(t[:, :k])
    return torch.cat([pad, t[:, :-k]], dim=1)


def incoming_state(state: SWRState, block_len: int) -> torch.Tensor:
    """State vector entering the next token's block: shifted by one block when that token starts a block."""
    h = state.h
    new_block = (state.pos % block_len == 0).view(-1, 1, 1, 1)
    shifted = torch.cat([torch.zeros_like(h[:, :, :1]), h[:, :, :-1]], dim=2)
    return torch.where(new_block, shifted, h)


def _swr_aligned(
    x: torch.Tensor,
    g: torch.Tensor,
    block_len: int,
    window_blocks: int,
    h_in: torch.Tensor | None,
    last_block: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """SWR over block-aligned sequences.

    x: (N, L, H, D), g: (N, L, H) in the compute dtype, L a multiple of ``block_len``, position 0 of every
    row at a block start (padding positions must hold x = 0 and g = 0). ``h_in`` (N, H, W, D): state
    vector entering block 0 (restart at block ``-k`` in slot ``k``; slot 0 is block 0 itself).
    ``last_block`` (N,): block of each row's last real token; when given, the final state is returned.
    """
    n, length, heads, dim = x.shape
    nb = length // block_len
    w = window_blocks
    reach = min(w, nb)  # blocks a window can span here: larger windows cost no more work than the sequence
    xb = x.view(n, nb, block_len, heads, dim)
    gb = g.view(n, nb, block_len, heads)
    prefix = torch.cumsum(gb, dim=2)  # (N, nb, BL, H); a gate of 0 (log -inf) stays -inf, never -inf - -inf
    # Block-local solve from zero as a scan over the block's positions (all blocks at once): unlike a
    # masked transfer matrix, a NaN or inf in a later token can never reach an earlier one (0 * inf).
    gates = torch.exp(gb).unsqueeze(-1)
    state = xb[:, :, 0]
    steps = [state]
    for i in range(1, block_len):
        state = gates[:, :, i] * state + xb[:, :, i]
        steps.append(state)
    local = torch.stack(steps, dim=2)  # (N, nb, BL, H, D)
    terminal = state  # (N, nb, H, D)
    block_gate = torch.exp(prefix[:, :, -1])  # (N, nb, H)

    carry = torch.zeros_like(terminal)  # state entering each block, restarted W-1 blocks back
    link = _shift_blocks(terminal)
    gate_shift = _shift_blocks(block_gate)
    for k in range(1, reach):
        carry = carry + link
        if k + 1 < reach:
            link = _shift_blocks(link) * gate_shift.unsqueeze(-1)
    if h_in is not None:
        decay = torch.ones_like(block_gate[:, 0])
        init_terms = []
        for b in range(reach):
            init_terms.append(h_in[:, :, w - 1 - b] * decay.unsqueeze(-1))
            decay = decay * block_gate[:, b]
        init = torch.stack(init_terms, dim=1)
        if nb > reach:
            init = torch.cat([init, init.new_zeros(n, nb - reach, heads, dim)], dim=1)
        carry = carry + init
    y = local + torch.exp(prefix).unsqueeze(-1) * carry.unsqueeze(2)
    y = y.reshape(n, length, heads, dim)
    if last_block is None:
        return y, None

    # Final state: slot k restarts at block (last - k); walk back from the last real block. Slots past
    # the first block hold the same sum, so the walk stops after `reach` blocks.
    rows = torch.arange(n, device=x.device)
    slots = []
    acc = torch.zeros_like(terminal[:, 0])
    running = torch.ones_like(block_gate[:, 0])
    for j in range(reach):
        idx = last_block - j
        valid = idx >= 0
        idx_c = idx.clamp(min=0)
        term = terminal[rows, idx_c] * running.unsqueeze(-1)
        acc = acc + torch.where(valid.view(n, 1, 1), term, torch.zeros_like(term))
        running = running * torch.where(valid.view(n, 1), block_gate[rows, idx_c], torch.ones_like(running))
        slots.append(acc)
    final = torch.stack(slots, dim=2)  # (N, H, reach, D) without the initial-state terms
    if w > reach:
        final = torch.cat([final, final[:, :, -1:].expand(n, heads, w - reach, dim)], dim=2)
    if h_in is not None:
        # Slot k of the final state receives slot k - last of h_in, decayed by every gate up to the last block.
        all_gates = torch.exp(torch.cumsum(prefix[:, :, -1], dim=1)[rows, last_block])  # (N, H)
        src = torch.arange(w, device=x.device).view(1, w) - last_block.view(n, 1)  # (N, W)
        picked = h_in.gather(2, src.clamp(0, w - 1).view(n, 1, w, 1).expand(n, heads, w, dim))
        extra = picked * all_gates.view(n, heads, 1, 1)
        final = final + torch.where((src >= 0).view(n, 1, w, 1), extra, torch.zeros_like(extra))
    return y, final


def swr_torch(
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
    """Sliding window recurrence, vectorised PyTorch (any device, differentiable by autograd).

    x (B, T, H, D), log_gates (B, T, H) <= 0. With ``cu_seqlens`` (B must be 1) each packed sequence starts
    from zero state and its blocks align to its own first token; ``max_seqlen``, its longest sequence, spares
    the host syncs (see :func:`check_swr_args`). ``initial_state`` continues sequences (one entry per
    sequence). Returns y in x's dtype, plus the final :class:`SWRState` when ``output_final_state``.
    """
    num_seqs = check_swr_args(x, log_gates, block_len, window_blocks, cu_seqlens, initial_state, max_seqlen)
    return _swr_torch_impl(
        x, log_gates, block_len, window_blocks, cu_seqlens, initial_state, output_final_state, num_seqs, max_seqlen
    )


def _swr_torch_impl(
    x: torch.Tensor,
    log_gates: torch.Tensor,
    block_len: int,
    window_blocks: int,
    cu_seqlens: torch.Tensor | None,
    initial_state: SWRState | None,
    output_final_state: bool,
    num_seqs: int,
    max_seqlen: int | None = None,
) -> torch.Tensor | tuple[torch.Tensor, SWRState]:
    batch, seqlen, heads, dim = x.shape
    cdtype = _compute_dtype(x)
    xc = x.to(cdtype)
    gc = log_gates.to(cdtype)
    device = x.device

    if cu_seqlens is None:
        starts = torch.arange(batch, device=device) * seqlen
        lengths = torch.full((batch,), seqlen, device=device, dtype=torch.long)
    else:
        cu = cu_seqlens.to(device=device, dtype=torch.long)
        starts = cu[:-1]
        lengths = cu[1:] - cu[:-1]
    if initial_state is not None:
        pos0 = initial_state.pos.to(device=device, dtype=torch.long)
        h_in = None
        if initial_state.h is not None:
            h_in = incoming_state(SWRState(initial_state.h.to(device=device, dtype=cdtype), pos0), block_len)
    else:
        pos0 = torch.zeros(num_seqs, device=device, dtype=torch.long)
        h_in = None
    phase = pos0 % block_len

    simple = cu_seqlens is None and initial_state is None
    if simple:
        padded = -(-seqlen // block_len) * block_len
        xa = torch.nn.functional.pad(xc, (0, 0, 0, 0, 0, padded - seqlen))
        ga = torch.nn.functional.pad(gc, (0, 0, 0, padded - seqlen))
        last = torch.full((batch,), (seqlen - 1) // block_len, device=device, dtype=torch.long)
        y, final = _swr_aligned(xa, ga, block_len, window_blocks, None, last if output_final_state else None)
        y = y[:, :seqlen]
    else:
        aligned_len = phase + lengths
        if cu_seqlens is None:  # every row one sequence: its length bounds them all, known without a host read
            max_seqlen = seqlen
        if max_seqlen is None:
            max_len = int(aligned_len.max())
        else:  # a bound without a host sync: a phase adds at most block_len - 1 (padding beyond is zeros)
            max_len = max_seqlen + (0 if initial_state is None else block_len - 1)
        padded = -(-max_len // block_len) * block_len
        seg = torch.repeat_interleave(torch.arange(num_seqs, device=device), lengths, output_size=batch * seqlen)
        offset = torch.arange(batch * seqlen, device=device) - starts[seg] + phase[seg]
        xa = xc.new_zeros(num_seqs, padded, heads, dim)
        ga = gc.new_zeros(num_seqs, padded, heads)
        xa = xa.index_put((seg, offset), xc.reshape(-1, heads, dim))
        ga = ga.index_put((seg, offset), gc.reshape(-1, heads))
        last = (aligned_len - 1) // block_len
        y, final = _swr_aligned(xa, ga, block_len, window_blocks, h_in, last if output_final_state else None)
        y = y[seg, offset].view(batch, seqlen, heads, dim)
    y = y.to(x.dtype)
    if not output_final_state:
        return y
    state = SWRState(final.to(torch.float32) if cdtype != torch.float64 else final, pos0 + lengths)
    return y, state


def check_step_args(x: torch.Tensor, log_gates: torch.Tensor, state: SWRState, block_len: int) -> None:
    """Validate a decode step's arguments (x (N, H, D), log_gates (N, H), state, block_len) as one-token SWR
    arguments through :func:`check_swr_args`; errors name the argument."""
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        raise ValueError(f"x must have shape (N, H, D) for a decode step, got {getattr(x, 'shape', type(x))}")
    if not isinstance(log_gates, torch.Tensor) or log_gates.dim() != 2:
        raise ValueError(f"log_gates must have shape (N, H), got {getattr(log_gates, 'shape', type(log_gates))}")
    if not isinstance(state, SWRState):
        raise TypeError(f"state must be an SWRState, got {type(state).__name__}")
    if not isinstance(state.h, torch.Tensor) or state.h.dim() != 4 or state.h.shape[:2] != x.shape[:2] or (
        state.h.shape[3] != x.shape[2]
    ):
        expected = f"({x.shape[0]}, {x.shape[1]}, W, {x.shape[2]})"
        raise ValueError(f"state.h must have shape {expected} to match x, got {getattr(state.h, 'shape', type(state.h))}")
    if not isinstance(state.pos, torch.Tensor) or tuple(state.pos.shape) != (x.shape[0],) or state.pos.is_floating_point():
        raise ValueError(f"state.pos must be an integer tensor of shape ({x.shape[0]},) (tokens consumed per sequence)")
    check_swr_args(x.unsqueeze(1), log_gates.unsqueeze(1), block_len, state.h.shape[2], None, state)


def swr_step(
    x: torch.Tensor, log_gates: torch.Tensor, state: SWRState, block_len: int
) -> tuple[torch.Tensor, SWRState]:
    """One decode step for every sequence. x (N, H, D), log_gates (N, H); returns y (N, H, D) and the new state."""
    check_step_args(x, log_gates, state, block_len)
    h = incoming_state(state, block_len)
    cdtype = h.dtype
    a = torch.exp(log_gates.to(cdtype)).view(*log_gates.shape, 1, 1)
    h = a * h + x.to(cdtype).unsqueeze(2)
    return h[:, :, -1].to(x.dtype), SWRState(h, state.pos + 1)


def phalanx_projection_sizes(num_heads: int, head_dim: int, num_gate_groups: int) -> tuple[int, int, int, int]:
    """Widths of the four parts of the Phalanx input projection: decay logits, input gate, readout, values."""
    return num_heads, num_gate_groups * head_dim, num_gate_groups * head_dim, num_heads * head_dim


def _split_core_inputs(
    proj: torch.Tensor, num_heads: int, head_dim: int, num_gate_groups: int, decay_cap: float | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split the projection output (..., F) into log-decay (..., H), gated input u, readout c, values v (..., H, D)."""
    if num_heads % num_gate_groups != 0:
        raise ValueError(f"num_heads={num_heads} must be divisible by num_gate_groups={num_gate_groups}")
    sizes = phalanx_projection_sizes(num_heads, head_dim, num_gate_groups)
    if proj.shape[-1] != sum(sizes):
        raise ValueError(f"proj last dim must be {sum(sizes)} (H + 2*Hg*D + H*D), got {proj.shape[-1]}")
    z_a, z_b, c, v = torch.split(proj, sizes, dim=-1)
    lead = proj.shape[:-1]
    cdtype = _compute_dtype(proj)
    log_a = torch.nn.functional.logsigmoid(z_a.to(cdtype))
    if decay_cap is not None:
        log_a = log_a + float(torch.log(torch.tensor(decay_cap, dtype=torch.float64)))
    rep = num_heads // num_gate_groups
    gate_b = torch.sigmoid(z_b.to(cdtype)).view(*lead, num_gate_groups, 1, head_dim)
    gate_b = gate_b.expand(*lead, num_gate_groups, rep, head_dim).reshape(*lead, num_heads, head_dim)
    c = c.to(cdtype).view(*lead, num_gate_groups, 1, head_dim)
    c = c.expand(*lead, num_gate_groups, rep, head_dim).reshape(*lead, num_heads, head_dim)
    v = v.to(cdtype).view(*lead, num_heads, head_dim)
    return log_a, gate_b * v, c, v


def phalanx_core_torch(
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
    """Phalanx mixer core (DESIGN.md section 3) from the input projection output.

    proj (B, T, H + 2*Hg*D + H*D) = [decay logits | input-gate logits | readout | values]. Computes
    ``a = sigmoid(.)`` (times ``decay_cap`` when set), ``u = sigmoid(b) * v``, ``h = SWR(u, log a)`` and
    returns ``h * c + v`` as (B, T, H*D) in proj's dtype (plus the final state when asked).
    """
    if proj.dim() != 3:
        raise ValueError(f"proj must have shape (B, T, F), got {tuple(proj.shape)}")
    batch, seqlen, _ = proj.shape
    log_a, u, c, v = _split_core_inputs(proj, num_heads, head_dim, num_gate_groups, decay_cap)
    out = swr_torch(
        u,
        log_a,
        block_len=block_len,
        window_blocks=window_blocks,
        cu_seqlens=cu_seqlens,
        initial_state=initial_state,
        output_final_state=output_final_state,
        max_seqlen=max_seqlen,
    )
    h, state = out if output_final_state else (out, None)
    y = (h * c + v).reshape(batch, seqlen, num_heads * head_dim).to(proj.dtype)
    return (y, state) if output_final_state else y


def phalanx_core_step_torch(
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
    log_a, u, c, v = _split_core_inputs(proj, num_heads, head_dim, num_gate_groups, decay_cap)
    h, new_state = swr_step(u, log_a, state, block_len)
    y = (h * c + v).reshape(proj.shape[0], num_heads * head_dim).to(proj.dtype)
    return y, new_state
