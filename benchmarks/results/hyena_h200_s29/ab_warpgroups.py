"""Issue 20, session 29: the Gluon Hyena-MR forward with programs of 16, 32 and 64 channels (1, 2 or 4 warpgroups,
each with its own 16-channel filter group; ``launch_mr_forward(warpgroups=...)``) against the Triton walk
(``fir_ops._launch_mr_core``): outputs bitwise equal first, at odd shapes, then kernel ms by CUDA-graph replay at
widths 2048 and 4096, 128 taps shared by 16 channels, bf16 rows, next to the memory floor at 4.3 TB/s."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # benchmarks/, for bench_swr
from bench_swr import gpu_ms  # noqa: E402
from phalanx_kernels import fir_ops  # noqa: E402
from phalanx_kernels import gluon_fir  # noqa: E402
from phalanx_kernels.gluon_fir import launch_mr_forward  # noqa: E402


def swizzled(rows: bool, y: bool, fn):
    """fn() with q, k, v's rows and y's rows swizzled in shared memory or not (``gluon_fir.SWIZZLE_*``)."""
    def run():
        gluon_fir.SWIZZLE_ROWS, gluon_fir.SWIZZLE_Y = rows, y
        try:
            return fn()
        finally:
            gluon_fir.SWIZZLE_ROWS = gluon_fir.SWIZZLE_Y = False
    return run


def inputs(B: int, T: int, C: int, K: int, KF: int, seed: int = 0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    proj = torch.randn(B, T, 3 * C, device="cuda", dtype=torch.bfloat16, generator=gen)
    feat_t = (torch.randn(3 * C, KF, device="cuda", generator=gen) / KF**0.5).t().contiguous()
    w = torch.randn(C // 16, K, device="cuda", generator=gen) / K**0.5
    return proj, feat_t, w


# Checks: every warpgroup count that divides the channels, bitwise against the Triton walk.
for B, T, C, K, KF, L in ((2, 1000, 64, 128, 3, 256), (3, 777, 128, 129, 2, 4096), (1, 4096, 256, 65, 1, 1024),
                          (2, 40, 64, 33, 3, 128), (2, 5000, 2048, 128, 3, 2048)):
    proj, feat_t, w32 = inputs(B, T, C, K, KF, seed=T)
    for w in (w32.bfloat16(), w32):
        walk = fir_ops._launch_mr_core(proj, feat_t, w, None)
        for wg in (1, 2, 4):
            if C % (16 * wg) or (wg > 1 and w.dtype == torch.float32):
                continue
            for rows_swz, y_swz in ((False, False), (True, True)):
                y = swizzled(rows_swz, y_swz, lambda: launch_mr_forward(proj, feat_t, w, rows_per_program=L,
                                                                         warpgroups=wg))()
                torch.cuda.synchronize()
                same = torch.equal(y, walk)
                print(f"check {B}x{T}x{C} K={K} KF={KF} L={L} {str(w.dtype)[6:]} wg={wg} swizzled={rows_swz}: "
                      f"{'bitwise equal' if same else 'DIFFERS, max %.3e' % (y.float() - walk.float()).abs().max()}",
                      flush=True)
                assert same

rows = []
for B, T, C in ((8, 4096, 2048), (1, 32768, 2048), (8, 4096, 4096), (1, 32768, 4096)):
    proj, feat_t, w32 = inputs(B, T, C, 128, 3)
    floor = 4 * proj.numel() / 3 * 2 / 4.3e12 * 1e3
    w16 = w32.bfloat16()
    variants = [("Triton walk, bf16 filter", lambda: fir_ops._launch_mr_core(proj, feat_t, w16, None))]
    for wg, L in ((1, 4096), (2, 4096), (4, 4096), (2, 2048), (4, 2048), (2, 8192)):
        variants.append((f"Gluon {16 * wg} channels, {L} rows, bf16 filter",
                         lambda wg=wg, L=L: launch_mr_forward(proj, feat_t, w16, rows_per_program=L, warpgroups=wg)))
    for wg in (1, 2, 4):
        for rows_swz, y_swz in ((False, True), (True, False), (True, True)):
            variants.append((f"Gluon {16 * wg} channels, 4096 rows, bf16 filter, swizzled rows {rows_swz:d} "
                             f"y {y_swz:d}",
                             swizzled(rows_swz, y_swz, lambda wg=wg: launch_mr_forward(proj, feat_t, w16,
                                                                                       warpgroups=wg))))
    variants.append(("Triton walk, fp32 filter", lambda: fir_ops._launch_mr_core(proj, feat_t, w32, None)))
    variants.append(("Gluon 16 channels, fp32 filter", lambda: launch_mr_forward(proj, feat_t, w32)))
    for name, fn in variants:
        ms = gpu_ms(fn)
        rows.append((f"{B} x {T} x {C}", name, ms, ms / floor))
        print(f"time {B}x{T}x{C} {name}: {ms:.3f} ms ({ms / floor:.2f}x floor)", flush=True)
    del proj

print("\n| rows x width | kernel | ms | x floor (4.3 TB/s) |\n|---|---|---:|---:|")
for shape, name, ms, x in rows:
    print(f"| {shape} | {name} | {ms:.3f} | {x:.2f} |")
