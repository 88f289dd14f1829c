"""Launch one exp_mr_push.py variant (argv: push qlow stages strands) at 8 x 4096 x 2048 (128 taps, bf16) for ncu,
after a warm-up launch."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from exp_mr_push import mr_variant  # noqa: E402

push, qlow, stages, ns = (int(a) for a in sys.argv[1:5])
proj = torch.randn(8, 4096, 3 * 2048, device="cuda", dtype=torch.bfloat16)
feat_t = torch.randn(3, 3 * 2048, device="cuda")
weight = (torch.randn(2048 // 16, 128, device="cuda") / 128**0.5).bfloat16()
for measured in (False, True):
    if measured:
        torch.cuda.synchronize()
        torch.cuda.profiler.start()
    mr_variant(proj, feat_t, weight, push=bool(push), qlow=bool(qlow), stages=stages, strands=ns)
torch.cuda.synchronize()
torch.cuda.profiler.stop()
