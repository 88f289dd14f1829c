"""Time the Triton SWR operator on a CUDA GPU next to its memory-bandwidth floor.

Shapes (kernels.md section 4): shape A (batch 8, 64 heads x 16, 8192 tokens, bf16) and width 2048
(128 heads x 16) at 4K-32K tokens with 32768 tokens per call. Forward moves 66 bytes per token-head
(read x and the bf16 log-gate, write y); forward+backward adds the backward's reads of x, log-gate and
dy and writes of dx and d(log-gate): 166 bytes. Floors use the copy bandwidth measured in the same run.
Each call is timed twice: replayed from a CUDA graph (the kernels' GPU time, compared with the floors)
and eagerly (what a Python caller waits, host overhead included when it exceeds the GPU time).

    python benchmarks/bench_swr.py [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json

import torch
import triton
import triton.testing

import phalanx_kernels
from phalanx_kernels import triton_ops

# Public CUDA kernel (spear `btp`, 8 warps per block) at shape A, kernels.md section 4.
ANCHORS_MS = {"spear_fwd": 0.62, "spear_fwd_bwd": 2.90}
SHAPES = {
    "A (8x8192, 64x16)": (8, 8192, 64, 16),
    "B 4K (8x4096, 128x16)": (8, 4096, 128, 16),
    "B 8K (4x8192, 128x16)": (4, 8192, 128, 16),
    "B 16K (2x16384, 128x16)": (2, 16384, 128, 16),
    "B 32K (1x32768, 128x16)": (1, 32768, 128, 16),
}


def bench_ms(fn) -> float:
    """Median milliseconds of ``fn`` called eagerly (CUDA events, after warm-up): the GPU time, or the host's
    time to issue the call when that is longer (Python, dispatch and launch overhead)."""
    return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))


def gpu_ms(fn) -> float:
    """Median milliseconds of ``fn`` replayed from a CUDA graph: the kernels' GPU time alone."""
    return float(triton.testing.do_bench_cudagraph(fn, rep=100, return_mode="median"))


def copy_bandwidth() -> float:
    """Device-to-device copy bandwidth in bytes/s (bytes read + written) over a 1 GiB buffer."""
    src = torch.randn(256 * 1024 * 1024, device="cuda")
    dst = torch.empty_like(src)
    ms = bench_ms(lambda: dst.copy_(src))
    return 2 * src.numel() * src.element_size() / (ms * 1e-3)


def swr_inputs(batch: int, seqlen: int, heads: int, dim: int, dtype: torch.dtype):
    x = torch.randn(batch, seqlen, heads, dim, device="cuda", dtype=dtype, requires_grad=True)
    g = torch.nn.functional.logsigmoid(4 * torch.randn(batch, seqlen, heads, device="cuda")).to(dtype)
    g.requires_grad_(True)
    dy = torch.randn_like(x)
    return x, g, dy


def time_swr(batch: int, seqlen: int, heads: int, dim: int, dtype: torch.dtype = torch.bfloat16) -> dict[str, float]:
    """Forward and forward+backward medians (ms) of ``phalanx_kernels.swr`` (BL 16, W 2)."""
    x, g, dy = swr_inputs(batch, seqlen, heads, dim, dtype)

    def fwd_bwd() -> None:  # gradients returned, not accumulated into .grad (no extra read-add-write pass)
        torch.autograd.grad(phalanx_kernels.swr(x, g), [x, g], dy)

    def fwd() -> None:
        with torch.no_grad():
            phalanx_kernels.swr(x, g)

    return {"fwd_ms": bench_ms(fwd), "fwd_bwd_ms": bench_ms(fwd_bwd), "fwd_gpu_ms": gpu_ms(fwd),
            "fwd_bwd_gpu_ms": gpu_ms(fwd_bwd)}


def time_core(batch: int, seqlen: int, heads: int, dim: int, dtype: torch.dtype = torch.bfloat16) -> dict[str, float]:
    """Forward and forward+backward medians (ms) of the fused core ``phalanx_kernels.phalanx_core`` (Hg = H)."""
    proj = torch.randn(batch, seqlen, heads + 3 * heads * dim, device="cuda", dtype=dtype, requires_grad=True)
    dout = torch.randn(batch, seqlen, heads * dim, device="cuda", dtype=dtype)
    kw = dict(num_heads=heads, head_dim=dim, num_gate_groups=heads)

    def fwd_bwd() -> None:
        torch.autograd.grad(phalanx_kernels.phalanx_core(proj, **kw), [proj], dout)

    def fwd() -> None:
        with torch.no_grad():
            phalanx_kernels.phalanx_core(proj, **kw)

    return {"core_fwd_ms": bench_ms(fwd), "core_fwd_bwd_ms": bench_ms(fwd_bwd), "core_fwd_gpu_ms": gpu_ms(fwd),
            "core_fwd_bwd_gpu_ms": gpu_ms(fwd_bwd)}


def core_floors_ms(batch: int, seqlen: int, heads: int, dim: int, bandwidth: float) -> dict[str, float]:
    """Fused core (bf16, Hg = H): forward reads the projection row and writes H*D; backward reads the row
    and d(out) and writes d(proj)."""
    feat, width = 2 * (heads + 3 * heads * dim), 2 * heads * dim
    fwd = batch * seqlen * (feat + width)
    bwd = batch * seqlen * (feat + width + feat)
    return {"core_floor_fwd_ms": fwd / bandwidth * 1e3, "core_floor_fwd_bwd_ms": (fwd + bwd) / bandwidth * 1e3}


def floors_ms(batch: int, seqlen: int, heads: int, dim: int, bandwidth: float) -> dict[str, float]:
    token_heads = batch * seqlen * heads
    fwd_bytes = token_heads * (2 * dim + 2 + 2 * dim)
    bwd_bytes = token_heads * (3 * 2 * dim + 2 * 2)
    return {"floor_fwd_ms": fwd_bytes / bandwidth * 1e3, "floor_fwd_bwd_ms": (fwd_bytes + bwd_bytes) / bandwidth * 1e3}


def use_config(config: dict | None) -> None:
    """Launch with ``config`` ({"swr": {"fwd": ..., "bwd": ...}, "core": {...}}) from now on; None restores the
    library default."""
    triton_ops.launch_config = _DEFAULT_CONFIG if config is None else (
        lambda h, d, bl, fused=False: config["core" if fused else "swr"])


_DEFAULT_CONFIG = triton_ops.launch_config


def sweep_configs(batch: int, seqlen: int, heads: int, dim: int, candidates: list[dict]) -> list[dict]:
    """Time the SWR and the fused core, forward and forward+backward, with each candidate launch
    configuration used for both kernels in both directions."""
    rows = []
    try:
        for cand in candidates:
            use_config({"swr": {"fwd": cand, "bwd": cand}, "core": {"fwd": cand, "bwd": cand}})
            rows.append({**cand, **time_swr(batch, seqlen, heads, dim), **time_core(batch, seqlen, heads, dim)})
    finally:
        use_config(None)
    return rows


def best_config(rows: list[dict]) -> dict:
    """For the SWR and for the fused core, the fastest forward candidate and the fastest backward candidate
    (backward = forward+backward minus forward) of a sweep, by GPU time (graph replay: host overhead does not
    blur the choice)."""
    def pick(cost) -> dict:
        best = min(rows, key=cost)
        return {k: v for k, v in best.items() if not k.endswith("_ms")}

    return {
        kernel: {
            "fwd": pick(lambda r: r[f"{p}fwd_gpu_ms"]),
            "bwd": pick(lambda r: r[f"{p}fwd_bwd_gpu_ms"] - r[f"{p}fwd_gpu_ms"]),
        }
        for kernel, p in (("swr", ""), ("core", "core_"))
    }


def run(bandwidth: float) -> list[dict]:
    rows = []
    for name, shape in SHAPES.items():
        row = {"shape": name, **time_swr(*shape), **floors_ms(*shape, bandwidth)}
        if shape == SHAPES["A (8x8192, 64x16)"]:
            row.update(time_core(*shape))
            row.update(core_floors_ms(*shape, bandwidth))
        for mode in ("", "_gpu"):
            row[f"fwd{mode}_x_floor"] = row[f"fwd{mode}_ms"] / row["floor_fwd_ms"]
            row[f"fwd_bwd{mode}_x_floor"] = row[f"fwd_bwd{mode}_ms"] / row["floor_fwd_bwd_ms"]
        rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    """GPU time (graph replay) against the floors, and the eager time of the same call."""
    lines = ["| shape | fwd GPU ms | floor | x floor | fwd+bwd GPU ms | floor | x floor | eager fwd / fwd+bwd ms |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['shape']} | {r['fwd_gpu_ms']:.3f} | {r['floor_fwd_ms']:.3f} | {r['fwd_gpu_x_floor']:.2f} | "
            f"{r['fwd_bwd_gpu_ms']:.3f} | {r['floor_fwd_bwd_ms']:.3f} | {r['fwd_bwd_gpu_x_floor']:.2f} | "
            f"{r['fwd_ms']:.3f} / {r['fwd_bwd_ms']:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the raw results here")
    args = parser.parse_args()
    bandwidth = copy_bandwidth()
    rows = run(bandwidth)
    print(f"{torch.cuda.get_device_name()}  torch {torch.__version__}  triton {triton.__version__}  "
          f"copy {bandwidth / 1e12:.2f} TB/s  anchors (spear, shape A): {ANCHORS_MS}")
    print(format_table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"copy_bandwidth": bandwidth, "rows": rows, "anchors_ms": ANCHORS_MS}, f, indent=1)


if __name__ == "__main__":
    main()
