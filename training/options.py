"""Command-line options, ``TrainingArguments`` and the packed-data ``Trainer`` shared by ``phalanx train``,
``phalanx finetune`` and the demo.

Every ``TrainingArguments`` field is an option (``--optim``, ``--torch_compile``, ``--dataloader_num_workers``,
...), parsed as ``HfArgumentParser`` parses it. The project's own options come first: data options, and
aliases of fields (``--batch-size`` for ``--per_device_train_batch_size``, ...) whose defaults are the
project's; a field set through both its alias and its own name is an error.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import os
import sys
import typing
from pathlib import Path
from typing import Any

import torch
from transformers import (
    HfArgumentParser, PreTrainedModel, PreTrainedTokenizerBase, ProgressCallback, Trainer, TrainerCallback,
    TrainingArguments,
)
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .callbacks import LabelledProgressCallback, peak_memory_callbacks
from .data import (
    TEXT_PATTERNS, DataSource, PackedCollator, PackedDataset, PackedStream, build_packed_dataset, shipped_sample_dir,
)
from .folders import RUN_CLAIM, claim_folder, clear_folder

PRECISIONS = ("auto", "bf16", "fp32")
# Transformers 5.23 renamed `gradient_checkpointing` to `activation_checkpointing` (the old name warns).
CHECKPOINTING_FIELD = (
    "activation_checkpointing" if "activation_checkpointing" in TrainingArguments.__dataclass_fields__ else "gradient_checkpointing"
)
# Our option (argparse dest) -> the TrainingArguments field it sets.
ALIASES = {
    "output": "output_dir", "batch_size": "per_device_train_batch_size", "grad_accum": "gradient_accumulation_steps",
    "max_steps": "max_steps", "lr": "learning_rate", "lr_scheduler": "lr_scheduler_type", "warmup": "warmup_steps",
    "weight_decay": "weight_decay", "max_grad_norm": "max_grad_norm", "seed": "seed",
    "gradient_checkpointing": CHECKPOINTING_FIELD, "save_steps": "save_steps", "save_total_limit": "save_total_limit",
    "logging_steps": "logging_steps", "eval_steps": "eval_steps", "report_to": "report_to", "resume": "resume_from_checkpoint",
}
PRECISION_FIELDS = ("bf16", "fp16")  # what --precision sets
# The project's defaults of the aliases (--lr and --max-steps: per command).
PROJECT_DEFAULTS: dict[str, Any] = {
    "batch_size": 8, "grad_accum": 1, "lr_scheduler": "cosine", "warmup": 0.02, "weight_decay": 0.1, "max_grad_norm": 1.0,
    "seed": 0, "precision": "auto", "gradient_checkpointing": False, "save_steps": 500, "save_total_limit": 3,
    "logging_steps": 10, "report_to": "none",
}
NATIVE = "native_"  # argparse dest prefix of the TrainingArguments fields


def _default(text: str, value: Any) -> str:
    return f"{text} (default: {value})"


class _NativeGroup:
    """Takes ``HfArgumentParser``'s options of a ``TrainingArguments`` field into an argument group, with the dest
    ``native_<field>``, set only when given (default ``SUPPRESS``), and without the option strings ours use."""

    def __init__(self, group: argparse._ArgumentGroup, taken: set[str]) -> None:
        self.group, self.taken = group, taken

    def add_argument(self, *option_strings: str, **kwargs: Any) -> None:
        free = [o for o in option_strings if o not in self.taken]
        if free:
            dest = kwargs.pop("dest", option_strings[0].removeprefix("--"))
            kwargs.pop("default", None)
            if kwargs.get("action") != "store_false" and "choices" not in kwargs:
                kwargs["metavar"] = dest.upper()
            self.group.add_argument(*free, **kwargs, dest=NATIVE + dest, default=argparse.SUPPRESS)


def add_training_arguments(parser: argparse.ArgumentParser, *, learning_rate: float, max_steps: int) -> None:
    """Data, batch, optimizer, precision, checkpoint and logging options, then every ``TrainingArguments`` field.

    Call it last: the ``TrainingArguments`` group closes ``--help``.
    """
    defaults = PROJECT_DEFAULTS | {"lr": learning_rate, "max_steps": max_steps}
    parser.set_defaults(project_defaults=defaults)
    data = parser.add_argument_group("data")
    read = (f"text files, or folders searched recursively for {TEXT_PATTERNS} (one document per file); .jsonl .json .csv "
            ".parquet files; folders written by datasets' save_to_disk; or a dataset name for datasets.load_dataset")
    data.add_argument("--data", nargs="+", metavar="PATH", help=f"training data: {read} (default: the shipped Shakespeare sample)")
    data.add_argument("--eval-data", nargs="+", metavar="PATH", help="data for the evaluation loss (long window), read like --data")
    data.add_argument("--eval-fraction", type=float, metavar="F", help="hold out the last F of the packed training rows for evaluation")
    data.add_argument("--text-column", default="text", help="text column of tables and datasets (default: %(default)s)")
    data.add_argument("--data-split", default="train", help="split of a dataset name or saved DatasetDict (default: %(default)s)")
    data.add_argument("--data-config", help="configuration of a dataset name (load_dataset's second argument)")
    data.add_argument("--num-proc", type=int, help="processes that tokenize (default: 1)")
    data.add_argument("--streaming", action="store_true",
                      help="read, tokenize and pack the training data on the fly, for corpora larger than memory")
    data.add_argument("--include-held-out", action="store_true", help="do not drop the held-out works (macbeth, tempest, twelfth_night)")
    data.add_argument("--seq-len", type=int, default=512, help="tokens per packed row (default: %(default)s)")

    opt = parser.add_argument_group("optimization (aliases of TrainingArguments fields, with the project's defaults)")
    opt.add_argument("--batch-size", type=int, help=_default("rows per device per micro-batch", defaults["batch_size"]))
    opt.add_argument("--grad-accum", type=int, help=_default("micro-batches per optimizer step", defaults["grad_accum"]))
    opt.add_argument("--max-steps", type=int, help=_default("optimizer steps", defaults["max_steps"]))
    opt.add_argument("--lr", type=float, help=_default("peak learning rate", defaults["lr"]))
    opt.add_argument("--lr-scheduler", help=_default("Transformers scheduler name", defaults["lr_scheduler"]))
    opt.add_argument("--warmup", type=float, help=_default("warmup steps, or a fraction of max steps when < 1", defaults["warmup"]))
    opt.add_argument("--weight-decay", type=float, help=_default("AdamW weight decay", defaults["weight_decay"]))
    opt.add_argument("--max-grad-norm", type=float, help=_default("gradient clipping norm", defaults["max_grad_norm"]))
    opt.add_argument("--seed", type=int, help=_default("seed for init, data order and SWAX draws", defaults["seed"]))

    run = parser.add_argument_group("run (aliases of TrainingArguments fields, with the project's defaults)")
    run.add_argument("--output", metavar="DIR", help="output folder (checkpoints, final model, loss curve); required")
    run.add_argument("--precision", choices=PRECISIONS, help="auto = bf16 on a GPU that supports it, else fp32 (default: auto)")
    run.add_argument("--gradient-checkpointing", action="store_true", default=None, help="recompute layer activations in backward")
    run.add_argument("--save-steps", type=int, help=_default("checkpoint every N steps", defaults["save_steps"]))
    run.add_argument("--save-total-limit", type=int, help=_default("checkpoints to keep", defaults["save_total_limit"]))
    run.add_argument("--logging-steps", type=int, help=_default("log loss and tokens/s every N steps", defaults["logging_steps"]))
    run.add_argument("--eval-steps", type=int, help="evaluate every N steps (default: --save-steps)")
    run.add_argument("--resume", nargs="?", const="auto", metavar="CHECKPOINT", help="resume from CHECKPOINT, or the latest one in --output")
    run.add_argument("--force", action="store_true", help="replace a non-empty --output (a new run instead of --resume)")
    run.add_argument("--report-to", help="Trainer integrations (tensorboard, wandb, ...; default: none)")

    native = parser.add_argument_group(
        "Transformers TrainingArguments (every field; the options above are aliases of some and set the project's defaults)")
    # A usage line listing every field would fill the screen above each argparse error; --help lists them.
    positionals = [action.metavar or action.dest for action in parser._actions if not action.option_strings]
    parser.usage = " ".join(["%(prog)s", *positionals, "[options]"])
    group = _NativeGroup(native, {o for action in parser._actions for o in action.option_strings})
    hints = typing.get_type_hints(TrainingArguments)
    for field in dataclasses.fields(TrainingArguments):
        if field.init:
            field = copy.copy(field)  # HfArgumentParser rewrites its type
            field.type = hints[field.name]
            HfArgumentParser._parse_dataclass_field(group, field)


def resolve_training_options(args: argparse.Namespace) -> argparse.Namespace:
    """Give each alias its value: the alias's, else its field's own option, else the project default.

    Raises ValueError when an alias and its field (or ``--precision`` and ``--bf16``/``--fp16``) are both given.
    """
    native = {k.removeprefix(NATIVE): v for k, v in vars(args).items() if k.startswith(NATIVE)}
    for ours, field in ALIASES.items():
        if getattr(args, ours) is not None and field in native:
            raise ValueError(f"--{ours.replace('_', '-')} and --{field} set the same option; pass one of them")
        if getattr(args, ours) is None:
            setattr(args, ours, native.get(field, args.project_defaults.get(ours)))
        if field in native:
            delattr(args, NATIVE + field)
    given = [f"--{f}" for f in PRECISION_FIELDS if f in native]
    if args.precision is not None and given:
        raise ValueError(f"--precision and {' '.join(given)} set the same option; pass one of them")
    if args.precision is None and not given:
        args.precision = args.project_defaults["precision"]
    if args.output is None:
        raise ValueError("--output is required (the run's folder)")
    return args


def data_source(args: argparse.Namespace, paths: list[str | Path], *, exclude_held_out: bool) -> DataSource:
    """A ``DataSource`` of ``paths`` read with the command's ``--text-column``, ``--data-split`` and ``--data-config``."""
    return DataSource(tuple(paths), args.text_column, args.data_split, args.data_config, exclude_held_out)


def data_paths(args: argparse.Namespace) -> list[str | Path]:
    """``--data`` or the shipped sample."""
    return list(args.data) if args.data else [shipped_sample_dir()]


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
    latest = latest_checkpoint(output)
    if latest is None:
        raise FileNotFoundError(f"--resume: no checkpoint to resume in {args.output} (no complete {PREFIX_CHECKPOINT_DIR}-* folder)")
    return latest


def latest_checkpoint(folder: str | Path) -> str | None:
    """The latest complete Trainer checkpoint (``checkpoint-N``) in ``folder``, or None; one cut short (the process
    killed while writing it) is skipped with a note."""
    folder = Path(folder)
    found = sorted(
        (int(p.name.removeprefix(f"{PREFIX_CHECKPOINT_DIR}-")), p)
        for p in (folder.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if folder.is_dir() else [])
        if p.is_dir() and p.name.removeprefix(f"{PREFIX_CHECKPOINT_DIR}-").isdigit()
    )
    for _, checkpoint in reversed(found):
        if complete_checkpoint(checkpoint):
            return str(checkpoint)
        print(f"phalanx: skipping incomplete checkpoint {checkpoint} (the run stopped while writing it)", file=sys.stderr)
    return None


def check_positive(args: argparse.Namespace, *names: str) -> None:
    """Raise ValueError for any of ``names`` (argparse dests) that is not a positive number."""
    for name in names:
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {value}")


def check_report_to(report_to: str | list[str]) -> None:
    """Every ``--report-to`` integration (comma-separated or a list) must be installed; ``none`` and ``all`` always pass."""
    from transformers.integrations import INTEGRATION_TO_CALLBACK, get_available_reporting_integrations

    given = report_to.split(",") if isinstance(report_to, str) else report_to
    for name in (n.strip() for n in given if n.strip() not in ("", "none", "all")):
        if name not in INTEGRATION_TO_CALLBACK:
            raise ValueError(f"--report-to {name}: unknown integration; use one of {', '.join(INTEGRATION_TO_CALLBACK)}")
        if name not in get_available_reporting_integrations():
            raise ValueError(f"--report-to {name}: the {name} package is not installed (install it or use --report-to none)")


def training_arguments(args: argparse.Namespace, *, has_eval: bool) -> TrainingArguments:
    """``TrainingArguments``: the project's settings from the resolved aliases (:func:`resolve_training_options`),
    then every field given by its own name (accelerate/DDP/FSDP settings come from the launcher)."""
    check_report_to(args.report_to)
    check_positive(args, "seq_len", "batch_size", "grad_accum", "lr", "save_steps", "logging_steps", "eval_steps", "num_proc")
    if args.max_steps == 0 or args.max_steps < -1:
        raise ValueError(f"--max-steps must be positive, or -1 to train --num_train_epochs epochs; got {args.max_steps}")
    if args.warmup < 0:
        raise ValueError(f"--warmup must be >= 0, got {args.warmup}")
    native = {k.removeprefix(NATIVE): v for k, v in vars(args).items() if k.startswith(NATIVE)}
    project = dict(
        per_device_eval_batch_size=args.batch_size,
        data_seed=args.seed,
        bf16=use_bf16(args.precision) if args.precision is not None else False,
        save_strategy="steps",
        eval_strategy="steps" if has_eval else "no",
        eval_steps=(args.eval_steps or args.save_steps) if has_eval else None,
        include_num_input_tokens_seen=True,
        ddp_find_unused_parameters=False,  # every parameter takes part in each forward
        # Without CUDA, launched processes must still form one DDP group (gloo); otherwise Accelerate
        # treats each as a separate single-process run and they train independently into one --output.
        use_cpu=launched_processes() > 1 and not torch.cuda.is_available(),
        dataloader_pin_memory=torch.cuda.is_available(),  # pinning without an accelerator only warns
        # A stream is read by every process, each taking its share of the batches: dispatching batches from
        # the first process would concatenate them, which the collator's `use_cache` flag does not allow.
        **({"accelerator_config": {"dispatch_batches": False}} if args.streaming else {}),
    )
    aliased = {field: getattr(args, ours) for ours, field in ALIASES.items() if ours != "resume"}
    return TrainingArguments(**(aliased | project | native))


def packed_trainer(
    model: PreTrainedModel,
    args: argparse.Namespace,
    tokenizer: PreTrainedTokenizerBase,
    callbacks: list[TrainerCallback],
    label: str,
) -> Trainer:
    """A ``Trainer`` over ``--data`` packed into ``--seq-len`` rows (held-out works dropped unless
    ``--include-held-out``; packed on the fly with ``--streaming``) and ``--eval-data`` or the
    ``--eval-fraction`` of the rows as evaluation rows; its progress bar reads ``label``. ``args`` are
    resolved (:func:`resolve_training_options`)."""
    if args.eval_data and args.eval_fraction is not None:
        raise ValueError("--eval-data and --eval-fraction both choose the evaluation rows; pass one of them")
    if args.streaming and (args.eval_fraction is not None or args.num_proc is not None):
        raise ValueError("--streaming reads the rows as training goes: --eval-fraction and --num-proc need them all "
                         "first (pass --eval-data for evaluation)")
    has_eval = bool(args.eval_data) or args.eval_fraction is not None
    train_args = training_arguments(args, has_eval=has_eval)  # checks every option before the data is read
    if args.streaming and train_args.dataloader_num_workers > 1:
        raise ValueError("--streaming packs the rows in one process, in order: --dataloader_num_workers must be 0 or 1")
    source = data_source(args, data_paths(args), exclude_held_out=not args.include_held_out)
    train_data: PackedDataset | PackedStream = (
        PackedStream(source, tokenizer, args.seq_len) if args.streaming
        else build_packed_dataset(source, tokenizer, args.seq_len, args.num_proc)
    )
    eval_data = None
    if args.eval_fraction is not None:
        train_data, eval_data = train_data.split(args.eval_fraction)
    elif args.eval_data:
        eval_source = data_source(args, args.eval_data, exclude_held_out=False)
        eval_data = build_packed_dataset(eval_source, tokenizer, args.seq_len, args.num_proc)
    trainer = Trainer(
        model=model,
        args=train_args,
        train_dataset=train_data,
        eval_dataset=eval_data,
        data_collator=PackedCollator(),
        processing_class=tokenizer,
        callbacks=[*callbacks, *peak_memory_callbacks()],
    )
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(LabelledProgressCallback(label))
    return trainer
