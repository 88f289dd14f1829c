"""Issue 20, prepared in session 30: the Hyena-MR Triton walks on packed rows, this tree's (each sequence's own z
and dm through the Toeplitz blocks in registers) against an earlier triton_fir.py (argv[1]: the blocks gathered
again, masked, at every sequence start), both launched through this tree's ``fir_ops._launch_walk`` at
8 x 4096 x 2048, 128 taps, bf16 rows, fp32 and bf16 filters. Packings: each batch row a sequence, and documents of
seeded random lengths (41 of 21-4628 tokens). Kernel ms by CUDA-graph replay, the largest difference of the
outputs, and the unpacked walk's ms for reference.

    bash benchmarks/results/hyena_h200_s30/run.sh prepare   # here: writes .oldfir/triton_fir.py (git-ignored)
    bash benchmarks/results/hyena_h200_s30/run.sh packed    # GPU machine, carrying .oldfir
"""
import importlib.util
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # benchmarks/, for bench_swr
from bench_swr import gpu_ms  # noqa: E402
from phalanx_kernels import fir_ops, triton_fir  # noqa: E402

spec = importlib.util.spec_from_file_location("old_fir", sys.argv[1])
old = importlib.util.module_from_spec(spec)
spec.loader.exec_module(old)
B, T, C, K = 8, 4096, 2048, 128
gen = torch.Generator().manual_seed(0)
proj = torch.randn(B, T, 3 * C, generator=gen).to("cuda", torch.bfloat16)
featurizer = (torch.randn(3 * C, 3, generator=gen) / 3**0.5).cuda()
dy = torch.randn(B, T, C, generator=gen).to("cuda", torch.bfloat16)
w32 = (torch.randn(C // 16, K, generator=gen) / K**0.5).cuda()
lengths = torch.exp(torch.randn(4 * B * T // 600, generator=gen) * 0.8 + 6.1).long().clamp(min=1)
cuts = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
docs = torch.cat([cuts[cuts < B * T], torch.tensor([B * T])]).cuda()
packings = {"each row a sequence": torch.arange(0, B * T + 1, T, device="cuda"),
            f"{docs.numel() - 1} documents": docs}


def fwd(kernel, w, cu):
    y = proj.new_empty(B, T, C)
    fir_ops._launch_walk(kernel, proj, featurizer.t().contiguous(), w, (y,), cu, 4096 if cu is not None else 2048,
                         None, 2, 4, None if cu is not None else fir_ops.MR_MAXNREG, num_stages=1)
    return y


def bwd(kernel, w, cu):
    outs = (torch.empty_like(proj), proj.new_empty(B, T, C), proj.new_empty(B, T, C))
    fir_ops._launch_walk(kernel, proj, featurizer.t().float().contiguous(), w, (dy, *outs), cu, 4096, None,
                         2 if w.dtype == proj.dtype else 1, 4, None)
    return torch.cat([o.flatten() for o in outs])


print("| walk | filter | packing | earlier ms | this ms | unpacked ms | max diff |")
print("|---|---|---|---:|---:|---:|---:|")
for w in (w32.bfloat16(), w32):
    filt = "bf16" if w.dtype == torch.bfloat16 else "fp32"
    for name, step in (("fwd", fwd), ("bwd walk", bwd)):
        dense = gpu_ms(lambda: step(triton_fir._hyena_mr_kernel if step is fwd else triton_fir._hyena_mr_bwd_kernel,
                                    w, None))
        for packing, cu in packings.items():
            kernel = "_hyena_mr_kernel" if step is fwd else "_hyena_mr_bwd_kernel"
            a = lambda: step(getattr(old, kernel), w, cu)  # noqa: E731
            b = lambda: step(getattr(triton_fir, kernel), w, cu)  # noqa: E731
            diff = (a().float() - b().float()).abs().max().item()
            print(f"| {name} | {filt} | {packing} | {gpu_ms(a):.3f} | {gpu_ms(b):.3f} | {dense:.3f} | {diff:.2e} |",
                  flush=True)
