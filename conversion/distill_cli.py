"""`phalanx distill TEACHER STUDENT --data TEXT --out DIR`: recover a converted student's quality.

Stage 1 (per-layer output matching) then stage 2 (logit KL), each a Transformers `Trainer` run, so the same
command runs on one device or under `accelerate launch` / `torchrun` (DDP, FSDP); `--stage1-steps 0` or
`--stage2-steps 0` skips a stage. Running again with the same `--out` and `--resume` continues from the latest
checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from phalanx_eval.harness import TASK_DIR
from phalanx_training.data import SHIPPED_SAMPLE_DIR
from phalanx_training.folders import RUN_CLAIM, claim_folder, clear_folder
from phalanx_training.options import PRECISIONS

from .checkpoint import resolve_checkpoint

HELD_OUT_DIR = TASK_DIR / "data"  # the held-out works shipped with the evaluation tasks


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "teacher", help="source checkpoint (the model that was converted): a folder or a Hub id in the local cache"
    )
    parser.add_argument("student", help="converted checkpoint folder (from phalanx convert)")
    parser.add_argument("--out", required=True, help="folder for checkpoints, metrics, plots and the distilled models")
    parser.add_argument(
        "--data",
        nargs="+",
        default=[str(SHIPPED_SAMPLE_DIR)],
        help="training text files or folders (held-out works are dropped)",
    )
    parser.add_argument("--eval-data", nargs="+", default=[str(HELD_OUT_DIR)], help="held-out text for bits-per-byte")
    parser.add_argument("--stage1-steps", type=int, default=500)
    parser.add_argument("--stage1-lr", type=float, default=1e-3)
    parser.add_argument("--stage2-steps", type=int, default=500)
    parser.add_argument("--stage2-lr", type=float, default=3e-4, help="learning rate of the mixer parameters")
    parser.add_argument(
        "--stage2-other-lr", type=float, default=3e-5, help="learning rate of all other parameters (0 freezes them)"
    )
    parser.add_argument(
        "--ce-weight", type=float, default=0.0, help="stage 2: weight of cross-entropy added to the KL"
    )
    parser.add_argument("--batch-size", type=int, default=8, help="rows per device per micro-batch")
    parser.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--kl-chunk", type=int, default=256, help="stage 2: time steps per KL chunk")
    parser.add_argument("--save-every", type=int, default=200, help="checkpoint interval in steps")
    parser.add_argument("--logging-steps", type=int, default=10, help="log the losses every N steps")
    parser.add_argument(
        "--precision", choices=PRECISIONS, default="auto", help="auto = bf16 on a GPU that supports it, else fp32"
    )
    parser.add_argument("--report-to", default="none", help="Trainer integrations (tensorboard, wandb, ...)")
    parser.add_argument(
        "--eval-max-bytes", type=int, default=None, help="score only the first N bytes of each held-out text"
    )
    parser.add_argument(
        "--eval-every", type=int, default=0,
        help="also score held-out bits/byte every N steps of each stage (metrics.json bpb_curve); 0: only before "
        "and after each stage",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--device", default=None, help="cuda or cpu (default: cuda when available; a launcher gives each process one)"
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="continue a run already in --out")
    group.add_argument("--force", action="store_true", help="delete an existing --out first")


def check_models(teacher: str, student: str) -> None:
    """Both model arguments must be local checkpoint folders (with a config.json)."""
    for role, folder in (("teacher", teacher), ("student", student)):
        if not (Path(folder) / "config.json").is_file():
            raise FileNotFoundError(f"{role} {folder} is not a local checkpoint folder (no config.json there)")


def run(args: argparse.Namespace) -> int:
    from .distill import DistillOptions, StageConfig, distill

    teacher = str(resolve_checkpoint(args.teacher))
    check_models(teacher, args.student)
    out = Path(args.out)
    common = {"batch_size": args.batch_size, "grad_accum": args.grad_accum, "seq_len": args.seq_len}
    options = DistillOptions(
        stage1=StageConfig(steps=args.stage1_steps, lr=args.stage1_lr, **common),
        stage2=StageConfig(
            steps=args.stage2_steps,
            lr=args.stage2_lr,
            other_lr=args.stage2_other_lr,
            ce_weight=args.ce_weight,
            kl_chunk=args.kl_chunk,
            **common,
        ),
        seed=args.seed,
        save_every=args.save_every,
        logging_steps=args.logging_steps,
        eval_seq_len=args.seq_len,
        eval_max_bytes=args.eval_max_bytes,
        eval_every=args.eval_every,
        precision=args.precision,
        report_to=args.report_to,
        **({"device": args.device} if args.device else {}),
    )
    inputs = [teacher, args.student, *args.data, *args.eval_data]
    with claim_folder(out, inputs=inputs):  # --out never overlaps what the run reads; one run writes it at a time
        if any(p.name != RUN_CLAIM for p in out.iterdir()):
            if args.force:
                if int(os.environ.get("RANK", "0")) == 0:  # one process of a launched run empties it
                    clear_folder(out)
            elif not args.resume:
                raise ValueError(f"{out} is not empty; pass --resume to continue that run or --force to start over")
        elif args.resume:
            raise FileNotFoundError(f"nothing to resume in {out}")
        metrics = distill(teacher, args.student, out, args.data, args.eval_data, options)
    if int(os.environ.get("RANK", "0")) == 0:
        summary = {k: v for k, v in metrics.items() if k.startswith(("bpb", "tokens"))}
        print(json.dumps(summary, indent=2))
    return 0
