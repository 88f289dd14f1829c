"""Triton SWR kernels on a CUDA GPU against the float64 oracle of ``swr_oracle`` (skipped without a GPU;
full results in benchmarks/results/kernels_*)."""

import pytest
import torch

from phalanx_kernels import phalanx_core, swr
from swr_oracle import core_oracle, swr_oracle

pytestmark = pytest.mark.gpu


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 2e-2), (torch.float32, 1e-4)])
@pytest.mark.parametrize("block_len,window", [(16, 2), (32, 3), (64, 1)])
def test_swr_cuda_matches_float64(dtype: torch.dtype, tol: float, block_len: int, window: int) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 777, 8, 32, device="cuda", dtype=torch.float64)
    g = torch.nn.functional.logsigmoid(4 * torch.randn(2, 777, 8, device="cuda", dtype=torch.float64))
    dy = torch.randn_like(x)
    grads = []
    for fn, xx, gg in (
        (lambda a, b: swr_oracle(a, b, block_len, window)[0], x, g),
        (lambda a, b: swr(a, b, block_len=block_len, window_blocks=window), x.to(dtype), g.to(dtype)),
    ):
        xx, gg = xx.clone().requires_grad_(), gg.clone().requires_grad_()
        y = fn(xx, gg)
        (y.double() * dy).sum().backward()
        grads.append((y.detach(), xx.grad, gg.grad))
    for got, ref in zip(grads[1], grads[0]):
        assert _rel(got, ref) < tol


def test_core_cuda_matches_float64() -> None:
    torch.manual_seed(1)
    heads, dim = 16, 16
    proj = torch.randn(2, 1000, heads + 3 * heads * dim, device="cuda", dtype=torch.float64)
    kw = dict(num_heads=heads, head_dim=dim, num_gate_groups=heads)
    ref = core_oracle(proj, heads, dim, heads, 16, 2)[0]
    got = phalanx_core(proj.to(torch.bfloat16), **kw)
    assert _rel(got, ref) < 2e-2


def test_compiled_swr_matches_eager_cuda() -> None:
    torch.manual_seed(2)
    x = torch.randn(2, 300, 4, 16, device="cuda")
    g = torch.nn.functional.logsigmoid(torch.randn(2, 300, 4, device="cuda"))
    compiled = torch.compile(lambda a, b: swr(a, b) * 2.0, fullgraph=True)
    torch.testing.assert_close(compiled(x, g), swr(x, g) * 2.0)


def test_public_swr_is_captured_in_a_cuda_graph() -> None:
    """The eager log-gate check of the public operator (a host sync) stays out of CUDA graph capture."""
    torch.manual_seed(3)
    x = torch.randn(2, 300, 4, 16, device="cuda")
    g = torch.nn.functional.logsigmoid(torch.randn(2, 300, 4, device="cuda"))
    expected = swr(x, g)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = swr(x, g)
    graph.replay()
    torch.testing.assert_close(out, expected)
    with pytest.raises(ValueError, match="log_gates must be <= 0"):
        swr(x, g.abs() + 1.0)
