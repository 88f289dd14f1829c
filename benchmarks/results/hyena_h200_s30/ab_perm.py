"""Issue 20, prepared in session 30 (no device was lent): the Gluon Hyena-MR forward with each 16-row block's rows
transposed in shared memory (``launch_mr_forward(permuted=True)``) against the same walk unpermuted and the Triton
walk (``fir_ops._launch_mr_core``). PART=check: the permuted y against the unpermuted one at odd shapes (rows a
multiple of 16), as the number of differing elements and the largest difference; PART=time: kernel ms by CUDA-graph
replay at widths 2048 and 4096, 128 taps shared by 16 channels, bf16 rows, bf16 and fp32 filters, next to the memory
floor at the copy bandwidth measured in the same run (session 31's call 1, on an H100, divided by the H200's 4.3 TB/s
instead). QUICK=1 (for a short device lease): two check shapes and the 8 x 4096 x 2048 timing only."""
import os
import sys
from pathlib import Path

import torch

QUICK = os.environ.get("QUICK") == "1"

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # benchmarks/, for bench_hyena and bench_swr
from bench_hyena import mr_inputs, time_mr_walks  # noqa: E402
from phalanx_kernels import fir_ops  # noqa: E402
from phalanx_kernels.gluon_fir import launch_mr_forward  # noqa: E402


if os.environ.get("PART", "check") == "check":
    shapes = ((1, 256, 64, 128, 3, 4096), (2, 1008, 64, 128, 3, 256), (3, 784, 128, 129, 2, 4096),
              (1, 4096, 256, 65, 1, 1024), (2, 48, 64, 33, 3, 128), (2, 5008, 2048, 128, 3, 2048))
    for B, T, C, K, KF, L in (shapes[1], shapes[5]) if QUICK else shapes:
        proj, feat_t, w32 = mr_inputs(B, T, C, K, KF, seed=T)
        for w in (w32.bfloat16(), w32):
            natural = launch_mr_forward(proj, feat_t, w, rows_per_program=L)
            y = launch_mr_forward(proj, feat_t, w, rows_per_program=L, permuted=True)
            torch.cuda.synchronize()
            diff = (y.float() - natural.float()).abs()
            print(f"check {B}x{T}x{C} K={K} KF={KF} L={L} {str(w.dtype)[6:]} filter: "
                  f"{'bitwise equal' if torch.equal(y, natural) else 'differs'} ({int((diff > 0).sum())} of "
                  f"{diff.numel()} elements, max {diff.max():.3e}, max |y| {natural.float().abs().max():.3e})",
                  flush=True)
else:
    time_mr_walks(lambda proj, feat_t, w: [
        ("Triton walk", lambda: fir_ops._launch_mr_core(proj, feat_t, w, None)),
        ("Gluon walk", lambda: launch_mr_forward(proj, feat_t, w)),
        ("Gluon walk, permuted rows", lambda: launch_mr_forward(proj, feat_t, w, permuted=True)),
    ], QUICK)
