"""Decoding through ``generate`` (issue 16 item 5): the default and the static cache, side by side in one run.

Models: Transformers' own ``LlamaForCausalLM`` (``transformer``, the anchor) and the ``PhalanxConfig`` models
of ``model_zoo``: every layer full attention (``phalanx_full``), the SWA hybrid and the Phalanx hybrid. Each
runs ``generate`` greedily with the default cache and with ``cache_implementation="static"``; the static runs
pass one ``CompileConfig(fullgraph=True)`` to every model, so each compiles its decoding step the same way
(Transformers compiles the Llama step itself on CUDA; the Phalanx models compile only when asked).

Per (model, cache, batch, prompt): prefill tokens/s (from the call to the first new token), decode tokens/s
(over the following ``--new-tokens`` - 1 steps; a stopping criterion stamps each step, as ``generate`` checks
its criteria once per token), the fraction of the weight-bandwidth limit (``--bandwidth`` bytes/s over the
weights' bytes, per sequence), and the cache's bytes per sequence. Medians of ``--repeats`` timed calls after
one untimed call that compiles.

    python benchmarks/bench_generate.py --out benchmarks/results/generate_h200.json          # the GPU run
    python benchmarks/bench_generate.py --size tiny --device cpu --prompts 32 --batches 1 2 --new-tokens 4 --no-compile

Not yet run on a GPU: its numbers come with the next GPU session (the CPU smoke run above is tested).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers.generation import CompileConfig, StoppingCriteria, StoppingCriteriaList

from modeling_phalanx.modeling_phalanx import CACHE_KWARG

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_e2e import environment  # noqa: E402
from model_zoo import build_model, cache_bytes  # noqa: E402

GENERATE_MODELS = ("transformer", "phalanx_full", "swa_hybrid", "phalanx_hybrid")
CACHES = ("default", "static")


class StepClock(StoppingCriteria):
    """Stamps the time each new token is ready (``generate`` checks its stopping criteria once per step); never stops."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.times: list[float] = []

    def now(self) -> float:
        if self.device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        self.times.append(self.now())
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def generate_kwargs(cache: str, compile_step: bool, new_tokens: int) -> dict:
    """Greedy ``generate`` options for ``new_tokens`` tokens (no early stop) with the cache under test."""
    kwargs = dict(do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens, eos_token_id=None,
                  pad_token_id=0, return_dict_in_generate=True)
    if cache == "static":
        kwargs["cache_implementation"] = "static"
        if compile_step:
            kwargs["compile_config"] = CompileConfig(fullgraph=True)
    return kwargs


@torch.no_grad()
def bench_model(name: str, args: argparse.Namespace) -> list[dict]:
    """Every (cache, prompt, batch) point of one model."""
    device = args.device
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    torch.manual_seed(0)
    with torch.device(device):
        model = build_model(name, args.size, max_positions=max(args.prompts) + args.new_tokens + 64).to(dtype).eval()
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    points = []
    for cache in CACHES:
        for prompt in args.prompts:
            for batch in args.batches:
                ids = torch.randint(3, model.config.vocab_size, (batch, prompt), device=device)
                mask = torch.ones_like(ids)
                options = generate_kwargs(cache, not args.no_compile, args.new_tokens)
                model.generate(ids, attention_mask=mask, **options)  # compiles / warms up
                prefill, step = [], []
                for _ in range(args.repeats):
                    clock = StepClock(device)
                    start = clock.now()
                    out = model.generate(ids, attention_mask=mask, stopping_criteria=StoppingCriteriaList([clock]),
                                         **options)
                    prefill.append(clock.times[0] - start)
                    step.append((clock.times[-1] - clock.times[0]) / (len(clock.times) - 1))
                decode_tps = batch / statistics.median(step)
                points.append({
                    "model": name, "cache": cache, "prompt": prompt, "batch": batch, "new_tokens": args.new_tokens,
                    "compiled_step": cache == "static" and not args.no_compile,
                    "prefill_tokens_per_s": batch * prompt / statistics.median(prefill),
                    "decode_tokens_per_s": decode_tps,
                    "fraction_of_weight_bandwidth_limit": decode_tps / (batch * args.bandwidth / weight_bytes),
                    "cache_bytes_per_seq": cache_bytes(getattr(out, CACHE_KWARG)) / batch,
                })
                print(json.dumps(points[-1]), flush=True)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return points


def table(points: list[dict]) -> str:
    """Markdown table: one row per model and cache, decode tokens/s per (batch, prompt)."""
    keys = sorted({(p["batch"], p["prompt"]) for p in points}, key=lambda k: (k[1], k[0]))
    header = ["model", "cache", *(f"b{b} @ {n}: decode tok/s (share of limit)" for b, n in keys)]
    rows = []
    for model in dict.fromkeys(p["model"] for p in points):
        for cache in CACHES:
            got = {(p["batch"], p["prompt"]): p for p in points if p["model"] == model and p["cache"] == cache}
            if got:
                rows.append([model, cache, *(f"{got[k]['decode_tokens_per_s']:,.1f} ({got[k]['fraction_of_weight_bandwidth_limit']:.0%})"
                                              if k in got else "-" for k in keys)])
    return "\n".join("| " + " | ".join(r) + " |" for r in (header, ["---"] * len(header), *rows))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="1.3b", choices=["1.3b", "tiny"])
    parser.add_argument("--models", nargs="+", default=list(GENERATE_MODELS), choices=GENERATE_MODELS)
    parser.add_argument("--prompts", type=int, nargs="+", default=[4096, 32768])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bandwidth", type=float, default=4.3e12, help="bytes/s the weights stream at (H200: 4.3e12)")
    parser.add_argument("--no-compile", action="store_true", help="static cache without compiling the step")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.new_tokens < 2:
        parser.error("--new-tokens must be at least 2 (decode speed is measured past the first token)")
    points = [p for name in args.models for p in bench_model(name, args)]
    result = {"environment": environment(), "args": {k: str(v) for k, v in vars(args).items()}, "points": points}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(points))
    return 0


if __name__ == "__main__":
    sys.exit(main())
