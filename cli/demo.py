"""`phalanx demo`: train a tiny hybrid on the shipped Shakespeare sample, generate, save and reload it.

Runs on a CPU in a few minutes. The model mixes all three layer kinds (Phalanx, sliding-window attention,
full attention), trains with a progress bar on packed byte-level text, prints samples, writes a Hub-ready
folder (weights, config with `auto_map`, modeling files, tokenizer) and reloads it with AutoModelForCausalLM.
"""

from __future__ import annotations

import argparse
import math
import shutil
import tempfile
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, PreTrainedTokenizerBase

from modeling_phalanx import PhalanxConfig, PhalanxForCausalLM
from phalanx_training.data import shipped_sample_dir
from phalanx_training.packing import PackedCollator, build_packed_dataset
from phalanx_training.tokenizer import load_byte_tokenizer

DEMO_LAYER_TYPES = ["linear_attention", "sliding_attention", "linear_attention", "full_attention"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps (default: 300)")
    parser.add_argument("--batch-size", type=int, default=16, help="packed rows per step (default: 16)")
    parser.add_argument("--seq-len", type=int, default=128, help="tokens (bytes) per row (default: 128)")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (default: 3e-3)")
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/demo"), help="where the model is saved")
    parser.add_argument("--prompt", default="BRUTUS.\n", help="prompt for the samples")
    parser.add_argument("--max-new-tokens", type=int, default=200, help="bytes to generate (default: 200)")
    parser.add_argument("--seed", type=int, default=0)


def demo_config(tokenizer: PreTrainedTokenizerBase) -> PhalanxConfig:
    """A ~0.6M-parameter hybrid: Phalanx, sliding-window and full-attention layers."""
    return PhalanxConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=352,
        num_hidden_layers=len(DEMO_LAYER_TYPES),
        num_attention_heads=4,
        num_key_value_heads=2,
        layer_types=DEMO_LAYER_TYPES,
        sliding_window=64,
        phalanx_head_dim=16,
        swr_block_len=16,
        swr_window_blocks=2,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def check_args(args: argparse.Namespace) -> None:
    """Reject values that would fail later with an obscure error."""
    for name in ("steps", "batch_size", "seq_len", "max_new_tokens"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.seq_len < 2:
        raise ValueError(f"--seq-len must be >= 2, got {args.seq_len}")
    if not args.lr > 0:
        raise ValueError(f"--lr must be > 0, got {args.lr}")
    if not args.prompt:
        raise ValueError("--prompt must not be empty")


def sample(model: PhalanxForCausalLM, tokenizer: PreTrainedTokenizerBase, prompt: str, max_new_tokens: int) -> str:
    """Sampled continuation of `prompt` (temperature 0.8, top-k 40)."""
    inputs = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=True, temperature=0.8, top_k=40)
    return tokenizer.decode(out[0], skip_special_tokens=True)


def train(model: PhalanxForCausalLM, rows: dict[str, torch.Tensor], args: argparse.Namespace) -> list[float]:
    """AdamW with warmup and cosine decay on random packed rows; returns the loss of every step."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1, betas=(0.9, 0.95))
    warmup = max(1, args.steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(step, args.steps) / args.steps)),
    )
    collate = PackedCollator()
    num_rows = rows["input_ids"].shape[0]
    losses: list[float] = []
    model.train()
    progress = tqdm(range(args.steps), desc="training", unit="step")
    for step in progress:
        index = torch.randint(num_rows, (args.batch_size,))
        batch = collate([{key: value[i] for key, value in rows.items()} for i in index.tolist()])
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        recent = sum(losses[-20:]) / len(losses[-20:])
        progress.set_postfix(loss=f"{recent:.3f}")
        if (step + 1) % max(1, args.steps // 6) == 0 or step + 1 == args.steps:
            progress.write(f"step {step + 1:4d}/{args.steps}  loss {recent:.3f}  ({recent / math.log(2):.2f} bits/byte)")
    model.eval()
    return losses


def save_atomically(model: PhalanxForCausalLM, tokenizer: PreTrainedTokenizerBase, output_dir: Path) -> None:
    """Write the Hub-ready folder next to `output_dir`, then move it into place (never half-written)."""
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}-", dir=output_dir.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if output_dir.exists():
            shutil.rmtree(output_dir)
        staging.rename(output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def run(args: argparse.Namespace) -> int:
    check_args(args)
    started = time.perf_counter()
    torch.manual_seed(args.seed)
    tokenizer = load_byte_tokenizer()
    data_dir = shipped_sample_dir()
    rows = build_packed_dataset([data_dir], tokenizer, args.seq_len).packed
    model = PhalanxForCausalLM(demo_config(tokenizer))
    params = sum(p.numel() for p in model.parameters())
    print(f"Phalanx demo: {params / 1e6:.2f}M parameters, layers {DEMO_LAYER_TYPES}")
    print(f"data: {data_dir} ({rows['input_ids'].numel():,} bytes in {rows['input_ids'].shape[0]} rows of {args.seq_len})")
    print(f"\nbefore training:\n{sample(model, tokenizer, args.prompt, 60)!r}\n")

    losses = train(model, rows, args)
    first, last = sum(losses[:10]) / len(losses[:10]), sum(losses[-10:]) / len(losses[-10:])
    print(f"\nloss {first:.3f} -> {last:.3f}")
    print(f"\nafter training:\n{sample(model, tokenizer, args.prompt, args.max_new_tokens)}\n")

    save_atomically(model, tokenizer, args.output_dir)
    reloaded = AutoModelForCausalLM.from_pretrained(args.output_dir).eval()
    probe = tokenizer(args.prompt * 4, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        identical = torch.equal(model(probe).logits, reloaded(probe).logits)
    if not identical:
        raise ValueError(f"the model reloaded from {args.output_dir} gives different logits")
    files = ", ".join(sorted(p.name for p in args.output_dir.iterdir()))
    print(f"saved to {args.output_dir} ({files}); reloaded with AutoModelForCausalLM: identical logits")
    print(f"try: phalanx generate {args.output_dir} --prompt 'CASSIUS.\\n' --do-sample")
    print(f"done in {time.perf_counter() - started:.0f} s")
    return 0
