"""End-to-end training throughput (issue 7 item 3): Transformer vs SWA hybrid vs Phalanx hybrid vs bound.

bf16 weights, gradient checkpointing, forward + backward of ``--tokens`` tokens per step
(batch = tokens / length), median of ``--steps`` timed steps after warm-up, CUDA events.

    python benchmarks/bench_e2e.py --out benchmarks/results/e2e_h100.json
    python benchmarks/bench_e2e.py --size tiny --lengths 64 128 --tokens 256 --device cpu   # smoke
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model_zoo import MODELS, build_model  # noqa: E402


def environment() -> dict:
    """Machine and library versions recorded with every result."""
    import transformers

    info = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        try:
            import triton

            info["triton"] = triton.__version__
        except ImportError:
            pass
    return info


def time_steps(step, steps: int, warmup: int, device: str) -> list[float]:
    """Seconds per call of ``step`` (events on CUDA, wall clock elsewhere)."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        else:
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
    return times


def kernel_seconds(prof: torch.profiler.profile) -> float:
    """GPU work in a profile: the device time of its kernels and copies, summed (0 without CUDA events)."""
    return 1e-6 * sum(e.self_device_time_total for e in prof.key_averages()
                      if e.device_type == torch.autograd.DeviceType.CUDA)


def kernel_time(step, calls: int) -> float:
    """Seconds of GPU work per call of ``step`` (on CUDA; after one warm-up call): the device time of ``calls``
    profiled calls over ``calls``. CUDA events around one call also hold the host's time to launch its kernels,
    which dominates when a call's GPU work is short; this is the operator's own cost."""
    step()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            step()
        torch.cuda.synchronize()
    return kernel_seconds(prof) / calls


def bench_training(name: str, size: str, length: int, tokens: int, steps: int, warmup: int, device: str) -> dict:
    """Tokens/s of forward+backward for one model at one context length."""
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    torch.manual_seed(0)
    with torch.device(device):
        model = build_model(name, size, max_positions=max(length, 128)).to(dtype)
    model.gradient_checkpointing_enable()
    model.train()
    batch = max(1, tokens // length)
    vocab = model.config.vocab_size
    ids = torch.randint(3, vocab, (batch, length), device=device)

    def step() -> None:
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        model.zero_grad(set_to_none=True)

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    try:
        times = time_steps(step, steps, warmup, device)
    except Exception as err:  # record a failing peer instead of losing the whole table
        return {"model": name, "length": length, "batch": batch, "error": f"{type(err).__name__}: {err}"[:500]}
    finally:
        del model
    med = statistics.median(times)
    result = {"model": name, "length": length, "batch": batch, "step_s": med, "tokens_per_s": batch * length / med, "times": times}
    if device == "cuda":
        result["peak_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30
        torch.cuda.empty_cache()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="1.3b", choices=["1.3b", "tiny"])
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 8192, 16384, 32768])
    parser.add_argument("--tokens", type=int, default=32768)
    parser.add_argument("--models", nargs="+", default=[m for m in MODELS if m != "phalanx_full"], choices=MODELS)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    results = []
    report = {"benchmark": "e2e_training", "size": args.size, "tokens_per_step": args.tokens, "env": environment(), "results": results}
    for length in args.lengths:
        for name in args.models:
            r = bench_training(name, args.size, length, args.tokens, args.steps, args.warmup, args.device)
            results.append(r)
            print(json.dumps({k: v for k, v in r.items() if k != "times"}), flush=True)
            if args.out:  # after every result, so a run cut short keeps what it measured
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(report, indent=2))

    print(f"\n{report['env']}")
    print(f"{'length':>7} " + " ".join(f"{m:>15}" for m in args.models) + "   phalanx/transformer  phalanx/bound")
    for length in args.lengths:
        row = {r["model"]: r for r in results if r["length"] == length}
        cells = [f"{row[m]['tokens_per_s']:>15,.0f}" if "tokens_per_s" in row[m] else f"{'error':>15}" for m in args.models]
        ratio = bound = ""
        if all("tokens_per_s" in row.get(m, {}) for m in ("phalanx_hybrid", "transformer")):
            ratio = f"{row['phalanx_hybrid']['tokens_per_s'] / row['transformer']['tokens_per_s']:.2f}x"
        if all("tokens_per_s" in row.get(m, {}) for m in ("phalanx_hybrid", "bound")):
            bound = f"{row['phalanx_hybrid']['tokens_per_s'] / row['bound']['tokens_per_s']:.0%}"
        print(f"{length:>7} " + " ".join(cells) + f"   {ratio:>19}  {bound:>13}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
