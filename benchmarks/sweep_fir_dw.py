"""Sweep the launch configuration of the FIR filter-gradient kernel (``fir_ops._launch_dw``) on the GPU.

On the H200 this kernel is about half of Hyena-SE's backward: 1.03 ms for the featurizers (3 taps over 3W = 6144
channels) and 0.71 ms for the 7-tap filter (2048 channels) at 8 x 4096 tokens, bf16, both bound by L1 with one
cross-warp sum per tap and tile (``benchmarks/results/hyena_h200_s13/ncu_hyena.txt``). Taller tiles mean fewer sums
per row, and more warps or narrower tiles change how the sums spread; the kernel's other loop order (taps outer:
dy read once per tap, one sum per tap and chunk) removes most sums. This measures which is fastest for both
shapes. Each configuration is first checked against a float32 reference (autograd through the mixer's PyTorch FIR), then
timed as the GPU work alone (CUDA-graph replay, ``bench_swr.gpu_ms``), next to its floor (reading x and dy once at
the copy bandwidth measured in the same run). The JSON holds every configuration; the table, last, the fastest
ones per shape.

    python benchmarks/sweep_fir_dw.py --json OUT/sweep_fir_dw.json          # GPU machine, about a minute
    python benchmarks/sweep_fir_dw.py --device cpu --size tiny              # smoke (TRITON_INTERPRET=1)
"""

from __future__ import annotations

import argparse
import inspect
import itertools
import json
import sys
from pathlib import Path

import torch

from modeling_phalanx.hyena_phalanx import causal_fir

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_hyena import copy_bandwidth, median_ms, randn  # noqa: E402
from bench_swr import gpu_ms  # noqa: E402

SHAPES = {  # (batch, seqlen, channels, taps): the featurizers' and the 7-tap filter's gradients of one Hyena-SE layer
    "full": ((8, 4096, 6144, 3), (8, 4096, 2048, 7)),
    "tiny": ((2, 40, 24, 3), (1, 70, 16, 7)),
}
CONFIGS = {  # (block_t, block_c, num_warps, chunks, taps_outer)
    "full": list(itertools.product((32, 64, 128), (32, 64), (4, 8), (64, 256), (False, True))),
    "tiny": [(32, 64, 4, 64, False), (16, 16, 1, 4, False), (16, 16, 2, 4, True)],
}
NAMES = ("block_t", "block_c", "num_warps", "chunks", "taps_outer")  # keyword arguments of fir_ops._launch_dw


def reference(x: torch.Tensor, dy: torch.Tensor, taps: int) -> torch.Tensor:
    """``dw[c, k] = sum_t dy[t, c] x[t - k, c]`` (zeros before each row's start) in float32, (C, K): autograd through
    the mixer's PyTorch FIR (``hyena_phalanx.causal_fir``)."""
    xt, dyt = x.float().transpose(1, 2), dy.float().transpose(1, 2)  # (B, C, T)
    weight = torch.zeros(x.shape[-1], taps, device=x.device, requires_grad=True)
    y = causal_fir(xt, weight, xt.new_zeros(*xt.shape[:2], taps - 1))
    return torch.autograd.grad(y, weight, dyt)[0]


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--size", choices=tuple(SHAPES), default="full")
    parser.add_argument("--json", help="write every configuration's result here")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda needs a CUDA GPU (use --device cpu --size tiny under TRITON_INTERPRET=1)")
    from phalanx_kernels.fir_ops import _launch_dw

    default = tuple(inspect.signature(_launch_dw).parameters[name].default for name in NAMES)

    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    bandwidth = copy_bandwidth(args.device)
    results: list[dict] = []
    for batch, seqlen, channels, taps in SHAPES[args.size]:
        x = randn(batch, seqlen, channels, device=args.device, dtype=dtype, grad=False)
        dy = randn(batch, seqlen, channels, device=args.device, dtype=dtype, grad=False)
        want = reference(x, dy, taps)
        floor_ms = 2 * x.numel() * x.element_size() / bandwidth * 1e3
        for values in CONFIGS[args.size]:
            config = dict(zip(NAMES, values))
            row = {"batch": batch, "seqlen": seqlen, "channels": channels, "taps": taps, **config,
                   "default": values == default, "floor_ms": floor_ms}
            try:
                got = _launch_dw(x, dy, taps, None, **config)
                row["rel_err"] = ((got - want).norm() / want.norm()).item()
                step = lambda: _launch_dw(x, dy, taps, None, **config)  # noqa: E731
                row["ms"] = gpu_ms(step) if args.device == "cuda" else median_ms(step, args.device, 3)
                row["x_floor"] = row["ms"] / floor_ms
            except Exception as err:  # a configuration that does not compile (registers, shared memory) is skipped
                row["error"] = f"{type(err).__name__}: {err}".splitlines()[0][:300]
            results.append(row)
            if args.json:
                Path(args.json).write_text(json.dumps({"bandwidth": bandwidth, "results": results}, indent=1))
    print(format_table(results))
    return results


def format_table(results: list[dict]) -> str:
    """Per shape: the five fastest configurations that match the reference (rel_err <= 1e-2), and the default."""
    lines = ["| C x K | block_t | block_c | warps | chunks | taps outer | ms | x floor | rel. error |",
             "|---|---:|---:|---:|---:|---|---:|---:|---:|"]
    for shape, rows in itertools.groupby(results, key=lambda r: (r["channels"], r["taps"])):
        rows = [r for r in rows if "ms" in r]
        good = sorted((r for r in rows if r["rel_err"] <= 1e-2), key=lambda r: r["ms"])
        for r in good[:5] + [r for r in rows if r["default"] and r not in good[:5]]:
            lines.append(f"| {shape[0]} x {shape[1]}{' (default)' if r['default'] else ''} | {r['block_t']} | "
                         f"{r['block_c']} | {r['num_warps']} | {r['chunks']} | {r['taps_outer']} | {r['ms']:.3f} | "
                         f"{r['x_floor']:.1f} | {r['rel_err']:.1e} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
