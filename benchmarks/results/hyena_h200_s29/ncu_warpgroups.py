"""One launch each of the Gluon Hyena-MR forward with 1, 2 and 4 warpgroups a program (16, 32, 64 channels), bf16
filter, 8 x 4096 x 2048, 128 taps, between cudaProfilerStart and Stop, for Nsight Compute (see run.sh)."""
import torch

from phalanx_kernels.gluon_fir import launch_mr_forward

torch.manual_seed(0)
proj = torch.randn(8, 4096, 3 * 2048, device="cuda", dtype=torch.bfloat16)
feat_t = (torch.randn(3 * 2048, 3, device="cuda") / 3**0.5).t().contiguous()
w = (torch.randn(2048 // 16, 128, device="cuda") / 128**0.5).bfloat16()
for wg in (1, 2, 4):
    launch_mr_forward(proj, feat_t, w, warpgroups=wg)  # builds before profiling
torch.cuda.synchronize()
torch.cuda.cudart().cudaProfilerStart()
for wg in (1, 2, 4):
    launch_mr_forward(proj, feat_t, w, warpgroups=wg)
torch.cuda.synchronize()
torch.cuda.cudart().cudaProfilerStop()
