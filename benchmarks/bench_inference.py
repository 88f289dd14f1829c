"""Inference (issue 7 item 4): prefill tokens/s, decode tokens/s at batch 1 and 32, cache memory per
sequence versus context, for the Transformer, the SWA hybrid and the Phalanx hybrid.

Decode is timed twice over the same cache lengths; the second pass (steady state) is reported, the first
(``first_pass_step_s``) also pays one-off per-length costs such as cuDNN attention plans.

    python benchmarks/bench_inference.py --out benchmarks/results/inference_h100.json --plot benchmarks/results/inference_memory_h100.png
    python benchmarks/bench_inference.py --size tiny --contexts 64 128 --decode-context 64 --device cpu   # smoke
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
from transformers import DynamicCache

from modeling_phalanx.modeling_phalanx import CACHE_KWARG

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_e2e import environment, time_steps  # noqa: E402
from model_zoo import build_model, cache_bytes  # noqa: E402

INFERENCE_MODELS = ("transformer", "swa_hybrid", "phalanx_hybrid")


@torch.no_grad()
def bench_model(name: str, args: argparse.Namespace) -> dict:
    """Prefill speed and cache size per context, then decode speed per batch size, for one model."""
    device = args.device
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    torch.manual_seed(0)
    with torch.device(device):
        model = build_model(name, args.size, max_positions=max(args.contexts) + 64).to(dtype).eval()
    vocab = model.config.vocab_size
    out: dict = {"model": name, "prefill": [], "decode": []}
    for ctx in args.contexts:
        ids = torch.randint(3, vocab, (1, ctx), device=device)
        holder = {}

        def prefill() -> None:
            holder["cache"] = getattr(model(input_ids=ids, **{CACHE_KWARG: DynamicCache(config=model.config)}, use_cache=True), CACHE_KWARG)

        med = statistics.median(time_steps(prefill, args.steps, 1, device))
        out["prefill"].append({"context": ctx, "tokens_per_s": ctx / med, "cache_bytes_per_seq": cache_bytes(holder["cache"])})
        del holder
    for batch in args.batches:
        ids = torch.randint(3, vocab, (batch, args.decode_context), device=device)

        def decode_pass() -> list[float]:
            """Prefill ``ids``, then time greedy steps: the cache grows by one token per step."""
            cache = getattr(model(input_ids=ids, **{CACHE_KWARG: DynamicCache(config=model.config)}, use_cache=True), CACHE_KWARG)
            state = {"tok": ids[:, -1:], "cache": cache}

            def decode() -> None:
                logits = model(input_ids=state["tok"], **{CACHE_KWARG: state["cache"]}, use_cache=True).logits
                state["tok"] = logits[:, -1:].argmax(-1)

            return time_steps(decode, args.decode_steps, 2, device)

        # The first pass over these cache lengths also pays one-off costs per new length (PyTorch's cuDNN
        # attention builds an execution plan for every new key length); the second pass is the steady state.
        first = decode_pass()
        times = decode_pass()
        out["decode"].append({"batch": batch, "context": args.decode_context, "step_s": statistics.median(times),
                              "tokens_per_s": batch / statistics.median(times),
                              "first_pass_step_s": statistics.median(first)})
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return out


def plot_memory(results: list[dict], path: Path) -> None:
    """Cache memory per sequence versus context length, one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in results:
        xs = [p["context"] for p in r["prefill"]]
        ax.plot(xs, [p["cache_bytes_per_seq"] / 2**20 for p in r["prefill"]], marker="o", label=r["model"])
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("cache per sequence (MiB)")
    ax.set_title("Inference cache memory per sequence")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="1.3b", choices=["1.3b", "tiny"])
    parser.add_argument("--contexts", type=int, nargs="+", default=[1024, 4096, 16384, 32768])
    parser.add_argument("--decode-context", type=int, default=4096)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--models", nargs="+", default=list(INFERENCE_MODELS), choices=INFERENCE_MODELS)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--decode-steps", type=int, default=16)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args()

    results = []
    for name in args.models:
        try:
            results.append(bench_model(name, args))
        except Exception as err:  # keep the other models' numbers
            results.append({"model": name, "error": f"{type(err).__name__}: {err}"[:500], "prefill": [], "decode": []})
        print(json.dumps(results[-1]), flush=True)
    report = {"benchmark": "inference", "size": args.size, "env": environment(), "results": results}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
    if args.plot:
        plot_memory([r for r in results if r["prefill"]], args.plot)

    print(f"\n{report['env']}")
    print(f"{'model':>15} " + " ".join(f"{'prefill@' + str(c):>14}" for c in args.contexts)
          + " " + " ".join(f"{'decode b' + str(b):>12}" for b in args.batches) + " " + " ".join(f"{'MiB@' + str(c):>10}" for c in args.contexts))
    for r in results:
        if "error" in r:
            print(f"{r['model']:>15} error: {r['error'][:100]}")
            continue
        pre = " ".join(f"{p['tokens_per_s']:>14,.0f}" for p in r["prefill"])
        dec = " ".join(f"{d['tokens_per_s']:>12,.1f}" for d in r["decode"])
        mem = " ".join(f"{p['cache_bytes_per_seq'] / 2**20:>10.1f}" for p in r["prefill"])
        print(f"{r['model']:>15} {pre} {dec} {mem}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
