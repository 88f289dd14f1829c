"""Triton SWR kernels on a CUDA GPU against the float64 oracle of ``swr_oracle`` (skipped without a GPU;
full results in benchmarks/results/kernels_*)."""

import pytest
import torch

from modeling_phalanx import PhalanxForCausalLM
from phalanx_kernels.swr_torch import phalanx_core_torch
from phalanx_kernels import phalanx_core, swr
from phalanx_training.presets import get_preset
from swr_oracle import core_oracle, cu_seqlens_of, swr_oracle

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


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 2e-2), (torch.float32, 1e-4)])
def test_core_cuda_backward_packed_training_shape(dtype: torch.dtype, tol: float) -> None:
    """Forward and backward of the fused core at the 125m preset's shape (48 heads x 16) on a packed row, as
    ``phalanx train`` calls it (sequences shorter than a block, crossing program chunks, one of 4096), against
    the PyTorch path in float64."""
    torch.manual_seed(4)
    heads, dim = 48, 16
    lengths = [1000, 37, 2500, 559, 4096, 1]
    proj = torch.randn(1, sum(lengths), heads + 3 * heads * dim, device="cuda", dtype=torch.float64)
    proj[..., :heads] += 2.0  # decays near the preset's initialisation (0.5-0.95)
    dout = torch.randn(1, sum(lengths), heads * dim, device="cuda", dtype=torch.float64)
    kw = dict(num_heads=heads, head_dim=dim, num_gate_groups=heads, cu_seqlens=cu_seqlens_of(lengths).cuda())
    results = []
    for fn, inputs in ((phalanx_core_torch, proj), (phalanx_core, proj.to(dtype))):
        leaf = inputs.detach().clone().requires_grad_()
        y = fn(leaf, **kw)
        (y.double() * dout).sum().backward()
        results.append((y.detach(), leaf.grad))
    for got, ref in zip(results[1], results[0]):
        assert _rel(got, ref) < tol


def test_model_gradients_triton_equal_pytorch_path() -> None:
    """A training forward and backward of a 125m-phalanx model (4 layers, fp32, packed rows with document
    restarts) gives the same loss and parameter gradients through the Triton kernels as through PyTorch."""
    torch.manual_seed(5)
    layer_types = ["linear_attention"] * 3 + ["full_attention"]
    config = get_preset("125m-phalanx", num_hidden_layers=4, layer_types=layer_types, vocab_size=259)
    model = PhalanxForCausalLM(config).cuda().train()
    mixers = [layer.mixer for layer in model.model.layers if hasattr(layer, "mixer")]
    kernels = mixers[0].kernels
    assert kernels is not None and len(mixers) == 3
    ids = torch.randint(0, 259, (2, 2048), device="cuda")
    pos = torch.cat([torch.arange(700), torch.arange(1348)]).to("cuda").expand(2, -1)
    runs = []
    for use in (kernels, None):
        for mixer in mixers:
            mixer.kernels = use
        model.zero_grad()
        out = model(input_ids=ids, position_ids=pos, labels=ids, use_cache=False)
        out.loss.backward()
        runs.append((out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    torch.testing.assert_close(runs[0][0], runs[1][0], rtol=1e-5, atol=1e-5)
    worst = max((_rel(runs[0][1][n], runs[1][1][n]), n) for n in runs[1][1])
    assert worst[0] < 5e-3, worst


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
