"""Decoding through ``generate`` (issue 16 item 5): the default and the static cache, side by side in one run.

Models: Transformers' own ``LlamaForCausalLM`` (``transformer``, the anchor) and the ``PhalanxConfig`` models
of ``model_zoo``: every layer full attention (``phalanx_full``), the SWA hybrid and the Phalanx hybrid. Each
runs ``generate`` greedily with the default cache and with ``cache_implementation="static"``; the static runs
pass one ``CompileConfig(fullgraph=True)`` to every model, so each compiles its decoding step the same way
(Transformers compiles the Llama step itself on CUDA; the Phalanx models compile only when asked). The third
kind, ``fast``, runs the project's own decode loop (``modeling_phalanx.generation_phalanx.fast_generate``: the
same static cache, the whole step compiled with CUDA graphs on CUDA, no per-token host synchronisation) on every
model, the Llama anchor included, so the comparison stays fair.

Per (model, cache, batch, prompt): prefill tokens/s (from the call to the first new token), decode tokens/s
(over the following ``--new-tokens`` - 1 steps; a stopping criterion stamps each step, as ``generate`` checks
its criteria once per token), the fraction of the weight-bandwidth limit (``--bandwidth`` bytes/s over the
weights' bytes, per sequence), and the cache's bytes per sequence. Medians of ``--repeats`` timed calls after
one untimed call that compiles. The fast loop is timed through its streamer, which it calls after the prefill
and at the end only (``check_every`` = ``--new-tokens`` - 1), so the decode steps run without host reads. The points are ``--points BATCHxPROMPT ...`` (default: batch 1 and 32 at a 4K
prompt, 1 and 16 at a 32K prompt); each model is built once and runs every point with each cache.

A point that fails (out of memory, a compile error) is recorded as an error point (``"error": "Type: message"``)
and the run goes on; ``--out`` is rewritten (atomically) after every point, so a run killed by ``timeout`` keeps
what it finished; ``--deadline-s`` starts no new point past that many seconds and ends normally. ``--resume`` keeps
the points ``--out`` already holds and measures only the others (a run spread over several calls: the GPU machine's
commands last at most 10 minutes); ``--from-json`` renders the table and plot of one or more runs' JSON, merged.

    timeout 540 python benchmarks/bench_generate.py --deadline-s 420 --out benchmarks/results/generate_h200.json  # GPU
    python benchmarks/bench_generate.py --size tiny --device cpu --points 1x32 2x32 --new-tokens 4 --no-compile

Run on one H200 (2026-12-01; torch 2.11, transformers 5.17) for the anchor and the Phalanx hybrid at 1x4096, 32x4096
and 1x32768: ``benchmarks/results/generate_h200.json`` and ``.log`` (README, "Generation speed").
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers.generation import CompileConfig, StoppingCriteria, StoppingCriteriaList

from modeling_phalanx.generation_phalanx import fast_generate, static_cache
from modeling_phalanx.modeling_phalanx import CACHE_KWARG

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_e2e import environment  # noqa: E402
from model_zoo import PRESET_MODELS, build_model, cache_bytes  # noqa: E402

GENERATE_MODELS = ("transformer", "phalanx_full", "swa_hybrid", "phalanx_hybrid")  # the default set
# also on request: the multi-hybrid presets (issue 20 item 3: decode on the compiled path)
MODEL_CHOICES = (*GENERATE_MODELS, *PRESET_MODELS)
CACHES = ("default", "static", "fast")
DEFAULT_POINTS = ("1x4096", "32x4096", "1x32768", "16x32768")  # issue 16: batch 1 and 32 at 4K, 1 and 16 at 32K


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


def parse_point(text: str) -> tuple[int, int]:
    """``BATCHxPROMPT`` (e.g. ``32x4096``) as ``(batch, prompt)``, both positive."""
    batch, sep, prompt = text.strip().lower().partition("x")
    try:
        values = (int(batch), int(prompt)) if sep else (0, 0)
    except ValueError:
        values = (0, 0)
    if min(values) < 1:
        raise argparse.ArgumentTypeError(f"points must look like 1x4096 (positive batch x prompt), got {text!r}")
    return values


def error_text(exc: BaseException) -> str:
    """``Type: first line of the message`` (at most 300 characters of it)."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:300] if lines else ''}"


def build(name: str, args: argparse.Namespace) -> torch.nn.Module:
    """One model in the run's dtype, sized for the longest prompt plus the new tokens, attention through SDPA: the
    SWA hybrid trains with FlexAttention, but decoding it so through `generate`'s compiled static step ran at 21
    tokens/s on the H200 (CUDA graphs re-recorded for each new shape; run 3), so every model decodes with SDPA."""
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    torch.manual_seed(0)
    longest = max(prompt for _, prompt in args.points)
    with torch.device(args.device):
        return build_model(name, args.size, max_positions=longest + args.new_tokens + 64,
                           attn_implementation="sdpa").to(dtype).eval()


class StreamClock:
    """A streamer that stamps the time of each chunk ``fast_generate`` hands it: the prompt (before the prefill),
    the first token (after it), then every ``check_every`` steps."""

    def __init__(self, device: str) -> None:
        self.clock = StepClock(device)
        self.times: list[float] = []

    def put(self, value: torch.Tensor) -> None:
        self.times.append(self.clock.now())

    def end(self) -> None:
        pass


@torch.no_grad()
def bench_fast_point(model: torch.nn.Module, batch: int, prompt: int, args: argparse.Namespace) -> dict:
    """Prefill seconds and decode seconds per step of ``fast_generate`` (medians of ``--repeats`` after an untimed
    call that compiles; the host reads the device after the prefill and at the end only), and the bytes per
    sequence of its static cache."""
    ids = torch.randint(3, model.config.vocab_size, (batch, prompt), device=args.device)
    options = dict(max_new_tokens=args.new_tokens, check_every=args.new_tokens - 1,
                   compile=False if args.no_compile else None)  # None: compiled on CUDA only
    fast_generate(model, ids, **options)  # compiles / warms up
    prefill, step = [], []
    for _ in range(args.repeats):
        clock = StreamClock(args.device)
        fast_generate(model, ids, streamer=clock, **options)
        prompt_ready, first, last = clock.times
        prefill.append(first - prompt_ready)
        step.append((last - first) / (args.new_tokens - 1))
    cache_name, cache = static_cache(model, batch, prompt + args.new_tokens - 1)  # as fast_generate sizes it
    model(input_ids=ids, use_cache=True, logits_to_keep=1, **{cache_name: cache})
    cache_per_seq = cache_bytes(cache) / batch
    del ids, cache
    return {"prefill": statistics.median(prefill), "step": statistics.median(step), "cache_bytes_per_seq": cache_per_seq}


@torch.no_grad()
def bench_point(model: torch.nn.Module, name: str, cache: str, batch: int, prompt: int,
                args: argparse.Namespace) -> dict:
    """One (model, cache, batch, prompt) point: an untimed call that compiles, then ``--repeats`` timed calls."""
    device = args.device
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    if cache == "fast":
        timed = bench_fast_point(model, batch, prompt, args)
        prefill_s, step_s, cache_per_seq = timed["prefill"], timed["step"], timed["cache_bytes_per_seq"]
    else:
        ids = torch.randint(3, model.config.vocab_size, (batch, prompt), device=device)
        mask = torch.ones_like(ids)
        # generate sizes a static cache to the longest one it made before (`_previous_max_cache_length`, to avoid
        # recompiling): a point after a longer prompt would decode over the longer cache (seen on the H200: the
        # anchor at 1x4K over a 32K cache), so each point starts from its own size
        model.__dict__.pop("_previous_max_cache_length", None)
        options = generate_kwargs(cache, not args.no_compile, args.new_tokens)
        out = model.generate(ids, attention_mask=mask, **options)  # compiles / warms up
        del out
        prefill, step = [], []
        for _ in range(args.repeats):
            clock = StepClock(device)
            start = clock.now()
            out = model.generate(ids, attention_mask=mask, stopping_criteria=StoppingCriteriaList([clock]), **options)
            prefill.append(clock.times[0] - start)
            step.append((clock.times[-1] - clock.times[0]) / (len(clock.times) - 1))
        cache_per_seq = cache_bytes(getattr(out, CACHE_KWARG)) / batch
        prefill_s, step_s = statistics.median(prefill), statistics.median(step)
        del out, ids, mask
    decode_tps = batch / step_s
    return {
        "model": name, "cache": cache, "prompt": prompt, "batch": batch, "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "attn_implementation": model.config._attn_implementation,
        "compiled_step": not args.no_compile and (cache == "static" or (cache == "fast" and device == "cuda")),
        "prefill_tokens_per_s": batch * prompt / prefill_s,
        "decode_tokens_per_s": decode_tps,
        "fraction_of_weight_bandwidth_limit": decode_tps / (batch * args.bandwidth / weight_bytes),
        "cache_bytes_per_seq": cache_per_seq,
    }


def free_memory(device: str) -> None:
    if device == "cuda":
        torch.cuda.empty_cache()


def point_key(point: dict) -> tuple:
    """What a point measured: (model, cache, batch, prompt)."""
    return point["model"], point["cache"], point["batch"], point["prompt"]


def run(args: argparse.Namespace, record, done: frozenset = frozenset()) -> None:
    """Every model (built once), cache and point in turn; ``record`` gets each point or error point as it ends.
    Points whose key is in ``done`` are skipped (a model with none left is not built). Stops early, recording
    nothing more, once ``--deadline-s`` has passed."""
    start = time.monotonic()

    def out_of_time() -> bool:
        if args.deadline_s is not None and time.monotonic() - start >= args.deadline_s:
            print("bench_generate: deadline reached, skipping the rest", flush=True)
            return True
        return False

    for name in args.models:
        todo = [(cache, batch, prompt) for cache in args.caches for batch, prompt in args.points
                if (name, cache, batch, prompt) not in done]
        if not todo:
            continue
        if out_of_time():
            return
        try:
            model = build(name, args)
        except Exception as exc:  # noqa: BLE001 - recorded, the run goes on
            record({"model": name, "cache": None, "batch": None, "prompt": None, "error": error_text(exc)})
            model = None
        if model is None:
            free_memory(args.device)
            continue
        for cache, batch, prompt in todo:
            if out_of_time():
                return
            point = {"model": name, "cache": cache, "batch": batch, "prompt": prompt}
            try:
                point = bench_point(model, name, cache, batch, prompt, args)
            except Exception as exc:  # noqa: BLE001 - out of memory and the like: recorded, the run goes on
                point["error"] = error_text(exc)
            free_memory(args.device)  # after the except clause, so the traceback's tensors are gone
            record(point)
        del model
        torch._dynamo.reset()  # the compiled graphs and their CUDA-graph pools hold the model's memory
        free_memory(args.device)


def write_json(path: Path, result: dict) -> None:
    """Atomically: a temporary file in the same folder, then ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False) as f:
        f.write(json.dumps(result, indent=2) + "\n")
    os.replace(f.name, path)


def table(points: list[dict]) -> str:
    """Markdown table: a row per model and cache, decode tokens/s per (batch, prompt); "error" where a point failed."""
    keys = sorted({(p["batch"], p["prompt"]) for p in points if p["batch"] is not None}, key=lambda k: (k[1], k[0]))
    header = ["model", "cache", *(f"b{b} @ {n}: decode tok/s (share of limit)" for b, n in keys)]

    def cell(p: dict | None) -> str:
        if p is None:
            return "-"
        if "error" in p:
            return "error"
        return f"{p['decode_tokens_per_s']:,.1f} ({p['fraction_of_weight_bandwidth_limit']:.0%})"

    rows = []
    for model in dict.fromkeys(p["model"] for p in points):
        if any(p["model"] == model and p["cache"] is None for p in points):
            rows.append([model, "(build)", *("error" for _ in keys)])
        for cache in CACHES:
            got = {(p["batch"], p["prompt"]): p for p in points if p["model"] == model and p["cache"] == cache}
            if got:
                rows.append([model, cache, *(cell(got.get(k)) for k in keys)])
    return "\n".join("| " + " | ".join(r) + " |" for r in (header, ["---"] * len(header), *rows))


def plot(points: list[dict], path: Path, title: str) -> Path:
    """Decode tokens/s per (batch, prompt) point, one bar per model and cache (log scale), error points left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [p for p in points if "error" not in p and p["batch"] is not None]
    keys = sorted({(p["batch"], p["prompt"]) for p in ok}, key=lambda k: (k[1], k[0]))
    series = list(dict.fromkeys((p["model"], p["cache"]) for p in ok))
    width = 0.8 / max(len(series), 1)
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for i, (model, cache) in enumerate(series):
        got = {(p["batch"], p["prompt"]): p["decode_tokens_per_s"] for p in ok if (p["model"], p["cache"]) == (model, cache)}
        xs = [j + (i - (len(series) - 1) / 2) * width for j, k in enumerate(keys) if k in got]
        ax.bar(xs, [got[k] for k in keys if k in got], width, label=f"{model}, {cache} cache")
    ax.set_xticks(range(len(keys)), [f"batch {b}, {n // 1024}K prompt" for b, n in keys])
    ax.set_yscale("log")
    ax.set_ylabel("decode tokens / s (log)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="1.3b", choices=["1.3b", "tiny"])
    parser.add_argument("--models", nargs="+", default=list(GENERATE_MODELS), choices=MODEL_CHOICES)
    parser.add_argument("--points", type=parse_point, nargs="+", default=[parse_point(p) for p in DEFAULT_POINTS],
                        metavar="BATCHxPROMPT", help=f"(batch, prompt) points (default: {' '.join(DEFAULT_POINTS)})")
    parser.add_argument("--caches", nargs="+", default=list(CACHES), choices=CACHES,
                        help="which decode paths to time (default: all)")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bandwidth", type=float, default=4.3e12, help="bytes/s the weights stream at (H200: 4.3e12)")
    parser.add_argument("--no-compile", action="store_true", help="static cache without compiling the step")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--deadline-s", type=float, help="start no new point after this many seconds")
    parser.add_argument("--out", type=Path, help="JSON, rewritten after every point")
    parser.add_argument("--plot", type=Path, help="PNG of decode tokens/s per point, written at the end")
    parser.add_argument("--resume", action="store_true",
                        help="keep the points --out already holds and measure only the others")
    parser.add_argument("--from-json", type=Path, nargs="+", metavar="JSON",
                        help="measure nothing: print the table (and --plot) of earlier runs' JSON, their points merged")
    args = parser.parse_args(argv)
    if args.from_json is not None:
        runs = [read_run(parser, path, "--from-json") for path in args.from_json]
        points = [p for earlier in runs for p in earlier["points"]]
        print(table(points))
        if args.plot:
            print(f"plot: {plot(points, args.plot, generate_title(runs[0]))}")
        return 0
    if args.resume and args.out is None:
        parser.error("--resume needs --out (the JSON whose points are kept)")
    if args.new_tokens < 2:
        parser.error("--new-tokens must be at least 2 (decode speed is measured past the first token)")
    args.points = list(dict.fromkeys(args.points))
    args.caches = list(dict.fromkeys(args.caches))
    shown = {k: str(v) for k, v in vars(args).items()}
    shown["points"] = " ".join(f"{b}x{n}" for b, n in args.points)
    shown["caches"] = " ".join(args.caches)
    result = {"environment": environment(), "args": shown, "points": []}
    if args.resume and args.out.exists():
        earlier = read_run(parser, args.out, "--resume")
        result["points"] = earlier["points"]
        result["earlier_args"] = [*earlier.get("earlier_args", []), earlier["args"]]

    def record(point: dict) -> None:
        result["points"].append(point)
        print(json.dumps(point), flush=True)
        if args.out:
            write_json(args.out, result)

    run(args, record, frozenset(point_key(p) for p in result["points"]))
    if args.out:
        write_json(args.out, result)
    print(table(result["points"]))
    if args.plot:
        print(f"plot: {plot(result['points'], args.plot, generate_title(result))}")
    return 0


def read_run(parser: argparse.ArgumentParser, path: Path, option: str) -> dict:
    """An earlier run's JSON (``environment``, ``args``, ``points``), or a one-line parser error naming the file."""
    if not path.is_file():
        parser.error(f"{option}: no such file: {path}")
    try:
        earlier = json.loads(path.read_text())
        if not isinstance(earlier, dict) or not isinstance(earlier.get("points"), list) or "args" not in earlier:
            raise ValueError("no 'args' and 'points'")
        for point in earlier["points"]:
            point_key(point)
    except (ValueError, KeyError, TypeError) as exc:
        parser.error(f"{option}: {path} is not a bench_generate result ({exc})")
    return earlier


def generate_title(result: dict) -> str:
    """Plot title: what was measured, on which machine and versions."""
    env = result.get("environment", {})
    versions = ", ".join(f"{k} {env[k]}" for k in ("torch", "transformers") if k in env)
    return f"generate() decode speed, {env.get('gpu', 'CPU')}; {versions}"


if __name__ == "__main__":
    sys.exit(main())
