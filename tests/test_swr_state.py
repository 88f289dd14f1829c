"""SWR continuation state (CONTRACTS.md ``SWRState``) against a float64 loop oracle that carries W restarts.

The oracle runs token by token with the state layout of the contract, so it checks outputs and final
states of packed sequences, chunked prefill followed by decode steps, and continuation from arbitrary
states at any phase; it is itself checked against the literal window sum of DESIGN.md section 2. The
Triton kernels are checked against it in ``test_kernels_triton.py``; ``test_swr_reference.py`` covers
lengths, the block-length x window grid and gradients.
"""

from __future__ import annotations

import pytest
import torch

from phalanx_kernels import SWRState, swr, swr_step


def oracle(
    x: torch.Tensor,
    log_gates: torch.Tensor,
    block_len: int,
    window_blocks: int,
    h0: torch.Tensor | None = None,
    pos0: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-by-token float64 SWR of every row of x (B, T, H, D) with W explicit restart states.

    Slot k holds the recurrence restarted at the start of the block k blocks back; a token that begins
    a block (its position counted from the sequence's first token, plus ``pos0``) drops the oldest
    restart and opens a new one; every slot then takes ``h = a h + x``; the output is the oldest slot.
    Returns y (B, T, H, D) and the final slots (B, H, W, D). Differentiable by autograd.
    """
    batch, seqlen, heads, dim = x.shape
    x, a = x.double(), log_gates.double().exp()
    h = x.new_zeros(batch, heads, window_blocks, dim) if h0 is None else h0.double()
    pos = torch.zeros(batch, dtype=torch.long) if pos0 is None else pos0.clone()
    ys = []
    for t in range(seqlen):
        starts_block = (pos % block_len == 0).view(batch, 1, 1, 1)
        shifted = torch.cat([torch.zeros_like(h[:, :, :1]), h[:, :, :-1]], dim=2)
        h = torch.where(starts_block, shifted, h)
        h = a[:, t].view(batch, heads, 1, 1) * h + x[:, t].unsqueeze(2)
        ys.append(h[:, :, -1])
        pos = pos + 1
    return torch.stack(ys, dim=1), h


def definition(x: torch.Tensor, log_gates: torch.Tensor, block_len: int, window_blocks: int) -> torch.Tensor:
    """The window sum of DESIGN.md section 2 written out literally (float64, one sequence per row)."""
    g = log_gates.double()
    y = torch.zeros_like(x, dtype=torch.float64)
    for t in range(x.shape[1]):
        first = max(0, (t // block_len - window_blocks + 1) * block_len)
        for s in range(first, t + 1):
            y[:, t] += g[:, s + 1 : t + 1].sum(dim=1).exp().unsqueeze(-1) * x[:, s].double()
    return y


def sharp_gates(*shape: int) -> torch.Tensor:
    return torch.nn.functional.logsigmoid(4 * torch.randn(*shape))


def near_one_gates(*shape: int) -> torch.Tensor:
    """a within about 1e-3 of 1, where the carry across blocks dominates."""
    return torch.nn.functional.logsigmoid(torch.randn(*shape) + 7.0)


GATES = {"sharp": sharp_gates, "near1": near_one_gates}


def test_oracle_matches_definition() -> None:
    torch.manual_seed(0)
    for block_len, window in ((16, 1), (16, 2), (16, 3)):
        x, g = torch.randn(2, 70, 2, 16), sharp_gates(2, 70, 2)
        torch.testing.assert_close(oracle(x, g, block_len, window)[0], definition(x, g, block_len, window))


def test_cu_seqlens_outputs_and_final_states_per_sequence() -> None:
    torch.manual_seed(2)
    lengths = [1, 17, 40, 5, 33]
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32)
    x, g = torch.randn(1, sum(lengths), 2, 16), sharp_gates(1, sum(lengths), 2)
    y, state = swr(x, g, block_len=16, window_blocks=3, cu_seqlens=cu, output_final_state=True)
    for n, (lo, hi) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        ref, h = oracle(x[:, lo:hi], g[:, lo:hi], 16, 3)
        torch.testing.assert_close(y[:, lo:hi].double(), ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(state.h[n].double(), h[0], rtol=1e-5, atol=1e-5)
    assert state.pos.tolist() == lengths


@pytest.mark.parametrize("window", [1, 2, 4])
def test_chunked_prefill_then_steps_equals_full_pass(window: int) -> None:
    torch.manual_seed(3)
    seqlen, block_len = 130, 16
    x, g = torch.randn(2, seqlen, 3, 16), sharp_gates(2, seqlen, 3)
    full = swr(x, g, block_len=block_len, window_blocks=window)
    pieces, state, start = [], None, 0
    for stop in (5, 21, 22, 70, 117):  # chunks start mid-block and on block boundaries
        y, state = swr(
            x[:, start:stop], g[:, start:stop], block_len=block_len, window_blocks=window,
            initial_state=state, output_final_state=True,
        )
        pieces.append(y)
        start = stop
    for t in range(start, seqlen):
        y, state = swr_step(x[:, t], g[:, t], state, block_len)
        pieces.append(y.unsqueeze(1))
    assert (torch.cat(pieces, dim=1) - full).abs().max() <= 1e-5
    _, h_ref = oracle(x, g, block_len, window)
    assert (state.h.double() - h_ref).abs().max() <= 1e-5
    assert state.pos.tolist() == [seqlen, seqlen]


def test_continuation_from_arbitrary_state_matches_oracle() -> None:
    torch.manual_seed(4)
    h0 = torch.randn(3, 2, 3, 16, dtype=torch.float64)
    pos0 = torch.tensor([0, 7, 33])
    x, g = torch.randn(3, 50, 2, 16, dtype=torch.float64), near_one_gates(3, 50, 2).double()
    y, state = swr(x, g, block_len=16, window_blocks=3, initial_state=SWRState(h0, pos0), output_final_state=True)
    y_ref, h_ref = oracle(x, g, 16, 3, h0, pos0)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(state.h, h_ref, rtol=1e-12, atol=1e-12)


def _bad_calls() -> list[tuple[str, dict, type, str]]:
    x, g = torch.randn(1, 20, 2, 16), torch.zeros(1, 20, 2)
    cu = torch.tensor([0, 8, 20])
    return [
        ("rank of x", dict(x=x[0], log_gates=g), ValueError, "x must have shape"),
        ("rank of gates", dict(x=x, log_gates=g[0]), ValueError, "log_gates must have shape"),
        ("shape mismatch", dict(x=x, log_gates=torch.zeros(1, 19, 2)), ValueError, "log_gates shape"),
        ("head dim 8", dict(x=torch.randn(1, 20, 2, 8), log_gates=g), ValueError, "head dim"),
        ("head dim 24", dict(x=torch.randn(1, 20, 2, 24), log_gates=g), ValueError, "head dim"),
        ("head dim 144", dict(x=torch.randn(1, 20, 2, 144), log_gates=g), ValueError, "head dim"),
        ("block_len 8", dict(x=x, log_gates=g, block_len=8), ValueError, "block_len"),
        ("block_len bool", dict(x=x, log_gates=g, block_len=True), ValueError, "block_len"),
        ("window 0", dict(x=x, log_gates=g, window_blocks=0), ValueError, "window_blocks"),
        ("window float", dict(x=x, log_gates=g, window_blocks=2.0), ValueError, "window_blocks"),
        ("int x", dict(x=x.long(), log_gates=g), TypeError, "x must be a floating-point"),
        ("int gates", dict(x=x, log_gates=g.int()), TypeError, "log_gates must be a floating-point"),
        ("x not a tensor", dict(x=x.tolist(), log_gates=g), TypeError, "x must be a torch.Tensor"),
        ("empty", dict(x=x[:, :0], log_gates=g[:, :0]), ValueError, "at least one token"),
        ("cu float", dict(x=x, log_gates=g, cu_seqlens=cu.float()), TypeError, "cu_seqlens"),
        ("cu 2-D", dict(x=x, log_gates=g, cu_seqlens=cu.view(1, 3)), ValueError, "cu_seqlens"),
        ("cu start", dict(x=x, log_gates=g, cu_seqlens=torch.tensor([1, 8, 20])), ValueError, "cu_seqlens"),
        ("cu end", dict(x=x, log_gates=g, cu_seqlens=torch.tensor([0, 8, 19])), ValueError, "cu_seqlens"),
        ("cu empty seq", dict(x=x, log_gates=g, cu_seqlens=torch.tensor([0, 8, 8, 20])), ValueError, "cu_seqlens"),
        ("cu batch", dict(x=x.expand(2, -1, -1, -1), log_gates=g.expand(2, -1, -1), cu_seqlens=cu), ValueError,
         "batch size 1"),
        ("state shape", dict(x=x, log_gates=g, initial_state=SWRState(torch.zeros(1, 2, 3, 16), torch.zeros(1).long())),
         ValueError, "initial_state.h"),
    ]


@pytest.mark.parametrize("name,kwargs,error,message", _bad_calls(), ids=[c[0] for c in _bad_calls()])
def test_bad_inputs_raise_naming_the_argument(name: str, kwargs: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        swr(**kwargs)

