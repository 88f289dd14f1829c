"""Experiment (issue 20): Hyena-MR forward walk variants that cut the walk's L1/shared-memory traffic, which Nsight
Compute shows bounds the library walk on the H200 (L1/TEX 93% busy at 8 x 4096 x 2048; per warp and tile step 219
shared-memory wavefronts, 72 of them bank conflicts of the z stores, and 215 global tag requests).

- ``share``: the featurizers load each row block before a tile's phases once (the library loads rows ``srow - 1``
  twice for three taps: 7 loads an input instead of 6).
- ``push``: carry two fp32 partial outputs (this tile's blocks 1 and 2 times z, added to the next two tiles) instead
  of the last two tiles' z, so z is stored to shared memory once a tile, not three times.
- ``qlow``: round q to the rows' dtype before it changes layout for the gate (half the bytes through shared memory;
  the two-pass path stores q in that dtype too).

Rows only (no packed sequences). Each variant is checked against the library walk and timed by CUDA-graph replay
next to it, over strands and register caps.
    python benchmarks/exp_mr_push.py --json OUT/exp_mr_push.json     # GPU machine
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

from phalanx_kernels.fir_ops import _launch_mr_core, _launch_walk
from phalanx_kernels.triton_fir import (
    _interleave, _mr_filter, _parts_dot, _pick, _rows_tile, _split, _walk_from, _walk_program,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_hyena import copy_bandwidth  # noqa: E402
from bench_swr import gpu_ms  # noqa: E402


@triton.jit
def _phase_feat(FT, r: tl.constexpr, x0, x1, x2, x3, u1, u2, cols, mask_c, OFF: tl.constexpr, W: tl.constexpr,
                KF: tl.constexpr):
    """Featurizer output of phase r from the phases x_m (rows srow + m) and the blocks u_m (rows srow - m)."""
    tl.static_assert(KF <= 3)
    acc = tl.zeros(x0.shape, dtype=tl.float32)
    for j in tl.static_range(KF):
        f = tl.load(FT + j * 3 * W + OFF + cols, mask=mask_c, other=0.0).to(tl.float32)
        if j <= r:
            u = _pick(r - j, x0, x1, x2, x3)
        elif j - r == 1:
            u = u1
        else:
            u = u2
        acc += f[None, :] * u.to(tl.float32)
    return acc


@triton.jit
def _cat(a0, a1, a2, a3):
    """The (4S, BN) tile whose row r * S + s is row s of a_r (the phases one after another)."""
    x = tl.join(tl.join(a0, a1), tl.join(a2, a3))  # [s, n, k, i] = a_{2i+k}[s, n]
    return tl.reshape(tl.permute(x, (3, 2, 0, 1)), (4 * a0.shape[0], a0.shape[1]))


@triton.jit
def _phase_order(BT: tl.constexpr):
    """Row of a tile at each position of ``_cat``'s order: 4 s + r at r * BT / 4 + s."""
    i = tl.arange(0, BT)
    return 4 * (i % (BT // 4)) + i // (BT // 4)


@triton.jit
def _toeplitz_cat(HG, group, b: tl.constexpr, K: tl.constexpr, BT: tl.constexpr, dt: tl.constexpr):
    """Toeplitz block b with rows and columns in ``_cat``'s order, split for dt tiles."""
    i = _phase_order(BT)
    lag = i[:, None] - i[None, :] + b * BT
    return _split(tl.load(HG + group * K + lag, mask=(lag >= 0) & (lag < K), other=0.0), dt)


@triton.jit
def _feat_tile(P, FT, srow, first, end, cols, mask_c, base, OFF: tl.constexpr, W: tl.constexpr, KF: tl.constexpr,
               CAT: tl.constexpr = False):
    """``_featurize_tile`` (rows, not packed) with each block before the phases loaded once; CAT: rows in
    ``_cat``'s order."""
    x0 = _rows_tile(P, srow, first, end, cols, mask_c, base, OFF, W)
    x1 = _rows_tile(P, srow + 1, first, end, cols, mask_c, base, OFF, W)
    x2 = _rows_tile(P, srow + 2, first, end, cols, mask_c, base, OFF, W)
    x3 = _rows_tile(P, srow + 3, first, end, cols, mask_c, base, OFF, W)
    u1 = _rows_tile(P, srow - 1, first, end, cols, mask_c, base, OFF, W)
    u2 = x0
    if KF > 2:
        u2 = _rows_tile(P, srow - 2, first, end, cols, mask_c, base, OFF, W)
    f0 = _phase_feat(FT, 0, x0, x1, x2, x3, u1, u2, cols, mask_c, OFF, W, KF)
    f1 = _phase_feat(FT, 1, x0, x1, x2, x3, u1, u2, cols, mask_c, OFF, W, KF)
    f2 = _phase_feat(FT, 2, x0, x1, x2, x3, u1, u2, cols, mask_c, OFF, W, KF)
    f3 = _phase_feat(FT, 3, x0, x1, x2, x3, u1, u2, cols, mask_c, OFF, W, KF)
    if CAT:
        x = _cat(f0, f1, f2, f3)
    else:
        x = _interleave(f0, f1, f2, f3)
    return x


@triton.jit
def _mr_variant_kernel(  # the arguments of _hyena_mr_kernel, then the variant's switches
    P, FT, HG, Y, SEQ, CU, T, NBATCH,
    W: tl.constexpr, KF: tl.constexpr, K: tl.constexpr, D: tl.constexpr, NB: tl.constexpr, VARLEN: tl.constexpr,
    L: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr, NS: tl.constexpr, SEGS: tl.constexpr,
    PUSH: tl.constexpr, QLOW: tl.constexpr, CAT: tl.constexpr,
):
    tl.static_assert(not VARLEN)
    dt = Y.dtype.element_ty
    hdt: tl.constexpr = HG.dtype.element_ty
    lo, hi, cols, mask_c, base, ybase, first, end, group, h0, l0, h1, l1, h2, l2 = _walk_program(
        HG, T, NBATCH, W, K, D, L, BT, BC, NS, SEGS, dt)
    offs = tl.arange(0, BT)
    if CAT:  # rows in the phases' order (with PUSH): the blocks permuted to match, built once
        offs = _phase_order(BT)
        h0, l0 = _toeplitz_cat(HG, group, 0, K, BT, dt)
        h1, l1 = _toeplitz_cat(HG, group, 1, K, BT, dt)
        h2, l2 = _toeplitz_cat(HG, group, 2, K, BT, dt)
    c1 = tl.zeros((BT, NS * BC), dtype=tl.float32)  # push: partial outputs of the next tile and the one after
    c2 = tl.zeros((BT, NS * BC), dtype=tl.float32)
    z1 = tl.zeros((BT, NS * BC), dtype=dt)  # else: z of the last two tiles
    z2 = tl.zeros((BT, NS * BC), dtype=dt)
    for t0 in range(_walk_from(lo, (NB - 1) * BT, SEGS), hi, BT):
        rows = t0 + offs
        mask_r = rows < hi
        srow = t0 + tl.arange(0, BT // 4) * 4
        z = (_feat_tile(P, FT, srow, first, end, cols, mask_c, base, W, W, KF, CAT)
             * _feat_tile(P, FT, srow, first, end, cols, mask_c, base, 2 * W, W, KF, CAT)).to(dt)
        if PUSH:
            acc = _parts_dot(c1, h0, l0, z, hdt)
            c1 = _parts_dot(c2, h1, l1, z, hdt)
            if NB > 2:
                c2 = _parts_dot(tl.zeros((BT, NS * BC), dtype=tl.float32), h2, l2, z, hdt)
        else:
            acc = _mr_filter(HG, group, h0, l0, h1, l1, h2, l2, z, z1, z2, rows, rows, mask_r, t0, K, NB, VARLEN,
                             BT, NS * BC)
            z2 = z1
            z1 = z
        if t0 >= lo:
            q = _feat_tile(P, FT, srow, first, end, cols, mask_c, base, 0, W, KF, CAT)
            if QLOW:
                q = q.to(dt)
            out = rows.to(tl.int64)[:, None] * W + (ybase + cols)[None, :]
            tl.store(Y + out, (q.to(tl.float32) * acc).to(dt), mask=mask_r[:, None] & mask_c[None, :])


def mr_variant(proj: torch.Tensor, feat_t: torch.Tensor, weight: torch.Tensor, *, push: bool, qlow: bool,
               stages: int, cat: bool = False, strands: int | None = None, rows: int = 2048, maxnreg: int | None = None) -> torch.Tensor:
    """y (B, T, W) of a variant, launched as the library walk is (``fir_ops._launch_walk``; ``stages`` Triton's
    num_stages: 1 keeps its pipeliner from staging the push variant's loads through shared memory); rows only."""
    y = proj.new_empty(*proj.shape[:-1], proj.shape[-1] // 3)
    _launch_walk(_Bound(_mr_variant_kernel, PUSH=push, QLOW=qlow, CAT=cat, num_stages=stages), proj, feat_t, weight, (y,), None, rows, strands, 2, 4,
                 maxnreg)
    return y


class _Bound:
    """A kernel with extra constexpr arguments, launched as ``kernel[grid](...)``."""

    def __init__(self, kernel, **extra):
        self.kernel, self.extra = kernel, extra

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.kernel[grid](*args, **kwargs, **self.extra)


VARIANTS = {"share": (False, False, 3, False), "share+qlow": (False, True, 3, False), "push": (True, False, 1, False),
            "push+qlow": (True, True, 1, False), "push+cat": (True, False, 1, True)}  # (push, qlow, stages, cat)
CONFIGS = [(1, 2048, None), (1, 2048, 128), (2, 2048, None), (2, 2048, 128), (2, 2048, 112), (2, 2048, 96),
           (2, 4096, 128), (4, 2048, None)]  # (strands, rows a program, register cap)


def compare(batch: int, seqlen: int, width: int, taps: int, device: str, configs=CONFIGS, variants=VARIANTS,
            filters=("rows", "fp32")) -> list[dict]:
    """Each variant and configuration against the library walk (``_launch_mr_core`` at its defaults), with the
    filter stored in the rows' dtype or fp32; bf16 rows on the GPU (fp32 on the CPU)."""
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    gen = torch.Generator().manual_seed(0)
    proj = torch.randn(batch, seqlen, 3 * width, generator=gen).to(device, dtype)
    feat_t = (torch.randn(3, 3 * width, generator=gen) / 3**0.5).to(device).contiguous()
    weight32 = (torch.randn(width // 16, taps, generator=gen) / taps**0.5).to(device)
    results = []
    for filt in filters:
        weight = weight32.to(dtype) if filt == "rows" else weight32
        library = lambda: _launch_mr_core(proj, feat_t, weight, None)  # noqa: E731
        want = library().float()
        results.append({"filter": filt, "variant": "library default",
                        **({"ms": gpu_ms(library)} if device == "cuda" else {})})
        for (name, (push, qlow, stages, cat)), (ns, rows, cap) in itertools.product(variants.items(), configs):
            row = {"filter": filt, "variant": name, "strands": ns, "rows": rows, "maxnreg": cap}
            try:
                call = lambda: mr_variant(proj, feat_t, weight, push=push, qlow=qlow, stages=stages,  # noqa: E731
                                          cat=cat, strands=ns, rows=rows, maxnreg=cap)
                got = call().float()
                row["rel_err"] = ((got - want).norm() / want.norm()).item()
                if device == "cuda":
                    row["ms"] = gpu_ms(call)
            except Exception as err:  # a configuration that does not compile (registers, shared memory)
                row["error"] = f"{type(err).__name__}: {err}".splitlines()[0][:200]
            results.append(row)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json")
    parser.add_argument("--shape", type=int, nargs=4, default=(8, 4096, 2048, 128))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()
    bandwidth = copy_bandwidth("cuda")
    batch, seqlen, width, _ = args.shape
    floor_ms = 4 * batch * seqlen * width * 2 / bandwidth * 1e3  # read q, k, v and write y once, bf16
    results = compare(*args.shape, "cuda", variants={name: VARIANTS[name] for name in args.variants})
    if args.json:
        Path(args.json).write_text(json.dumps({"shape": args.shape, "bandwidth": bandwidth, "floor_ms": floor_ms,
                                               "results": results}, indent=1))
    for r in sorted(results, key=lambda r: (r["filter"], r.get("ms", 1e9))):
        print(f"{r['filter']:4s} {r['variant']:16s} ns={r.get('strands')} rows={r.get('rows')} cap={r.get('maxnreg')}",
              f"{r.get('ms', float('nan')):.3f} ms x{r.get('ms', 0) / floor_ms:.2f}",
              f"err {r.get('rel_err', float('nan')):.1e}", r.get("error", ""))


if __name__ == "__main__":
    main()
