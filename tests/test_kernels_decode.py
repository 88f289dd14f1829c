"""The Triton decode step (``phalanx_kernels.triton_decode``): interpreter on CPU tensors, or CUDA when present.

Reference: the float64 oracle of ``swr_oracle`` run for one token from the state and, for a whole decode,
the full PyTorch pass.
"""

from __future__ import annotations

import pytest
import torch

from phalanx_kernels.swr_torch import phalanx_core_torch, swr_torch
from phalanx_kernels import SWRState
from swr_oracle import core_oracle, swr_oracle

triton_decode = pytest.importorskip("phalanx_kernels.triton_decode", reason="needs triton")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _to(state: SWRState, device: str) -> SWRState:
    return SWRState(state.h.to(device), state.pos.to(device))


@pytest.mark.parametrize("window,dim", [(1, 16), (2, 48), (3, 16)])
def test_step_matches_oracle_at_every_phase(window: int, dim: int) -> None:
    torch.manual_seed(window)
    num, heads, block_len = 5, 3, 16
    state = SWRState(torch.randn(num, heads, window, dim), torch.tensor([0, 1, 15, 16, 37]))
    x = torch.randn(num, heads, dim).half()
    g = torch.nn.functional.logsigmoid(4 * torch.randn(num, heads))
    y, new = triton_decode.swr_step_triton(x.to(DEVICE), g.to(DEVICE), _to(state, DEVICE), block_len)
    y, new = y.cpu(), _to(new, "cpu")
    y_ref, h_ref = swr_oracle(x[:, None], g[:, None], block_len, window, state.h, state.pos)
    assert y.dtype == torch.float16
    torch.testing.assert_close(y.double(), y_ref[:, 0], rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(new.h.double(), h_ref, rtol=1e-5, atol=1e-5)
    assert new.pos.tolist() == (state.pos + 1).tolist()


def test_decode_after_prefill_equals_full_core_pass() -> None:
    """Prefill with the PyTorch core, then 20 fused Triton steps: equal to one full pass (fp32)."""
    torch.manual_seed(3)
    heads, groups, dim, seqlen, prefill = 4, 2, 16, 45, 25
    proj = torch.randn(2, seqlen, heads + 2 * groups * dim + heads * dim)
    kw = dict(num_heads=heads, head_dim=dim, num_gate_groups=groups, block_len=16, decay_cap=0.95)
    full = phalanx_core_torch(proj, window_blocks=3, **kw)
    _, state = phalanx_core_torch(proj[:, :prefill], window_blocks=3, output_final_state=True, **kw)
    steps, state = [], _to(state, DEVICE)
    for t in range(prefill, seqlen):
        out, state = triton_decode.phalanx_core_step_triton(proj[:, t].to(DEVICE), state, **kw)
        steps.append(out.cpu())
    assert (torch.stack(steps, dim=1) - full[:, prefill:]).abs().max() <= 1e-5
    state = _to(state, "cpu")
    ref_out, ref_h = core_oracle(proj[:, -1:], heads, dim, groups, 16, 3, 0.95, state.h, state.pos)
    out, new = triton_decode.phalanx_core_step_triton(proj[:, -1].to(DEVICE), _to(state, DEVICE), **kw)
    out, new = out.cpu(), _to(new, "cpu")
    torch.testing.assert_close(out.double(), ref_out[:, 0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(new.h.double(), ref_h, rtol=1e-5, atol=1e-5)


def test_swr_steps_equal_full_pass() -> None:
    torch.manual_seed(4)
    x, g = torch.randn(1, 40, 2, 16), torch.nn.functional.logsigmoid(torch.randn(1, 40, 2) + 3)
    full = swr_torch(x, g, block_len=16, window_blocks=2)
    state = SWRState(torch.zeros(1, 2, 2, 16, device=DEVICE), torch.zeros(1, dtype=torch.long, device=DEVICE))
    ys = []
    for t in range(40):
        y, state = triton_decode.swr_step_triton(x[:, t].to(DEVICE), g[:, t].to(DEVICE), state, 16)
        ys.append(y.cpu())
    assert (torch.stack(ys, dim=1) - full).abs().max() <= 1e-5


def test_step_rejects_bad_inputs() -> None:
    state = SWRState(torch.zeros(2, 3, 2, 16), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="x must have shape"):
        triton_decode.swr_step_triton(torch.zeros(2, 1, 3, 16), torch.zeros(2, 3), state, 16)
    with pytest.raises(ValueError, match=r"state.h must have shape \(2, 4, W, 16\) to match x"):
        triton_decode.swr_step_triton(torch.zeros(2, 4, 16), torch.zeros(2, 4), state, 16)
    with pytest.raises(ValueError, match="block_len"):
        triton_decode.swr_step_triton(torch.zeros(2, 3, 16), torch.zeros(2, 3), state, 12)
    with pytest.raises(TypeError, match="state.h must be float32"):
        double_state = SWRState(state.h.double(), state.pos)
        triton_decode.swr_step_triton(torch.zeros(2, 3, 16), torch.zeros(2, 3), double_state, 16)
    with pytest.raises(ValueError, match="proj last dim"):
        triton_decode.phalanx_core_step_triton(torch.zeros(2, 10), state, num_heads=3, head_dim=16, num_gate_groups=3)
