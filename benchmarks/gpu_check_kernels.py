"""One GPU run for the Triton SWR kernels: correctness against float64, gpu-marked tests, timings.

Sweeps launch configurations (heads and blocks per program, warps, channels per thread) at shape A and
reports the fastest forward and backward of the SWR and of the fused core (what ``launch_config`` is set
from); with the library's configuration, checks the Triton path in bf16 and fp32 against ``swr_torch`` in
float64 (forward and both gradients; lengths up to 32768; sharp gates and gates near 1; every block
length; windows 1-4; packed sequences; continuation; the fused core against ``phalanx_core_torch``),
runs ``pytest -m gpu``, then times the operator (``bench_swr``) and the whole layer (``bench_layer``).
Writes ``kernels_gpu.json`` under ``--out`` and prints the tables last.

    python benchmarks/gpu_check_kernels.py --out DIR
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import torch
import triton
import transformers

import bench_layer
import bench_swr
from phalanx_kernels.swr_torch import SWRState, phalanx_core_torch, swr_torch
from phalanx_kernels import phalanx_core, swr, swr_step

TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def gates(shape: tuple[int, ...], kind: str) -> torch.Tensor:
    z = torch.randn(shape, device="cuda", dtype=torch.float64)
    return torch.nn.functional.logsigmoid(4 * z if kind == "sharp" else z + 6.0)


def check_swr(batch, seqlen, heads, dim, block_len, window, dtype, kind, cu=None, state=False) -> dict:
    """Triton swr (public API) vs float64 swr_torch: outputs, final state and gradients."""
    x64 = torch.randn(batch, seqlen, heads, dim, device="cuda", dtype=torch.float64)
    g64 = gates((batch, seqlen, heads), kind)
    num_seqs = batch if cu is None else cu.numel() - 1
    init = None
    if state:
        init = SWRState(torch.randn(num_seqs, heads, window, dim, device="cuda", dtype=torch.float64),
                        torch.randint(0, 100, (num_seqs,), device="cuda"))
    kw = dict(block_len=block_len, window_blocks=window, cu_seqlens=cu, output_final_state=state)
    dy64 = torch.randn_like(x64)

    def run(x, g, st, reference):
        x, g = x.clone().requires_grad_(), g.clone().requires_grad_()
        fn = swr_torch if reference else swr
        out = fn(x, g, initial_state=st, **kw)
        y, fin = out if state else (out, None)
        loss = (y.double() * dy64).sum() + (fin.h.double().sum() if fin is not None else 0.0)
        loss.backward()
        return y.detach(), None if fin is None else fin.h.detach(), x.grad, g.grad

    init_lp = None if init is None else SWRState(init.h.float(), init.pos)
    ref = run(x64, g64, init, True)
    got = run(x64.to(dtype), g64.to(dtype), init_lp, False)
    errs = {"y": rel(got[0], ref[0]), "dx": rel(got[2], ref[2]), "dg": rel(got[3], ref[3])}
    if state:
        errs["final_h"] = rel(got[1], ref[1])
    nan = any(bool(torch.isnan(t).any()) for t in got if t is not None)
    return {"errs": errs, "ok": (not nan) and max(errs.values()) <= TOL[dtype]}


def check_core(batch, seqlen, heads, dim, groups, dtype, cap=None, state=False) -> dict:
    feat = heads + 2 * groups * dim + heads * dim
    p64 = torch.randn(batch, seqlen, feat, device="cuda", dtype=torch.float64)
    kw = dict(num_heads=heads, head_dim=dim, num_gate_groups=groups, block_len=16, window_blocks=2,
              decay_cap=cap, output_final_state=state)
    init = None
    if state:
        init = SWRState(torch.randn(batch, heads, 2, dim, device="cuda", dtype=torch.float64),
                        torch.randint(0, 100, (batch,), device="cuda"))
    dout = torch.randn(batch, seqlen, heads * dim, device="cuda", dtype=torch.float64)

    def run(p, st, reference):
        p = p.clone().requires_grad_()
        out = (phalanx_core_torch if reference else phalanx_core)(p, initial_state=st, **kw)
        y, fin = out if state else (out, None)
        ((y.double() * dout).sum() + (fin.h.double().sum() if fin is not None else 0.0)).backward()
        return y.detach(), p.grad

    ref = run(p64, init, True)
    got = run(p64.to(dtype), None if init is None else SWRState(init.h.float(), init.pos), False)
    errs = {"out": rel(got[0], ref[0]), "dproj": rel(got[1], ref[1])}
    return {"errs": errs, "ok": max(errs.values()) <= TOL[dtype]}


@torch.no_grad()
def check_inference_final(dtype, cu=None, window=3, fused=False) -> dict:
    """Without autograd the final state comes from the forward kernel: vs float64 ``swr_torch`` (or the core)."""
    lengths = [4100] if cu is None else (cu[1:] - cu[:-1]).tolist()
    total, heads, dim = sum(lengths), 8, 16
    kw = dict(block_len=16, window_blocks=window, cu_seqlens=cu, output_final_state=True)
    if fused:
        p64 = torch.randn(1, total, heads + 2 * 4 * dim + heads * dim, device="cuda", dtype=torch.float64)
        core_kw = dict(num_heads=heads, head_dim=dim, num_gate_groups=4, decay_cap=0.98, **kw)
        (y, fin), (ry, rfin) = phalanx_core(p64.to(dtype), **core_kw), phalanx_core_torch(p64, **core_kw)
    else:
        x64 = torch.randn(1, total, heads, dim, device="cuda", dtype=torch.float64)
        g64 = gates((1, total, heads), "near1")
        (y, fin), (ry, rfin) = swr(x64.to(dtype), g64.to(dtype), **kw), swr_torch(x64, g64, **kw)
    errs = {"y": rel(y, ry), "final_h": rel(fin.h, rfin.h)}
    pos_ok = fin.pos.tolist() == rfin.pos.tolist()
    return {"errs": errs, "ok": pos_ok and max(errs.values()) <= TOL[dtype]}


def check_prefill_steps(seqlen=300, heads=4, dim=32, block_len=16, window=3) -> dict:
    """fp32: chunked prefill (uneven chunks) then single steps equals the full pass (max abs diff)."""
    x = torch.randn(1, seqlen, heads, dim, device="cuda")
    g = gates((1, seqlen, heads), "sharp").float()
    full = swr(x, g, block_len=block_len, window_blocks=window)
    pieces, state, start = [], None, 0
    for stop in (37, 38, 200, 260):
        y, state = swr(x[:, start:stop], g[:, start:stop], block_len=block_len, window_blocks=window,
                       initial_state=state, output_final_state=True)
        pieces.append(y)
        start = stop
    for t in range(start, seqlen):
        y, state = swr_step(x[:, t], g[:, t], state, block_len)
        pieces.append(y[:, None])
    diff = float((torch.cat(pieces, 1) - full).abs().max())
    return {"max_abs_diff": diff, "ok": diff <= 1e-5}


def _record(results: dict, name: str, check, *args, **kwargs) -> None:
    """Run one check, keep its result (or the exception as a failure) and print it at once."""
    try:
        results[name] = check(*args, **kwargs)
    except Exception as exc:  # a failing case must not hide the others
        results[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]}
    print(name, results[name], flush=True)


def correctness() -> dict:
    results = {}
    cu = torch.tensor([0, 1, 17, 500, 4097, 4100], device="cuda", dtype=torch.int32)
    cases = []
    for dtype in (torch.bfloat16, torch.float32):
        cases += [
            ("T1", (2, 1, 4, 16, 16, 2, dtype, "sharp")),
            ("T17", (2, 17, 4, 16, 16, 2, dtype, "sharp")),
            ("T1000 BL32 W3 D32", (2, 1000, 4, 32, 32, 3, dtype, "sharp")),
            ("T1000 BL64 W1 D128 near1", (1, 1000, 2, 128, 64, 1, dtype, "near1")),
            ("T4097 W4 D48 near1", (1, 4097, 4, 48, 16, 4, dtype, "near1")),
            ("T32768 sharp", (1, 32768, 4, 16, 16, 2, dtype, "sharp")),
            ("T32768 near1", (1, 32768, 4, 16, 16, 2, dtype, "near1")),
            ("shape A", (8, 8192, 64, 16, 16, 2, dtype, "sharp")),
        ]
    for name, args in cases:
        _record(results, f"swr {name} {args[6]}".replace("torch.", ""), check_swr, *args)
    for dtype in (torch.bfloat16, torch.float32):
        tag = str(dtype).replace("torch.", "")
        _record(results, f"swr varlen {tag}", check_swr, 1, 4100, 4, 16, 16, 2, dtype, "sharp", cu=cu)
        _record(results, f"swr varlen+state {tag}", check_swr, 1, 4100, 4, 16, 16, 3, dtype, "sharp", cu=cu,
                state=True)
        _record(results, f"swr batch+state {tag}", check_swr, 3, 333, 4, 16, 32, 2, dtype, "near1", state=True)
        _record(results, f"core H=Hg {tag}", check_core, 2, 2049, 64, 16, 64, dtype)
        _record(results, f"core Hg=H/4 cap {tag}", check_core, 2, 1000, 16, 32, 4, dtype, cap=0.95)
        _record(results, f"core state {tag}", check_core, 2, 300, 8, 16, 8, dtype, state=True)
        _record(results, f"inference final state {tag}", check_inference_final, dtype)
        _record(results, f"inference final state varlen {tag}", check_inference_final, dtype, cu=cu)
        _record(results, f"inference final state core varlen {tag}", check_inference_final, dtype, cu=cu, window=2,
                fused=True)
    _record(results, "prefill+steps fp32", check_prefill_steps)
    return results


def _save(report: dict, out: str) -> None:
    """Write what has been measured so far (a run cut short keeps its results)."""
    with open(os.path.join(out, "kernels_gpu.json"), "w") as f:
        json.dump(report, f, indent=1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--skip-tests", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    report = {
        "device": torch.cuda.get_device_name(),
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "triton": triton.__version__,
                     "transformers": transformers.__version__},
    }
    bandwidth = bench_swr.copy_bandwidth()
    report["copy_bandwidth_Bps"] = bandwidth
    # VEC (channels per thread) is derived from HB and the warps unless given; VEC 8 is the layout Triton picks
    # on its own (16-byte loads, the block axis spread over threads), kept as the before/after comparison.
    candidates = [{"NB": nb, "HB": hb, "num_warps": w, **({"VEC": vec} if vec else {})}
                  for nb, hb, w, vec in [(16, 8, 1, None), (32, 8, 1, None), (16, 4, 1, None), (32, 4, 1, None),
                                         (16, 4, 1, 8), (16, 2, 1, 8), (16, 4, 1, 4), (16, 8, 2, None)]]
    report["sweep_shape_A"] = bench_swr.sweep_configs(8, 8192, 64, 16, candidates)
    report["chosen_config"] = bench_swr.best_config(report["sweep_shape_A"])
    _save(report, args.out)
    print("chosen:", report["chosen_config"], flush=True)
    # The checks and tables below use the library's launch_config (what users get), set from earlier sweeps.
    t0 = time.time()
    report["correctness"] = correctness()
    report["correctness_s"] = time.time() - t0
    _save(report, args.out)
    if not args.skip_tests:
        tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests/test_kernels_gpu.py"],
                               capture_output=True, text=True)
        report["pytest_gpu"] = {"rc": tests.returncode, "tail": tests.stdout[-3000:] + tests.stderr[-2000:]}
    report["swr"] = bench_swr.run(bandwidth)
    _save(report, args.out)
    report["layer"] = bench_layer.run()
    _save(report, args.out)

    print(f"\n{report['device']} {report['versions']} copy {bandwidth / 1e12:.2f} TB/s")
    if "pytest_gpu" in report:
        print("pytest -m gpu rc", report["pytest_gpu"]["rc"], report["pytest_gpu"]["tail"].strip().splitlines()[-1:])
    for name, r in report["correctness"].items():
        errs = " ".join(f"{k}={v:.1e}" for k, v in r.get("errs", {}).items()) or r.get("error") or (
            f"diff={r.get('max_abs_diff', float('nan')):.1e}")
        print(f"{'ok ' if r['ok'] else 'BAD'} {name}: {errs}")
    for r in report["sweep_shape_A"]:
        cfg = " ".join(f"{k}={v}" for k, v in r.items() if not k.endswith("_ms"))
        print(f"sweep {cfg}: GPU ms swr fwd {r['fwd_gpu_ms']:.3f} fwd+bwd {r['fwd_bwd_gpu_ms']:.3f} | core fwd "
              f"{r['core_fwd_gpu_ms']:.3f} fwd+bwd {r['core_fwd_bwd_gpu_ms']:.3f} (eager {r['fwd_ms']:.3f} "
              f"{r['fwd_bwd_ms']:.3f} | {r['core_fwd_ms']:.3f} {r['core_fwd_bwd_ms']:.3f})")
    print("chosen:", report["chosen_config"])
    print(bench_swr.format_table(report["swr"]))
    a = report["swr"][0]
    print(f"core shape A: GPU fwd {a['core_fwd_gpu_ms']:.3f} (floor {a['core_floor_fwd_ms']:.3f}) fwd+bwd "
          f"{a['core_fwd_bwd_gpu_ms']:.3f} (floor {a['core_floor_fwd_bwd_ms']:.3f}); eager {a['core_fwd_ms']:.3f} / "
          f"{a['core_fwd_bwd_ms']:.3f}")
    print(bench_layer.format_table(report["layer"]))
    return 0 if all(r["ok"] for r in report["correctness"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
