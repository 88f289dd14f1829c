"""The Triton SWR and fused-core kernels: under ``TRITON_INTERPRET=1`` on CPU tensors, or on CUDA when present.

The entry points of ``phalanx_kernels.triton_ops`` are called directly (the public API sends CPU tensors
to PyTorch). References: the float64 loop oracle of ``test_swr_state`` for the SWR, and
``phalanx_core_torch`` in float64 for the fused core. Shapes stay small: the interpreter runs every
program in numpy.
"""

from __future__ import annotations

import pytest
import torch

from modeling_phalanx.swr_torch import phalanx_core_torch, swr_torch
from phalanx_kernels import SWRState

triton_ops = pytest.importorskip("phalanx_kernels.triton_ops", reason="needs triton")
from test_swr_state import near_one_gates, oracle, sharp_gates  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
FP16_REL = 1e-2  # ||got - ref|| / ||ref|| for fp16 inputs (16-bit storage, fp32 or tf32 arithmetic)


def _assert_close32(got: torch.Tensor, ref: torch.Tensor, name: str) -> None:
    """fp32 kernels against float64: elementwise, with the absolute slack scaled to the tensor's magnitude."""
    atol = 1e-5 * max(1.0, float(ref.abs().max()))
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=atol, msg=lambda m: f"{name}: {m}")


def _assert_rel(got: torch.Tensor, ref: torch.Tensor, tol: float, name: str) -> None:
    err = float((got - ref).norm() / ref.norm())
    assert err <= tol, f"{name}: relative error {err:.2e} > {tol:.0e}"


def _values_and_grads(
    fn, inputs: list[torch.Tensor], weights: torch.Tensor, device: str = "cpu"
) -> list[torch.Tensor]:
    """fn(*inputs) on ``device`` and the gradients of sum(fn(...) * weights) for every input, as CPU float64."""
    leaves = [t.detach().to(device).requires_grad_() for t in inputs]
    out = fn(*leaves)
    (out.double() * weights.to(device)).sum().backward()
    return [out.detach().double().cpu()] + [leaf.grad.double().cpu() for leaf in leaves]


@pytest.mark.parametrize(
    "seqlen,block_len,window,kind",
    [(1, 16, 2, "sharp"), (17, 16, 2, "near1"), (300, 16, 2, "sharp"), (100, 32, 3, "near1"), (70, 64, 1, "sharp")],
)
def test_forward_backward_fp32_against_oracle(seqlen: int, block_len: int, window: int, kind: str) -> None:
    torch.manual_seed(seqlen + window)
    gates = sharp_gates if kind == "sharp" else near_one_gates
    x, g = torch.randn(1, seqlen, 2, 16), gates(1, seqlen, 2)
    dy = torch.randn(1, seqlen, 2, 16, dtype=torch.float64)
    kw = dict(block_len=block_len, window_blocks=window)
    got = _values_and_grads(lambda a, b: triton_ops.swr_triton(a, b, **kw), [x, g], dy, DEVICE)
    ref = _values_and_grads(lambda a, b: oracle(a, b, block_len, window)[0], [x.double(), g.double()], dy)
    for name, a, b in zip(("y", "dx", "dlog_gates"), got, ref):
        _assert_close32(a, b, name)


def test_forward_backward_fp16_against_oracle() -> None:
    torch.manual_seed(7)
    x, g = torch.randn(2, 90, 2, 32).half(), sharp_gates(2, 90, 2).half()
    dy = torch.randn(2, 90, 2, 32, dtype=torch.float64)
    got = _values_and_grads(lambda a, b: triton_ops.swr_triton(a, b, block_len=16, window_blocks=2), [x, g], dy, DEVICE)
    ref = _values_and_grads(lambda a, b: oracle(a, b, 16, 2)[0], [x.double(), g.double()], dy)
    for name, a, b in zip(("y", "dx", "dlog_gates"), got, ref):
        _assert_rel(a, b, FP16_REL, name)


def test_varlen_equals_each_sequence_alone() -> None:
    torch.manual_seed(8)
    lengths = [5, 35, 1, 90]
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32)
    x, g = torch.randn(1, sum(lengths), 2, 16), sharp_gates(1, sum(lengths), 2)
    dy = torch.randn(1, sum(lengths), 2, 16, dtype=torch.float64)
    got = _values_and_grads(
        lambda a, b: triton_ops.swr_triton(a, b, block_len=16, window_blocks=3, cu_seqlens=cu.to(a.device)),
        [x, g],
        dy,
        DEVICE,
    )
    for lo, hi in zip(cu[:-1].tolist(), cu[1:].tolist()):
        ref = _values_and_grads(lambda a, b: oracle(a, b, 16, 3)[0], [x[:, lo:hi].double(), g[:, lo:hi].double()],
                                dy[:, lo:hi])
        for name, a, b in zip(("y", "dx", "dlog_gates"), got, ref):
            _assert_close32(a[:, lo:hi], b, f"{name} of sequence {lo}:{hi}")


def test_continuation_phase_initial_and_final_state() -> None:
    """Per-sequence phase (pos % block_len), initial-state contribution and final state, with gradients."""
    torch.manual_seed(9)
    lengths = [40, 3, 70]
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32)
    x, g = torch.randn(1, sum(lengths), 2, 16), near_one_gates(1, sum(lengths), 2)
    h0, pos0 = torch.randn(3, 2, 2, 16), torch.tensor([5, 16, 30])
    dy = torch.randn(1, sum(lengths), 2, 16, dtype=torch.float64)

    def run(fn, a, b, h):
        y, state = fn(a, b, block_len=16, window_blocks=2, cu_seqlens=cu.to(a.device),
                      initial_state=SWRState(h, pos0.to(a.device)), output_final_state=True)
        assert state.pos.tolist() == (pos0 + torch.tensor(lengths)).tolist()
        return torch.cat([y.flatten(), state.h.flatten()])

    weights = torch.cat([dy.flatten(), torch.randn(h0.numel(), dtype=torch.float64)])
    got = _values_and_grads(lambda a, b, h: run(triton_ops.swr_triton, a, b, h), [x, g, h0], weights, DEVICE)
    ref = _values_and_grads(lambda a, b, h: run(swr_torch, a, b, h), [x.double(), g.double(), h0.double()], weights)
    for name, a, b in zip(("y and final state", "dx", "dlog_gates", "dh0"), got, ref):
        _assert_close32(a, b, name)
    # swr_torch itself against the oracle on one of the sequences, so the reference is not taken on trust.
    lo, hi = 40, 43
    y_ref, h_ref = oracle(x[:, lo:hi], g[:, lo:hi], 16, 2, h0[1:2].double(), pos0[1:2])
    _assert_close32(got[0][: x.numel()].view_as(x)[:, lo:hi], y_ref, "y against the oracle")


@pytest.mark.parametrize(
    "groups,cap,dtype", [(4, None, torch.float32), (2, 0.9, torch.float32), (4, None, torch.float16)]
)
def test_fused_core_against_torch_core(groups: int, cap: float | None, dtype: torch.dtype) -> None:
    torch.manual_seed(10)
    heads, dim, seqlen = 4, 16, 75
    proj = torch.randn(2, seqlen, heads + 2 * groups * dim + heads * dim).to(dtype)
    kw = dict(num_heads=heads, head_dim=dim, num_gate_groups=groups, block_len=16, window_blocks=2, decay_cap=cap)
    dout = torch.randn(2, seqlen, heads * dim, dtype=torch.float64)
    got = _values_and_grads(lambda p: triton_ops.phalanx_core_triton(p, **kw), [proj], dout, DEVICE)
    ref = _values_and_grads(lambda p: phalanx_core_torch(p, **kw), [proj.double()], dout)
    for name, a, b in zip(("out", "dproj"), got, ref):
        if dtype == torch.float16:
            _assert_rel(a, b, FP16_REL, name)
        else:
            _assert_close32(a, b, name)


def test_fused_core_with_state() -> None:
    torch.manual_seed(11)
    heads, dim, seqlen = 2, 16, 40
    proj = torch.randn(1, seqlen, heads + 3 * heads * dim)
    state = SWRState(torch.randn(1, heads, 2, dim), torch.tensor([9]))
    kw = dict(num_heads=heads, head_dim=dim, num_gate_groups=heads, block_len=16, window_blocks=2,
              initial_state=state, output_final_state=True)
    on_device = SWRState(state.h.to(DEVICE), state.pos.to(DEVICE))
    out, fin = triton_ops.phalanx_core_triton(proj.to(DEVICE), **{**kw, "initial_state": on_device})
    out, fin = out.cpu(), SWRState(fin.h.cpu(), fin.pos.cpu())
    state64 = SWRState(state.h.double(), state.pos)
    out_ref, fin_ref = phalanx_core_torch(proj.double(), **{**kw, "initial_state": state64})
    _assert_close32(out.double(), out_ref, "out")
    _assert_close32(fin.h.double(), fin_ref.h, "final state")


def test_bad_inputs_raise_in_triton_entry_points() -> None:
    x, g = torch.randn(1, 20, 2, 16), torch.zeros(1, 20, 2)
    with pytest.raises(ValueError, match="head dim"):
        triton_ops.swr_triton(torch.randn(1, 20, 2, 20), g)
    with pytest.raises(TypeError, match="cu_seqlens"):
        triton_ops.swr_triton(x, g, cu_seqlens=torch.tensor([0.0, 20.0]))
    with pytest.raises(ValueError, match="proj"):
        triton_ops.phalanx_core_triton(torch.randn(1, 20, 50), num_heads=2, head_dim=16, num_gate_groups=2)


def test_custom_op_compiles_fullgraph() -> None:
    """The registered custom ops trace (fake implementations, autograd) under torch.compile(fullgraph=True)."""
    torch.manual_seed(12)
    x, g = torch.randn(1, 40, 2, 16, device=DEVICE), sharp_gates(1, 40, 2).to(DEVICE)

    def f(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return triton_ops.swr_triton(a, b, block_len=16, window_blocks=2) * 2.0

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    xa, ga = x.clone().requires_grad_(), g.clone().requires_grad_()
    xb, gb = x.clone().requires_grad_(), g.clone().requires_grad_()
    compiled(xa, ga).sum().backward()
    f(xb, gb).sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad)
    torch.testing.assert_close(ga.grad, gb.grad)


def test_scan_kernel_family_against_oracle(monkeypatch: pytest.MonkeyPatch) -> None:
    """The associative-scan kernels (``launch_config`` family ``scan``): packed sequences with phases and
    initial states, W = 3, forward and backward; and the fused core with gate groups and a decay cap."""
    scan = {"kernel": "scan", "NB": 4, "HB": 2, "num_warps": 1}
    monkeypatch.setattr(triton_ops, "launch_config", lambda h, d, bl: {"fwd": scan, "bwd": scan})
    torch.manual_seed(13)
    cu = torch.tensor([0, 30, 80], dtype=torch.int32)
    x, g = torch.randn(1, 80, 2, 16), sharp_gates(1, 80, 2)
    h0, pos0 = torch.randn(2, 2, 3, 16), torch.tensor([7, 16])
    dy = torch.randn(1, 80, 2, 16, dtype=torch.float64)

    def run(a, b, h):
        kw = dict(block_len=16, window_blocks=3, cu_seqlens=cu.to(a.device), output_final_state=True)
        y, state = triton_ops.swr_triton(a, b, initial_state=SWRState(h, pos0.to(a.device)), **kw)
        return torch.cat([y.flatten(), state.h.flatten()])

    weights = torch.cat([dy.flatten(), torch.randn(h0.numel(), dtype=torch.float64)])
    got = _values_and_grads(run, [x, g, h0], weights, DEVICE)
    for n, (lo, hi) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        y_ref, h_ref = oracle(x[:, lo:hi], g[:, lo:hi], 16, 3, h0[n : n + 1].double(), pos0[n : n + 1])
        _assert_close32(got[0][: x.numel()].view_as(x)[:, lo:hi], y_ref, f"y of sequence {n}")
        _assert_close32(got[0][x.numel() :].view_as(h0)[n : n + 1], h_ref, f"final state of sequence {n}")
    def run_oracle(a, b, h):
        """Same output layout as ``run``: every sequence's y in token order, then every final state."""
        outs = [oracle(a[:, lo:hi], b[:, lo:hi], 16, 3, h[n : n + 1], pos0[n : n + 1]) for n, (lo, hi) in
                enumerate(zip(cu[:-1].tolist(), cu[1:].tolist()))]
        return torch.cat([o[0].flatten() for o in outs] + [o[1].flatten() for o in outs])

    ref = _values_and_grads(run_oracle, [x.double(), g.double(), h0.double()], weights)
    for name, a, b in zip(("dx", "dlog_gates", "dh0"), got[1:], ref[1:]):
        _assert_close32(a, b, name)

    heads, groups, dim = 4, 2, 16
    proj = torch.randn(2, 45, heads + 2 * groups * dim + heads * dim)
    kw = dict(num_heads=heads, head_dim=dim, num_gate_groups=groups, block_len=16, window_blocks=2, decay_cap=0.9)
    dout = torch.randn(2, 45, heads * dim, dtype=torch.float64)
    got = _values_and_grads(lambda p: triton_ops.phalanx_core_triton(p, **kw), [proj], dout, DEVICE)
    ref = _values_and_grads(lambda p: phalanx_core_torch(p, **kw), [proj.double()], dout)
    for name, a, b in zip(("out", "dproj"), got, ref):
        _assert_close32(a, b, f"fused core {name}")


def test_config_with_more_heads_per_program_than_heads(monkeypatch: pytest.MonkeyPatch) -> None:
    """A launch configuration tuned for many heads still covers every head of a 2-head input."""
    wide = {"kernel": "scan", "NB": 16, "HB": 8, "num_warps": 1}
    monkeypatch.setattr(triton_ops, "launch_config", lambda h, d, bl: {"fwd": wide, "bwd": wide})
    torch.manual_seed(14)
    x, g = torch.randn(1, 20, 2, 16), sharp_gates(1, 20, 2)
    y = triton_ops.swr_triton(x.to(DEVICE), g.to(DEVICE)).cpu()
    _assert_close32(y.double(), oracle(x, g, 16, 2)[0], "y")
