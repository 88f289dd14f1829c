"""`phalanx` console script.

Each subcommand lives in the package that owns the work; this module only maps names to modules. A
subcommand module exposes ``add_arguments(parser)`` and ``run(args) -> int``. Modules are imported only
for the command that runs, so ``phalanx --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings
from typing import Any

COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("phalanx_cli.demo", "the whole pipeline on CPU in about 4 minutes: train, generate, lm-eval, LoRA, convert+distill, export"),
    "generate": ("phalanx_cli.generate", "generate text from a saved model folder"),
    "train": ("phalanx_training.cli", "pretrain a Phalanx / SWA / Transformer model on local text"),
    "tokenizer": ("phalanx_training.tokenizer_cli", "learn a byte-level BPE tokenizer from local text (for train --tokenizer)"),
    "finetune": ("phalanx_training.finetune_cli", "LoRA fine-tuning with PEFT (optionally merged)"),
    "convert": ("phalanx_conversion.cli", "swap the SWA layers of a checkpoint for Phalanx mixers"),
    "distill": ("phalanx_conversion.distill_cli", "distill a converted student back to its teacher"),
    "eval": ("phalanx_eval.cli", "evaluate with lm-eval on the shipped offline tasks"),
    "export": ("phalanx_hub.export", "write a Hub-ready folder with a model card"),
    "export-kernels": ("phalanx_hub.kernel_export", "write the Triton kernels as a Hub kernel repository (`kernels` library)"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Parser with every subcommand listed; only ``command``'s module is imported for its options."""
    parser = argparse.ArgumentParser(prog="phalanx", description="Phalanx sliding-window-recurrence models for Transformers.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            importlib.import_module(module_name).add_arguments(sp)
    return parser


def show_each_warning_once() -> None:
    """Print each warning message once per run. Trainer, PEFT and lm-eval enter ``warnings.catch_warnings``,
    which clears Python's record of shown warnings (the "once" filter's too), so the same deprecation would
    otherwise repeat in every stage of a run; ``catch_warnings`` restores this hook when it exits."""
    shown: set[tuple[type[Warning], str]] = set()
    show = warnings.showwarning

    def show_once(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
        if (category, str(message)) not in shown:
            shown.add((category, str(message)))
            show(message, category, *args, **kwargs)

    warnings.showwarning = show_once


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    show_each_warning_once()
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        return int(module.run(args) or 0)
    except (FileNotFoundError, ValueError, TypeError, FloatingPointError) as err:
        # Errors are part of the interface: one clear line, non-zero exit; PHALANX_DEBUG=1 shows the traceback.
        if os.environ.get("PHALANX_DEBUG", "") not in ("", "0"):
            raise
        print(f"phalanx {args.command}: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # outputs in progress are claim folders, already removed on the way out
        print(f"phalanx {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
