"""Issue 20, prepared in session 29, run in session 32 (``../hyena_h200_s32/``, calls 2-3 there, on an H100): a
warp-specialized Gluon Hyena-MR forward for bf16 filters with programs of 32 or 64 channels, one warpgroup partition
for each 16 (its own filter group, z, q and y), the stages of q, k, v rows shared and tied to the warpgroups only by
mbarriers. It ran bitwise equal to the Triton walk at 1.04-1.08x the memory floor, and its kernel moved unchanged
into ``kernels/gluon_fir.py`` (``_hyena_mr_ws_kernel``, ``launch_mr_forward(warpgroups=...)``); this file's kernel
as it ran is at commit 1241d98. What stays here is the launch that ``ab_ws.py`` and ``../hyena_h200_s30/ncu_perm.py``
call."""
import torch

from phalanx_kernels.gluon_fir import launch_mr_forward


def launch_ws(proj: torch.Tensor, feat_t: torch.Tensor, weight: torch.Tensor, rows_per_program: int = 4096,
              warpgroups: int = 4) -> torch.Tensor:
    """``gluon_fir.launch_mr_forward`` with ``warpgroups`` (2 or 4) 16-channel warpgroups a program, at session
    29's default of 4096 rows a program."""
    return launch_mr_forward(proj, feat_t, weight, rows_per_program=rows_per_program, warpgroups=warpgroups)
