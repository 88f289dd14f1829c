"""One launch each of the Gluon Hyena-MR forward with 16-channel and 64-channel (warp-specialized) programs, bf16
filter, 8 x 4096 x 2048, 128 taps, between cudaProfilerStart and Stop, for Nsight Compute (see run3.sh)."""
import torch

from phalanx_kernels.gluon_fir import launch_mr_forward

torch.manual_seed(0)
proj = torch.randn(8, 4096, 3 * 2048, device="cuda", dtype=torch.bfloat16)
feat_t = (torch.randn(3 * 2048, 3, device="cuda") / 3**0.5).t().contiguous()
w = (torch.randn(2048 // 16, 128, device="cuda") / 128**0.5).bfloat16()
for wg in (1, 4):
    launch_mr_forward(proj, feat_t, w, warpgroups=wg)  # builds before profiling
torch.cuda.synchronize()
torch.cuda.cudart().cudaProfilerStart()
for wg in (1, 4):
    launch_mr_forward(proj, feat_t, w, warpgroups=wg)
torch.cuda.synchronize()
torch.cuda.cudart().cudaProfilerStop()
