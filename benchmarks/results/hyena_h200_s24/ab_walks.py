"""A/B of the MR walk kernels on the GPU: this tree's against an earlier triton_fir.py (argv[1]), both launched
through this tree's ``fir_ops._launch_walk`` at 8 x 4096 x 2048, 128 taps, bf16 rows, packed (each batch row a
sequence) and not, fp32 and bf16 filters; kernel ms by CUDA-graph replay and the largest difference of the outputs."""
import importlib.util
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench_swr import gpu_ms  # noqa: E402
from phalanx_kernels import fir_ops, triton_fir  # noqa: E402

spec = importlib.util.spec_from_file_location("old_fir", sys.argv[1])
old = importlib.util.module_from_spec(spec)
spec.loader.exec_module(old)
B, T, C, K = 8, 4096, 2048, 128
proj = torch.randn(B, T, 3 * C, device="cuda", dtype=torch.bfloat16)
featurizer = torch.randn(3 * C, 3, device="cuda") / 3**0.5
feat_t = featurizer.t().contiguous()
dy = torch.randn(B, T, C, device="cuda", dtype=torch.bfloat16)
whole = torch.arange(0, B * T + 1, T, device="cuda")
w32 = torch.randn(C // 16, K, device="cuda") / K**0.5


def fwd(kernel, w, cu, stages, cap, ns):
    y = proj.new_empty(B, T, C)
    fir_ops._launch_walk(kernel, proj, feat_t, w, (y,), cu, 4096 if cu is not None else 2048, ns, 2, 4, cap,
                         num_stages=stages)
    return y


def bwd(kernel, w, cu):
    outs = (torch.empty_like(proj), proj.new_empty(B, T, C), proj.new_empty(B, T, C))
    fir_ops._launch_walk(kernel, proj, featurizer.t().float().contiguous(), w, (dy, *outs), cu, 4096, None,
                         2 if w.dtype == proj.dtype else 1, 4, None)
    return torch.cat([o.flatten() for o in outs])


print("| walk | filter | rows | earlier ms | this ms | max diff |")
print("|---|---|---|---:|---:|---:|")
for w in (w32, w32.bfloat16()):
    filt = "bf16" if w.dtype == torch.bfloat16 else "fp32"
    for cu in (whole, None):
        packed = "packed" if cu is not None else "rows"
        cap = None if cu is not None else 128
        ns_old = 1 if (cu is not None or w.dtype == torch.float32) else 2
        cases = [("fwd", lambda: fwd(old._hyena_mr_kernel, w, cu, 3, cap, ns_old),
                  lambda: fwd(triton_fir._hyena_mr_kernel, w, cu, 1, cap, None)),
                 ("fwd, 3 stages", lambda: fwd(old._hyena_mr_kernel, w, cu, 3, cap, ns_old),
                  lambda: fwd(triton_fir._hyena_mr_kernel, w, cu, 3, cap, None)),
                 ("bwd walk", lambda: bwd(old._hyena_mr_bwd_kernel, w, cu),
                  lambda: bwd(triton_fir._hyena_mr_bwd_kernel, w, cu))]
        for name, a, b in cases:
            diff = (a().float() - b().float()).abs().max().item()
            print(f"| {name} | {filt} | {packed} | {gpu_ms(a):.3f} | {gpu_ms(b):.3f} | {diff:.2e} |", flush=True)
