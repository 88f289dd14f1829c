"""One launch each of the Gluon Hyena-MR forward with 16-channel and 64-channel (warp-specialized) programs, bf16
filter, 8 x 4096 x 2048, 128 taps, between cudaProfilerStart and Stop, for Nsight Compute (see run3.sh)."""
import sys
from pathlib import Path

import torch

from phalanx_kernels.gluon_fir import launch_mr_forward

sys.path.insert(0, str(Path(__file__).resolve().parent))  # this folder, for exp_ws
from exp_ws import launch_ws  # noqa: E402

torch.manual_seed(0)
proj = torch.randn(8, 4096, 3 * 2048, device="cuda", dtype=torch.bfloat16)
feat_t = (torch.randn(3 * 2048, 3, device="cuda") / 3**0.5).t().contiguous()
w = (torch.randn(2048 // 16, 128, device="cuda") / 128**0.5).bfloat16()
for launch in (launch_mr_forward, launch_ws):
    launch(proj, feat_t, w)  # builds before profiling
torch.cuda.synchronize()
torch.cuda.cudart().cudaProfilerStart()
for launch in (launch_mr_forward, launch_ws):
    launch(proj, feat_t, w)
torch.cuda.synchronize()
torch.cuda.cudart().cudaProfilerStop()
