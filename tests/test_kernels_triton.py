"""The Triton SWR and fused-core kernels: under ``TRITON_INTERPRET=1`` on CPU tensors, or on CUDA when present.

The entry points of ``phalanx_kernels.triton_ops`` are called directly (the public API sends CPU tensors
to PyTorch). Reference: the float64 oracle of ``swr_oracle`` (``swr_oracle`` for the SWR, ``core_oracle``
for the fused core), gradients by autograd through it. Shapes stay small: the interpreter runs every
program in numpy.
"""

from __future__ import annotations

import pytest
import torch

from phalanx_kernels.swr_torch import phalanx_core_torch, swr_step, swr_torch
from phalanx_kernels import SWRState
from swr_oracle import core_oracle, cu_seqlens_of, make_inputs, swr_oracle

triton_ops = pytest.importorskip("phalanx_kernels.triton_ops", reason="needs triton")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
FP32_REL = 2e-5  # ||got - ref|| / ||ref|| for fp32 inputs, on top of the elementwise check
FP16_REL = 1e-2  # ||got - ref|| / ||ref|| for fp16 inputs (16-bit storage, fp32 or tf32 arithmetic)


def assert_matches(got: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, name: str) -> None:
    """fp32: elementwise with the absolute slack scaled to the tensor's magnitude, and relative norm error;
    fp16: relative norm error."""
    got, ref = got.double().cpu(), ref.double().cpu()
    err = float((got - ref).norm() / ref.norm().clamp_min(1e-30))
    tol = FP16_REL if dtype == torch.float16 else FP32_REL
    assert err <= tol, f"{name}: relative error {err:.2e} > {tol:.0e}"
    if dtype == torch.float32:
        atol = 1e-5 * max(1.0, float(ref.abs().max()))
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=atol, msg=lambda m: f"{name}: {m}")


def values_and_grads(fn, inputs: list[torch.Tensor], weights: torch.Tensor, device: str = "cpu") -> list[torch.Tensor]:
    """fn(*inputs) on ``device`` and the gradients of sum(fn(...) * weights) for every input, as CPU float64."""
    leaves = [t.detach().to(device).requires_grad_() for t in inputs]
    out = fn(*leaves)
    (out.double() * weights.to(device)).sum().backward()
    return [out.detach().double().cpu()] + [leaf.grad.double().cpu() for leaf in leaves]


@pytest.mark.parametrize(
    "shape,block_len,window,gates,dtype",
    [
        ((1, 1, 2, 16), 16, 2, "sharp", torch.float32),
        ((1, 17, 2, 16), 16, 2, "near1", torch.float32),
        ((2, 37, 4, 16), 16, 2, "sharp", torch.float32),
        ((2, 37, 4, 16), 16, 2, "sharp", torch.float16),
        ((1, 300, 2, 32), 16, 3, "near1", torch.float32),  # two programs: the halo carries across the chunk boundary
        ((1, 300, 2, 32), 16, 3, "near1", torch.float16),
        ((2, 70, 2, 48), 32, 1, "sharp", torch.float32),
        ((2, 70, 2, 48), 32, 1, "sharp", torch.float16),
        ((1, 100, 2, 16), 32, 3, "near1", torch.float32),
        ((1, 100, 2, 16), 64, 2, "near1", torch.float32),
        ((1, 100, 2, 16), 64, 2, "near1", torch.float16),
        ((1, 70, 2, 16), 64, 1, "sharp", torch.float32),
    ],
)
def test_forward_backward_against_oracle(shape, block_len: int, window: int, gates: str, dtype: torch.dtype) -> None:
    torch.manual_seed(sum(shape) + window)
    x, g = make_inputs(*shape, gates=gates, seed=sum(shape) + window)
    dy = torch.randn(shape, dtype=torch.float64)
    got = values_and_grads(
        lambda a, b: triton_ops.swr_triton(a, b, block_len=block_len, window_blocks=window),
        [x.to(dtype), g.to(dtype)], dy, DEVICE,
    )
    ref = values_and_grads(lambda a, b: swr_oracle(a, b, block_len, window)[0], [x, g], dy)
    for name, a, b in zip(("y", "dx", "dlog_gates"), got, ref):
        assert_matches(a, b, dtype, name)


def check_packed_against_oracle(
    lengths, pos0, window: int, gates: str, dtype: torch.dtype, seed: int, cu_dtype: torch.dtype = torch.int32
) -> None:
    """Packed sequences (cu_seqlens), each continuing from a random state at phase ``pos0 % 16`` (zero state
    and no ``initial_state`` when ``pos0`` is None): outputs, final states, positions and the gradients of
    x, log_gates and the initial state equal those of the oracle run on each sequence alone."""
    torch.manual_seed(seed)
    cu = cu_seqlens_of(lengths, cu_dtype)
    bounds = list(zip(cu[:-1].tolist(), cu[1:].tolist()))
    x, g = make_inputs(1, sum(lengths), 2, 16, gates=gates, seed=seed)
    h0 = torch.randn(len(lengths), 2, window, 16, dtype=torch.float64) if pos0 is not None else None
    pos = pos0 if pos0 is not None else torch.zeros(len(lengths), dtype=torch.long)
    weights = torch.randn(x.numel() + len(lengths) * 2 * window * 16, dtype=torch.float64)

    def run_triton(a, b, *h):
        state = SWRState(h[0], pos.to(a.device)) if h else None
        y, fin = triton_ops.swr_triton(a, b, block_len=16, window_blocks=window, cu_seqlens=cu.to(a.device),
                                       initial_state=state, output_final_state=True)
        assert fin.pos.tolist() == (pos + torch.tensor(lengths)).tolist()
        return torch.cat([y.flatten(), fin.h.flatten()])

    def run_oracle(a, b, *h):
        """Same layout as ``run_triton``: every sequence's y in token order, then every final state."""
        outs = [swr_oracle(a[:, lo:hi], b[:, lo:hi], 16, window, h[0][n : n + 1] if h else None, pos[n : n + 1])
                for n, (lo, hi) in enumerate(bounds)]
        return torch.cat([o[0].flatten() for o in outs] + [o[1].flatten() for o in outs])

    inputs = [x, g] + ([h0] if h0 is not None else [])
    got = values_and_grads(run_triton, [t.to(dtype) for t in inputs[:2]] + [t.float() for t in inputs[2:]],
                           weights, DEVICE)
    ref = values_and_grads(run_oracle, inputs, weights)
    for name, a, b in zip(("y and final state", "dx", "dlog_gates", "dh0"), got, ref):
        assert_matches(a, b, dtype, name)


@pytest.mark.parametrize(
    "lengths,pos0,window,gates,dtype,cu_dtype",
    [
        ([5, 35, 1, 90], None, 3, "sharp", torch.float32, torch.int32),  # from zero state: each sequence alone
        ([40, 3, 70], torch.tensor([5, 16, 30]), 2, "near1", torch.float32, torch.int32),
        ([1, 20, 45, 9], torch.tensor([0, 3, 16, 21]), 3, "sharp", torch.float32, torch.int64),
        ([1, 20, 45, 9], torch.tensor([0, 3, 16, 21]), 3, "sharp", torch.float16, torch.int64),
    ],
)
def test_varlen_phase_initial_and_final_state(lengths, pos0, window: int, gates: str, dtype, cu_dtype) -> None:
    check_packed_against_oracle(lengths, pos0, window, gates, dtype, seed=sum(lengths), cu_dtype=cu_dtype)


@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_max_seqlen_from_the_caller_gives_the_same_result(impl: str) -> None:
    """A caller's `max_seqlen` (the model derives it once per forward) replaces the host reads of `cu_seqlens`
    without changing y or the final state, from a zero or an initial state."""
    torch.manual_seed(7)
    lengths = [1, 20, 45, 9]
    cu = torch.tensor([0, 1, 21, 66, 75], device=DEVICE)
    x = torch.randn(1, sum(lengths), 2, 16, device=DEVICE)
    g = torch.nn.functional.logsigmoid(torch.randn(1, sum(lengths), 2, device=DEVICE) + 2)
    h0 = SWRState(torch.randn(4, 2, 3, 16, device=DEVICE), torch.tensor([0, 3, 16, 21], device=DEVICE))
    fn = triton_ops.swr_triton if impl == "triton" else swr_torch
    for initial in (None, h0):
        kw = dict(window_blocks=3, cu_seqlens=cu, initial_state=initial, output_final_state=True)
        (y, fin), (ref_y, ref_fin) = fn(x, g, max_seqlen=45, **kw), fn(x, g, **kw)
        torch.testing.assert_close(y, ref_y, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(fin.h, ref_fin.h, atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="max_seqlen must be an int in"):
        fn(x, g, cu_seqlens=cu, max_seqlen=0)


@pytest.mark.parametrize("splits", [(5, 40, 61), (16, 32)])
def test_chunked_prefill_then_steps_equals_full_pass(splits: tuple[int, ...]) -> None:
    """Triton prefill chunks (initial and final states) then PyTorch steps: fp32 max abs diff <= 1e-5, near-1 gates."""
    x, g = make_inputs(2, 70, 2, 16, gates="near1", dtype=torch.float32, seed=8)
    x, g = x.to(DEVICE), g.to(DEVICE)
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


def _core_inputs(heads: int, groups: int, seqlen: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(2, seqlen, heads + 2 * groups * 16 + heads * 16, generator=gen, dtype=torch.float64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("heads,groups,cap,with_state", [(4, 4, None, True), (4, 2, 0.9, False)])
def test_fused_core_against_oracle(dtype, heads: int, groups: int, cap: float | None, with_state: bool) -> None:
    """Gate groups, decay cap, initial state at two phases and final state; output and all gradients."""
    torch.manual_seed(9)
    proj = _core_inputs(heads, groups, 41, seed=9)
    h0, pos = torch.randn(2, heads, 2, 16, dtype=torch.float64), torch.tensor([7, 32])
    kw = dict(num_heads=heads, head_dim=16, num_gate_groups=groups, block_len=16, window_blocks=2, decay_cap=cap)
    weights = torch.randn(proj.shape[0] * 41 * heads * 16 + (h0.numel() if with_state else 0), dtype=torch.float64)

    def run_triton(p, *h):
        if not with_state:
            return triton_ops.phalanx_core_triton(p, **kw).flatten()
        out, fin = triton_ops.phalanx_core_triton(p, initial_state=SWRState(h[0], pos.to(p.device)),
                                                  output_final_state=True, **kw)
        return torch.cat([out.flatten(), fin.h.flatten()])

    def run_oracle(p, *h):
        out, fin = core_oracle(p, heads, 16, groups, 16, 2, cap, *((h[0], pos) if with_state else ()))
        return torch.cat([out.flatten(), fin.flatten()]) if with_state else out.flatten()

    state_inputs = [h0] if with_state else []
    got = values_and_grads(run_triton, [proj.to(dtype)] + [h.float() for h in state_inputs], weights, DEVICE)
    ref = values_and_grads(run_oracle, [proj] + state_inputs, weights)
    for name, a, b in zip(("out", "dproj", "dh0") if with_state else ("out", "dproj"), got, ref):
        assert_matches(a, b, dtype, name)


def test_bad_inputs_raise_in_triton_entry_points() -> None:
    x, g = torch.randn(1, 20, 2, 16), torch.zeros(1, 20, 2)
    with pytest.raises(ValueError, match="head dim"):
        triton_ops.swr_triton(torch.randn(1, 20, 2, 20), g)
    with pytest.raises(TypeError, match="cu_seqlens"):
        triton_ops.swr_triton(x, g, cu_seqlens=torch.tensor([0.0, 20.0]))
    with pytest.raises(ValueError, match="proj last dim"):
        triton_ops.phalanx_core_triton(torch.randn(1, 5, 70), num_heads=2, head_dim=16, num_gate_groups=2)
    with pytest.raises(ValueError, match="divisible"):
        triton_ops.phalanx_core_triton(torch.randn(1, 5, 99), num_heads=3, head_dim=16, num_gate_groups=2)


def test_compile_fullgraph_custom_ops_match_eager() -> None:
    """The registered custom ops trace (fake implementations, autograd) under torch.compile(fullgraph=True);
    loss and gradients match eager."""
    x, g = make_inputs(1, 40, 2, 16, dtype=torch.float32, seed=10)
    x, g = x.to(DEVICE), g.to(DEVICE)

    def f(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return triton_ops.swr_triton(a, b, block_len=16, window_blocks=2).square().sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    results = []
    for fn in (f, compiled):
        a, b = x.clone().requires_grad_(), g.clone().requires_grad_()
        loss = fn(a, b)
        loss.backward()
        results.append((loss.detach(), a.grad, b.grad))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)


def test_small_chunks_against_oracle(monkeypatch: pytest.MonkeyPatch) -> None:
    """Programs of 4 blocks (several per sequence, so every halo is exercised): packed sequences with phases
    and initial states, W = 3, forward and backward; and the fused core with gate groups and a decay cap."""
    small = {"NB": 4, "HB": 2, "num_warps": 1}
    monkeypatch.setattr(triton_ops, "launch_config", lambda h, d, bl, fused=False: {"fwd": small, "bwd": small})
    check_packed_against_oracle([30, 50], torch.tensor([7, 16]), 3, "sharp", torch.float32, seed=13)

    proj = _core_inputs(4, 2, 45, seed=13)
    kw = dict(num_heads=4, head_dim=16, num_gate_groups=2, block_len=16, window_blocks=2, decay_cap=0.9)
    dout = torch.randn(2, 45, 4 * 16, dtype=torch.float64)
    got = values_and_grads(lambda p: triton_ops.phalanx_core_triton(p, **kw), [proj.float()], dout, DEVICE)
    ref = values_and_grads(lambda p: core_oracle(p, 4, 16, 2, 16, 2, 0.9)[0], [proj], dout)
    for name, a, b in zip(("out", "dproj"), got, ref):
        assert_matches(a, b, torch.float32, f"fused core {name}")


@pytest.mark.parametrize("lengths,window", [([1, 16, 17, 50, 33], 2), ([5, 35, 1, 90, 64], 3), ([100, 7], 1),
                                            ([70, 3, 49], 4)])
def test_inference_final_state_from_the_forward_kernel(monkeypatch: pytest.MonkeyPatch, lengths, window) -> None:
    """Without autograd the forward kernel writes the final state (prefill hands it to the decode cache):
    equal to the oracle's for packed and batched sequences shorter and longer than the window, ending on and
    off block boundaries, with the last block in a later program than the first (2 blocks per program);
    the fused core's too, with gate groups and a decay cap. The PyTorch final-state path is disabled."""
    small = {"NB": 2, "HB": 2, "num_warps": 1}
    monkeypatch.setattr(triton_ops, "launch_config", lambda h, d, bl, fused=False: {"fwd": small, "bwd": small})
    monkeypatch.setattr(triton_ops, "_final_state", lambda *a, **k: pytest.fail("PyTorch final-state path used"))
    x, g = make_inputs(1, sum(lengths), 4, 16, gates="near1", seed=len(lengths))
    bounds = cu_seqlens_of(lengths).tolist()
    with torch.no_grad():
        y, fin = triton_ops.swr_triton(x.float().to(DEVICE), g.float().to(DEVICE), block_len=16,
                                       window_blocks=window, cu_seqlens=cu_seqlens_of(lengths).to(DEVICE),
                                       output_final_state=True)
        ref = [swr_oracle(x[:, lo:hi], g[:, lo:hi], 16, window) for lo, hi in zip(bounds[:-1], bounds[1:])]
        assert fin.pos.tolist() == lengths
        assert_matches(fin.h, torch.cat([r[1] for r in ref]), torch.float32, "packed final state")
        assert_matches(y, torch.cat([r[0] for r in ref], dim=1), torch.float32, "packed y")

        xb, gb = make_inputs(2, lengths[0], 4, 16, seed=3)
        _, fin = triton_ops.swr_triton(xb.float().to(DEVICE), gb.float().to(DEVICE), block_len=16,
                                       window_blocks=window, output_final_state=True)
        assert_matches(fin.h, swr_oracle(xb, gb, 16, window)[1], torch.float32, "batched final state")

        proj = _core_inputs(4, 2, lengths[0], seed=4)
        kw = dict(num_heads=4, head_dim=16, num_gate_groups=2, block_len=16, window_blocks=window, decay_cap=0.9)
        out, fin = triton_ops.phalanx_core_triton(proj.float().to(DEVICE), output_final_state=True, **kw)
        ref_out, ref_fin = core_oracle(proj, 4, 16, 2, 16, window, 0.9)
        assert_matches(fin.h, ref_fin, torch.float32, "fused core final state")
        assert_matches(out, ref_out, torch.float32, "fused core out")


@pytest.mark.parametrize("window", [1, 2, 3])
@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_zero_state_at_a_start_position_equals_each_row_unpadded(monkeypatch, impl: str, window: int) -> None:
    """`SWRState(None, -p)`: a row whose first p tokens are padding (zero inputs) starts at position -p, so its
    blocks align to its first real token: outputs and final state (position = real tokens) equal the float64
    oracle on that row alone, from the forward kernel's own final state (no PyTorch final-state path); the
    fused core too; gradients flow as without padding."""
    monkeypatch.setattr(triton_ops, "_final_state", lambda *a, **k: pytest.fail("PyTorch final-state path used"))
    pad = torch.tensor([0, 5, 16, 23])
    seqlen = 45
    real = torch.arange(seqlen)[None] >= pad[:, None]
    x, g = make_inputs(4, seqlen, 2, 16, gates="near1", seed=window)
    x, g = x * real[..., None, None], g * real[..., None]
    start = SWRState(None, -pad)
    swr = swr_torch if impl == "torch" else triton_ops.swr_triton
    with torch.no_grad():
        y, fin = swr(x.float().to(DEVICE), g.float().to(DEVICE), block_len=16, window_blocks=window,
                     initial_state=SWRState(None, start.pos.to(DEVICE)), output_final_state=True)
    assert fin.pos.tolist() == (seqlen - pad).tolist()
    for r, p in enumerate(pad.tolist()):
        ref_y, ref_h = swr_oracle(x[r:r + 1, p:], g[r:r + 1, p:], 16, window)
        assert_matches(y[r:r + 1, p:], ref_y, torch.float32, f"row {r} y")
        assert_matches(fin.h[r:r + 1], ref_h, torch.float32, f"row {r} final state")

    proj = _core_inputs(4, 2, seqlen, seed=window).repeat(2, 1, 1) * real[..., None]
    kw = dict(num_heads=4, head_dim=16, num_gate_groups=2, block_len=16, window_blocks=window, decay_cap=0.9)
    core = triton_ops.phalanx_core_triton if impl == "triton" else phalanx_core_torch
    with torch.no_grad():
        out, fin = core(proj.float().to(DEVICE), initial_state=SWRState(None, start.pos.to(DEVICE)),
                        output_final_state=True, **kw)
    for r, p in enumerate(pad.tolist()):
        ref_out, ref_h = core_oracle(proj[r:r + 1, p:], 4, 16, 2, 16, window, 0.9)
        assert_matches(out[r:r + 1, p:], ref_out, torch.float32, f"core row {r} out")
        assert_matches(fin.h[r:r + 1], ref_h, torch.float32, f"core row {r} final state")

    r, p = 3, int(pad[3])
    weights = torch.randn(1, seqlen - p, 4 * 16, dtype=torch.float64)

    def padded_row(q: torch.Tensor) -> torch.Tensor:
        full = torch.cat([q.new_zeros(1, p, q.shape[-1]), q], dim=1)
        return core(full, initial_state=SWRState(None, -pad[r:r + 1].to(q.device)), **kw)[:, p:]

    got = values_and_grads(padded_row, [proj[r:r + 1, p:].float()], weights, DEVICE)
    ref = values_and_grads(lambda q: core_oracle(q, 4, 16, 2, 16, window, 0.9)[0], [proj[r:r + 1, p:]], weights)
    for name, a, b in zip(("out", "dproj"), got, ref):
        assert_matches(a, b, torch.float32, f"padded row {name}")


def test_config_with_more_heads_per_program_than_heads(monkeypatch: pytest.MonkeyPatch) -> None:
    """A launch configuration tuned for many heads still covers every head of a 2-head input."""
    wide = {"NB": 16, "HB": 8, "num_warps": 1}
    monkeypatch.setattr(triton_ops, "launch_config", lambda h, d, bl, fused=False: {"fwd": wide, "bwd": wide})
    x, g = make_inputs(1, 20, 2, 16, seed=14)
    y = triton_ops.swr_triton(x.float().to(DEVICE), g.float().to(DEVICE))
    assert_matches(y, swr_oracle(x, g, 16, 2)[0], torch.float32, "y")
