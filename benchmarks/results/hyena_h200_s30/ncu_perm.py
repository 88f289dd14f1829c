"""One launch each of the Gluon Hyena-MR forward unpermuted, with permuted rows, and warp-specialized with 64-channel
programs (``../hyena_h200_s29/exp_ws.py``), bf16 filter, 8 x 4096 x 2048, 128 taps, between cudaProfilerStart and
Stop, for Nsight Compute (see run.sh)."""
import functools
import sys
from pathlib import Path

import torch

from phalanx_kernels.gluon_fir import launch_mr_forward

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "hyena_h200_s29"))  # for exp_ws
from exp_ws import launch_ws  # noqa: E402

torch.manual_seed(0)
proj = torch.randn(8, 4096, 3 * 2048, device="cuda", dtype=torch.bfloat16)
feat_t = (torch.randn(3 * 2048, 3, device="cuda") / 3**0.5).t().contiguous()
w = (torch.randn(2048 // 16, 128, device="cuda") / 128**0.5).bfloat16()
launches = (launch_mr_forward, functools.partial(launch_mr_forward, permuted=True), launch_ws)
for launch in launches:
    launch(proj, feat_t, w)  # builds before profiling
torch.cuda.synchronize()
torch.cuda.cudart().cudaProfilerStart()
for launch in launches:
    launch(proj, feat_t, w)
torch.cuda.synchronize()
torch.cuda.cudart().cudaProfilerStop()
