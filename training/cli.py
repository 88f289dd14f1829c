"""``phalanx train``: pretrain a Phalanx hybrid, SWA hybrid or Transformer on local text.

Built on the Transformers ``Trainer``, so the same command runs on one device, under
``accelerate launch`` (DDP, FSDP) or ``torchrun``. Rows are packed with per-sequence position resets
(:mod:`phalanx_training.data`); checkpoints hold model, optimizer, scheduler, RNG and data position,
so ``--resume`` continues exactly where the run stopped. The output folder loads with
``AutoModelForCausalLM.from_pretrained`` and holds the tokenizer, ``trainer_state.json`` (loss and
tokens/s per logging step) and ``loss_curve.png``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from transformers import AutoModelForCausalLM, PretrainedConfig, PreTrainedTokenizerBase, TrainerState, set_seed

from modeling_phalanx.configuration_phalanx import SLIDING_ATTENTION

from .callbacks import LossCurveCallback, loss_summary
from .data import PackedDataset, PackedStream
from .options import add_training_arguments, claim_output, packed_trainer, resume_checkpoint, resolve_training_options
from .presets import PRESET_NAMES, load_model_config
from .swax import SWAX_FINAL_LONG_FRACTION, SWAX_SHORT_PROB, SWAX_SHORT_WINDOW, SWAXCallback, SWAXSchedule
from .tokenizer import load_tokenizer

ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flex_attention", "flash_attention_2", "flash_attention_3")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``phalanx train``."""
    parser.add_argument(
        "--model-config", required=True, metavar="PRESET|JSON",
        help=f"a preset ({', '.join(PRESET_NAMES)}), or a config.json of PhalanxConfig fields or of a source "
        "family of phalanx convert (e.g. a gemma3_text teacher)",
    )
    parser.add_argument("--tokenizer", metavar="DIR", help="tokenizer folder (default: the project's byte tokenizer)")
    parser.add_argument("--attn-implementation", choices=ATTN_IMPLEMENTATIONS, default="sdpa", help="attention backend (default: %(default)s)")
    swax = parser.add_argument_group("SWAX stochastic windows (sliding_attention layers only)")
    swax.add_argument("--swax", action="store_true", help="draw the sliding window per step (SWAX)")
    swax.add_argument("--swax-short-window", type=int, default=SWAX_SHORT_WINDOW, help="short window (SWAX: %(default)s)")
    swax.add_argument("--swax-long-window", type=int, help="long window (default: the config's sliding_window; SWAX: 2048)")
    swax.add_argument("--swax-short-prob", type=float, default=SWAX_SHORT_PROB, help="probability of the short window (SWAX: %(default)s)")
    swax.add_argument(
        "--swax-final-long-fraction", type=float, default=SWAX_FINAL_LONG_FRACTION,
        help="final fraction of steps trained with the long window only (SWAX: %(default)s)",
    )
    add_training_arguments(parser, learning_rate=3e-4, max_steps=1000)


def resolve_config(args: argparse.Namespace, tokenizer: PreTrainedTokenizerBase) -> PretrainedConfig:
    """The model config, preset or JSON, matched to the tokenizer's vocabulary and special tokens."""
    config, from_preset = load_model_config(args.model_config)
    vocab = len(tokenizer)
    if from_preset:
        config.vocab_size = vocab
    elif config.vocab_size < vocab:
        raise ValueError(f"config vocab_size {config.vocab_size} is smaller than the tokenizer's {vocab} tokens")
    config.pad_token_id = tokenizer.pad_token_id
    config.bos_token_id = tokenizer.bos_token_id
    config.eos_token_id = tokenizer.eos_token_id
    return config


def swax_callback(args: argparse.Namespace, config: PretrainedConfig) -> SWAXCallback | None:
    """The SWAX callback when ``--swax`` is set; ``--swax-long-window`` becomes the config's sliding window."""
    if not args.swax:
        if args.swax_long_window is not None:
            raise ValueError("--swax-long-window only applies with --swax")
        return None
    if SLIDING_ATTENTION not in config.layer_types:
        raise ValueError("--swax needs sliding_attention layers (e.g. a *-swa preset)")
    if args.swax_long_window is not None:
        config.sliding_window = args.swax_long_window
    schedule = SWAXSchedule(
        short_window=args.swax_short_window,
        long_window=config.sliding_window,
        short_prob=args.swax_short_prob,
        final_long_fraction=args.swax_final_long_fraction,
        seed=args.seed,
    )
    return SWAXCallback(schedule)


def tokens_per_second(state: TrainerState) -> float:
    """Training throughput of this session, all processes together (the last value the Trainer logged)."""
    logged = [e["train_tokens_per_second"] for e in state.log_history if "train_tokens_per_second" in e]
    return logged[-1] if logged else float("nan")


def describe_rows(dataset: PackedDataset | PackedStream) -> str:
    """``5749 rows``, or ``rows packed on the fly`` for a stream."""
    return f"{len(dataset)} rows" if isinstance(dataset, PackedDataset) else "rows packed on the fly"


def run(args: argparse.Namespace) -> int:
    resolve_training_options(args)
    tokenizer = load_tokenizer(args.tokenizer)
    config = resolve_config(args, tokenizer)
    callbacks = [LossCurveCallback()]
    swax = swax_callback(args, config)
    if swax is not None:
        callbacks.append(swax)
    with claim_output(args):  # held until the run ends; a second run into --output is refused
        resume = resume_checkpoint(args)
        set_seed(args.seed)
        model = AutoModelForCausalLM.from_config(config, attn_implementation=args.attn_implementation)
        trainer = packed_trainer(model, args, tokenizer, callbacks, label=f"phalanx train {Path(args.model_config).name}")
        if trainer.is_world_process_zero():
            n_params = sum(p.numel() for p in model.parameters())
            print(f"phalanx train: {n_params / 1e6:.2f}M parameters, layer types {sorted(set(config.layer_types))}; "
                  f"{trainer.train_dataset.description}: {describe_rows(trainer.train_dataset)} x {args.seq_len} tokens; "
                  f"{trainer.args.world_size} process(es) on {trainer.args.device.type}")
        trainer.train(resume_from_checkpoint=resume)
        trainer.save_model(args.output)
        trainer.save_state()
        if trainer.is_world_process_zero():
            print(f"phalanx train: done, {loss_summary(trainer.state.log_history)}; "
                  f"{tokens_per_second(trainer.state):.0f} tokens/s; model in {args.output}")
    return 0
