"""Issue 20, session 29, prepared for call 3: the warp-specialized Gluon Hyena-MR forward (``exp_ws.py``: programs of
32 or 64 channels, a warpgroup partition each 16, tied only by mbarriers) against the 16-channel Gluon walk and the
Triton walk (``fir_ops._launch_mr_core``). PART=check: bitwise equal at odd shapes; PART=time: kernel ms by CUDA-graph
replay at widths 2048 and 4096, 128 taps shared by 16 channels, bf16 rows and filter, next to the floor at 4.3 TB/s."""
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # benchmarks/, for bench_hyena and bench_swr
from bench_hyena import mr_inputs  # noqa: E402
from bench_swr import gpu_ms  # noqa: E402
from phalanx_kernels import fir_ops  # noqa: E402
from phalanx_kernels.gluon_fir import launch_mr_forward  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # this folder, for exp_ws
from exp_ws import launch_ws  # noqa: E402


def launch(proj, feat_t, w, rows_per_program: int, warpgroups: int):
    """The package's 16-channel walk (1 warpgroup) or the experiment's warp-specialized one (2 or 4)."""
    if warpgroups == 1:
        return launch_mr_forward(proj, feat_t, w, rows_per_program=rows_per_program)
    return launch_ws(proj, feat_t, w, rows_per_program=rows_per_program, warpgroups=warpgroups)


def inputs(B: int, T: int, C: int, K: int, KF: int, seed: int = 0):
    """``bench_hyena.mr_inputs`` with a bf16 filter."""
    proj, feat_t, w = mr_inputs(B, T, C, K, KF, seed)
    return proj, feat_t, w.bfloat16()


if os.environ.get("PART", "check") == "check":
    for B, T, C, K, KF, L in ((1, 256, 64, 128, 3, 4096), (2, 1000, 64, 128, 3, 256), (3, 777, 128, 129, 2, 4096),
                              (1, 4096, 256, 65, 1, 1024), (2, 40, 64, 33, 3, 128), (2, 5000, 2048, 128, 3, 2048)):
        proj, feat_t, w = inputs(B, T, C, K, KF, seed=T)
        walk = fir_ops._launch_mr_core(proj, feat_t, w, None)
        for wg in (1, 2, 4):
            y = launch(proj, feat_t, w, L, wg)
            torch.cuda.synchronize()
            same = torch.equal(y, walk)
            print(f"check {B}x{T}x{C} K={K} KF={KF} L={L} wg={wg}: "
                  f"{'bitwise equal' if same else 'DIFFERS, max %.3e' % (y.float() - walk.float()).abs().max()}",
                  flush=True)
else:
    rows = []
    for B, T, C in ((8, 4096, 2048), (1, 32768, 2048), (8, 4096, 4096), (1, 32768, 4096)):
        proj, feat_t, w = inputs(B, T, C, 128, 3)
        floor = 4 * proj.numel() / 3 * 2 / 4.3e12 * 1e3
        variants = [("Triton walk", lambda: fir_ops._launch_mr_core(proj, feat_t, w, None))]
        for wg, L in ((1, 4096), (2, 4096), (4, 4096), (2, 2048), (4, 2048), (4, 8192)):
            variants.append((f"Gluon, {16 * wg} channels, {L} rows",
                             lambda wg=wg, L=L: launch(proj, feat_t, w, L, wg)))
        for name, fn in variants:
            ms = gpu_ms(fn)
            rows.append((f"{B} x {T} x {C}", name, ms, ms / floor))
            print(f"time {B}x{T}x{C} {name}: {ms:.3f} ms ({ms / floor:.2f}x floor)", flush=True)
        del proj
    print("\n| rows x width | kernel (bf16 filter) | ms | x floor (4.3 TB/s) |\n|---|---|---:|---:|")
    for shape, name, ms, x in rows:
        print(f"| {shape} | {name} | {ms:.3f} | {x:.2f} |")
