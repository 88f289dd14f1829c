"""Command-line options, ``TrainingArguments`` and the packed-data ``Trainer`` shared by ``phalanx train``,
``phalanx finetune`` and the demo."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

import torch
from transformers import (
    PreTrainedModel, PreTrainedTokenizerBase, ProgressCallback, Trainer, TrainerCallback, TrainingArguments,
)
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .callbacks import LabelledProgressCallback
from .data import TEXT_SUFFIXES, list_text_files, shipped_sample_dir
from .folders import RUN_CLAIM, claim_folder, clear_folder
from .packing import PackedCollator, build_packed_dataset

PRECISIONS = ("auto", "bf16", "fp32")
TEXT_PATTERNS = " ".join("*" + suffix for suffix in TEXT_SUFFIXES)  # what --data reads in a folder
# Transformers 5.23 renamed `gradient_checkpointing` to `activation_checkpointing` (the old name warns).
CHECKPOINTING_FIELD = (
    "activation_checkpointing" if "activation_checkpointing" in TrainingArguments.__dataclass_fields__ else "gradient_checkpointing"
)


def add_training_arguments(parser: argparse.ArgumentParser, *, learning_rate: float, max_steps: int) -> None:
    """Data, batch, optimizer, precision, checkpoint and logging options."""
    data = parser.add_argument_group("data")
    read = f"files, or folders searched recursively for {TEXT_PATTERNS}; one document per file"
    data.add_argument("--data", nargs="+", metavar="PATH", help=f"training text: {read} (default: the shipped Shakespeare sample)")
    data.add_argument("--eval-data", nargs="+", metavar="PATH", help=f"text for the evaluation loss (long window): {read}")
    data.add_argument("--include-held-out", action="store_true", help="do not drop the held-out works (macbeth, tempest, twelfth_night)")
    data.add_argument("--seq-len", type=int, default=512, help="tokens per packed row (default: %(default)s)")

    opt = parser.add_argument_group("optimization")
    opt.add_argument("--batch-size", type=int, default=8, help="rows per device per micro-batch (default: %(default)s)")
    opt.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step (default: %(default)s)")
    opt.add_argument("--max-steps", type=int, default=max_steps, help="optimizer steps (default: %(default)s)")
    opt.add_argument("--lr", type=float, default=learning_rate, help="peak learning rate (default: %(default)s)")
    opt.add_argument("--lr-scheduler", default="cosine", help="Transformers scheduler name (default: %(default)s)")
    opt.add_argument("--warmup", type=float, default=0.02, help="warmup steps, or a fraction of max steps when < 1 (default: %(default)s)")
    opt.add_argument("--weight-decay", type=float, default=0.1, help="AdamW weight decay (default: %(default)s)")
    opt.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping norm (default: %(default)s)")
    opt.add_argument("--seed", type=int, default=0, help="seed for init, data order and SWAX draws (default: %(default)s)")

    run = parser.add_argument_group("run")
    run.add_argument("--output", required=True, metavar="DIR", help="output folder (checkpoints, final model, loss curve)")
    run.add_argument("--precision", choices=PRECISIONS, default="auto", help="auto = bf16 on a GPU that supports it, else fp32")
    run.add_argument("--gradient-checkpointing", action="store_true", help="recompute layer activations in backward")
    run.add_argument("--save-steps", type=int, default=500, help="checkpoint every N steps (default: %(default)s)")
    run.add_argument("--save-total-limit", type=int, default=3, help="checkpoints to keep (default: %(default)s)")
    run.add_argument("--logging-steps", type=int, default=10, help="log loss and tokens/s every N steps (default: %(default)s)")
    run.add_argument("--eval-steps", type=int, default=None, help="evaluate every N steps (default: --save-steps)")
    run.add_argument("--resume", nargs="?", const="auto", metavar="CHECKPOINT", help="resume from CHECKPOINT, or the latest one in --output")
    run.add_argument("--force", action="store_true", help="replace a non-empty --output (a new run instead of --resume)")
    run.add_argument("--report-to", default="none", help="Trainer integrations (tensorboard, wandb, ...; default: none)")


def data_paths(args: argparse.Namespace) -> list[str | Path]:
    """``--data`` or the shipped sample."""
    return list(args.data) if args.data else [shipped_sample_dir()]


def describe_data(args: argparse.Namespace) -> str:
    """Which files ``--data`` reads, e.g. ``12 text files (*.txt *.md *.text) from my_texts/``."""
    paths = data_paths(args)
    files = list_text_files(paths, exclude_held_out=not args.include_held_out)
    return f"{len(files)} text files ({TEXT_PATTERNS}) from {', '.join(map(str, paths))}"


def launched_processes() -> int:
    """Processes started together by a launcher (``accelerate launch``, ``torchrun``); 1 for a plain run."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def use_bf16(precision: str) -> bool:
    """Resolve ``--precision``: bf16 on request (needs CUDA), or automatically on a bf16-capable GPU."""
    if precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    has_bf16_gpu = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if precision == "bf16" and not has_bf16_gpu:
        raise ValueError("--precision bf16 needs a CUDA GPU with bf16 support; use fp32 on this machine")
    return precision == "bf16" or (precision == "auto" and has_bf16_gpu)


def complete_checkpoint(folder: str | Path) -> bool:
    """Whether a Trainer checkpoint folder was written to the end: the Trainer writes ``trainer_state.json``
    last (after model, optimizer, scheduler and RNG states), so it must exist and parse."""
    state = Path(folder) / TRAINER_STATE_NAME
    try:
        return isinstance(json.loads(state.read_text(encoding="utf-8")).get("global_step"), int)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return False


def claim_output(args: argparse.Namespace) -> contextlib.AbstractContextManager[Path]:
    """Hold ``--output`` for this run (``claim_folder``): never a folder that holds or lies inside the run's
    inputs (data, eval data, tokenizer, model), and a second run into it is refused while this one lives."""
    inputs = [*data_paths(args), *(args.eval_data or []), *(p for p in (args.tokenizer, getattr(args, "model", None)) if p)]
    return claim_folder(args.output, inputs=inputs)


def resume_checkpoint(args: argparse.Namespace) -> str | None:
    """How the run uses its claimed ``--output``: the checkpoint folder to resume from (``--resume``;
    ``auto``: the latest complete one under ``--output``), or None for a new run, which needs an empty
    ``--output`` (``--force`` empties a non-empty one).

    A checkpoint cut short (the process killed while writing it) is never taken: ``auto`` skips it with a
    note, and naming it is an error.
    """
    output = Path(args.output)
    if args.resume is not None and args.force:
        raise ValueError("--resume continues the run in --output and --force replaces it: pass one of them")
    if args.resume is None:
        if any(p.name != RUN_CLAIM for p in output.iterdir()):
            if not args.force:
                raise ValueError(f"--output {output} is not empty; pass --resume to continue its run or --force to replace it")
            if int(os.environ.get("RANK", "0")) == 0:  # one process of a launched run empties it
                clear_folder(output)
        return None
    if args.resume != "auto":
        if not Path(args.resume).is_dir():
            raise FileNotFoundError(f"--resume: checkpoint folder not found: {args.resume}")
        if not complete_checkpoint(args.resume):
            raise ValueError(f"--resume: {args.resume} is incomplete (no valid {TRAINER_STATE_NAME}: the run stopped "
                             "while writing it); resume from an earlier checkpoint")
        return args.resume
    found = sorted(
        (int(p.name.removeprefix(f"{PREFIX_CHECKPOINT_DIR}-")), p)
        for p in (output.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if output.is_dir() else [])
        if p.is_dir() and p.name.removeprefix(f"{PREFIX_CHECKPOINT_DIR}-").isdigit()
    )
    for _, folder in reversed(found):
        if complete_checkpoint(folder):
            return str(folder)
        print(f"phalanx: skipping incomplete checkpoint {folder} (the run stopped while writing it)", file=sys.stderr)
    raise FileNotFoundError(f"--resume: no checkpoint to resume in {args.output} (no complete {PREFIX_CHECKPOINT_DIR}-* folder)")


def check_positive(args: argparse.Namespace, *names: str) -> None:
    """Raise ValueError for any of ``names`` (argparse dests) that is not a positive number."""
    for name in names:
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {value}")


def check_report_to(report_to: str) -> None:
    """Every ``--report-to`` integration (comma-separated) must be installed; ``none`` and ``all`` always pass."""
    from transformers.integrations import INTEGRATION_TO_CALLBACK, get_available_reporting_integrations

    names = [n.strip() for n in report_to.split(",") if n.strip() not in ("", "none", "all")]
    for name in names:
        if name not in INTEGRATION_TO_CALLBACK:
            raise ValueError(f"--report-to {name}: unknown integration; use one of {', '.join(INTEGRATION_TO_CALLBACK)}")
        if name not in get_available_reporting_integrations():
            raise ValueError(f"--report-to {name}: the {name} package is not installed (install it or use --report-to none)")


def training_arguments(args: argparse.Namespace, *, has_eval: bool) -> TrainingArguments:
    """``TrainingArguments`` from the shared options (accelerate/DDP/FSDP settings come from the launcher)."""
    check_report_to(args.report_to)
    check_positive(args, "seq_len", "batch_size", "grad_accum", "max_steps", "lr", "save_steps", "logging_steps", "eval_steps")
    if args.warmup < 0:
        raise ValueError(f"--warmup must be >= 0, got {args.warmup}")
    eval_steps = args.eval_steps or args.save_steps
    return TrainingArguments(
        output_dir=args.output,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size,
        gradient_accumulation_steps=args.grad_accum,
        max_steps=args.max_steps,
        learning_rate=args.lr,
        lr_scheduler_type=args.lr_scheduler,
        warmup_steps=args.warmup,
        weight_decay=args.weight_decay,
        max_grad_norm=args.max_grad_norm,
        seed=args.seed,
        data_seed=args.seed,
        bf16=use_bf16(args.precision),
        save_strategy="steps",
        save_steps=args.save_steps,
        save_total_limit=args.save_total_limit,
        logging_steps=args.logging_steps,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=eval_steps if has_eval else None,
        include_num_input_tokens_seen=True,
        report_to=args.report_to,
        ddp_find_unused_parameters=False,  # every parameter takes part in each forward
        # Without CUDA, launched processes must still form one DDP group (gloo); otherwise Accelerate
        # treats each as a separate single-process run and they train independently into one --output.
        use_cpu=launched_processes() > 1 and not torch.cuda.is_available(),
        dataloader_pin_memory=torch.cuda.is_available(),  # pinning without an accelerator only warns
        **({CHECKPOINTING_FIELD: True} if args.gradient_checkpointing else {}),
    )


def packed_trainer(
    model: PreTrainedModel,
    args: argparse.Namespace,
    tokenizer: PreTrainedTokenizerBase,
    callbacks: list[TrainerCallback],
    label: str,
) -> Trainer:
    """A ``Trainer`` over ``--data`` packed into ``--seq-len`` rows (held-out works dropped unless
    ``--include-held-out``) and, when given, ``--eval-data`` as evaluation rows; its progress bar reads ``label``."""
    train_data = build_packed_dataset(data_paths(args), tokenizer, args.seq_len, exclude_held_out=not args.include_held_out)
    eval_data = build_packed_dataset(args.eval_data, tokenizer, args.seq_len, exclude_held_out=False) if args.eval_data else None
    trainer = Trainer(
        model=model,
        args=training_arguments(args, has_eval=eval_data is not None),
        train_dataset=train_data,
        eval_dataset=eval_data,
        data_collator=PackedCollator(),
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(LabelledProgressCallback(label))
    return trainer
