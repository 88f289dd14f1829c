"""Issue 20, session 29, call 2: the Gluon Hyena-MR forward with featurizer rows held 4 to a thread (2 channels;
taps in registers, rows t - 1 and t - 2 a thread's own but for the first of each 4) against the Triton walk
(``fir_ops._launch_mr_core``): outputs bitwise equal, kernel ms by CUDA-graph replay at widths 2048 and 4096, 128 taps
shared by 16 channels, bf16 rows, bf16 and fp32 filters, next to the memory floor at 4.3 TB/s."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # benchmarks/, for bench_swr
from bench_swr import gpu_ms  # noqa: E402
from phalanx_kernels import fir_ops  # noqa: E402
from phalanx_kernels.gluon_fir import launch_mr_forward  # noqa: E402

rows = []
for B, T, C in ((8, 4096, 2048), (1, 32768, 2048), (8, 4096, 4096), (1, 32768, 4096)):
    gen = torch.Generator(device="cuda").manual_seed(T + C)
    proj = torch.randn(B, T, 3 * C, device="cuda", dtype=torch.bfloat16, generator=gen)
    feat_t = (torch.randn(3 * C, 3, device="cuda", generator=gen) / 3**0.5).t().contiguous()
    w32 = torch.randn(C // 16, 128, device="cuda", generator=gen) / 128**0.5
    floor = 4 * proj.numel() / 3 * 2 / 4.3e12 * 1e3
    for w in (w32.bfloat16(), w32):
        same = torch.equal(launch_mr_forward(proj, feat_t, w), fir_ops._launch_mr_core(proj, feat_t, w, None))
        walk = gpu_ms(lambda: fir_ops._launch_mr_core(proj, feat_t, w, None))
        gluon = gpu_ms(lambda: launch_mr_forward(proj, feat_t, w))
        rows.append((f"{B} x {T} x {C}", str(w.dtype)[6:], walk, gluon, gluon / floor, same))
        print(rows[-1], flush=True)
    del proj

print("\n| rows x width | filter | Triton walk ms | Gluon ms | Gluon x floor (4.3 TB/s) | bitwise equal |")
print("|---|---|---:|---:|---:|---|")
for shape, dtype, walk, gluon, x, same in rows:
    print(f"| {shape} | {dtype} | {walk:.3f} | {gluon:.3f} | {x:.2f} | {same} |")
