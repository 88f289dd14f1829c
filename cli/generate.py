"""`phalanx generate MODEL --prompt ...`: stream a continuation from a saved model folder.

Phalanx models decode with `generation_phalanx.fast_generate` (static cache, no per-token host synchronisation,
CUDA graphs on a GPU) unless `--decoder generate`; other models, and `--decoder generate`, use `model.generate`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TextStreamer

import modeling_phalanx  # noqa: F401  (registers the Phalanx classes with the Auto classes)
from modeling_phalanx.generation_phalanx import fast_generate
from phalanx_eval.harness import check_device, check_remote_code, one_line
from phalanx_training.checks import check_finite_weights

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, help="folder written by save_pretrained (phalanx demo/train/convert)")
    parser.add_argument("--prompt", required=True, help="text to continue")
    parser.add_argument("--max-new-tokens", type=int, default=100, help="tokens to generate (default: 100)")
    parser.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    parser.add_argument("--temperature", type=float, default=0.8, help="sampling temperature (default: 0.8)")
    parser.add_argument("--top-k", type=int, default=40, help="sample from the k most likely tokens (default: 40)")
    parser.add_argument("--seed", type=int, default=0, help="random seed for sampling")
    parser.add_argument("--tokenizer", type=Path, default=None, help="tokenizer folder (default: MODEL)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--dtype", choices=("float32", "bfloat16", "float16"), default=None, help="weights dtype (default: saved)"
    )
    parser.add_argument(
        "--decoder", choices=("fast", "generate"), default="fast",
        help="fast: the project's decode loop for Phalanx models (default); generate: model.generate",
    )
    parser.add_argument(
        "--no-compile", action="store_true",
        help="fast decoder on a GPU: run its step eagerly instead of compiled with CUDA graphs (slower, no compile wait)",
    )
    parser.add_argument(
        "--trust-remote-code", action="store_true",
        help="allow the model folder's own Python code to run (Phalanx folders need no flag)",
    )


def check_args(args: argparse.Namespace) -> None:
    if not (args.model / "config.json").is_file():
        raise FileNotFoundError(f"no model folder at {args.model} (config.json missing)")
    tokenizer_dir = args.tokenizer or args.model
    if not any((tokenizer_dir / name).is_file() for name in TOKENIZER_FILES):
        raise FileNotFoundError(f"no tokenizer files in {tokenizer_dir}; pass --tokenizer FOLDER")
    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if args.do_sample and not args.temperature > 0:
        raise ValueError(f"--temperature must be > 0, got {args.temperature}")
    if args.do_sample and args.top_k < 1:
        raise ValueError(f"--top-k must be >= 1, got {args.top_k}")
    if not args.prompt:
        raise ValueError("--prompt must not be empty")
    check_remote_code(args.model, args.trust_remote_code)
    check_device(args.device)


def run(args: argparse.Namespace) -> int:
    check_args(args)
    dtype = getattr(torch, args.dtype) if args.dtype else "auto"
    try:
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or args.model, trust_remote_code=args.trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype, trust_remote_code=args.trust_remote_code)
    except Exception as err:  # loading fails in many ways (safetensors, OSError, JSON, config errors)
        raise ValueError(f"cannot load the model {args.model}: {type(err).__name__}: {one_line(err)}") from err
    check_finite_weights(model.state_dict(), args.model)
    if len(tokenizer) > model.config.vocab_size:
        raise ValueError(
            f"the tokenizer has {len(tokenizer)} tokens but the model's vocab_size is {model.config.vocab_size}; "
            "pass the model's own tokenizer"
        )
    model.to(args.device).eval()
    inputs = tokenizer(args.prompt, return_tensors="pt").to(args.device)
    sampling = {"temperature": args.temperature, "top_k": args.top_k} if args.do_sample else {}
    torch.manual_seed(args.seed)
    streamer = TextStreamer(tokenizer, skip_special_tokens=True)
    if args.decoder == "fast" and model.config.model_type == "phalanx":
        fast_generate(
            model, inputs["input_ids"], attention_mask=inputs.get("attention_mask"),
            max_new_tokens=args.max_new_tokens, do_sample=args.do_sample, temperature=args.temperature,
            top_k=args.top_k, eos_token_id=model.generation_config.eos_token_id,
            pad_token_id=tokenizer.pad_token_id, streamer=streamer, compile=False if args.no_compile else None,
        )
        return 0
    with torch.no_grad():
        # The class's own `generate`: a folder loaded with trust_remote_code may have replaced the instance's.
        type(model).generate(
            model,
            **inputs,
            max_new_tokens=args.max_new_tokens,
            do_sample=args.do_sample,
            streamer=streamer,
            pad_token_id=tokenizer.pad_token_id,
            **sampling,
        )
    return 0
