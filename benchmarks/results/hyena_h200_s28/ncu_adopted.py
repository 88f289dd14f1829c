"""One launch each of the adopted Gluon Hyena-MR forward (``kernels/gluon_fir.py``) with a bf16 and an fp32 filter
at 8 x 4096 x 2048, 128 taps, between cudaProfilerStart and Stop, for Nsight Compute:
``ncu --clock-control none --profile-from-start off --set full -o $OUT/mr python3 <this file>``."""
import torch

from phalanx_kernels.gluon_fir import launch_mr_forward

torch.manual_seed(0)
proj = torch.randn(8, 4096, 3 * 2048, device="cuda", dtype=torch.bfloat16)
feat_t = (torch.randn(3 * 2048, 3, device="cuda") / 3**0.5).t().contiguous()
w32 = torch.randn(2048 // 16, 128, device="cuda") / 128**0.5
for w in (w32.bfloat16(), w32):
    launch_mr_forward(proj, feat_t, w)  # builds before profiling
torch.cuda.synchronize()
torch.cuda.cudart().cudaProfilerStart()
for w in (w32.bfloat16(), w32):
    launch_mr_forward(proj, feat_t, w)
torch.cuda.synchronize()
torch.cuda.cudart().cudaProfilerStop()
