"""Experiment (issue 20): Hyena-MR forward walk that accumulates each tile's z into the next two tiles' outputs.

The library walk (``_hyena_mr_kernel``) keeps the last two tiles' z and multiplies three Toeplitz blocks by three
different operands per tile. This variant multiplies the blocks by the current tile's z only and carries two fp32
partial outputs, so every dot reads one operand, and Triton's pipeliner then loads the tiles ahead (3 stages, its
default). Rows only (no packed sequences). Each configuration is checked against the library walk and timed
by CUDA-graph replay next to it.

    python benchmarks/exp_mr_ahead.py --json OUT/exp_mr_ahead.json     # GPU machine

Offline, compiled for sm_90 with Triton 3.6, the variant holds 96-108 registers with one strand and a bf16 filter
(the library walk: 142), and the pipeliner turns its loads into asynchronous copies (LDGSTS), which it does not
for the library walk; with 4 strands it spills. Not yet run on a GPU.
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
from phalanx_kernels.triton_fir import _featurize, _parts_dot, _tile_z, _walk_from, _walk_program

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_hyena import copy_bandwidth  # noqa: E402
from bench_swr import gpu_ms  # noqa: E402


@triton.jit
def _mr_ahead_kernel(  # the arguments of _hyena_mr_kernel
    P, FT, HG, Y, SEQ, CU, T, NBATCH,
    W: tl.constexpr, KF: tl.constexpr, K: tl.constexpr, D: tl.constexpr, NB: tl.constexpr, VARLEN: tl.constexpr,
    L: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr, NS: tl.constexpr, SEGS: tl.constexpr,
):
    tl.static_assert(not VARLEN)
    dt = Y.dtype.element_ty
    hdt: tl.constexpr = HG.dtype.element_ty
    lo, hi, cols, mask_c, base, ybase, first, _end, group, h0, l0, h1, l1, h2, l2 = _walk_program(
        HG, T, NBATCH, W, K, D, L, BT, BC, NS, SEGS, dt)
    offs = tl.arange(0, BT)
    c1 = tl.zeros((BT, NS * BC), dtype=tl.float32)  # partial outputs of the next tile and the one after
    c2 = tl.zeros((BT, NS * BC), dtype=tl.float32)
    for t0 in range(_walk_from(lo, (NB - 1) * BT, SEGS), hi, BT):
        rows = t0 + offs
        mask_r = rows < hi
        z = _tile_z(P, FT, rows, mask_r[:, None], first[None, :], cols, mask_c, base, W, KF, BT, NS * BC, dt)
        acc = _parts_dot(c1, h0, l0, z, hdt)
        c1 = _parts_dot(c2, h1, l1, z, hdt)
        if NB > 2:
            c2 = _parts_dot(tl.zeros((BT, NS * BC), dtype=tl.float32), h2, l2, z, hdt)
        if t0 >= lo:
            q = _featurize(P, FT, rows, mask_r[:, None], first[None, :], cols, mask_c, 0, W, KF, BT, NS * BC, base)
            out = rows.to(tl.int64)[:, None] * W + (ybase + cols)[None, :]
            tl.store(Y + out, (q * acc).to(dt), mask=mask_r[:, None] & mask_c[None, :])


def mr_ahead(proj: torch.Tensor, feat_t: torch.Tensor, weight: torch.Tensor, *, strands: int | None = None,
             num_warps: int = 4, rows: int = 4096) -> torch.Tensor:
    """y (B, T, W) of the variant, launched as the library walk is (``fir_ops._launch_walk``); rows only."""
    y = proj.new_empty(*proj.shape[:-1], proj.shape[-1] // 3)
    _launch_walk(_mr_ahead_kernel, proj, feat_t, weight, (y,), None, rows, strands, 4, num_warps)
    return y


CONFIGS = list(itertools.product((1, 2, 4), (4, 8)))  # (strands, num_warps)
SHAPE = (8, 4096, 2048, 128)  # (batch, seqlen, width, taps) on the GPU


def compare(batch: int, seqlen: int, width: int, taps: int, device: str,
            configs: list[tuple[int, int]] = CONFIGS, rows: int = 4096) -> list[dict]:
    """Each configuration against the library walk (``_launch_mr_core`` at its defaults), with bf16 and fp32
    filters on bf16 rows (fp32 rows on the CPU); GPU time by CUDA-graph replay on the GPU."""
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    gen = torch.Generator().manual_seed(0)
    proj = torch.randn(batch, seqlen, 3 * width, generator=gen).to(device, dtype)
    feat_t = (torch.randn(3, 3 * width, generator=gen) / 3**0.5).to(device).contiguous()
    weight32 = (torch.randn(width // 16, taps, generator=gen) / taps**0.5).to(device)
    results = []
    for weight in (weight32.to(dtype), weight32):
        library = lambda: _launch_mr_core(proj, feat_t, weight, None, rows_per_program=rows)  # noqa: E731
        want = library()
        results.append({"filter": str(weight.dtype), "variant": "library default",
                         **({"ms": gpu_ms(library)} if device == "cuda" else {})})
        for ns, warps in configs:
            row = {"filter": str(weight.dtype), "variant": "ahead", "strands": ns, "num_warps": warps}
            try:
                call = lambda: mr_ahead(proj, feat_t, weight, strands=ns, num_warps=warps, rows=rows)  # noqa: E731
                got = call()
                row["rel_err"] = ((got.float() - want.float()).norm() / want.float().norm()).item()
                if device == "cuda":
                    row["ms"] = gpu_ms(call)
            except Exception as err:  # a configuration that does not compile (registers, shared memory)
                row["error"] = f"{type(err).__name__}: {err}".splitlines()[0][:200]
            results.append(row)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json")
    args = parser.parse_args()
    bandwidth = copy_bandwidth("cuda")
    batch, seqlen, width, _ = SHAPE
    floor_ms = 4 * batch * seqlen * width * 2 / bandwidth * 1e3  # read q, k, v and write y once, bf16
    results = compare(*SHAPE, "cuda")
    if args.json:
        Path(args.json).write_text(json.dumps({"bandwidth": bandwidth, "floor_ms": floor_ms, "results": results},
                                              indent=1))
    for r in sorted(results, key=lambda r: (r["filter"], r.get("ms", 1e9))):
        print(r["filter"], r["variant"], r.get("strands"), r.get("num_warps"),
              f"{r.get('ms', float('nan')):.3f} ms", f"x{r.get('ms', 0) / floor_ms:.2f}",
              f"err {r.get('rel_err', float('nan')):.1e}", r.get("error", ""))


if __name__ == "__main__":
    main()
