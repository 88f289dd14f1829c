"""Issue 20, session 32: which MR backward walk faults on packed rows in ``hyena_h200_s30/ab_packed.py``
(call 3 there: an illegal memory access after the forward rows). One launch a process (CUDA_LAUNCH_BLOCKING=1 set
by the caller), at ab_packed's shapes and packings:

    python3 diag_packed.py {old|new} {bf16|fp32} {none|rows|docs} OLD_FILE [STAGES [SMALL]]

STAGES: the walk's num_stages (default 3, as fir_ops launches it); SMALL=1: the GPU test's packed shape
(1 x 277 x 96, lengths 1 5 70 0 2 130 9 60, 129 taps) instead, for compute-sanitizer.
"""
import importlib.util
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench_swr import gpu_ms  # noqa: E402
from phalanx_kernels import fir_ops, triton_fir  # noqa: E402

which, filt, packing = sys.argv[1:4]
if which == "old":
    spec = importlib.util.spec_from_file_location("old_fir", sys.argv[4])
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
else:
    mod = triton_fir
stages = int(sys.argv[5]) if len(sys.argv) > 5 else 3
small = len(sys.argv) > 6 and sys.argv[6] == "1"
B, T, C, K = (1, 277, 32, 129) if small else (8, 4096, 2048, 128)
gen = torch.Generator().manual_seed(0)
proj = torch.randn(B, T, 3 * C, generator=gen).to("cuda", torch.bfloat16)
featurizer = (torch.randn(3 * C, 3, generator=gen) / 3**0.5).cuda()
dy = torch.randn(B, T, C, generator=gen).to("cuda", torch.bfloat16)
w = (torch.randn(C // 16, K, generator=gen) / K**0.5).cuda()
w = w.bfloat16() if filt == "bf16" else w
lengths = torch.exp(torch.randn(4 * B * T // 600, generator=gen) * 0.8 + 6.1).long().clamp(min=1)
cuts = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
if small:
    cuts = torch.tensor([0, 1, 6, 76, 76, 78, 208, 217, 277])
cu = {"none": None, "rows": torch.arange(0, B * T + 1, T, device="cuda"),
      "docs": torch.cat([cuts[cuts < B * T], torch.tensor([B * T])]).cuda()}[packing]
outs = (torch.empty_like(proj), proj.new_empty(B, T, C), proj.new_empty(B, T, C))


def walk() -> None:
    fir_ops._launch_walk(mod._hyena_mr_bwd_kernel, proj, featurizer.t().float().contiguous(), w, (dy, *outs), cu,
                         128 if small else 4096, None, 2 if w.dtype == proj.dtype else 1, 4, None, num_stages=stages)


walk()
torch.cuda.synchronize()
ms = "" if small else f", {gpu_ms(walk):.3f} ms"
print(f"{which} {filt} {packing} stages={stages}: ok, |dfeats| max {outs[0].float().abs().max().item():.3e}{ms}")
