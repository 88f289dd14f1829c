"""Issue 20, session 32: the warp-specialized Gluon Hyena-MR forward as adopted in ``kernels/gluon_fir.py``
(``launch_mr_forward(warpgroups=4)``, which ``fir_ops`` takes for a bf16 filter over channels a multiple of 64).
PART=check: its y against the Triton walk's (``fir_ops._launch_mr_core``) and ``fir_ops.hyena_core``'s, bitwise, at
odd shapes; PART=time: kernel ms by CUDA-graph replay at widths 2048 and 4096, 128 taps shared by 16 channels, bf16
rows: the Triton walk, the 16-channel Gluon walk with permuted rows, the warp-specialized walk at 4096 and 8192 rows a
program, and the custom op the model calls, next to the memory floor at the copy bandwidth measured in the same run.
QUICK=1: two check shapes and the 8 x 4096 x 2048 timing only."""
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
    shapes = ((1, 256, 64, 128, 3, 8192), (2, 1000, 64, 128, 3, 256), (3, 777, 128, 129, 2, 4096),
              (1, 4096, 256, 65, 1, 1024), (2, 40, 64, 33, 3, 128), (2, 5000, 2048, 128, 3, 2048))
    for B, T, C, K, KF, L in (shapes[2], shapes[5]) if QUICK else shapes:
        proj, feat_t, w32 = mr_inputs(B, T, C, K, KF, seed=T)
        w = w32.bfloat16()
        walk = fir_ops._launch_mr_core(proj, feat_t, w, None)
        op = fir_ops.hyena_core(proj, feat_t.t().contiguous(), w)
        for wg in (2, 4):
            y = launch_mr_forward(proj, feat_t, w, rows_per_program=L, warpgroups=wg)
            torch.cuda.synchronize()
            print(f"check {B}x{T}x{C} K={K} KF={KF} L={L} wg={wg}: against the Triton walk "
                  f"{'bitwise equal' if torch.equal(y, walk) else 'DIFFERS'}, against hyena_core "
                  f"{'bitwise equal' if torch.equal(y, op) else 'DIFFERS'}", flush=True)
    print(f"Gluon failures in this process: {fir_ops._GLUON_FAILED}")
else:
    def variants(proj: torch.Tensor, feat_t: torch.Tensor, w: torch.Tensor) -> list:
        """The Triton walk, the 16-channel Gluon walk with permuted rows, the warp-specialized walk (bf16 filter) at
        4096 and 8192 rows a program, and the custom op the model calls."""
        featurizer = feat_t.t().contiguous()
        out = [("Triton walk", lambda: fir_ops._launch_mr_core(proj, feat_t, w, None)),
               ("Gluon, 16 channels, permuted rows", lambda: launch_mr_forward(proj, feat_t, w, permuted=True))]
        if w.dtype == torch.bfloat16:
            out += [(f"Gluon, warp-specialized, {L} rows",
                     lambda L=L: launch_mr_forward(proj, feat_t, w, rows_per_program=L, warpgroups=4))
                    for L in (4096, 8192)]
        return out + [("hyena_core_fwd op (the model's call)",
                       lambda: fir_ops.hyena_core_fwd_op(proj, featurizer, w, None))]

    time_mr_walks(variants, QUICK)
