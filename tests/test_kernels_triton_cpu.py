"""Triton SWR kernels under the interpreter (TRITON_INTERPRET=1, CPU tensors) against float64 PyTorch.

The reference is ``swr_torch`` / ``phalanx_core_torch`` in float64, itself checked against a loop oracle
in ``test_swr_reference.py``. Shapes stay small: the interpreter runs every program in Python.
"""

import os

import pytest
import torch

from modeling_phalanx.swr_torch import SWRState, phalanx_core_torch, swr_step, swr_torch

triton_ops = pytest.importorskip("phalanx_kernels.triton_ops", reason="Triton is not installed")
pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1", reason="runs Triton kernels on CPU tensors through the interpreter"
)

TOL = {torch.float32: 2e-5, torch.float16: 1e-2}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def _inputs(batch, seqlen, heads, dim, gates, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, seqlen, heads, dim, generator=gen, dtype=torch.float64)
    z = torch.randn(batch, seqlen, heads, generator=gen, dtype=torch.float64)
    return x, torch.nn.functional.logsigmoid(4 * z if gates == "sharp" else z + 6.0)


def _grads(fn, inputs, dout):
    """Output and input gradients of ``fn`` for the upstream gradient ``dout`` (float64)."""
    leaves = [t.clone().requires_grad_() for t in inputs]
    out = fn(*leaves)
    (out.double() * dout).sum().backward()
    return [out.detach()] + [t.grad for t in leaves]


def _flat(y: torch.Tensor, state: SWRState) -> torch.Tensor:
    return torch.cat([y.double().flatten(), state.h.double().flatten()])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(
    "shape,block_len,window,gates",
    [
        ((2, 37, 4, 16), 16, 2, "sharp"),
        ((1, 300, 2, 32), 16, 3, "near1"),  # two programs: the halo carries across the chunk boundary
        ((2, 70, 2, 48), 32, 1, "sharp"),
        ((1, 100, 2, 16), 64, 2, "near1"),
    ],
)
def test_swr_forward_backward(dtype, shape, block_len, window, gates) -> None:
    x, g = _inputs(*shape, gates, seed=sum(shape) + window)
    dy = torch.randn(shape, dtype=torch.float64)
    kw = dict(block_len=block_len, window_blocks=window)
    ref = _grads(lambda a, b: swr_torch(a, b, **kw), (x, g), dy)
    got = _grads(lambda a, b: triton_ops.swr_triton(a, b, **kw), (x.to(dtype), g.to(dtype)), dy)
    for name, a, b in zip(("y", "dx", "dg"), got, ref):
        assert _rel(a, b) < TOL[dtype], name


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_swr_varlen_phase_and_states(dtype) -> None:
    """Packed sequences continuing from states at several phases; output, final state, all gradients."""
    lengths, heads, dim, window = [1, 20, 45, 9], 2, 16, 3
    cu = torch.tensor([0] + lengths).cumsum(0)
    x, g = _inputs(1, sum(lengths), heads, dim, "sharp", seed=7)
    h0 = torch.randn(len(lengths), heads, window, dim, dtype=torch.float64)
    pos = torch.tensor([0, 3, 16, 21])
    kw = dict(block_len=16, window_blocks=window, cu_seqlens=cu, output_final_state=True)
    dout = torch.randn(x.numel() + h0.numel(), dtype=torch.float64)

    def run(fn):
        return lambda a, b, h: _flat(*fn(a, b, initial_state=SWRState(h, pos), **kw))

    ref = _grads(run(swr_torch), (x, g, h0), dout)
    got = _grads(run(triton_ops.swr_triton), (x.to(dtype), g.to(dtype), h0.float()), dout)
    for name, a, b in zip(("y+state", "dx", "dg", "dh0"), got, ref):
        assert _rel(a, b) < TOL[dtype], name


@pytest.mark.parametrize("splits", [(5, 40, 61), (16, 32)])
def test_chunked_prefill_then_steps_equals_full_pass(splits) -> None:
    x, g = _inputs(2, 70, 2, 16, "near1", seed=8)
    x, g = x.float(), g.float()
    full = triton_ops.swr_triton(x, g, block_len=16, window_blocks=2)
    pieces, state, start = [], None, 0
    for stop in splits:
        y, state = triton_ops.swr_triton(x[:, start:stop], g[:, start:stop], block_len=16, window_blocks=2,
                                         initial_state=state, output_final_state=True)
        pieces.append(y)
        start = stop
    for t in range(start, x.shape[1]):
        y, state = swr_step(x[:, t], g[:, t], state, 16)
        pieces.append(y[:, None])
    assert (torch.cat(pieces, dim=1) - full).abs().max() <= 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("heads,groups,cap,state", [(4, 4, None, True), (4, 2, 0.9, False)])
def test_fused_core(dtype, heads, groups, cap, state) -> None:
    dim, seqlen = 16, 41
    feat = heads + 2 * groups * dim + heads * dim
    proj = torch.randn(2, seqlen, feat, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    h0 = torch.randn(2, heads, 2, dim, dtype=torch.float64)
    pos = torch.tensor([7, 32])
    kw = dict(num_heads=heads, head_dim=dim, num_gate_groups=groups, block_len=16, window_blocks=2, decay_cap=cap)
    dout = torch.randn(2 * seqlen * heads * dim + (h0.numel() if state else 0), dtype=torch.float64)

    def run(fn):
        if state:
            return lambda p, h: _flat(*fn(p, initial_state=SWRState(h, pos), output_final_state=True, **kw))
        return lambda p, h: fn(p, **kw).flatten()

    ref = _grads(run(phalanx_core_torch), (proj, h0), dout)
    got = _grads(run(triton_ops.phalanx_core_triton), (proj.to(dtype), h0.float()), dout)
    names = ("out", "dproj", "dh0") if state else ("out", "dproj")
    for name, a, b in zip(names, got, ref):
        assert _rel(a, b) < TOL[dtype], name


def test_fused_core_rejects_bad_projection() -> None:
    with pytest.raises(ValueError, match="proj last dim"):
        triton_ops.phalanx_core_triton(torch.randn(1, 5, 70), num_heads=2, head_dim=16, num_gate_groups=2)
    with pytest.raises(ValueError, match="divisible"):
        triton_ops.phalanx_core_triton(torch.randn(1, 5, 99), num_heads=3, head_dim=16, num_gate_groups=2)


def test_compile_fullgraph_custom_ops_match_eager() -> None:
    """The custom ops trace through their fake implementations; forward and gradients match eager."""
    x, g = _inputs(1, 40, 2, 16, "sharp", seed=10)
    x, g = x.float(), g.float()

    def f(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return triton_ops.swr_triton(a, b, block_len=16, window_blocks=2).square().sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    grads = []
    for fn in (f, compiled):
        a, b = x.clone().requires_grad_(), g.clone().requires_grad_()
        loss = fn(a, b)
        loss.backward()
        grads.append((loss.detach(), a.grad, b.grad))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)
