"""Hyena-MR walk (`_launch_mr_core`) at widths 2048 and 4096, 8 x 4096 tokens, bf16: GPU ms per rows_per_program
next to the memory floor (4 values per token and channel at the copy bandwidth of the same run)."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_hyena import copy_bandwidth, randn  # noqa: E402
from bench_swr import gpu_ms  # noqa: E402

from phalanx_kernels import fir_ops  # noqa: E402

if not torch.cuda.is_available():
    sys.exit("error: mr_widths.py times CUDA kernels and found no CUDA GPU")
bandwidth = copy_bandwidth("cuda")
print(f"copy bandwidth {bandwidth / 1e12:.2f} TB/s")
for width in (2048, 4096):
    proj = randn(8, 4096, 3 * width, device="cuda", dtype=torch.bfloat16, grad=False)
    feat_t = randn(3, 3 * width, device="cuda", grad=False)
    weight = randn(width // 16, 128, device="cuda", grad=False) / 128**0.5
    floor = 4 * proj.numel() // 3 * 2 / bandwidth * 1e3
    for rows in (1024, 2048, 4096):
        ms = gpu_ms(lambda: fir_ops._launch_mr_core(proj, feat_t, weight, None, rows_per_program=rows))
        print(f"width {width} rows_per_program {rows}: {ms:.3f} ms, {ms / floor:.1f}x floor ({floor:.3f} ms)")
