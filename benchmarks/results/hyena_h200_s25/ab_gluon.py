"""A/B of the Hyena-MR forward on the GPU: ``fir_ops.hyena_core`` (the Gluon walk where it applies) against the
Triton walk (``fir_ops._launch_mr_core``) at 8 x 4096 and 1 x 32768 rows of width 2048, 128 taps shared by 16
channels, bf16 rows, bf16 and fp32 filters, fp32 and bf16 (a bf16 model's) featurizers; kernel ms by CUDA-graph replay, the largest difference of the outputs."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # benchmarks/, for bench_swr
from bench_swr import gpu_ms  # noqa: E402
from phalanx_kernels import fir_ops  # noqa: E402

print("| rows | filter, featurizer | path taken | hyena_core ms | Triton walk ms | x floor (4.3 TB/s) | max diff |")
print("|---|---|---|---:|---:|---:|---:|")
for B, T in ((8, 4096), (1, 32768)):
    C, K = 2048, 128
    proj = torch.randn(B, T, 3 * C, device="cuda", dtype=torch.bfloat16)
    feat32 = torch.randn(3 * C, 3, device="cuda") / 3**0.5
    w32 = torch.randn(C // 16, K, device="cuda") / K**0.5
    floor = 4 * proj.numel() / 3 * 2 / 4.3e12 * 1e3
    for w, feat in ((w32.bfloat16(), feat32), (w32.bfloat16(), feat32.bfloat16()), (w32, feat32)):
        path = "Gluon" if fir_ops._mr_gluon_eligible(proj, feat.t().contiguous(), w, None) else "Triton"
        core = gpu_ms(lambda: fir_ops.hyena_core(proj, feat, w))
        walk = gpu_ms(lambda: fir_ops._launch_mr_core(proj, feat.t().contiguous(), w, None))
        diff = (fir_ops.hyena_core(proj, feat, w).float()
                - fir_ops._launch_mr_core(proj, feat.t().contiguous(), w, None).float()).abs().max().item()
        assert not fir_ops._GLUON_FAILED, fir_ops._GLUON_FAILED  # the Gluon walk ran where it was chosen
        print(f"| {B} x {T} | {str(w.dtype)[6:]}, {str(feat.dtype)[6:]} | {path} | {core:.3f} | {walk:.3f} | "
              f"{core / floor:.2f} | {diff:.2e} |", flush=True)
