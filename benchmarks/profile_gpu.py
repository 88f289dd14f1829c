"""Profiles behind the speed report (issue 7): what the kernels and the 1.3B Phalanx hybrid spend time on.

    python benchmarks/profile_gpu.py ops          # one SWR and one fused-core forward+backward at shape A;
                                                  # run under ncu to read the kernels' counters, e.g.
    ncu --clock-control none -k regex:_swr_ --section SpeedOfLight --section Occupancy \\
        --section WarpStateStats python benchmarks/profile_gpu.py ops
    python benchmarks/profile_gpu.py hyena-ops    # the FIR and fused Hyena cores (SE, MR, per channel) at
                                                  # 8 x 4096 x 2048, forward and backward; under ncu as above
                                                  # with --profile-from-start off (gpu_hyena_run.sh)
    python benchmarks/profile_gpu.py mr-walk      # the Hyena-MR walks, forward and backward; under ncu as above
    python benchmarks/profile_gpu.py model --out DIR   # torch.profiler tables: batch-1 prefill and a
                                                       # training step of the Phalanx hybrid
    python benchmarks/profile_gpu.py decode --out DIR  # greedy decoding of the GPU-check model, fp32 and
                                                       # bf16, Triton and PyTorch paths: step times,
                                                       # Triton compilations during decoding, profile
    python benchmarks/profile_gpu.py decode-step --out DIR  # steady greedy steps of the 1.3B hybrid and the
                                                            # Transformer at batch 32 after 4096 tokens
    python benchmarks/profile_gpu.py generate --out DIR  # decoding steps through generate with the static cache
                                                         # (compiled), Llama anchor vs Phalanx hybrid at 1 x 32K:
                                                         # wall vs GPU kernel time per step, host operators

``model`` writes ``DIR/profile_model.txt``: for each phase the operators by total CUDA time and by
CPU time, and the number of host-device synchronisations (``aten::_local_scalar_dense`` and
``cudaStreamSynchronize`` calls), which serialise the CPU's launches with the GPU's work.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import DynamicCache

from modeling_phalanx.modeling_phalanx import CACHE_KWARG

sys.path.insert(0, str(Path(__file__).resolve().parent))
import phalanx_kernels  # noqa: E402
from bench_e2e import kernel_seconds, time_steps  # noqa: E402
from model_zoo import build_model  # noqa: E402


def profile_ops() -> None:
    """Shape A (8 x 8192 tokens, 64 heads x 16, bf16): SWR forward+backward, then the fused core's."""
    batch, seqlen, heads, dim = 8, 8192, 64, 16
    x = torch.randn(batch, seqlen, heads, dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    g = torch.nn.functional.logsigmoid(4 * torch.randn(batch, seqlen, heads, device="cuda")).bfloat16()
    g.requires_grad_(True)
    torch.autograd.grad(phalanx_kernels.swr(x, g), [x, g], torch.randn_like(x))
    proj = torch.randn(batch, seqlen, heads + 3 * heads * dim, device="cuda", dtype=torch.bfloat16,
                       requires_grad=True)
    out = phalanx_kernels.phalanx_core(proj, num_heads=heads, head_dim=dim, num_gate_groups=heads)
    torch.autograd.grad(out, [proj], torch.randn_like(out))
    torch.cuda.synchronize()


def profile_hyena_ops() -> None:
    """The Hyena kernels at 8 x 4096 tokens of width 2048, bf16, filters shared by 16 channels (as
    ``bench_hyena``'s mixer rows): the FIR alone (7 taps), then the fused core of Hyena-SE (7 taps), of Hyena-MR
    (128 taps) and, filters per channel, the two-pass core (7 taps), each forward then forward+backward, once
    compiled before; run under ncu (``--profile-from-start off``: the compiling round is not profiled) to read the
    kernels' counters (``gpu_hyena_run.sh``)."""
    from phalanx_kernels.fir_ops import causal_fir, hyena_core

    batch, seqlen, width = 8, 4096, 2048
    x = torch.randn(batch, seqlen, width, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    proj = torch.randn(batch, seqlen, 3 * width, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    featurizer = torch.randn(3 * width, 3, device="cuda", requires_grad=True)
    cases = {
        "fir_7": (lambda w: causal_fir(x, w)[0], torch.randn(width, 7, device="cuda", requires_grad=True), [x]),
        "core_se_7": (lambda w: hyena_core(proj, featurizer, w), torch.randn(width // 16, 7, device="cuda",
                                                                           requires_grad=True), [proj, featurizer]),
        "core_mr_128": (lambda w: hyena_core(proj, featurizer, w), torch.randn(width // 16, 128, device="cuda",
                                                                             requires_grad=True), [proj, featurizer]),
        "core_per_channel_7": (lambda w: hyena_core(proj, featurizer, w), torch.randn(width, 7, device="cuda",
                                                                                    requires_grad=True), [proj, featurizer]),
    }
    for measured in (False, True):  # the first round compiles the kernels; ncu sees the second only
        if measured:
            torch.cuda.synchronize()
            torch.cuda.profiler.start()
        for fn, weight, inputs in cases.values():
            with torch.no_grad():
                fn(weight)
            y = fn(weight)
            torch.autograd.grad(y, [*inputs, weight], torch.randn_like(y))
    torch.cuda.synchronize()
    torch.cuda.profiler.stop()


def profile_mr_walk() -> None:
    """The Hyena-MR walks (``_launch_mr_core``, ``_launch_mr_bwd``; 128 taps) at 8 x 4096 tokens of width 2048, bf16,
    with the filter in fp32 and stored in bf16, once compiled before; run under ncu as ``hyena-ops``."""
    from phalanx_kernels.fir_ops import _launch_mr_bwd, _launch_mr_core

    batch, seqlen, width = 8, 4096, 2048
    proj = torch.randn(batch, seqlen, 3 * width, device="cuda", dtype=torch.bfloat16)
    dy = torch.randn(batch, seqlen, width, device="cuda", dtype=torch.bfloat16)
    featurizer = torch.randn(3 * width, 3, device="cuda")
    weight = torch.randn(width // 16, 128, device="cuda") / 128**0.5
    for measured in (False, True):
        if measured:
            torch.cuda.synchronize()
            torch.cuda.profiler.start()
        for w in (weight, weight.bfloat16()):
            _launch_mr_core(proj, featurizer.t().contiguous(), w, None)
            _launch_mr_bwd(proj, featurizer, w, dy, None)
    torch.cuda.synchronize()
    torch.cuda.profiler.stop()


def _profiled(fn, warmup: int, device: str = "cuda") -> torch.profiler.profile:
    """Run ``fn`` ``warmup`` times, then once under torch.profiler (CPU, and CUDA on a GPU), synchronised at both
    ends."""
    cuda = device == "cuda"
    for _ in range(warmup):
        fn()
    if cuda:
        torch.cuda.synchronize()
    activities = [torch.profiler.ProfilerActivity.CPU, *([torch.profiler.ProfilerActivity.CUDA] if cuda else [])]
    with torch.profiler.profile(activities=activities) as prof:
        fn()
        if cuda:
            torch.cuda.synchronize()
    return prof


def _write(out: Path, name: str, sections: list[str], limit: int = 6000) -> None:
    """Write the sections to ``out/name`` and print their beginnings."""
    out.mkdir(parents=True, exist_ok=True)
    (out / name).write_text("\n\n".join(sections) + "\n")
    print("\n\n".join(s[:limit] for s in sections))


def _table(prof: torch.profiler.profile, title: str, rows: int = 25) -> str:
    events = prof.key_averages()
    syncs = {e.key: e.count for e in events if e.key in ("aten::_local_scalar_dense", "cudaStreamSynchronize",
                                                          "cudaDeviceSynchronize")}
    return "\n".join([
        f"## {title}",
        f"host-device synchronisations: {syncs}",
        events.table(sort_by="cuda_time_total", row_limit=rows),
        events.table(sort_by="cpu_time_total", row_limit=rows),
    ])


def profile_model(out: Path, prefill_len: int, train_len: int, tokens: int) -> None:
    """torch.profiler over batch-1 prefill (cache on) and one training step of the 1.3B Phalanx hybrid."""
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = build_model("phalanx_hybrid", "1.3b", max_positions=max(prefill_len, train_len)).bfloat16()
    vocab = model.config.vocab_size
    sections = []

    ids = torch.randint(3, vocab, (1, prefill_len), device="cuda")
    model.eval()
    with torch.no_grad():
        prof = _profiled(lambda: model(input_ids=ids, **{CACHE_KWARG: DynamicCache(config=model.config)},
                                       use_cache=True), warmup=2)
    sections.append(_table(prof, f"prefill, batch 1 x {prefill_len} tokens, cache on"))

    model.train()
    model.gradient_checkpointing_enable()
    ids = torch.randint(3, vocab, (max(1, tokens // train_len), train_len), device="cuda")

    def step() -> None:
        model(input_ids=ids, labels=ids).loss.backward()
        model.zero_grad(set_to_none=True)

    sections.append(_table(_profiled(step, warmup=1),
                           f"training step, {ids.shape[0]} x {train_len} tokens, gradient checkpointing"))
    _write(out, "profile_model.txt", sections)


def profile_decode(out: Path, new_tokens: int = 64) -> None:
    """Per-token time of ``generate`` on the model of ``gpu_check_model`` (batch 2), per dtype and path, with
    the Triton compilations that happen while decoding (a kernel recompiled per step shows up here) and a
    torch.profiler table of the slowest case."""
    import os
    from collections import Counter, defaultdict

    from triton.runtime.jit import JITFunction

    from gpu_check_model import build_model as check_model

    compiles: Counter = Counter()
    keys: dict = defaultdict(list)
    original = JITFunction._do_compile

    def counting(self, key, *args, **kwargs):
        compiles[self.fn.__name__] += 1
        keys[self.fn.__name__].append(str(key)[:400])
        return original(self, key, *args, **kwargs)

    JITFunction._do_compile = counting
    lines, slowest = [], (0.0, None)
    for dtype in (torch.float32, torch.bfloat16):
        model = check_model(dtype).eval()
        prompt = torch.randint(3, 259, (2, 33), device="cuda", generator=torch.Generator("cuda").manual_seed(2))
        for path in ("triton", "torch"):
            os.environ["PHALANX_FORCE_TORCH"] = "1" if path == "torch" else "0"
            model.generate(prompt, max_new_tokens=8, do_sample=False)  # short warm-up: later lengths stay cold
            before = Counter(compiles)
            torch.cuda.synchronize()
            start = time.perf_counter()
            model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
            torch.cuda.synchronize()
            ms = (time.perf_counter() - start) / new_tokens * 1e3
            new = {k: compiles[k] - before[k] for k in compiles if compiles[k] != before[k]}
            lines.append(f"{str(dtype)[6:]:>9} {path:>6}: {ms:7.2f} ms/token, Triton compilations while decoding: {new}")
            if ms > slowest[0]:
                slowest = (ms, (dtype, path, model, prompt))
    dtype, path, model, prompt = slowest[1]
    os.environ["PHALANX_FORCE_TORCH"] = "1" if path == "torch" else "0"
    prof = _profiled(lambda: model.generate(prompt, max_new_tokens=16, min_new_tokens=16, do_sample=False), warmup=0)
    os.environ.pop("PHALANX_FORCE_TORCH")
    lines.append(_table(prof, f"generate 16 tokens, {dtype} {path} (slowest case)"))
    lines.append("compilation keys: " + "\n".join(f"{k}: {v[-3:]}" for k, v in keys.items()))
    _write(out, "profile_decode.txt", ["\n".join(lines)], limit=8000)


@torch.no_grad()
def profile_decode_step(out: Path, batch: int, context: int, steps: int = 4) -> None:
    """torch.profiler over ``steps`` greedy steps at ``batch`` x ``context`` for the 1.3B Phalanx hybrid and the
    Transformer, after a first pass over the same cache lengths (steady state, as ``bench_inference``)."""
    sections = []
    for name in ("phalanx_hybrid", "transformer"):
        torch.manual_seed(0)
        with torch.device("cuda"):
            model = build_model(name, "1.3b", max_positions=context + 64).bfloat16().eval()
        ids = torch.randint(3, model.config.vocab_size, (batch, context), device="cuda")

        def prefill() -> DynamicCache:
            out = model(input_ids=ids, **{CACHE_KWARG: DynamicCache(config=model.config)}, use_cache=True,
                        logits_to_keep=1)
            return getattr(out, CACHE_KWARG)

        def decode(cache: DynamicCache) -> None:
            tok = ids[:, -1:]
            for _ in range(steps):
                tok = model(input_ids=tok, **{CACHE_KWARG: cache}, use_cache=True).logits[:, -1:].argmax(-1)

        decode(prefill())  # first pass over these cache lengths
        cache = prefill()
        sections.append(_table(_profiled(lambda: decode(cache), warmup=0),
                               f"{name}: {steps} decode steps, batch {batch}, context {context}"))
        del cache
        del model
        torch.cuda.empty_cache()
    _write(out, "profile_decode_step.txt", sections, limit=7000)


def _per_op(prof: torch.profiler.profile) -> dict[str, tuple[float, int]]:
    """Host operators of a profile: total CPU microseconds and calls per operator name."""
    return {e.key: (e.cpu_time_total, e.count) for e in prof.key_averages()
            if e.device_type == torch.autograd.DeviceType.CPU}


@torch.no_grad()
def profile_generate(out: Path, batch: int, context: int, new_tokens: int, size: str = "1.3b",
                     device: str = "cuda", rows: int = 20) -> dict:
    """Where a decoding step of ``generate(cache_implementation="static")`` (compiled on CUDA) goes, for the Llama
    anchor and the Phalanx hybrid at ``batch`` x ``context`` (issue 16's miss at 1 x 32K). Two calls per model,
    one new token and ``1 + new_tokens``, timed back to back five times (the median difference, so that drift
    and hitches of the host do not fall on one call only), then profiled once; their difference is
    ``new_tokens`` decoding steps without the prefill: wall time per step, GPU kernel time per step and the
    host operators each step adds (CPU time, calls). A step whose wall time is far above its kernel time is bound
    by host work, which a faster model cannot shorten. Writes ``out/profile_generate.{txt,json}``."""
    import bench_generate

    result = {"batch": batch, "context": context, "new_tokens": new_tokens, "size": size, "models": {}}
    sections = []
    for name in ("transformer", "phalanx_hybrid"):
        torch.manual_seed(0)
        with torch.device(device):
            model = build_model(name, size, max_positions=context + new_tokens + 64)
        model = model.to(torch.bfloat16 if device == "cuda" else torch.float32).eval()
        ids = torch.randint(3, model.config.vocab_size, (batch, context), device=device)
        calls = {n: functools.partial(model.generate, ids, **bench_generate.generate_kwargs("static",
                                                                                           device == "cuda", n))
                 for n in (1, 1 + new_tokens)}
        for call in calls.values():
            time_steps(call, 0, 1, device)  # the warm-up call compiles
        wall = statistics.median(time_steps(calls[1 + new_tokens], 1, 0, device)[0]
                                 - time_steps(calls[1], 1, 0, device)[0] for _ in range(5))
        profs = {n: _profiled(call, warmup=0, device=device) for n, call in calls.items()}
        short, long = _per_op(profs[1]), _per_op(profs[1 + new_tokens])
        added = {k: ((t - short.get(k, (0.0, 0))[0]) / new_tokens, (c - short.get(k, (0.0, 0))[1]) / new_tokens)
                 for k, (t, c) in long.items()}
        added = {k: v for k, v in added.items() if v[1] > 0}  # operators the steps call (times alone are noisy)
        top = sorted(added.items(), key=lambda kv: -kv[1][0])[:rows]
        step = {"wall_ms_per_step": 1e3 * wall / new_tokens,
                "kernel_ms_per_step": 1e3 * (kernel_seconds(profs[1 + new_tokens]) - kernel_seconds(profs[1])) / new_tokens,
                "host_ops_per_step": {k: {"cpu_us": round(t, 1), "calls": round(c, 2)} for k, (t, c) in top}}
        result["models"][name] = step
        lines = [f"## {name}: {batch} x {context}, {new_tokens} decoding steps through generate (static cache)",
                 f"wall {step['wall_ms_per_step']:.3f} ms per step, GPU kernels {step['kernel_ms_per_step']:.3f} ms per step",
                 "host operators added per step (CPU time includes children):",
                 *(f"  {t:10.1f} us  {c:6.2f} calls  {k}" for k, (t, c) in top)]
        sections.append("\n".join(lines))
        del model
        if device == "cuda":
            torch.cuda.empty_cache()
    out.mkdir(parents=True, exist_ok=True)
    (out / "profile_generate.json").write_text(json.dumps(result, indent=2) + "\n")
    _write(out, "profile_generate.txt", sections)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["ops", "hyena-ops", "mr-walk", "model", "decode", "decode-step", "generate"])
    parser.add_argument("--out", type=Path, default=Path("."))
    parser.add_argument("--prefill-len", type=int, default=1024)
    parser.add_argument("--train-len", type=int, default=16384)
    parser.add_argument("--tokens", type=int, default=32768)
    parser.add_argument("--batch", type=int, default=1, help="generate: batch")
    parser.add_argument("--context", type=int, default=32768, help="generate: prompt tokens")
    parser.add_argument("--new-tokens", type=int, default=32, help="generate: decoding steps profiled")
    parser.add_argument("--size", default="1.3b", choices=["1.3b", "tiny"], help="generate: model size")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="generate: device")
    args = parser.parse_args(argv)
    if args.what == "ops":
        profile_ops()
    elif args.what == "hyena-ops":
        profile_hyena_ops()
    elif args.what == "mr-walk":
        profile_mr_walk()
    elif args.what == "decode":
        profile_decode(args.out)
    elif args.what == "decode-step":
        profile_decode_step(args.out, batch=32, context=4096)
    elif args.what == "generate":
        profile_generate(args.out, args.batch, args.context, args.new_tokens, args.size, args.device)
    else:
        profile_model(args.out, args.prefill_len, args.train_len, args.tokens)
    return 0


if __name__ == "__main__":
    sys.exit(main())
