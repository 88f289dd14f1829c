"""The associative-scan kernels (``launch_config`` family ``scan``) on a CUDA GPU, next to the defaults.

Reuses the team's harness: checks of ``gpu_check_kernels`` against float64 through the public API
(bf16 and fp32, up to 32768 tokens, packed sequences with states, fused core, prefill + steps) run
under a scan configuration; ``bench_swr.sweep_configs`` at shape A (batch 8, 64 heads x 16, 8192 tokens, bf16) for
the default family and several scan configurations; ``bench_swr.run`` and ``bench_layer.run`` with the
best scan configuration; and the decode step (PyTorch vs the Triton step) at batch 1 and 32.

    python benchmarks/bench_swr_scan.py --out DIR
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable

import torch
import triton

import bench_layer
import bench_swr
import gpu_check_kernels
from modeling_phalanx.swr_torch import SWRState, phalanx_core_step_torch, swr_step
from phalanx_kernels import triton_ops
from phalanx_kernels.triton_decode import phalanx_core_step_triton, swr_step_triton

SCAN_CONFIGS = [{"kernel": "scan", "NB": nb, "HB": hb, "fwd_warps": wf, "bwd_warps": wb}
                for nb, hb, wf, wb in [(16, 16, 1, 1), (16, 8, 1, 1), (16, 4, 1, 1), (16, 8, 1, 2), (16, 4, 1, 2),
                                       (16, 2, 1, 1), (32, 8, 1, 2), (8, 8, 1, 1)]]


def with_config(cfg: dict, fn: Callable[[], object]) -> object:
    """Run ``fn`` with ``triton_ops.launch_config`` returning ``cfg``."""
    default = triton_ops.launch_config
    triton_ops.launch_config = lambda h, d, bl: dict(cfg)
    try:
        return fn()
    finally:
        triton_ops.launch_config = default


def scan_checks() -> dict:
    """A subset of ``gpu_check_kernels.correctness`` (its full list takes about 5 minutes to compile and run)."""
    results = {}
    cu = torch.tensor([0, 1, 17, 500, 4097, 4100], device="cuda", dtype=torch.int32)
    record, swr_case, core_case = gpu_check_kernels._record, gpu_check_kernels.check_swr, gpu_check_kernels.check_core
    record(results, "swr shape A bf16", swr_case, 8, 8192, 64, 16, 16, 2, torch.bfloat16, "sharp")
    record(results, "swr T32768 sharp fp32", swr_case, 1, 32768, 4, 16, 16, 2, torch.float32, "sharp")
    record(results, "swr T1000 BL32 W3 D32 bf16", swr_case, 2, 1000, 4, 32, 32, 3, torch.bfloat16, "sharp")
    record(results, "swr T1000 BL64 W1 D128 near1 fp32", swr_case, 1, 1000, 2, 128, 64, 1, torch.float32, "near1")
    for dtype in (torch.bfloat16, torch.float32):
        tag = str(dtype).replace("torch.", "")
        record(results, f"swr varlen+state W3 {tag}", swr_case, 1, 4100, 4, 16, 16, 3, dtype, "sharp", cu=cu, state=True)
        record(results, f"core Hg=H/4 cap {tag}", core_case, 2, 1000, 16, 32, 4, dtype, cap=0.95)
    record(results, "core H=Hg shape-A heads bf16", core_case, 2, 2049, 64, 16, 64, torch.bfloat16)
    record(results, "prefill+steps fp32", gpu_check_kernels.check_prefill_steps)
    return results


def decode_timings() -> list[dict]:
    """One decode step (W 2, 64 heads x 16, bf16): PyTorch vs the Triton step, plain and fused core."""
    rows = []
    heads, dim = 64, 16
    for num in (1, 32):
        state = SWRState(torch.randn(num, heads, 2, dim, device="cuda"), torch.full((num,), 37, device="cuda"))
        x = torch.randn(num, heads, dim, device="cuda", dtype=torch.bfloat16)
        g = torch.nn.functional.logsigmoid(torch.randn(num, heads, device="cuda")).to(torch.bfloat16)
        proj = torch.randn(num, heads + 3 * heads * dim, device="cuda", dtype=torch.bfloat16)
        kw = dict(num_heads=heads, head_dim=dim, num_gate_groups=heads, block_len=16)
        rows.append({
            "N": num,
            "swr_step_torch_ms": bench_swr.bench_ms(lambda: swr_step(x, g, state, 16)),
            "swr_step_triton_ms": bench_swr.bench_ms(lambda: swr_step_triton(x, g, state, 16)),
            "core_step_torch_ms": bench_swr.bench_ms(lambda: phalanx_core_step_torch(proj, state, **kw)),
            "core_step_triton_ms": bench_swr.bench_ms(lambda: phalanx_core_step_triton(proj, state, **kw)),
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    args = parser.parse_args()
    torch.manual_seed(0)
    bandwidth = bench_swr.copy_bandwidth()
    report = {"device": torch.cuda.get_device_name(), "versions": {"torch": torch.__version__, "triton": triton.__version__},
              "copy_bandwidth_Bps": bandwidth, "default_config": triton_ops.launch_config(64, 16, 16)}
    check_cfg = {"kernel": "scan", "NB": 16, "HB": 4, "fwd_warps": 1, "bwd_warps": 1}
    report["correctness_scan"] = with_config(check_cfg, scan_checks)
    sweep = [report["default_config"]] + SCAN_CONFIGS
    report["sweep_shape_A"] = bench_swr.sweep_configs(8, 8192, 64, 16, sweep)
    scans = [r for r in report["sweep_shape_A"] if r["kernel"] == "scan"]
    best = min(scans, key=lambda r: r["fwd_ms"] + r["fwd_bwd_ms"] + r["core_fwd_ms"] + r["core_fwd_bwd_ms"])
    report["best_scan"] = {k: best[k] for k in ("kernel", "NB", "HB", "fwd_warps", "bwd_warps")}
    report["swr_best_scan"] = with_config(report["best_scan"], lambda: bench_swr.run(bandwidth))
    report["core_floors_shape_A"] = bench_swr.core_floors_ms(8, 8192, 64, 16, bandwidth)
    report["layer_best_scan"] = with_config(report["best_scan"], bench_layer.run)
    report["decode"] = decode_timings()
    with open(os.path.join(args.out, "kernels_scan.json"), "w") as f:
        json.dump(report, f, indent=1)

    print(f"\n{report['device']} {report['versions']} copy {bandwidth / 1e12:.2f} TB/s")
    for name, r in report["correctness_scan"].items():
        errs = " ".join(f"{k}={v:.1e}" for k, v in r.get("errs", {}).items()) or r.get("error") or (
            f"diff={r.get('max_abs_diff', float('nan')):.1e}")
        print(f"{'ok ' if r['ok'] else 'BAD'} scan {name}: {errs}")
    print("core floors (shape A):", {k: round(v, 3) for k, v in report["core_floors_shape_A"].items()})
    for r in report["sweep_shape_A"]:
        cfg = " ".join(f"{k}={v}" for k, v in r.items() if not k.endswith("_ms"))
        print(f"sweep {cfg}: swr fwd {r['fwd_ms']:.3f} fwd+bwd {r['fwd_bwd_ms']:.3f} | "
              f"core fwd {r['core_fwd_ms']:.3f} fwd+bwd {r['core_fwd_bwd_ms']:.3f}")
    print("best scan config:", report["best_scan"])
    print(bench_swr.format_table(report["swr_best_scan"]))
    print(bench_layer.format_table(report["layer_best_scan"]))
    print("| decode N | swr torch ms | swr triton ms | core torch ms | core triton ms |")
    print("|---:|---:|---:|---:|---:|")
    for r in report["decode"]:
        print(f"| {r['N']} | {r['swr_step_torch_ms']:.4f} | {r['swr_step_triton_ms']:.4f} | "
              f"{r['core_step_torch_ms']:.4f} | {r['core_step_triton_ms']:.4f} |")


if __name__ == "__main__":
    main()
