"""The one float64 reference for the SWR tests, written from DESIGN.md sections 2-3 and CONTRACTS.md alone.

``swr_oracle`` runs token by token with the ``SWRState`` layout of the contract: slot k of the state holds
the recurrence restarted at the start of the block k blocks back. ``test_swr_reference.py`` checks it once
against the literal window sum; every other SWR test (torch path, Triton kernels, decode steps) uses it.
"""

from __future__ import annotations

import math

import torch


def swr_oracle(
    x: torch.Tensor,
    log_gates: torch.Tensor,
    block_len: int,
    window_blocks: int,
    h0: torch.Tensor | None = None,
    pos0: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-by-token float64 SWR of every row of x (B, T, H, D), log_gates (B, T, H) with W restart slots.

    A token that begins a block (its position counted from the sequence's first token, plus ``pos0``)
    drops the oldest restart and opens a new one; every slot then takes ``h = a h + x``; the output is
    the oldest slot. Returns y (B, T, H, D) and the final slots (B, H, W, D). Differentiable by autograd.
    """
    batch, seqlen, heads, dim = x.shape
    x, a = x.double(), log_gates.double().exp()
    h = x.new_zeros(batch, heads, window_blocks, dim) if h0 is None else h0.double()
    pos = torch.zeros(batch, dtype=torch.long) if pos0 is None else pos0.cpu().clone()
    ys = []
    for t in range(seqlen):
        starts_block = (pos % block_len == 0).view(batch, 1, 1, 1).to(x.device)
        shifted = torch.cat([torch.zeros_like(h[:, :, :1]), h[:, :, :-1]], dim=2)
        h = torch.where(starts_block, shifted, h)
        h = a[:, t].view(batch, heads, 1, 1) * h + x[:, t].unsqueeze(2)
        ys.append(h[:, :, -1])
        pos = pos + 1
    return torch.stack(ys, dim=1), h


def core_oracle(
    proj: torch.Tensor,
    num_heads: int,
    head_dim: int,
    num_gate_groups: int,
    block_len: int,
    window_blocks: int,
    decay_cap: float | None = None,
    h0: torch.Tensor | None = None,
    pos0: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Phalanx core in float64 over ``swr_oracle``: proj (B, T, H + 2*Hg*D + H*D) -> (B, T, H*D), final slots.

    proj = [decay logits (H) | input-gate logits (Hg*D) | readout (Hg*D) | values (H*D)]; gate group g
    serves heads g*H/Hg .. (g+1)*H/Hg - 1; log a = logsigmoid(z) (+ log decay_cap); out = SWR(sigmoid(b) v) c + v.
    """
    batch, seqlen, _ = proj.shape
    proj = proj.double()
    groups_dim = num_gate_groups * head_dim
    z_a, z_b, c, v = proj.split([num_heads, groups_dim, groups_dim, num_heads * head_dim], dim=-1)
    log_a = torch.nn.functional.logsigmoid(z_a) + (math.log(decay_cap) if decay_cap is not None else 0.0)
    per_head = num_heads // num_gate_groups

    def to_heads(t: torch.Tensor) -> torch.Tensor:
        return t.view(batch, seqlen, num_gate_groups, 1, head_dim).expand(-1, -1, -1, per_head, -1).reshape(
            batch, seqlen, num_heads, head_dim
        )

    v = v.view(batch, seqlen, num_heads, head_dim)
    h, final = swr_oracle(torch.sigmoid(to_heads(z_b)) * v, log_a, block_len, window_blocks, h0, pos0)
    return (h * to_heads(c) + v).reshape(batch, seqlen, num_heads * head_dim), final


def make_inputs(
    batch: int, seqlen: int, heads: int, dim: int, gates: str = "sharp", dtype: torch.dtype = torch.float64,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """x ~ N(0, 1) and log-gates: ``"sharp"`` = logsigmoid(4 N(0,1)); ``"near1"`` = logsigmoid(N(0,1) + 6),
    a within a few 1e-3 of 1, where the carry across blocks dominates."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, seqlen, heads, dim, generator=gen, dtype=torch.float64)
    z = torch.randn(batch, seqlen, heads, generator=gen, dtype=torch.float64)
    g = torch.nn.functional.logsigmoid(4 * z if gates == "sharp" else z + 6.0)
    return x.to(dtype), g.to(dtype)


def cu_seqlens_of(lengths: list[int], dtype: torch.dtype = torch.int32) -> torch.Tensor:
    return torch.tensor([0] + lengths).cumsum(0).to(dtype)
