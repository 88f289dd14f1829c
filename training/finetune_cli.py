"""``phalanx finetune MODEL``: LoRA fine-tuning with PEFT on local text.

``MODEL`` is any ``PhalanxForCausalLM`` folder (trained here or converted). The default LoRA targets
are ``modeling_phalanx.PHALANX_LORA_TARGET_MODULES``: attention ``q/k/v/o_proj`` and the Phalanx
mixer's ``in_proj``/``out_proj``. The adapter (``adapter_config.json`` + ``adapter_model.safetensors``)
and the tokenizer are written to ``--output``; ``--merge`` also writes ``--output/merged``, a plain
model folder that loads with ``AutoModelForCausalLM.from_pretrained``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, PreTrainedTokenizerBase, set_seed

from modeling_phalanx import PHALANX_LORA_TARGET_MODULES

from .callbacks import LossCurveCallback, loss_summary
from .checks import check_finite_weights
from .folders import output_folder
from .options import (
    add_training_arguments, check_positive, claim_output, packed_trainer, resolve_training_options, resume_checkpoint,
)
from .tokenizer import load_tokenizer

MERGED_DIR = "merged"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``phalanx finetune``."""
    parser.add_argument("model", metavar="MODEL", help="model folder (any PhalanxForCausalLM checkpoint)")
    parser.add_argument("--tokenizer", metavar="DIR", help="tokenizer folder (default: MODEL's, else the byte tokenizer)")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow the model folder's own modeling code")
    lora = parser.add_argument_group("LoRA")
    lora.add_argument("--lora-r", type=int, default=16, help="LoRA rank (default: %(default)s)")
    lora.add_argument("--lora-alpha", type=float, help="LoRA alpha (default: 2 x rank)")
    lora.add_argument("--lora-dropout", type=float, default=0.0, help="dropout on the LoRA input (default: %(default)s)")
    lora.add_argument(
        "--target-modules", nargs="+", default=list(PHALANX_LORA_TARGET_MODULES), metavar="NAME",
        help="module name suffixes to adapt (default: %(default)s)",
    )
    lora.add_argument("--merge", action="store_true", help=f"also write the merged model to OUTPUT/{MERGED_DIR}")
    add_training_arguments(parser, learning_rate=2e-4, max_steps=200)


def model_tokenizer(args: argparse.Namespace) -> PreTrainedTokenizerBase:
    """``--tokenizer``, else the model folder's tokenizer, else the byte tokenizer."""
    if args.tokenizer is not None:
        return load_tokenizer(args.tokenizer)
    folder = Path(args.model)
    has_tokenizer = any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"))
    return load_tokenizer(folder if has_tokenizer else None)


def lora_config(args: argparse.Namespace) -> LoraConfig:
    """The ``LoraConfig`` from the command line."""
    check_positive(args, "lora_r", "lora_alpha")
    if not 0.0 <= args.lora_dropout < 1.0:
        raise ValueError(f"--lora-dropout must be in [0, 1), got {args.lora_dropout}")
    return LoraConfig(
        task_type="CAUSAL_LM",
        r=args.lora_r,
        lora_alpha=args.lora_alpha if args.lora_alpha is not None else 2 * args.lora_r,
        lora_dropout=args.lora_dropout,
        target_modules=list(args.target_modules),
    )


def run(args: argparse.Namespace) -> int:
    resolve_training_options(args)
    if not (Path(args.model) / "config.json").is_file():
        raise FileNotFoundError(f"model folder with a config.json not found: {args.model}")
    tokenizer = model_tokenizer(args)
    peft_config = lora_config(args)
    with claim_output(args):  # held until the run ends; a second run into --output is refused
        resume = resume_checkpoint(args)
        set_seed(args.seed)
        base = AutoModelForCausalLM.from_pretrained(args.model, trust_remote_code=args.trust_remote_code)
        check_finite_weights(base.state_dict(), args.model)
        if base.config.vocab_size < len(tokenizer):
            raise ValueError(f"model vocab_size {base.config.vocab_size} is smaller than the tokenizer's {len(tokenizer)} tokens")
        model = get_peft_model(base, peft_config)
        trainer = packed_trainer(model, args, tokenizer, [LossCurveCallback()], label=f"phalanx finetune {Path(args.model).name} (LoRA)")
        if args.merge and trainer.is_fsdp_enabled:
            raise ValueError("--merge needs the whole model in one process; under FSDP train without --merge, then merge "
                             "the saved adapter in a single process (see training/README.md)")
        if trainer.is_world_process_zero():
            trainable, total = model.get_nb_trainable_parameters()
            kinds = sorted({name.rsplit(".", 1)[-1] for name in model.targeted_module_names})
            print(f"phalanx finetune: LoRA r={args.lora_r} on {len(model.targeted_module_names)} modules ({', '.join(kinds)}), "
                  f"{trainable / 1e6:.3f}M of {total / 1e6:.2f}M parameters trainable; {trainer.train_dataset.description}")
        trainer.train(resume_from_checkpoint=resume)
        trainer.save_model(args.output)
        trainer.save_state()
        if trainer.is_world_process_zero():
            print(f"phalanx finetune: done, {loss_summary(trainer.state.log_history)}; adapter in {args.output}")
            if args.merge:
                write_merged(trainer.model, tokenizer, Path(args.output) / MERGED_DIR)
    return 0


def write_merged(model: PeftModel, tokenizer: PreTrainedTokenizerBase, folder: Path) -> None:
    """Fold the LoRA weights into the base model and save it as a plain model folder (written whole or not at all)."""
    merged = model.merge_and_unload()
    with output_folder(folder, force=True) as tmp:
        merged.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    print(f"phalanx finetune: merged model in {folder}")
