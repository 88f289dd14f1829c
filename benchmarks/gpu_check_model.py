"""One GPU run for the Phalanx model (issue 3 item 11): Triton path asserted, compared with PyTorch, generation.

For a hybrid PhalanxForCausalLM (Phalanx, sliding-window and full-attention layers) on CUDA:

1. bf16 and fp32 forward+backward, plain and packed (position_ids restarts): the mixers must call the
   Triton core (`phalanx_kernels.ops.phalanx_core_triton`) and never the PyTorch core; the same batch with
   `PHALANX_FORCE_TORCH=1` must call only the PyTorch core. Loss, logits and gradients are compared.
2. Decoding: incremental logits (prefill, a chunk continuing from the cache, then single steps through the
   Triton decode step) against the full forward; greedy tokens with the Triton and the PyTorch paths; tokens/s.
3. Median forward+backward time of both paths.
4. torch.compile (inductor) of the bf16 forward+backward against eager mode.

Writes `model_gpu.json` and `model_gpu.log` under `--out` (default `$OUT`, else `benchmarks/results`) and
prints a table last. Exit status 1 if any check fails.

    python benchmarks/gpu_check_model.py [--out DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import transformers

import phalanx_kernels
import phalanx_kernels.ops as kernel_ops
from bench_e2e import time_steps
from modeling_phalanx import PhalanxConfig, PhalanxForCausalLM
from modeling_phalanx.configuration_phalanx import FULL_ATTENTION, PHALANX_MIXER, SLIDING_ATTENTION
from modeling_phalanx.modeling_phalanx import CACHE_KWARG

CALLS: Counter = Counter()
COUNTED = ("phalanx_core_triton", "phalanx_core_torch", "phalanx_core_step_triton", "phalanx_core_step_torch")


def count_calls() -> None:
    """Wrap the four cores that `phalanx_kernels.phalanx_core[_step]` dispatch to, counting each call."""

    def counting(name: str, fn: Callable) -> Callable:
        def wrapper(*args, **kwargs):
            CALLS[name] += 1
            return fn(*args, **kwargs)

        return wrapper

    for name in COUNTED:
        setattr(kernel_ops, name, counting(name, getattr(kernel_ops, name)))


@contextlib.contextmanager
def force_torch(enabled: bool) -> Iterator[None]:
    """Set PHALANX_FORCE_TORCH for the duration (read per call by the dispatcher)."""
    before = os.environ.get("PHALANX_FORCE_TORCH")
    os.environ["PHALANX_FORCE_TORCH"] = "1" if enabled else "0"
    try:
        yield
    finally:
        if before is None:
            del os.environ["PHALANX_FORCE_TORCH"]
        else:
            os.environ["PHALANX_FORCE_TORCH"] = before


def build_model(dtype: torch.dtype) -> PhalanxForCausalLM:
    torch.manual_seed(0)
    config = PhalanxConfig(
        vocab_size=259, hidden_size=512, intermediate_size=1408, num_hidden_layers=8, num_attention_heads=8,
        num_key_value_heads=4, layer_types=[PHALANX_MIXER, SLIDING_ATTENTION, PHALANX_MIXER, FULL_ATTENTION] * 2,
        sliding_window=256, phalanx_head_dim=32, swr_block_len=16, swr_window_blocks=2, max_position_embeddings=8192,
        pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    return PhalanxForCausalLM(config).to(device="cuda", dtype=dtype)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def forward_backward(model: PhalanxForCausalLM, batch: dict, use_torch: bool) -> tuple[dict, Counter]:
    """Loss, logits and mixer gradients of one step, with the call counts it produced."""
    model.zero_grad(set_to_none=True)
    CALLS.clear()
    with force_torch(use_torch):
        out = model(**batch, labels=batch["input_ids"], use_cache=False)
        out.loss.backward()
    torch.cuda.synchronize()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if "mixer" in n}
    return {"loss": out.loss.detach(), "logits": out.logits.detach(), "grads": grads}, Counter(CALLS)


def check_train(dtype: torch.dtype, packed: bool, log: list[str]) -> dict:
    model = build_model(dtype).train()
    gen = torch.Generator(device="cuda").manual_seed(1)
    ids = torch.randint(3, 259, (4, 1000), device="cuda", generator=gen)  # not a multiple of the block length
    batch = {"input_ids": ids}
    if packed:
        lengths = [300, 17, 683]
        batch["position_ids"] = torch.cat([torch.arange(n, device="cuda") for n in lengths]).expand(4, -1)
    triton_out, triton_calls = forward_backward(model, batch, use_torch=False)
    torch_out, torch_calls = forward_backward(model, batch, use_torch=True)
    grad_rel = max(rel(triton_out["grads"][n], torch_out["grads"][n]) for n in torch_out["grads"])
    result = {
        "check": f"train {str(dtype).split('.')[-1]}{' packed' if packed else ''}",
        "triton_calls": triton_calls["phalanx_core_triton"],
        "torch_calls_on_triton_path": triton_calls["phalanx_core_torch"],
        "torch_calls_forced": torch_calls["phalanx_core_torch"],
        "triton_calls_forced": torch_calls["phalanx_core_triton"],
        "loss_triton": float(triton_out["loss"]),
        "loss_torch": float(torch_out["loss"]),
        "logits_rel": rel(triton_out["logits"], torch_out["logits"]),
        "mixer_grad_rel_max": grad_rel,
    }
    # Relative L2 error of the logits after 8 layers; fp32 leaves room for TF32 inside the kernels' dots.
    tol = 1e-3 if dtype == torch.float32 else 3e-2
    assert result["triton_calls"] > 0 and result["torch_calls_on_triton_path"] == 0, "Triton path not taken"
    assert result["torch_calls_forced"] > 0 and result["triton_calls_forced"] == 0, "PHALANX_FORCE_TORCH ignored"
    assert result["logits_rel"] <= tol and result["mixer_grad_rel_max"] <= 5 * tol, result
    log.append(json.dumps(result))
    return result


def timed(fn: Callable[[], None], repeats: int = 10) -> float:
    """Median milliseconds of `fn` (CUDA events, after 3 warm-up calls)."""
    return statistics.median(time_steps(fn, repeats, 3, "cuda")) * 1e3


def check_speed(log: list[str]) -> dict:
    model = build_model(torch.bfloat16).train()
    ids = torch.randint(3, 259, (8, 4096), device="cuda")

    def step() -> None:
        model(ids, labels=ids, use_cache=False).loss.backward()

    result = {"check": "fwd+bwd bf16 8x4096 (ms)"}
    for name, use_torch in (("triton", False), ("torch", True)):
        with force_torch(use_torch):
            result[f"{name}_ms"] = timed(step)
    result["speedup"] = result["torch_ms"] / result["triton_ms"]
    log.append(json.dumps(result))
    return result


@torch.no_grad()
def check_generation(dtype: torch.dtype, log: list[str]) -> dict:
    model = build_model(dtype).eval()
    gen = torch.Generator(device="cuda").manual_seed(2)
    ids = torch.randint(3, 259, (2, 77), device="cuda", generator=gen)
    result = {"check": f"decode {str(dtype).split('.')[-1]}"}
    CALLS.clear()
    full = model(ids).logits.float()
    out = model(ids[:, :40], use_cache=True)
    steps = [out.logits.float()]
    out = model(ids[:, 40:45], **{CACHE_KWARG: getattr(out, CACHE_KWARG)}, use_cache=True)  # chunked continuation
    steps.append(out.logits.float())
    for t in range(45, 77):
        out = model(ids[:, t : t + 1], **{CACHE_KWARG: getattr(out, CACHE_KWARG)}, use_cache=True)
        steps.append(out.logits.float())
    result["incremental_vs_full_max_abs"] = float((torch.cat(steps, 1) - full).abs().max())
    result["triton_step_calls"] = CALLS["phalanx_core_step_triton"]
    prompt = ids[:, :33]
    tokens = {}
    for name, use_torch in (("triton", False), ("torch", True)):
        with force_torch(use_torch):
            # Warm-up over the same lengths: kernel compilation, and one cuDNN attention plan per new key length.
            model.generate(prompt, max_new_tokens=256, do_sample=False, min_new_tokens=256)
            torch.cuda.synchronize()
            start = time.perf_counter()
            tokens[name] = model.generate(prompt, max_new_tokens=256, do_sample=False, min_new_tokens=256)
            torch.cuda.synchronize()
            result[f"{name}_tokens_per_s"] = 2 * 256 / (time.perf_counter() - start)
    result["greedy_tokens_equal"] = bool(torch.equal(tokens["triton"], tokens["torch"]))
    beams = model.generate(prompt, max_new_tokens=32, num_beams=3, do_sample=False)
    sampled = model.generate(prompt, max_new_tokens=32, do_sample=True, top_k=20)
    result["beam_and_sampling_shapes"] = [list(beams.shape), list(sampled.shape)]
    tol = 1e-3 if dtype == torch.float32 else 0.25
    assert result["triton_step_calls"] > 0, "the Triton decode step was not used"
    assert result["incremental_vs_full_max_abs"] <= tol, result
    log.append(json.dumps(result))
    return result


def check_compile(log: list[str]) -> dict:
    """torch.compile (inductor) of the bf16 forward+backward on the Triton path matches eager mode."""
    model = build_model(torch.bfloat16).train()
    ids = torch.randint(3, 259, (2, 1000), device="cuda")
    eager, _ = forward_backward(model, {"input_ids": ids}, use_torch=False)
    compiled = torch.compile(model)
    CALLS.clear()
    model.zero_grad(set_to_none=True)
    out = compiled(ids, labels=ids, use_cache=False)
    out.loss.backward()
    torch.cuda.synchronize()
    grads = {n: p.grad for n, p in model.named_parameters() if "mixer" in n}
    result = {
        "check": "torch.compile bf16 fwd+bwd",
        "logits_rel": rel(out.logits.detach(), eager["logits"]),
        "mixer_grad_rel_max": max(rel(grads[n], eager["grads"][n]) for n in grads),
    }
    assert result["logits_rel"] <= 3e-2 and result["mixer_grad_rel_max"] <= 0.15, result
    log.append(json.dumps(result))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "benchmarks/results")))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if not torch.cuda.is_available() or not phalanx_kernels.HAS_TRITON:
        print("needs a CUDA GPU with Triton", file=sys.stderr)
        return 1
    count_calls()
    env = {
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "triton": __import__("triton").__version__,
        "python": platform.python_version(),
    }
    log = [json.dumps(env)]
    checks: list[tuple[str, Callable[[], dict]]] = [
        ("train bf16", lambda: check_train(torch.bfloat16, False, log)),
        ("train bf16 packed", lambda: check_train(torch.bfloat16, True, log)),
        ("train fp32", lambda: check_train(torch.float32, False, log)),
        ("train fp32 packed", lambda: check_train(torch.float32, True, log)),
        ("decode fp32", lambda: check_generation(torch.float32, log)),
        ("decode bf16", lambda: check_generation(torch.bfloat16, log)),
        ("speed", lambda: check_speed(log)),
        ("compile", lambda: check_compile(log)),
    ]
    results, failures = [], []
    for name, check in checks:
        try:
            results.append(check())
        except Exception:  # record and go on: one run should report every check
            failures.append(name)
            log.append(f"FAILED {name}\n{traceback.format_exc()}")
            results.append({"check": name, "error": traceback.format_exc().splitlines()[-1]})
    (args.out / "model_gpu.json").write_text(json.dumps({"env": env, "results": results, "failed": failures}, indent=2))
    (args.out / "model_gpu.log").write_text("\n".join(log) + "\n")
    print(json.dumps(env))
    for row in results:
        print(" | ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    print("FAILED: " + ", ".join(failures) if failures else "all model checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
