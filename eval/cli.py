"""`phalanx eval MODEL --tasks ...`: lm-eval on the shipped offline tasks, results JSON and recall plot."""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_TASKS = ["phalanx_bpb", "phalanx_passkey", "phalanx_mqar"]


def _batch_size(value: str) -> int | str:
    if value == "auto" or value.startswith("auto:"):
        return value
    try:
        size = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"batch size must be a positive integer or 'auto', got {value!r}") from None
    if size < 1:
        raise argparse.ArgumentTypeError(f"batch size must be positive, got {size}")
    return size


def _limit(value: str) -> int | float:
    """lm-eval's limit: an integer number of documents per task, or a fraction below 1."""
    number = float(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"limit must be positive, got {value}")
    return number if number < 1 else int(number)


def task_names(values: list[str]) -> list[str]:
    """Task names from ``--tasks``, given as separate words or comma-separated as lm-eval takes them."""
    return [name for value in values for name in value.split(",") if name]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model folder (or a Hub id where the network is reachable)")
    parser.add_argument(
        "--tasks", nargs="+", default=DEFAULT_TASKS, metavar="TASK",
        help="task, group or tag names or globs, space- or comma-separated (default: %(default)s; "
        "`phalanx` = every shipped task)",
    )
    parser.add_argument("--limit", type=_limit, default=None, help="documents per task (or a fraction < 1)")
    parser.add_argument("--batch-size", type=_batch_size, default=1, help="integer or 'auto' (default: 1)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    parser.add_argument(
        "--max-length", type=int, default=None,
        help="context length in tokens; longer contexts are cut from the left "
        "(default: the model's max_position_embeddings, at most 16384; 2048 for a Hub id)",
    )
    parser.add_argument("--dtype", default="auto", help="model dtype: auto (as saved), bfloat16, float32, ...")
    parser.add_argument(
        "--gen-kwargs", default=None, metavar="K=V,...",
        help="generate() options for generation tasks, as lm-eval's --gen_kwargs (e.g. cache_implementation=static)",
    )
    parser.add_argument(
        "--trust-remote-code", action="store_true",
        help="allow a model folder's own Python code to run (Phalanx folders need no flag)",
    )
    parser.add_argument(
        "--output", type=Path, default=Path("eval_results.json"),
        help="results JSON (default: %(default)s); the recall plot goes next to it as <stem>_recall.png",
    )


def run(args: argparse.Namespace) -> int:
    import torch
    from lm_eval.utils import make_table

    from phalanx_eval.harness import evaluate, write_json
    from phalanx_eval.plots import plot_recall

    if args.output.suffix != ".json":
        raise ValueError(f"--output must end in .json, got {args.output}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    results = evaluate(
        args.model, task_names(args.tasks), limit=args.limit, batch_size=args.batch_size, device=device,
        max_length=args.max_length, dtype=args.dtype, trust_remote_code=args.trust_remote_code,
        gen_kwargs=args.gen_kwargs,
    )
    json_path = write_json(results, args.output, args.model)  # first: an hour of evaluation must not hang on printing
    print(make_table(results))
    if results.get("groups"):
        print(make_table(results, "groups"))
    print(f"results: {json_path}")
    plot_path = plot_recall(results, json_path.with_name(f"{json_path.stem}_recall.png"), results["config"]["max_length"])
    if plot_path is not None:
        print(f"recall plot: {plot_path}")
    return 0
