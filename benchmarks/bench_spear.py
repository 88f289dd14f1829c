"""The public CUDA SWR kernel (PyPI ``spear-python``, ``spear.ops.btp``) next to ``phalanx_kernels.swr``,
measured in the same run (issue 7 item 1).

Both compute the same operator (W = 2 blocks of 16 tokens, 16 channels per head, bf16 in and out) at
shape A and at width 2048 for 4K-32K tokens; spear in its own layout (coefficients [B, H, L], x
[B, H, 16, L]) with 8 and 32 warps per block. Each call is timed from a CUDA graph (GPU time) and eagerly,
as in ``bench_swr``.

    bash benchmarks/build_spear.sh && python benchmarks/bench_spear.py --json OUT.json
"""

from __future__ import annotations

import argparse
import json

import torch
import triton

import bench_swr


def time_spear(batch: int, seqlen: int, heads: int, dim: int, warps_per_block: int) -> dict[str, float]:
    """Forward and forward+backward medians (ms) of ``spear.ops.btp`` (k = 2 blocks, bf16 output)."""
    from spear.ops import btp

    coeff = torch.sigmoid(4 * torch.randn(batch, heads, seqlen, device="cuda")).bfloat16().requires_grad_()
    x = torch.randn(batch, heads, dim, seqlen, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    dy = torch.randn_like(x)

    def call() -> torch.Tensor:
        return btp(coeff, x, k=2, wpb=warps_per_block, output_dtype=torch.bfloat16)

    def fwd() -> None:
        with torch.no_grad():
            call()

    def fwd_bwd() -> None:
        torch.autograd.grad(call(), [coeff, x], dy)

    return {"fwd_ms": bench_swr.bench_ms(fwd), "fwd_bwd_ms": bench_swr.bench_ms(fwd_bwd),
            "fwd_gpu_ms": bench_swr.gpu_ms(fwd), "fwd_bwd_gpu_ms": bench_swr.gpu_ms(fwd_bwd)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the raw results here")
    args = parser.parse_args()
    bandwidth = bench_swr.copy_bandwidth()
    rows = []
    for name, shape in bench_swr.SHAPES.items():
        row = {"shape": name, "phalanx": bench_swr.time_swr(*shape), **bench_swr.floors_ms(*shape, bandwidth)}
        for wpb in (8, 32):
            row[f"spear_wpb{wpb}"] = time_spear(*shape, wpb)
        rows.append(row)
        print(json.dumps(row), flush=True)
    env = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
           "copy_bandwidth_TBps": bandwidth / 1e12}
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"env": env, "rows": rows}, f, indent=1)
    print(env)
    print("| shape | Phalanx fwd / fwd+bwd ms | spear 8 warps | spear 32 warps | speed-up vs best spear (fwd / fwd+bwd) |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        for mode in ("_gpu", ""):
            cells = [r[k] for k in ("phalanx", "spear_wpb8", "spear_wpb32")]
            fwd = min(c[f"fwd{mode}_ms"] for c in cells[1:]) / cells[0][f"fwd{mode}_ms"]
            both = min(c[f"fwd_bwd{mode}_ms"] for c in cells[1:]) / cells[0][f"fwd_bwd{mode}_ms"]
            label = "GPU time" if mode else "eager"
            print(f"| {r['shape']} ({label}) | " + " | ".join(
                f"{c[f'fwd{mode}_ms']:.3f} / {c[f'fwd_bwd{mode}_ms']:.3f}" for c in cells) + f" | {fwd:.1f}x / {both:.1f}x |")


if __name__ == "__main__":
    main()
