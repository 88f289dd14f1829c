"""Compare the two forward formulations of the SWR on a CUDA GPU, and time the decode step.

``triton_swr._swr_fwd_kernel`` solves each block with a BL x BL transfer matrix and ``tl.dot``;
``triton_scan._swr_scan_fwd_kernel`` solves it with ``tl.associative_scan``. Both share the grid and
helpers, so this script launches them with identical meta-parameters: first checks the scan kernel
against float64 (plain and fused, bf16 and fp32, up to 32768 tokens, packed sequences with phases),
then sweeps launch configurations at shape A of kernels.md (plain SWR and fused core), then times the
decode step (PyTorch vs Triton) at batch 1 and 32. Writes JSON to ``--out`` and prints tables last.
``results/kernels_scan_run1.*`` came from this script when the grid put chunks on axis 0 (the kernels
now take (sequence x head group) on axis 0, as launched here); backward and whole-layer comparisons of
the two families are in ``gpu_check_kernels``' sweep.

    python benchmarks/bench_swr_scan.py --out DIR
"""

from __future__ import annotations

import argparse
import json
import os
import platform

import torch
import triton
import triton.testing

from modeling_phalanx.swr_torch import SWRState, phalanx_core_step_torch, phalanx_core_torch, swr_step, swr_torch
from phalanx_kernels.triton_decode import phalanx_core_step_triton, swr_step_triton
from phalanx_kernels.triton_scan import _swr_scan_fwd_kernel
from phalanx_kernels.triton_swr import _swr_fwd_kernel


def bench_ms(fn) -> float:
    """Median milliseconds (CUDA events after warm-up)."""
    return float(triton.testing.do_bench(fn, warmup=50, rep=200, return_mode="median"))


def forward(kernel, src: torch.Tensor, out: torch.Tensor, heads: int, groups: int, dim: int, block_len: int,
            window: int, nb: int, hb: int, warps: int, fused: bool, log_cap: float = 0.0,
            cu: torch.Tensor | None = None, phase: torch.Tensor | None = None) -> torch.Tensor:
    """Launch one forward kernel. Plain: src is x (B, T, H, D); fused: src is proj (B, T, F)."""
    batch, seqlen = (src if fused else src[0]).shape[:2]
    if fused:
        rows = (src.shape[-1], src.shape[-1], heads * dim)
        x, g = src, src
    else:
        x, g = src
        rows = (heads * dim, heads, heads * dim)
    num_seqs = batch if cu is None else cu.numel() - 1
    max_len = seqlen if cu is None else int((cu[1:] - cu[:-1]).max())
    blocks = -(-(max_len + (block_len - 1 if phase is not None else 0)) // block_len)
    meta = dict(X_ROW=rows[0], G_ROW=rows[1], Y_ROW=rows[2], H=heads, HG=groups, REP=heads // groups, D=dim,
                DP=triton.next_power_of_2(dim), BL=block_len, W=window, WP=triton.next_power_of_2(max(window - 1, 1)),
                NB=nb, HB=hb, FUSED=fused, VARLEN=cu is not None, HAS_PHASE=phase is not None, num_warps=warps)
    if kernel is _swr_fwd_kernel:
        meta["IEEE"] = src[0].dtype == torch.float32 if not fused else src.dtype == torch.float32
    grid = (num_seqs * (heads // hb), triton.cdiv(blocks, nb))
    kernel[grid](x, g, out, cu, phase, seqlen, log_cap, **meta)
    return out


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def checks() -> dict:
    """Scan kernel vs float64 PyTorch (NaN fails; poisoned outputs show unwritten elements)."""
    out = {}
    tol = {torch.bfloat16: 1e-2, torch.float32: 1e-5}
    cases = [  # batch, T, H, D, BL, W, gates
        (1, 32768, 4, 16, 16, 2, "sharp"), (1, 32768, 4, 16, 16, 2, "near1"), (2, 1000, 4, 48, 32, 3, "sharp"),
        (1, 1000, 2, 128, 64, 1, "near1"), (2, 4097, 8, 16, 16, 5, "near1"), (8, 8192, 64, 16, 16, 2, "sharp"),
    ]
    for dtype in (torch.bfloat16, torch.float32):
        for b, t, h, d, bl, w, kind in cases:
            x = torch.randn(b, t, h, d, device="cuda", dtype=torch.float64)
            z = torch.randn(b, t, h, device="cuda", dtype=torch.float64)
            g = torch.nn.functional.logsigmoid(4 * z if kind == "sharp" else z + 7)
            ref = swr_torch(x, g, block_len=bl, window_blocks=w)
            y = torch.full((b, t, h, d), float("nan"), device="cuda", dtype=dtype)
            hb = 4 if h % 4 == 0 else 2
            forward(_swr_scan_fwd_kernel, (x.to(dtype), g.to(dtype)), y, h, h, d, bl, w, 8, hb, 4, False)
            err = rel(y, ref)
            out[f"scan {kind} B{b} T{t} H{h} D{d} BL{bl} W{w} {dtype}"] = {"rel": err, "ok": err <= tol[dtype]}
        # packed sequences with phases (continuation from a zero state at an offset inside the block)
        cu = torch.tensor([0, 1, 17, 500, 4097, 4100], device="cuda", dtype=torch.int32)
        pos = torch.tensor([0, 5, 15, 16, 33], device="cuda")
        x = torch.randn(1, 4100, 4, 16, device="cuda", dtype=torch.float64)
        g = torch.nn.functional.logsigmoid(4 * torch.randn(1, 4100, 4, device="cuda", dtype=torch.float64))
        ref = swr_torch(x, g, block_len=16, window_blocks=3, cu_seqlens=cu,
                        initial_state=SWRState(torch.zeros(5, 4, 3, 16, device="cuda", dtype=torch.float64), pos))
        y = torch.full_like(x, float("nan"), dtype=dtype)
        forward(_swr_scan_fwd_kernel, (x.to(dtype), g.to(dtype)), y, 4, 4, 16, 16, 3, 8, 4, 4, False,
                cu=cu, phase=(pos % 16).to(torch.int32))
        err = rel(y, ref)
        out[f"scan varlen+phase {dtype}"] = {"rel": err, "ok": err <= tol[dtype]}
        # fused core with gate groups and a decay cap
        heads, groups, dim = 16, 4, 32
        proj = torch.randn(2, 2049, heads + 2 * groups * dim + heads * dim, device="cuda", dtype=torch.float64)
        ref = phalanx_core_torch(proj, num_heads=heads, head_dim=dim, num_gate_groups=groups, decay_cap=0.95)
        y = torch.full((2, 2049, heads * dim), float("nan"), device="cuda", dtype=dtype)
        forward(_swr_scan_fwd_kernel, proj.to(dtype), y, heads, groups, dim, 16, 2, 8, 4, 4, True,
                log_cap=float(torch.tensor(0.95).log()))
        err = rel(y, ref)
        out[f"scan fused core {dtype}"] = {"rel": err, "ok": err <= tol[dtype]}
    return out


def sweep(bandwidth: float) -> list[dict]:
    """Shape A (B 8, T 8192, 64 heads x 16, bf16): both kernels over launch configurations."""
    b, t, h, d = 8, 8192, 64, 16
    x = torch.randn(b, t, h, d, device="cuda", dtype=torch.bfloat16)
    g = torch.nn.functional.logsigmoid(4 * torch.randn(b, t, h, device="cuda")).to(torch.bfloat16)
    y = torch.empty_like(x)
    proj = torch.randn(b, t, h + 3 * h * d, device="cuda", dtype=torch.bfloat16)
    core = torch.empty(b, t, h * d, device="cuda", dtype=torch.bfloat16)
    floor_plain = b * t * h * (4 * d + 2) / bandwidth * 1e3
    floor_core = b * t * 2 * (proj.shape[-1] + h * d) / bandwidth * 1e3
    rows = []
    configs = [(16, hb, w) for hb in (4, 8, 16) for w in (1, 2, 4)] + [(8, 8, 2), (32, 8, 2), (32, 16, 4)]
    for name, kernel in (("matrix", _swr_fwd_kernel), ("scan", _swr_scan_fwd_kernel)):
        for nb, hb, w in configs:
            row = {"kernel": name, "NB": nb, "HB": hb, "num_warps": w}
            try:
                row["plain_ms"] = bench_ms(lambda: forward(kernel, (x, g), y, h, h, d, 16, 2, nb, hb, w, False))
                row["core_ms"] = bench_ms(lambda: forward(kernel, proj, core, h, h, d, 16, 2, nb, hb, w, True))
                row["plain_x_floor"] = row["plain_ms"] / floor_plain
                row["core_x_floor"] = row["core_ms"] / floor_core
            except Exception as exc:  # a config that fails to compile must not hide the others
                row["error"] = f"{type(exc).__name__}: {exc}"[:300]
            print(row, flush=True)
            rows.append(row)
    return rows, floor_plain, floor_core


def decode_timings() -> list[dict]:
    """One decode step (W 2, 64 heads x 16): PyTorch vs the Triton step, plain and fused core."""
    rows = []
    h, d = 64, 16
    for n in (1, 32):
        state = SWRState(torch.randn(n, h, 2, d, device="cuda"), torch.full((n,), 37, device="cuda"))
        x = torch.randn(n, h, d, device="cuda", dtype=torch.bfloat16)
        g = torch.nn.functional.logsigmoid(torch.randn(n, h, device="cuda")).to(torch.bfloat16)
        proj = torch.randn(n, h + 3 * h * d, device="cuda", dtype=torch.bfloat16)
        kw = dict(num_heads=h, head_dim=d, num_gate_groups=h, block_len=16)
        y_t, s_t = swr_step_triton(x, g, state, 16)
        y_r, s_r = swr_step(x, g, state, 16)
        o_t, c_t = phalanx_core_step_triton(proj, state, **kw)
        o_r, c_r = phalanx_core_step_torch(proj, state, **kw)
        rows.append({
            "N": n,
            "swr_step_rel": rel(y_t, y_r), "swr_state_rel": rel(s_t.h, s_r.h),
            "core_step_rel": rel(o_t, o_r), "core_state_rel": rel(c_t.h, c_r.h),
            "swr_step_torch_ms": bench_ms(lambda: swr_step(x, g, state, 16)),
            "swr_step_triton_ms": bench_ms(lambda: swr_step_triton(x, g, state, 16)),
            "core_step_torch_ms": bench_ms(lambda: phalanx_core_step_torch(proj, state, **kw)),
            "core_step_triton_ms": bench_ms(lambda: phalanx_core_step_triton(proj, state, **kw)),
        })
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    args = parser.parse_args()
    torch.manual_seed(0)
    src = torch.randn(256 * 1024 * 1024, device="cuda")
    dst = torch.empty_like(src)
    bandwidth = 2 * src.numel() * 4 / (bench_ms(lambda: dst.copy_(src)) * 1e-3)
    del src, dst
    result = {"device": torch.cuda.get_device_name(), "host": platform.node(),
              "versions": {"torch": torch.__version__, "triton": triton.__version__}, "copy_Bps": bandwidth}
    result["checks"] = checks()
    result["sweep"], floor_plain, floor_core = sweep(bandwidth)
    result["floors_ms"] = {"plain_fwd": floor_plain, "core_fwd": floor_core}
    result["decode"] = decode_timings()
    with open(os.path.join(args.out, "kernels_scan.json"), "w") as f:
        json.dump(result, f, indent=1)

    print(f"\n{result['device']} {result['versions']} copy {bandwidth / 1e12:.2f} TB/s")
    for name, r in result["checks"].items():
        print(f"{'ok ' if r['ok'] else 'BAD'} {name}: rel {r['rel']:.1e}")
    print(f"floors: plain fwd {floor_plain:.3f} ms, fused core fwd {floor_core:.3f} ms (shape A, bf16)")
    print("| kernel | NB | HB | warps | plain fwd ms | x floor | core fwd ms | x floor |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in sorted(result["sweep"], key=lambda r: r.get("plain_ms", 1e9)):
        if "error" in r:
            print(f"| {r['kernel']} | {r['NB']} | {r['HB']} | {r['num_warps']} | {r['error'][:60]} |")
        else:
            print(f"| {r['kernel']} | {r['NB']} | {r['HB']} | {r['num_warps']} | {r['plain_ms']:.3f} | "
                  f"{r['plain_x_floor']:.2f} | {r['core_ms']:.3f} | {r['core_x_floor']:.2f} |")
    print("| decode N | swr torch ms | swr triton ms | core torch ms | core triton ms | max rel err |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in result["decode"]:
        err = max(r["swr_step_rel"], r["swr_state_rel"], r["core_step_rel"], r["core_state_rel"])
        print(f"| {r['N']} | {r['swr_step_torch_ms']:.4f} | {r['swr_step_triton_ms']:.4f} | "
              f"{r['core_step_torch_ms']:.4f} | {r['core_step_triton_ms']:.4f} | {err:.1e} |")


if __name__ == "__main__":
    main()
