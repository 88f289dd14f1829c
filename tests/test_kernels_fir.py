"""The Triton causal depthwise FIR of the Hyena mixers (``phalanx_kernels.fir_ops``): under ``TRITON_INTERPRET=1``
on CPU tensors, or on CUDA when present; the `gpu`-marked tests run realistic shapes in bf16 on the GPU machine.

Reference: ``fir_reference``, a float64 direct sum over taps per sequence written here (not the mixer's code);
gradients by autograd through it. CPU shapes stay tiny: the interpreter runs every program in numpy.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from modeling_phalanx import PhalanxConfig
from modeling_phalanx.hyena_phalanx import HyenaState, PhalanxHyenaMixer

fir_ops = pytest.importorskip("phalanx_kernels.fir_ops", reason="needs triton")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
REL = {torch.float32: 2e-6, torch.float16: 3e-3, torch.bfloat16: 2e-2}  # ||got - ref|| / ||ref||


def fir_reference(
    x: torch.Tensor, weight: torch.Tensor, lengths: list[int], init: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 ``y[t] = sum_k weight[:, k] * x[t - k]`` over each sequence of the flattened rows of x (B, T, C),
    with the inputs before a sequence from ``init`` (N, C, K - 1) or zeros; returns y (B, T, C) and the last
    K - 1 inputs of every sequence (N, C, K - 1)."""
    channels, taps = weight.shape
    flat = x.reshape(-1, channels).double()
    outs, finals, start = [], [], 0
    for n, length in enumerate(lengths):
        before = flat.new_zeros(taps - 1, channels) if init is None else init[n].double().t()
        full = torch.cat([before, flat[start : start + length]])  # (K - 1 + L, C): position p at row K - 1 + p
        y = flat.new_zeros(length, channels)
        for k in range(taps):
            y = y + weight[:, k].double() * full[taps - 1 - k : taps - 1 - k + length]
        outs.append(y)
        finals.append(full[full.shape[0] - (taps - 1) :].t())
        start += length
    return torch.cat(outs).view(x.shape), torch.stack(finals)


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    got, ref = got.detach().double().cpu(), ref.detach().double().cpu()
    return float((got - ref).norm() / ref.norm().clamp_min(1e-30))


def assert_close(got: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, name: str) -> None:
    """Relative norm error within the dtype's tolerance; fp32 also elementwise."""
    got, ref = got.detach(), ref.detach()
    err = rel_err(got, ref)
    assert err <= REL[dtype], f"{name}: relative error {err:.2e} > {REL[dtype]:.0e}"
    if dtype == torch.float32:
        atol = 1e-5 * max(1.0, float(ref.abs().max()))
        torch.testing.assert_close(got.detach().double().cpu(), ref.detach().double().cpu(), rtol=1e-4, atol=atol)


def run_case(
    shape: tuple[int, int, int], taps: int, dtype: torch.dtype, lengths: list[int] | None, with_init: bool,
    weight_dtype: torch.dtype = torch.float32, seed: int = 0,
) -> None:
    """Outputs, final states and the gradients of x, weight (and initial state) against ``fir_reference`` run on
    the same (rounded) inputs."""
    gen = torch.Generator().manual_seed(seed)
    batch, seqlen, channels = shape
    packed = lengths is not None
    lengths = lengths if packed else [seqlen] * batch
    x = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    w = (torch.randn(channels, taps, generator=gen, dtype=torch.float64) / taps**0.5).to(weight_dtype)
    init = torch.randn(len(lengths), channels, taps - 1, generator=gen, dtype=torch.float64).to(dtype)
    dy = torch.randn(shape, generator=gen, dtype=torch.float64)
    dfinal = torch.randn(len(lengths), channels, taps - 1, generator=gen, dtype=torch.float64)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32) if packed else None

    def grads(fn, dev, *tensors):
        leaves = [t.detach().to(dev).requires_grad_() for t in tensors]
        y, final = fn(*leaves)
        ((y.double() * dy.to(dev)).sum() + (final.double() * dfinal.to(dev)).sum()).backward()
        return [y, final] + [leaf.grad for leaf in leaves]

    inputs = (x, w, init) if with_init else (x, w)
    got = grads(
        lambda a, b, c=None: fir_ops.causal_fir(
            a, b, cu_seqlens=None if cu is None else cu.to(DEVICE), initial_state=c, output_final_state=True
        ),
        DEVICE, *inputs,
    )
    ref = grads(lambda a, b, c=None: fir_reference(a, b, lengths, c), "cpu", *(t.double() for t in inputs))
    assert got[0].dtype == dtype and got[1].dtype == dtype and got[3].dtype == weight_dtype
    for name, a, b in zip(("y", "final", "dx", "dweight", "dinit"), got, ref):
        assert_close(a, b, dtype, name)


@pytest.mark.parametrize(
    "shape,taps,dtype",
    [
        ((2, 13, 5), 7, torch.float32),  # Hyena-SE, odd length
        ((2, 13, 5), 7, torch.float16),
        ((1, 5, 3), 7, torch.float32),  # shorter than the filter
        ((1, 70, 70), 3, torch.float32),  # featurizer; two row blocks and two channel blocks
        ((1, 150, 4), 128, torch.float32),  # Hyena-MR: taps span several row blocks
        ((1, 150, 4), 128, torch.float16),
    ],
)
def test_matches_float64_reference(shape, taps: int, dtype: torch.dtype) -> None:
    run_case(shape, taps, dtype, None, with_init=False, seed=sum(shape) + taps)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("with_init", [False, True])
def test_packed_sequences_do_not_leak(dtype: torch.dtype, with_init: bool) -> None:
    # Sequences shorter than the filter, of one token, and one crossing the boundary between the two rows.
    run_case((2, 14, 6), 7, dtype, [3, 10, 1, 9, 5], with_init, seed=3)


@pytest.mark.parametrize("shape", [(3, 4, 5), (2, 13, 5), (2, 1, 5)])
def test_continuation_and_weight_in_input_dtype(shape: tuple[int, int, int]) -> None:
    """Rows continued from their initial states (shorter than the filter, longer, one token), fp16 taps: the taps'
    gradient comes back in their dtype."""
    run_case(shape, 7, torch.float16, None, with_init=True, weight_dtype=torch.float16, seed=5)


@pytest.mark.parametrize("taps_outer", [False, True])
@pytest.mark.parametrize("taps,lengths", [(3, None), (7, [3, 10, 1, 9, 5]), (12, [20, 8])])
def test_filter_gradient_launches_match_float64(taps: int, lengths: list[int] | None, taps_outer: bool) -> None:
    """The filter-gradient kernel in both loop orders and an uneven launch (tiles of 16 rows x 16 channels, taps in
    two blocks past 8, chunks cut mid-sequence) against the float64 gradient, packed sequences included: what
    ``benchmarks/sweep_fir.py`` may pick on the GPU."""
    gen = torch.Generator().manual_seed(taps)
    x, dy = (torch.randn(2, 14, 20, generator=gen, dtype=torch.float64) for _ in range(2))
    w = torch.randn(20, taps, generator=gen, dtype=torch.float64, requires_grad=True)
    (fir_reference(x, w, lengths or [14, 14])[0] * dy).sum().backward()
    cu = None if lengths is None else torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], device=DEVICE)
    got = fir_ops._launch_dw(x.float().to(DEVICE), dy.float().to(DEVICE), taps, cu, block_t=16, block_c=16,
                             num_warps=2, chunks=3, taps_outer=taps_outer)
    assert_close(got, w.grad, torch.float32, "dweight")


def hyena_reference(proj: torch.Tensor, featurizer: torch.Tensor, weight: torch.Tensor, lengths: list[int]):
    """float64 Hyena core ``q * (h * (k * v))`` from the FIR reference (featurizers on proj, then the filter)."""
    q, k, v = fir_reference(proj, featurizer, lengths)[0].chunk(3, dim=-1)
    return q * fir_reference(k * v, weight, lengths)[0]


@pytest.mark.parametrize(
    "shape,lengths,taps,groups,dtype",
    [
        ((2, 13, 15), None, 7, 5, torch.float32),
        ((2, 13, 15), None, 7, 5, torch.float16),
        ((2, 14, 18), [3, 10, 1, 9, 5], 7, 3, torch.float32),  # packed, one sequence crossing rows, groups of 2
        ((1, 70, 210), [2, 68], 40, 70, torch.float32),  # MR-like; two row and two channel blocks
        # Groups of 16 channels: up to 8 taps the scan, up to 32 the direct kernels; past them the tensor-core passes,
        # the forward in one pass (halos of 64 and 128 rows) and, past 129 taps, in two (four Toeplitz blocks).
        ((1, 150, 96), [3, 80, 67], 7, 2, torch.float32),
        ((1, 150, 96), [3, 80, 67], 7, 2, torch.float16),
        ((1, 150, 96), [3, 80, 67], 40, 2, torch.float32),
        ((1, 150, 96), [3, 80, 67], 40, 2, torch.float16),
        ((2, 100, 96), [150, 1, 49], 128, 2, torch.float32),
        ((1, 200, 96), [190, 10], 150, 2, torch.float32),
        ((3, 37, 96), None, 40, 2, torch.float32),  # rows of the batch, tiles spanning two of them
        ((3, 37, 96), None, 150, 2, torch.float16),
    ],
)
def test_fused_hyena_core_matches_float64_reference(shape, lengths, taps: int, groups: int, dtype) -> None:
    gen = torch.Generator().manual_seed(taps + shape[1])
    width = shape[-1] // 3
    proj = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    feat = torch.randn(3 * width, 3, generator=gen, dtype=torch.float64) / 3**0.5
    w = torch.randn(groups, taps, generator=gen, dtype=torch.float64) / taps**0.5
    dy = torch.randn(*shape[:-1], width, generator=gen, dtype=torch.float64)
    cu = None if lengths is None else torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], device=DEVICE)

    def reference(a, b, c):
        return hyena_reference(a, b, c.repeat_interleave(width // groups, 0), lengths or [shape[1]] * shape[0])

    results = []
    for fn, dev, cast in (
        (lambda a, b, c: fir_ops.hyena_core(a, b, c, cu_seqlens=cu), DEVICE, (dtype, torch.float32, torch.float32)),
        (reference, "cpu", (torch.float64,) * 3),
    ):
        leaves = [t.detach().to(dev, ct).requires_grad_() for t, ct in zip((proj, feat, w), cast)]
        y = fn(*leaves)
        (y.double() * dy.to(dev)).sum().backward()
        results.append([y] + [leaf.grad for leaf in leaves])
    assert results[0][0].dtype == dtype
    for name, a, b in zip(("y", "dproj", "dfeaturizer", "dweight"), *results):
        assert_close(a, b, dtype, name)


@pytest.mark.parametrize(
    "shape,lengths,taps,feat_taps,rows_per_program,unroll",
    [
        ((2, 45, 12), None, 7, 3, 16, 4),  # three chunks a row, the last partial: halos and tails across chunks
        ((1, 37, 6), None, 8, 3, 8, 2),  # the longest scanned filter, chunks shorter than the halo plus tail
        ((3, 11, 6), None, 1, 1, 4, 4),  # one tap each: no history
        ((2, 23, 6), None, 3, 2, 8, 8),
        ((1, 47, 12), [5, 0, 30, 12], 7, 3, 16, 4),  # packed (forward only scans; an empty sequence)
        ((2, 20, 6), None, 7, 4, 16, 4),  # four featurizer taps: past the scan, the two-pass kernels
        ((2, 20, 6), None, 9, 3, 16, 4),  # nine filter taps: past the scan
    ],
)
def test_scanned_core_matches_float64_reference(shape, lengths, taps, feat_taps, rows_per_program, unroll) -> None:
    """The scan over rows (filters of up to 8 taps, featurizers of up to 3) with short chunks, so that programs
    meet inside sequences: y and all gradients against the float64 reference; past its limits the same call falls
    back to the two-pass kernels."""
    gen = torch.Generator().manual_seed(taps * 10 + feat_taps)
    width = shape[-1] // 3
    proj = torch.randn(shape, generator=gen, dtype=torch.float64)
    feat = torch.randn(3 * width, feat_taps, generator=gen, dtype=torch.float64) / feat_taps**0.5
    w = torch.randn(width // 2, taps, generator=gen, dtype=torch.float64) / taps**0.5  # pairs share a filter
    dy = torch.randn(*shape[:-1], width, generator=gen, dtype=torch.float64)
    cu = None if lengths is None else torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], device=DEVICE)
    leaves = [t.clone().requires_grad_() for t in (proj, feat, w)]
    ref = hyena_reference(leaves[0], leaves[1], leaves[2].repeat_interleave(2, 0), lengths or [shape[1]] * shape[0])
    ref_grads = torch.autograd.grad((ref * dy).sum(), leaves)
    args = (proj.float().to(DEVICE), feat.float().to(DEVICE), w.float().to(DEVICE))
    scanned = fir_ops._scans(args[2], args[1])
    assert scanned == (taps <= 8 and feat_taps <= 3)
    launch = dict(rows_per_program=rows_per_program, unroll=unroll, block_c=4, num_warps=1)
    y = (fir_ops._launch_scan_core(args[0], args[1].t().contiguous(), args[2], cu, **launch) if scanned
         else fir_ops.hyena_core(*args, cu_seqlens=cu))
    assert_close(y, ref, torch.float32, "y")
    if scanned and lengths is None:
        grads = fir_ops._launch_scan_bwd(*args, dy.float().to(DEVICE), **launch)
    else:
        leaves32 = [a.clone().requires_grad_() for a in args]
        out = fir_ops.hyena_core(*leaves32, cu_seqlens=cu)
        grads = torch.autograd.grad(out, leaves32, dy.float().to(DEVICE))
    for name, got, want in zip(("dproj", "dfeaturizer", "dweight"), grads, ref_grads):
        assert_close(got, want, torch.float32, name)


@pytest.mark.parametrize(
    "shape,lengths,taps,dtype,rows_per_program,filter16,strands,featurizer_taps",
    [
        ((2, 200, 96), None, 128, torch.float32, 64, False, 1, 3),  # four programs a row, each walking halo tiles
        ((2, 200, 96), None, 128, torch.float16, 128, True, 2, 3),  # both batch rows side by side
        ((3, 150, 96), None, 128, torch.float16, 64, False, 2, 3),  # two strands, the second program's half empty
        ((1, 300, 96), None, 129, torch.float16, 128, False, 4, 3),  # the longest filter: three Toeplitz blocks
        # Two blocks, rows shorter than a tile, a strand empty; featurizer taps reaching past a 4-row phase group.
        ((3, 37, 96), None, 40, torch.float16, 64, False, 4, 6),  # (fp32 tiles at 4 strands overflow shared memory)
        ((1, 512, 96), None, 129, torch.float16, 64, True, 4, 1),  # one sequence cut into 4 segments side by side
        ((2, 384, 96), None, 100, torch.float32, 128, False, 4, 2),  # 2 batch rows x 2 segments of 3 tiles
        ((1, 640, 96), None, 128, torch.float16, 256, False, 2, 3),  # 2 segments of 5 tiles, a program's rows past one
        ((1, 331, 96), [3, 0, 140, 61, 127], 128, torch.float32, 64, False, 4, 6),  # packed: tiles reach across starts
        ((1, 331, 96), [3, 0, 140, 61, 127], 128, torch.float16, 64, True, 1, 3),
        ((1, 331, 96), [200, 131], 100, torch.float16, 192, False, 2, 3),
        # Packed: several sequences starting in one tile, one reaching over three tiles, programs of two tiles.
        ((1, 277, 96), [1, 5, 70, 0, 2, 130, 9, 60], 129, torch.float32, 128, False, 1, 3),
        ((1, 277, 96), [1, 5, 70, 0, 2, 130, 9, 60], 129, torch.float16, 128, True, 1, 2),
    ],
)
def test_mr_walk_matches_float64_reference(shape, lengths, taps: int, dtype: torch.dtype, rows_per_program,
                                           filter16: bool, strands: int, featurizer_taps: int) -> None:
    """The Hyena-MR walks over 64-row tiles (filters of 33-129 taps shared by 16 channels), forward and backward,
    with programs shorter than the rows, so that programs rebuild z (and, backward, dm) over halos on both sides
    and meet inside sequences, against the float64 reference and its autograd; packed rows where a tile's reach
    holds sequence starts or ends take the masked Toeplitz blocks (one strand whatever is asked). Strands put
    batch rows side by side in a program's tiles, some of them past the last row, or segments of a batch row when
    there are fewer rows than strands (halos then reach into the segments before and after). A filter stored in
    the tiles' 16-bit dtype enters the dots as one part. Featurizers of 1-6 taps read the tiles' four row phases
    and the rows before each phase group."""
    gen = torch.Generator().manual_seed(taps + shape[1])
    width = shape[-1] // 3
    proj = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    feat = torch.randn(3 * width, featurizer_taps, generator=gen, dtype=torch.float64) / featurizer_taps**0.5
    w = torch.randn(width // 16, taps, generator=gen, dtype=torch.float64) / taps**0.5
    dy = torch.randn(*shape[:-1], width, generator=gen, dtype=torch.float64).to(dtype)
    w = w.to(dtype if filter16 else torch.float32)
    cu = None if lengths is None else torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], device=DEVICE)
    leaves = [t.double().requires_grad_() for t in (proj, feat, w)]
    ref = hyena_reference(leaves[0], leaves[1], leaves[2].repeat_interleave(16, 0), lengths or [shape[1]] * shape[0])
    ref_grads = torch.autograd.grad((ref * dy.double()).sum(), leaves)
    args = proj.to(DEVICE), feat.float().to(DEVICE), w.to(DEVICE)
    launch = dict(rows_per_program=rows_per_program, strands=strands, num_warps=4)
    y = fir_ops._launch_mr_core(args[0], args[1].t().contiguous(), args[2], cu, **launch)
    assert y.dtype == dtype
    assert_close(y, ref, dtype, "y")
    grads = fir_ops._launch_mr_bwd(*args, dy.to(DEVICE), cu, **launch)
    for name, got, want in zip(("dproj", "dfeaturizer", "dweight"), grads, ref_grads):
        assert_close(got, want, dtype, name)
    for launcher, extra in ((fir_ops._launch_mr_core, ()), (fir_ops._launch_mr_bwd, (dy.to(DEVICE),))):
        feat_arg = args[1] if extra else args[1].t().contiguous()
        with pytest.raises(ValueError, match="rows_per_program must be a multiple of 64"):
            launcher(args[0], feat_arg, args[2], *extra, cu, rows_per_program=100)
        with pytest.raises(ValueError, match="strands must be a power of two, got 3"):
            launcher(args[0], feat_arg, args[2], *extra, cu, strands=3)


def test_mr_forward_falls_back_to_the_triton_walk_when_gluon_fails(monkeypatch) -> None:
    """Where the Gluon forward is chosen but fails (Gluon's API moves between Triton releases), ``hyena_core`` warns
    once, returns the Triton walk's output, and takes the Triton walk from then on. Batch rows of 70 (not a multiple
    of 16) ask for the unpermuted walk."""
    calls = []

    def broken(*args, **kwargs):
        calls.append(kwargs)
        raise RuntimeError("no such Gluon builtin")

    monkeypatch.setattr(fir_ops, "_launch_mr_gluon", broken)
    monkeypatch.setattr(fir_ops, "_GLUON_FAILED", [])
    monkeypatch.setattr(fir_ops, "_mr_gluon_eligible", lambda *a: not fir_ops._GLUON_FAILED)
    gen = torch.Generator().manual_seed(5)
    proj = torch.randn(1, 70, 96, generator=gen).to(DEVICE)
    feat = (torch.randn(96, 3, generator=gen) / 3**0.5).to(DEVICE)
    w = (torch.randn(2, 40, generator=gen) / 40**0.5).to(DEVICE)
    with pytest.warns(RuntimeWarning, match="Gluon Hyena-MR forward failed .RuntimeError: no such Gluon builtin"):
        y = fir_ops.hyena_core(proj, feat, w)
    torch.testing.assert_close(y, fir_ops._launch_mr_core(proj, feat.t().contiguous(), w, None), rtol=0, atol=0)
    fir_ops.hyena_core(proj, feat, w)
    assert calls == [{"permuted": False, "warpgroups": 1}] and len(fir_ops._GLUON_FAILED) == 1


def test_mr_forward_picks_the_gluon_walk_by_filter_width_and_rows(monkeypatch) -> None:
    """A bf16 filter over channels a multiple of 64 takes the warp-specialized walk (64 channels a program, rows in
    their order); otherwise (an fp32 filter, or 32 channels) batch rows of a multiple of 16 take the 16-channel
    walk's permuted rows and others its unpermuted rows, which the permuted walk refuses. All measured bitwise equal
    on the GPU; the test records the options (no walk runs)."""
    calls = []

    def recording(proj, feat_t, weight, permuted=False, warpgroups=1):
        calls.append((proj.shape[-1] // 3, weight.dtype, proj.shape[1], permuted, warpgroups))
        return proj.new_zeros(*proj.shape[:-1], proj.shape[-1] // 3)

    monkeypatch.setattr(fir_ops, "_launch_mr_gluon", recording)
    monkeypatch.setattr(fir_ops, "_mr_gluon_eligible", lambda *a: True)
    gen = torch.Generator().manual_seed(6)
    expected = []
    for width, filter_dtype, seqlen, permuted, warpgroups in (
        (32, torch.float32, 64, True, 1), (32, torch.float32, 48, True, 1), (32, torch.float32, 70, False, 1),
        (32, torch.float32, 17, False, 1), (32, torch.bfloat16, 64, True, 1), (64, torch.float32, 64, True, 1),
        (64, torch.bfloat16, 70, False, 4), (128, torch.bfloat16, 48, False, 4),
    ):
        feat = (torch.randn(3 * width, 3, generator=gen) / 3**0.5).to(DEVICE)
        w = (torch.randn(width // 16, 40, generator=gen) / 40**0.5).to(DEVICE, filter_dtype)
        proj = torch.randn(2, seqlen, 3 * width, generator=gen).to(DEVICE, torch.bfloat16)
        fir_ops.hyena_core(proj, feat, w)
        expected.append((width, filter_dtype, seqlen, permuted, warpgroups))
    assert calls == expected


def test_mr_gluon_forward_is_chosen_only_on_hopper_for_bf16_unpacked_rows() -> None:
    """The Gluon walk needs an sm_90 GPU, bf16 rows, a bf16 or fp32 filter, rows that are not packed and at least 16
    a batch row, and featurizers of up to 3 taps; anything else keeps the Triton walk."""
    proj = torch.zeros(1, 64, 96, dtype=torch.bfloat16, device=DEVICE)
    feat_t, w = torch.zeros(3, 96, device=DEVICE), torch.zeros(2, 40, dtype=torch.bfloat16, device=DEVICE)
    hopper = DEVICE == "cuda" and torch.cuda.get_device_capability() == (9, 0) and fir_ops._launch_mr_gluon is not None
    assert fir_ops._mr_gluon_eligible(proj, feat_t, w, None) == hopper
    assert fir_ops._mr_gluon_eligible(proj, feat_t, w.float(), None) == hopper
    cu = torch.tensor([0, 64], device=DEVICE)
    for args in ((proj.half(), feat_t, w.half(), None), (proj.float(), feat_t, w.float(), None), (proj, feat_t, w, cu),
                 (proj, torch.zeros(4, 96, device=DEVICE), w, None), (proj[:, :15], feat_t, w, None)):
        assert not fir_ops._mr_gluon_eligible(*args)


def test_mr_gluon_launch_names_bad_arguments() -> None:
    """The Gluon walk's launcher refuses, before any copy, rows a program that its iterations do not divide (128
    rows with a bf16 filter, 64 with an fp32 one), batch rows shorter than one 16-row block, and for the permuted
    walk batch rows that are not whole 16-row blocks."""
    if fir_ops._launch_mr_gluon is None:
        pytest.skip("this Triton has no Gluon")
    proj, feat_t = torch.zeros(1, 64, 96, dtype=torch.bfloat16), torch.zeros(3, 96)
    w = torch.zeros(2, 40, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="rows_per_program must be a multiple of 128, got 192"):
        fir_ops._launch_mr_gluon(proj, feat_t, w, rows_per_program=192)
    with pytest.raises(ValueError, match="rows_per_program must be a multiple of 64, got 96"):
        fir_ops._launch_mr_gluon(proj, feat_t, w.float(), rows_per_program=96)
    with pytest.raises(ValueError, match="needs at least 16 rows a batch row, got 15"):
        fir_ops._launch_mr_gluon(proj[:, :15], feat_t, w)
    with pytest.raises(ValueError, match="permuted Gluon walk needs a multiple of 16 rows a batch row, got 40"):
        fir_ops._launch_mr_gluon(proj[:, :40], feat_t, w, permuted=True)
    with pytest.raises(ValueError, match="warpgroups must be 1, 2 or 4, got 3"):
        fir_ops._launch_mr_gluon(proj, feat_t, w, warpgroups=3)
    wide = torch.zeros(1, 64, 192, dtype=torch.bfloat16)  # 64 channels
    for args, kwargs, got in (((wide, torch.zeros(3, 192), w.float()), {}, "torch.float32 filter"),
                              ((wide, torch.zeros(3, 192), w), {"permuted": True}, "permuted=True"),
                              ((proj, feat_t, w), {}, "32 channels")):
        with pytest.raises(ValueError, match=f"warp-specialized Gluon walk needs a bf16 filter.*{got}"):
            fir_ops._launch_mr_gluon(*args, warpgroups=4, **kwargs)


GLUON_BUILD_PROBE = """
import sys
import triton
from triton.backends.compiler import GPUTarget
from triton.experimental.gluon import language as gl
from triton.experimental.gluon._runtime import GluonASTSource
from phalanx_kernels import gluon_fir
rows = 64 if sys.argv[1] == "fp32" else 128  # rows an iteration
permuted = sys.argv[2] == "permuted"
bc = 64 if sys.argv[2] == "warp-specialized" else 16  # channels a program
flat = [gl.NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=16, rank=r) for r in (3, 4, 5)]
if permuted:
    pd = f"tensordesc<bf16[1, {rows // 16}, 4, 4, 16],{flat[2]!r}>"
    yd = f"tensordesc<bf16[1, {rows // 16}, 4, 4, 16],{gluon_fir.Y_PERMUTED_LAYOUT!r}>"
else:
    pd, yd = f"tensordesc<bf16[1, 4, {rows}, {bc}],{flat[1]!r}>", f"tensordesc<bf16[1, {rows}, 16],{flat[0]!r}>"
sig = {"PD": pd, "BD": f"tensordesc<bf16[1, 4, {rows // 16}, 2, {bc}],{flat[2]!r}>", "YD": yd, "FT": "*fp32",
       "HG": "*" + sys.argv[1], "T": "i32"}
consts = {"W": 2048, "KF": 3, "K": 128, "D": 16, "L": 4096, "BT": 64, "BC": bc, "num_warps": 4, "PERM": permuted}
fn = gluon_fir._hyena_mr_gluon_kernel
if bc > 16:
    fn, consts = gluon_fir._hyena_mr_ws_kernel, {k: v for k, v in consts.items() if k != "PERM"}
sig.update(dict.fromkeys(consts, "constexpr"))
src = GluonASTSource(fn=fn, signature=sig,
                     constexprs={(list(sig).index(k),): v for k, v in consts.items()})
kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                        options={"num_warps": 4, "maxnreg": gluon_fir.MAXNREG})
print(kernel.metadata.shared)
"""


@pytest.mark.parametrize("filter_dtype,rows", [("bf16", "natural"), ("bf16", "permuted"), ("fp32", "natural"),
                                               ("fp32", "permuted"), ("bf16", "warp-specialized")])
def test_mr_gluon_walk_builds_for_hopper_with_four_programs_an_sm(filter_dtype: str, rows: str) -> None:
    """Compiled for an H100/H200 (no GPU needed; outside the interpreter, so in a subprocess), the Gluon walk builds
    under this Triton (Gluon's API moves between releases: a break shows here, not only on the GPU machine), with
    rows in their order or each 16-row block's transposed, and its shared memory lets 4 programs share an SM
    (228 KB, 1 KB of it reserved a program), as its speed assumes; the warp-specialized walk's 64-channel program
    (16 warps) fits one."""
    if fir_ops._launch_mr_gluon is None:
        pytest.skip("this Triton has no Gluon")
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-c", GLUON_BUILD_PROBE, filter_dtype, rows], env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    shared = int(run.stdout.split()[-1])
    programs = 1 if rows == "warp-specialized" else 4
    assert programs * (shared + 1024) <= 228 * 1024, shared


NEEDS_HOPPER_GLUON = pytest.mark.skipif(
    not (torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)
         and fir_ops._launch_mr_gluon is not None),
    reason="the Gluon walk runs on sm_90 with a Triton that has Gluon")


def _gluon_case(shape: tuple[int, int, int], taps: int, featurizer_taps: int, filter_dtype: torch.dtype):
    """(proj bf16, featurizer (3W, KF) float64, filter (W / 16, K) in ``filter_dtype``, float64 reference y) on the
    CPU for the Gluon walk's GPU tests: filters shared by 16 channels."""
    gen = torch.Generator().manual_seed(taps + shape[1])
    width = shape[-1] // 3
    proj = torch.randn(shape, generator=gen, dtype=torch.float64).to(torch.bfloat16)
    feat = torch.randn(3 * width, featurizer_taps, generator=gen, dtype=torch.float64) / featurizer_taps**0.5
    w = (torch.randn(width // 16, taps, generator=gen, dtype=torch.float64) / taps**0.5).to(filter_dtype)
    return proj, feat, w, hyena_reference(proj.double(), feat, w.double().repeat_interleave(16, 0),
                                          [shape[1]] * shape[0])


@pytest.mark.gpu
@NEEDS_HOPPER_GLUON
@pytest.mark.parametrize("filter_dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape,taps,featurizer_taps,rows_per_program", [
    ((2, 1000, 192), 128, 3, 256),  # a last tile past the rows, programs meeting inside a row, a partial block
    ((3, 4096, 768), 100, 2, 4096),
    ((1, 8192, 384), 65, 1, 1024),  # two Toeplitz blocks' worth of taps
    ((2, 777, 96), 129, 3, 4096),  # the longest filter, rows shorter than a program
    ((2, 40, 96), 33, 2, 128),  # rows shorter than a tile: the second tile of the only iteration is past them
])
def test_cuda_mr_gluon_walk_matches_float64(shape, taps: int, featurizer_taps: int, rows_per_program: int,
                                            filter_dtype: torch.dtype) -> None:
    """The Gluon Hyena-MR forward (H100/H200) against the float64 reference in bf16, with a bf16 filter and with an
    fp32 one (mixed-precision training's weights), and ``hyena_core`` taking it for such inputs with outputs
    bitwise equal to the Triton walk's; filters shared by 16 channels."""
    proj, feat, w, ref = _gluon_case(shape, taps, featurizer_taps, filter_dtype)
    args = proj.cuda(), feat.float().cuda(), w.cuda()
    y = fir_ops._launch_mr_gluon(args[0], args[1].t().contiguous(), args[2], rows_per_program=rows_per_program)
    assert y.dtype == torch.bfloat16
    assert_close(y, ref, torch.bfloat16, "y")
    whole = fir_ops._launch_mr_gluon(args[0], args[1].t().contiguous(), args[2])
    torch.testing.assert_close(fir_ops.hyena_core(*args), whole, rtol=0, atol=0)
    torch.testing.assert_close(whole, fir_ops._launch_mr_core(args[0], args[1].t().contiguous(), args[2], None),
                               rtol=0, atol=0)
    # A bf16 featurizer (a bf16 model's parameters) takes the same walk and gives the same y from its rounded taps.
    feat16 = args[1].bfloat16()
    torch.testing.assert_close(fir_ops.hyena_core(args[0], feat16, args[2]),
                               fir_ops._launch_mr_core(args[0], feat16.t().contiguous(), args[2], None), rtol=1e-2,
                               atol=1e-2)
    assert not fir_ops._GLUON_FAILED, fir_ops._GLUON_FAILED  # no call fell back to the Triton walk


@pytest.mark.gpu
@NEEDS_HOPPER_GLUON
@pytest.mark.parametrize("filter_dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape,taps,featurizer_taps,rows_per_program", [
    ((2, 1008, 192), 128, 3, 256),  # a last iteration past the rows, programs meeting inside a row
    ((3, 4096, 768), 100, 2, 4096),
    ((1, 8192, 384), 65, 1, 1024),
    ((2, 784, 96), 129, 3, 4096),  # the longest filter, rows shorter than a program
    ((2, 48, 96), 33, 2, 128),  # rows shorter than a tile
])
def test_cuda_permuted_mr_gluon_walk_matches_float64(shape, taps: int, featurizer_taps: int, rows_per_program: int,
                                                     filter_dtype: torch.dtype) -> None:
    """The Gluon walk with each 16-row block's rows transposed in shared memory (``permuted=True``: TMA views that
    swap the strides of rows 4 g + r, Toeplitz blocks permuted to match) gives the float64 reference's y, and the
    unpermuted walk's within one bf16 rounding (the tensor cores sum a 16-row block's products in another order)."""
    proj, feat, w, ref = _gluon_case(shape, taps, featurizer_taps, filter_dtype)
    proj, feat_t, w = proj.cuda(), feat.float().t().contiguous().cuda(), w.cuda()
    y = fir_ops._launch_mr_gluon(proj, feat_t, w, rows_per_program=rows_per_program, permuted=True)
    assert_close(y, ref, torch.bfloat16, "y")
    natural = fir_ops._launch_mr_gluon(proj, feat_t, w, rows_per_program=rows_per_program)
    torch.testing.assert_close(y.float(), natural.float(), rtol=2**-7, atol=1e-3)



@pytest.mark.gpu
@NEEDS_HOPPER_GLUON
@pytest.mark.parametrize("warpgroups", [2, 4])
@pytest.mark.parametrize("shape,taps,featurizer_taps,rows_per_program", [
    ((2, 1000, 192), 128, 3, 256),  # 64 channels: one program wide; programs meeting inside a row, a partial block
    ((3, 4096, 768), 100, 2, 8192),  # 256 channels, one program a batch row
    ((1, 8192, 384), 65, 1, 1024),  # two Toeplitz blocks' worth of taps
    ((2, 777, 384), 129, 3, 4096),  # the longest filter, rows shorter than a program
    ((2, 40, 192), 33, 2, 128),  # rows shorter than a tile
])
def test_cuda_warp_specialized_mr_gluon_walk_matches_float64(shape, taps: int, featurizer_taps: int,
                                                             rows_per_program: int, warpgroups: int) -> None:
    """The warp-specialized Gluon walk (programs of 32 or 64 channels, a partition of 4 warps for each 16, tied by
    mbarriers; bf16 filter) gives the float64 reference's y and the Triton walk's bitwise, and ``hyena_core`` takes
    it for a bf16 filter over channels a multiple of 64."""
    proj, feat, w, ref = _gluon_case(shape, taps, featurizer_taps, torch.bfloat16)
    proj, feat, w = proj.cuda(), feat.float().cuda(), w.cuda()
    feat_t = feat.t().contiguous()
    y = fir_ops._launch_mr_gluon(proj, feat_t, w, rows_per_program=rows_per_program, warpgroups=warpgroups)
    assert_close(y, ref, torch.bfloat16, "y")
    torch.testing.assert_close(y, fir_ops._launch_mr_core(proj, feat_t, w, None), rtol=0, atol=0)
    assert fir_ops._gluon_walk(shape[1], shape[-1] // 3, w) == {"permuted": False, "warpgroups": 4}
    torch.testing.assert_close(fir_ops.hyena_core(proj, feat, w), y, rtol=0, atol=0)
    assert not fir_ops._GLUON_FAILED, fir_ops._GLUON_FAILED

CARRIED_PROBE = """
import inspect, re, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from phalanx_kernels import triton_fir
types = {"P": "*bf16", "Y": "*bf16", "DY": "*bf16", "DP": "*bf16", "FT": "*fp32", "HT": "*fp32", "DHP": "*fp32",
         "DFP": "*fp32", "FIRST": "*i8", "T": "i32"}
consts = {"W": 64, "KF": 3, "K": 8, "L": 64, "U": int(sys.argv[1]), "BC": 32}
for kernel, varlen in ((triton_fir._hyena_scan_kernel, False), (triton_fir._hyena_scan_kernel, True),
                       (triton_fir._hyena_scan_bwd_kernel, None)):
    names = list(inspect.signature(kernel.fn).parameters)
    src = ASTSource(fn=kernel, signature={n: types.get(n, "constexpr") for n in names},
                    constexprs={n: {**consts, "VARLEN": varlen}[n] for n in names if n not in types})
    ttir = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 1}).asm["ttir"]
    print(re.search(r"scf\\.for .*?iter_args\\((.*?)\\) ->", ttir).group(1).count("="))
"""


@pytest.mark.parametrize("unroll", [2, 4, 8])
def test_scan_kernels_carry_every_history_through_the_row_loop(unroll: int) -> None:
    """Compiled for an H100 (no GPU needed; outside the interpreter, so in a subprocess), the scans' row loops carry
    all their histories, queues and sums: 25 in the forward (q, k, v two rows back, z seven, three queues of four
    rows loaded ahead), 29 with packed rows (and the queue of sequence starts), 87 in the backward. The
    interpreter cannot see this: on the H200 the front end once dropped the z histories that four unrolled rows
    shift into each other (they all began as one zeros tensor), and the forward came out 33% off."""
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-c", CARRIED_PROBE, str(unroll)], env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["25", "29", "87"]


def test_chunked_prefill_equals_one_pass() -> None:
    """Chunks handing their final state to the next give the outputs of one pass (the decode cache's use)."""
    torch.manual_seed(0)
    x, w = torch.randn(2, 19, 4, device=DEVICE), torch.randn(4, 7, device=DEVICE)
    full, final = fir_ops.causal_fir(x, w, output_final_state=True)
    state, pieces = None, []
    for lo, hi in ((0, 2), (2, 3), (3, 12), (12, 19)):
        y, state = fir_ops.causal_fir(x[:, lo:hi], w, initial_state=state, output_final_state=True)
        pieces.append(y)
    torch.testing.assert_close(torch.cat(pieces, 1), full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state, final)


def test_compiles_fullgraph_with_same_values_and_grads() -> None:
    torch.manual_seed(1)
    x = torch.randn(1, 16, 3, device=DEVICE)
    w, init = torch.randn(3, 7, device=DEVICE), torch.randn(3, 3, 6, device=DEVICE)
    cu = torch.tensor([0, 5, 6, 16], dtype=torch.int32, device=DEVICE)

    def fn(a, b, c):
        y, final = fir_ops.causal_fir(a, b, cu_seqlens=cu, initial_state=c, output_final_state=True)
        return (y * y).sum() + final.sum()

    results = []
    def fused(a, b, c):
        return (fir_ops.hyena_core(a.repeat(1, 1, 3), c.reshape(9, 6), b, cu_seqlens=cu) ** 2).sum()

    for f in (fn, torch.compile(fn, fullgraph=True, backend="aot_eager"),
              fused, torch.compile(fused, fullgraph=True, backend="aot_eager")):
        leaves = [t.clone().requires_grad_() for t in (x, w, init)]
        loss = f(*leaves)
        loss.backward()
        results.append([loss.detach()] + [t.grad for t in leaves])
    for eager, compiled in (results[:2], results[2:]):
        for a, b in zip(eager, compiled):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_empty_inputs() -> None:
    """No tokens: empty outputs, zero gradients, and the state passes through unchanged."""
    x, w = torch.randn(2, 0, 5, device=DEVICE, requires_grad=True), torch.randn(5, 7, device=DEVICE)
    state = torch.randn(2, 5, 6, device=DEVICE)
    y, final = fir_ops.causal_fir(x, w, initial_state=state, output_final_state=True)
    assert y.shape == (2, 0, 5) and torch.equal(final, state)
    proj = torch.randn(1, 0, 96, device=DEVICE, requires_grad=True)
    weight = torch.randn(2, 40, device=DEVICE, requires_grad=True)
    fir_ops.hyena_core(proj, torch.randn(96, 3, device=DEVICE), weight).sum().backward()
    assert proj.grad.shape == proj.shape and not weight.grad.any()


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda f: f(torch.zeros(2, 3), torch.zeros(3, 7)), "x must be a tensor of shape"),
        (lambda f: f(torch.zeros(1, 4, 3, dtype=torch.float64), torch.zeros(3, 7)), "x must be float32"),
        (lambda f: f(torch.zeros(1, 4, 3), torch.zeros(4, 7)), "weight must have shape"),
        (lambda f: f(torch.zeros(1, 4, 3), torch.zeros(3, 0)), "at least one tap"),
        (lambda f: f(torch.zeros(1, 4, 3), torch.zeros(3, 7), cu_seqlens=torch.tensor([0, 3])), "must end at"),
        (lambda f: f(torch.zeros(1, 4, 3), torch.zeros(3, 7), initial_state=torch.zeros(1, 3, 7)), "initial_state"),
    ],
)
def test_refuses_bad_arguments(call, message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        call(fir_ops.causal_fir)


def tiny_mixer(variant: str, groups: int = 4, mr_len: int = 16) -> PhalanxHyenaMixer:
    config = PhalanxConfig(
        vocab_size=32, hidden_size=16, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
        layer_types=[variant], hyena_mr_len=mr_len, hyena_filter_groups=groups, hyena_mr_decay=[0.05, 0.5],
    )
    torch.manual_seed(0)
    mixer = PhalanxHyenaMixer(config, 0)
    mixer.init_filters()
    return mixer


@pytest.mark.parametrize(
    "variant,groups,mr_len",
    [("hyena_se", 4, 16), ("hyena_mr", 4, 16), ("hyena_mr", 1, 40)],  # the last: the tensor-core pass
)
@pytest.mark.parametrize("packed,with_state", [(True, True), (True, False), (False, False)])
def test_mixer_kernel_path_equals_pytorch_path(variant: str, groups: int, mr_len: int, packed: bool,
                                               with_state: bool) -> None:
    """The mixer's kernel path (the one CUDA tensors take) on the same inputs as its PyTorch path: rows (packed or
    not) continuing a cached state and returning the new one (the FIR calls), or neither (the fused core);
    outputs, states and gradients."""
    mixer = tiny_mixer(variant, groups, mr_len).to(DEVICE)
    assert mixer.fir is not None
    proj = torch.randn(2, 11, 48, device=DEVICE, requires_grad=True)
    state = None
    if with_state:
        state = HyenaState(torch.randn(2, 48, 2, device=DEVICE), torch.randn(2, 16, mixer.filter_len - 1,
                                                                             device=DEVICE))
    cu = torch.tensor([0, 4, 11, 12, 22], device=DEVICE) if packed else None
    torch_path = (lambda *a: mixer._packed(*a)) if packed else (lambda p, s, _, w: mixer._core(p, s, None, w))
    results = []
    for path in (torch_path, mixer._kernel_path):
        proj.grad = None
        mixer.zero_grad()
        y, new = path(proj, state, cu, with_state)
        (y * torch.linspace(-1, 1, y.numel(), device=DEVICE).view_as(y)).sum().backward()
        states = [] if new is None else list(new)
        results.append([y.detach(), *states, proj.grad.clone(), mixer.filter_taps.grad.clone(), mixer.featurizer.grad])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# GPU: realistic shapes, bf16 and fp32 against float64 (skipped without CUDA).
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("taps", [7, 128])
def test_cuda_realistic_shapes_match_float64(dtype: torch.dtype, taps: int) -> None:
    """Width 2048, 16K tokens as two rows of 8K and as packed sequences; forward, dx and dweight."""
    gen = torch.Generator(device="cuda").manual_seed(taps)
    x = torch.randn(2, 8192, 2048, device="cuda", generator=gen)
    w = torch.randn(2048, taps, device="cuda", generator=gen) / taps**0.5
    dy = torch.randn(2, 8192, 2048, device="cuda", generator=gen)
    for lengths in (None, [100, 5000, 3, 3281, 8000]):
        cu = None if lengths is None else torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], device="cuda")
        xs, ws = x.detach().to(dtype).requires_grad_(), w.clone().requires_grad_()
        y, _ = fir_ops.causal_fir(xs, ws, cu_seqlens=cu)
        (y.float() * dy).sum().backward()
        xr, wr = x.to(dtype).double().requires_grad_(), w.detach().double().requires_grad_()
        yr, _ = fir_reference(xr, wr, lengths or [8192, 8192])
        (yr * dy.double()).sum().backward()
        for name, a, b in (("y", y, yr), ("dx", xs.grad, xr.grad), ("dweight", ws.grad, wr.grad)):
            err = rel_err(a, b)
            assert err <= (2e-2 if dtype == torch.bfloat16 else 2e-5), f"{name} ({lengths}): {err:.2e}"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("taps,groups", [(7, 2048), (7, 128), (128, 2048), (128, 128)])  # (128, 128): tensor cores
def test_cuda_fused_core_matches_float64(dtype: torch.dtype, taps: int, groups: int) -> None:
    """The fused Hyena core at width 2048, 16K tokens (packed), featurizers of 3 taps, filters per channel or
    shared by 16 channels; y and all gradients."""
    gen = torch.Generator(device="cuda").manual_seed(taps)
    proj = torch.randn(1, 16384, 3 * 2048, device="cuda", generator=gen).to(dtype)
    feat = torch.randn(3 * 2048, 3, device="cuda", generator=gen) / 3**0.5
    w = torch.randn(groups, taps, device="cuda", generator=gen) / taps**0.5
    dy = torch.randn(1, 16384, 2048, device="cuda", generator=gen)
    lengths = [7000, 1, 9383]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], device="cuda")
    results = []
    for fn, cast in (
        (lambda a, b, c: fir_ops.hyena_core(a, b, c, cu_seqlens=cu), (dtype, torch.float32, torch.float32)),
        (lambda a, b, c: hyena_reference(a, b, c.repeat_interleave(2048 // groups, 0), lengths), (torch.float64,) * 3),
    ):
        leaves = [t.detach().to(ct).requires_grad_() for t, ct in zip((proj, feat, w), cast)]
        y = fn(*leaves)
        (y.double() * dy.double()).sum().backward()
        results.append([y.detach()] + [leaf.grad for leaf in leaves])
    for name, a, b in zip(("y", "dproj", "dfeaturizer", "dweight"), *results):
        err = rel_err(a, b)
        assert err <= (2e-2 if dtype == torch.bfloat16 else 2e-5), f"{name}: {err:.2e}"


@pytest.mark.gpu
@pytest.mark.parametrize("taps", [7, 128])
def test_cuda_fused_core_step_captures_in_a_cuda_graph(taps: int) -> None:
    """Forward and backward of the fused core (filters shared by 16 channels) captured in one CUDA graph give the
    eager gradients on replay: no host sync in either direction (a sync fails the capture)."""
    gen = torch.Generator(device="cuda").manual_seed(taps)
    proj = torch.randn(2, 1024, 3 * 256, device="cuda", generator=gen).to(torch.bfloat16).requires_grad_()
    feat = (torch.randn(3 * 256, 3, device="cuda", generator=gen) / 3**0.5).requires_grad_()
    w = (torch.randn(16, taps, device="cuda", generator=gen) / taps**0.5).requires_grad_()
    dy = torch.randn(2, 1024, 256, device="cuda", generator=gen).to(torch.bfloat16)

    def step() -> tuple[torch.Tensor, ...]:
        return torch.autograd.grad(fir_ops.hyena_core(proj, feat, w), (proj, feat, w), dy)

    eager = step()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up off the default stream, as capture requires
        step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    graph.replay()
    torch.cuda.synchronize()
    for name, a, b in zip(("dproj", "dfeaturizer", "dweight"), captured, eager):
        assert rel_err(a, b) <= 1e-6, name


@pytest.mark.gpu
def test_cuda_model_kernel_path_matches_pytorch_path() -> None:
    """A model with SE and MR layers on CUDA: packed rows (position_ids restarting), logits and parameter
    gradients, and greedy generation through the cache, with the kernels and with the PyTorch path."""
    from modeling_phalanx import PhalanxForCausalLM

    config = PhalanxConfig(
        vocab_size=61, hidden_size=256, intermediate_size=512, num_hidden_layers=3, num_attention_heads=4,
        layer_types=["hyena_se", "hyena_mr", "full_attention"], hyena_filter_groups=16, pad_token_id=0,
        bos_token_id=1, eos_token_id=2, max_position_embeddings=1024,
    )
    torch.manual_seed(0)
    model = PhalanxForCausalLM(config).cuda()
    mixers = [m for m in model.modules() if isinstance(m, PhalanxHyenaMixer)]
    assert all(m.fir is not None for m in mixers)
    ids = torch.randint(3, 61, (2, 300), device="cuda")
    position_ids = torch.cat([torch.arange(100), torch.arange(200)]).expand(2, -1).cuda()
    results = []
    for fir in (mixers[0].fir, None):
        for m in mixers:
            m.fir = fir
        model.zero_grad()
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):  # the PyTorch path's conv1d in full fp32
            out = model(input_ids=ids, position_ids=position_ids, labels=ids)
            out.loss.backward()
            tokens = model.generate(ids[:, :37], max_new_tokens=12, do_sample=False)
        results.append([out.logits.detach(), tokens, *(p.grad for p in model.parameters())])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)


def test_mixer_kernel_path_compiles_fullgraph() -> None:
    """The mixer's training path (fused core, tensor-core passes, packed rows) traces with fullgraph=True and gives
    the eager values and gradients."""
    mixer = tiny_mixer("hyena_mr", groups=1, mr_len=40).to(DEVICE)
    cu = torch.tensor([0, 9, 22], device=DEVICE)
    proj = torch.randn(2, 11, 48, device=DEVICE)

    def fn(p):
        return (mixer._kernel_path(p, None, cu, False)[0] ** 2).sum()

    results = []
    for f in (fn, torch.compile(fn, fullgraph=True, backend="aot_eager")):
        mixer.zero_grad()
        p = proj.clone().requires_grad_()
        loss = f(p)
        loss.backward()
        results.append([loss.detach(), p.grad, mixer.filter_taps.grad, mixer.featurizer.grad])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("taps", [3, 7, 128])
def test_cuda_decode_step_compiles_with_inductor(taps: int) -> None:
    """One decode step of the FIR with a state in and out (what a Hyena layer runs per token) compiled by inductor
    with fullgraph=True on CUDA: the eager output and state."""
    gen = torch.Generator(device="cuda").manual_seed(taps)
    x = torch.randn(2, 1, 256, device="cuda", generator=gen, dtype=torch.bfloat16)
    w = torch.randn(256, taps, device="cuda", generator=gen)
    state = torch.randn(2, 256, taps - 1, device="cuda", generator=gen, dtype=torch.bfloat16)

    def step(a, b, c):
        return fir_ops.causal_fir(a, b, initial_state=c, output_final_state=True)

    compiled = torch.compile(step, fullgraph=True)
    for got, want in zip(compiled(x, w, state), step(x, w, state)):
        torch.testing.assert_close(got, want, rtol=1e-2, atol=1e-2)
