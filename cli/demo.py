"""`phalanx demo`: the whole project on a CPU (about 4 minutes on 2 cores), on the shipped Shakespeare sample.

Six stages, each a call into the package that owns the work:

1. train a tiny hybrid (Phalanx, sliding-window and full-attention layers) with ``phalanx train``;
2. sample text from it;
3. evaluate it with lm-eval through ``phalanx_eval`` (held-out bits-per-byte, one passkey distance);
4. LoRA fine-tune it on a new domain (the project's READMEs) with ``phalanx finetune --merge``;
5. train a tiny Transformers Gemma3 teacher with sliding-window layers, ``convert_checkpoint`` its
   SWA layers into Phalanx mixers and ``distill`` the student (stage 1, then stage 2);
6. export the hybrid with ``phalanx_hub`` (model card with the lm-eval results) and reload the export
   with ``AutoModelForCausalLM.from_pretrained(..., trust_remote_code=True)``.

Everything is written into a temporary folder beside ``--output-dir`` and renamed into place at the
end, so a failed or interrupted demo leaves the previous output untouched and nothing half-written.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, Gemma3TextConfig, PreTrainedTokenizerBase, set_seed

from modeling_phalanx import PhalanxConfig
from modeling_phalanx.configuration_phalanx import FULL_ATTENTION, PHALANX_MIXER, SLIDING_ATTENTION
from phalanx_conversion.convert import convert_checkpoint
from phalanx_conversion.distill import DistillOptions, StageConfig, distill
from phalanx_conversion.distill_cli import HELD_OUT_DIR
from phalanx_eval.harness import TASK_DIR, evaluate, write_json
from phalanx_hub.export import export
from phalanx_training import cli as train_cli
from phalanx_training import finetune_cli
from phalanx_training.callbacks import LossCurveCallback, logged_losses, loss_summary
from phalanx_training.data import REPO_ROOT, shipped_sample_dir
from phalanx_training.finetune_cli import MERGED_DIR
from phalanx_training.folders import output_folder
from phalanx_training.options import add_training_arguments, packed_trainer, resolve_training_options
from phalanx_training.tokenizer import load_byte_tokenizer

HYBRID_LAYER_TYPES = [PHALANX_MIXER, SLIDING_ATTENTION, PHALANX_MIXER, FULL_ATTENTION]
TEACHER_LAYER_TYPES = [SLIDING_ATTENTION, SLIDING_ATTENTION, SLIDING_ATTENTION, FULL_ATTENTION]
PASSKEY_DISTANCES = tuple(sorted(int(p.stem.rsplit("_", 1)[1]) for p in TASK_DIR.glob("phalanx_passkey_*.yaml")))
# LoRA adapts the Shakespeare model to a new domain: the project's own Markdown documentation.
FINETUNE_DOCS = ("README.md", "training/README.md", "eval/README.md", "conversion/README.md")
NUM_STAGES = 6
HINT_PROMPT = "CASSIUS.\n"  # the closing hint's prompt: a speaker line, as in the training text
# Run by `export_and_reload` in a clean interpreter: argv = site-packages paths, export folder, input ids, logits out.
REMOTE_CODE_RELOAD = """
import json, sys
sys.path.extend(json.loads(sys.argv[1]))
import torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[2], trust_remote_code=True).eval()
with torch.no_grad():
    torch.save(model(torch.load(sys.argv[3])).logits, sys.argv[4])
print(type(model).__module__)
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=400, help="hybrid pretraining steps (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=16, help="packed rows per step, every stage (default: %(default)s)")
    parser.add_argument("--seq-len", type=int, default=128, help="tokens (bytes) per row, every stage (default: %(default)s)")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate of hybrid and teacher (default: %(default)s)")
    parser.add_argument("--max-new-tokens", type=int, default=200, help="bytes to sample (default: %(default)s)")
    parser.add_argument("--prompt", default="BRUTUS.\n", help="prompt for the sample")
    parser.add_argument("--eval-limit", type=int, default=8, help="lm-eval documents per task (default: %(default)s)")
    parser.add_argument(
        "--passkey-distance", type=int, default=64, choices=PASSKEY_DISTANCES,
        help="bytes between the passkey and the question (default: %(default)s)",
    )
    parser.add_argument("--finetune-steps", type=int, default=40, help="LoRA steps (default: %(default)s)")
    parser.add_argument("--teacher-steps", type=int, default=400, help="Gemma3 teacher training steps (default: %(default)s)")
    parser.add_argument("--distill-steps", type=int, default=40, help="steps of each distillation stage (default: %(default)s)")
    parser.add_argument(
        "--eval-max-bytes", type=int, default=8192,
        help="held-out bytes per work scored by the conversion stage's bits-per-byte (default: %(default)s)",
    )
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch CPU threads (default: %(default)s; 2 are about 1.5x faster on an idle 2-core machine, "
        "but several times slower when other work shares the cores)",
    )
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/demo"), help="where everything is written")
    parser.add_argument("--seed", type=int, default=0, help="seed of initialisation, data order and sampling (default: %(default)s)")


def check_args(args: argparse.Namespace) -> None:
    """Reject values that would fail later, inside another package, with an obscure error."""
    for name in ("steps", "batch_size", "max_new_tokens", "eval_limit", "finetune_steps", "teacher_steps",
                 "distill_steps", "eval_max_bytes", "threads"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.seq_len < 2:
        raise ValueError(f"--seq-len must be >= 2, got {args.seq_len}")
    if not args.lr > 0:
        raise ValueError(f"--lr must be > 0, got {args.lr}")
    if not args.prompt:
        raise ValueError("--prompt must not be empty")
    if args.output_dir.exists() and not args.output_dir.is_dir():
        raise ValueError(f"--output-dir exists and is not a folder: {args.output_dir}")


def hybrid_config(tokenizer: PreTrainedTokenizerBase) -> PhalanxConfig:
    """A 0.8M-parameter hybrid: Phalanx, sliding-window and full-attention layers."""
    return PhalanxConfig(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=352, num_hidden_layers=len(HYBRID_LAYER_TYPES),
        num_attention_heads=4, num_key_value_heads=2, layer_types=HYBRID_LAYER_TYPES, sliding_window=64,
        phalanx_head_dim=16, swr_block_len=16, swr_window_blocks=2, max_position_embeddings=4096,
        tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def teacher_config(tokenizer: PreTrainedTokenizerBase) -> Gemma3TextConfig:
    """A Gemma3 text model of the hybrid's size: three sliding-window layers (window 64), one global."""
    return Gemma3TextConfig(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=352, num_hidden_layers=len(TEACHER_LAYER_TYPES),
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, query_pre_attn_scalar=32,
        layer_types=TEACHER_LAYER_TYPES, sliding_window=64, max_position_embeddings=4096, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )


def parse_cli(add_arguments: Callable[[argparse.ArgumentParser], None], argv: list[str]) -> argparse.Namespace:
    """Parse ``argv`` with a subcommand's own options (its defaults and checks apply)."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def training_argv(args: argparse.Namespace, steps: int, output: Path) -> list[str]:
    """Options shared by every Trainer run of the demo: batch, length, steps, logging, no mid-run checkpoints."""
    return [
        "--output", str(output), "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len),
        "--max-steps", str(steps), "--logging-steps", str(max(1, steps // 10)), "--save-steps", str(steps),
        "--save-total-limit", "1", "--warmup", "0.05", "--seed", str(args.seed),
    ]


def trainer_log(output: Path) -> list[dict[str, Any]]:
    """The Trainer's log history in ``output/trainer_state.json``."""
    return json.loads((output / "trainer_state.json").read_text())["log_history"]


def shell_word(text: str) -> str:
    """``text`` as one shell word that bash and zsh read back exactly (newlines as ``$'...\\n'``, not a literal \\n)."""
    if text.isprintable():
        return shlex.quote(text)
    return "$'" + text.encode("unicode_escape").decode("ascii").replace("'", "\\'") + "'"


def generate_hint(export_dir: Path, prompt: str) -> str:
    """The ``phalanx generate`` command printed at the end of the demo."""
    return f"phalanx generate {shell_word(str(export_dir))} --prompt {shell_word(prompt)} --do-sample"


def train_hybrid(args: argparse.Namespace, tokenizer: PreTrainedTokenizerBase, work: Path) -> dict[str, Any]:
    """Stage 1: ``phalanx train`` on the shipped sample with the hybrid config written as JSON."""
    config_path = work / "hybrid_config.json"
    hybrid_config(tokenizer).to_json_file(config_path)
    output = work / "hybrid"
    argv = ["--model-config", str(config_path), "--lr", str(args.lr), *training_argv(args, args.steps, output)]
    train_cli.run(parse_cli(train_cli.add_arguments, argv))
    history = trainer_log(output)
    first, last = logged_losses(history)
    return {"dir": output, "loss_first": first, "loss_last": last,
            "report": f"{loss_summary(history)} ({args.steps} steps)"}


def sample(model_dir: Path, tokenizer: PreTrainedTokenizerBase, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Stage 2: a sampled continuation of ``--prompt`` (temperature 0.8, top-k 40), saved as ``sample.txt``."""
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    inputs = tokenizer(args.prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=True, temperature=0.8, top_k=40)
    text = tokenizer.decode(out[0], skip_special_tokens=True)
    (work / "sample.txt").write_text(text + "\n", encoding="utf-8")
    print(text)
    new = out.shape[1] - inputs["input_ids"].shape[1]
    return {"text": text, "report": f"{new} bytes sampled after {args.prompt!r} (sample.txt)"}


def run_eval(model_dir: Path, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Stage 3: lm-eval (offline shipped tasks) on held-out bits-per-byte and one passkey distance."""
    passkey = f"phalanx_passkey_{args.passkey_distance}"
    results = evaluate(str(model_dir), ["phalanx_bpb", passkey], limit=args.eval_limit, device="cpu")
    path = write_json(results, work / "eval" / "eval_results.json")
    bpb = results["results"]["phalanx_bpb"]["bits_per_byte,none"]
    acc = results["results"][passkey]["acc,none"]
    report = (f"held-out {bpb:.3f} bits/byte (whole documents in context); passkey at {args.passkey_distance} bytes: "
              f"acc {acc:.2f} ({args.eval_limit} documents per task)")
    return {"path": path, "bpb": bpb, "passkey_acc": acc, "report": report}


def finetune(model_dir: Path, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Stage 4: ``phalanx finetune --merge`` (LoRA on attention and Phalanx projections) on the READMEs."""
    output = work / "lora"
    docs = [str(REPO_ROOT / name) for name in FINETUNE_DOCS]
    argv = [str(model_dir), "--data", *docs, "--lora-r", "8", "--merge",
            "--lr", "2e-3", *training_argv(args, args.finetune_steps, output)]
    finetune_cli.run(parse_cli(finetune_cli.add_arguments, argv))
    history = trainer_log(output)
    first, last = logged_losses(history)
    report = (f"LoRA on the project's READMEs: {loss_summary(history)} ({args.finetune_steps} steps); "
              f"merged model in lora/{MERGED_DIR}")
    return {"dir": output / MERGED_DIR, "loss_first": first, "loss_last": last, "report": report}


def train_teacher(args: argparse.Namespace, tokenizer: PreTrainedTokenizerBase, output: Path) -> None:
    """The Transformers teacher, trained with ``phalanx_training``'s options, packing and Trainer setup.

    ``phalanx train`` builds Phalanx configs only, so the Gemma3 model is passed to the same Trainer here.
    """
    train_args = resolve_training_options(parse_cli(
        lambda p: add_training_arguments(p, learning_rate=args.lr, max_steps=args.teacher_steps),
        ["--lr", str(args.lr), *training_argv(args, args.teacher_steps, output)],
    ))
    set_seed(args.seed)
    model = AutoModelForCausalLM.from_config(teacher_config(tokenizer), attn_implementation="sdpa")
    trainer = packed_trainer(model, train_args, tokenizer, [LossCurveCallback()], label="teacher (Gemma3, sliding-window layers)")
    trainer.train()
    trainer.save_model(output)
    trainer.save_state()


def convert_and_distill(args: argparse.Namespace, tokenizer: PreTrainedTokenizerBase, work: Path) -> dict[str, Any]:
    """Stage 5: teacher -> ``convert_checkpoint`` (every SWA layer) -> ``distill`` stage 1 and stage 2."""
    teacher = work / "teacher"
    sliding = TEACHER_LAYER_TYPES.count(SLIDING_ATTENTION)
    print(f"training the Gemma3 teacher ({sliding} sliding-window layers, {len(TEACHER_LAYER_TYPES) - sliding} global) "
          f"for {args.teacher_steps} steps", flush=True)
    train_teacher(args, tokenizer, teacher)
    print("converting the teacher's sliding-window layers into Phalanx mixers", flush=True)
    student = work / "student"
    converted = convert_checkpoint(teacher, student, seed=args.seed).converted_layers
    print(f"distilling the student (layers {converted}): stage 1 matches each layer's output, stage 2 the logits",
          flush=True)
    common = {"batch_size": args.batch_size, "seq_len": args.seq_len}
    options = DistillOptions(
        stage1=StageConfig(steps=args.distill_steps, lr=3e-3, **common),
        stage2=StageConfig(steps=args.distill_steps, lr=1e-3, other_lr=1e-4, **common),
        seed=args.seed, save_every=args.distill_steps, eval_seq_len=args.seq_len,
        eval_max_bytes=args.eval_max_bytes, device="cpu",
    )
    metrics = distill(teacher, student, work / "distill", [shipped_sample_dir()], [HELD_OUT_DIR], options)
    bpb = {key: metrics[f"bpb_{key}"] for key in ("teacher", "student_initial", "after_stage1", "after_stage2")}
    report = (f"Gemma3 layers {converted} -> Phalanx; held-out bits/byte ({args.seq_len}-byte windows): "
              f"teacher {bpb['teacher']:.3f}, zero-shot {bpb['student_initial']:.3f}, "
              f"stage 1 {bpb['after_stage1']:.3f}, stage 2 {bpb['after_stage2']:.3f}")
    return {"converted_layers": converted, "bpb": bpb, "report": report}


def export_and_reload(model_dir: Path, eval_results: Path, tokenizer: PreTrainedTokenizerBase, args: argparse.Namespace,
                      work: Path) -> dict[str, Any]:
    """Stage 6: ``phalanx_hub`` export with the lm-eval results, reloaded from its own modeling files.

    In this process ``modeling_phalanx`` is registered, and Transformers would prefer it to the folder's
    code; the reload therefore runs in a clean interpreter (``-I -S``: no project packages importable)
    with ``trust_remote_code=True``, and its logits must equal the trained model's.
    """
    out = export(model_dir, work / "export", eval_results=eval_results, model_name="phalanx-demo")
    probe = tokenizer(args.prompt * 8, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = AutoModelForCausalLM.from_pretrained(model_dir).eval()(probe).logits
    paths = json.dumps(sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}))
    with tempfile.TemporaryDirectory() as tmp:
        ids_path, logits_path = Path(tmp) / "ids.pt", Path(tmp) / "logits.pt"
        torch.save(probe, ids_path)
        env = {"PATH": os.environ.get("PATH", ""), "HOME": tmp, "HF_MODULES_CACHE": str(Path(tmp) / "modules"),
               "HF_HUB_OFFLINE": "1"}
        proc = subprocess.run(
            [sys.executable, "-I", "-S", "-c", REMOTE_CODE_RELOAD, paths, str(out.resolve()), str(ids_path), str(logits_path)],
            cwd=tmp, env=env, capture_output=True, text=True, check=False,
        )
        if proc.returncode != 0:
            raise ValueError(f"the export in {out} does not load with trust_remote_code: {proc.stderr.strip()[-2000:]}")
        module = proc.stdout.strip().splitlines()[-1]
        logits = torch.load(logits_path)
    if not module.startswith("transformers_modules."):
        raise ValueError(f"the export in {out} was loaded by {module}, not by its own modeling files")
    if not torch.equal(logits, expected):
        diff = (logits - expected).abs().max().item()
        raise ValueError(f"the export in {out} gives different logits (max abs diff {diff:.3g})")
    return {"dir": out, "class": module,
            "report": "export/ (model card with the lm-eval results) reloaded with trust_remote_code "
                      "in a clean interpreter: identical logits"}


def write_summary(rows: list[tuple[str, str, float]], results: dict[str, Any], work: Path) -> str:
    """``summary.md`` (the table printed at the end) and ``summary.json`` (every number)."""
    table = ["| stage | result | seconds |", "|---|---|---|"]
    table += [f"| {name} | {report} | {seconds:.0f} |" for name, report, seconds in rows]
    table.append(f"| total | {len(rows)} stages | {sum(seconds for _, _, seconds in rows):.0f} |")
    text = "\n".join(table) + "\n"
    (work / "summary.md").write_text(text, encoding="utf-8")
    (work / "summary.json").write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    return text


def run(args: argparse.Namespace) -> int:
    check_args(args)
    started = time.perf_counter()
    torch.manual_seed(args.seed)
    tokenizer = load_byte_tokenizer()
    rows: list[tuple[str, str, float]] = []
    results: dict[str, Any] = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)

    def stage(name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        print(f"\n=== [{len(rows) + 1}/{NUM_STAGES}] {name} ===", flush=True)
        t0 = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - t0
        print(f"[{len(rows) + 1}/{NUM_STAGES}] {name}: {result['report']} ({seconds:.0f} s)", flush=True)
        rows.append((name, result["report"], seconds))
        kept = {k: str(v.relative_to(work)) if isinstance(v, Path) else v for k, v in result.items() if k != "report"}
        results[name] = {**kept, "seconds": seconds}
        return result

    inputs = [shipped_sample_dir(), TASK_DIR, *(REPO_ROOT / name for name in FINETUNE_DOCS)]
    try:
        # Written beside --output-dir and renamed into place: a failed run leaves the previous output untouched.
        with output_folder(args.output_dir, inputs=inputs, force=True, create_parents=True) as work:
            hybrid = stage("train hybrid", lambda: train_hybrid(args, tokenizer, work))
            stage("generate", lambda: sample(hybrid["dir"], tokenizer, args, work))
            evaluation = stage("evaluate (lm-eval)", lambda: run_eval(hybrid["dir"], args, work))
            stage("LoRA fine-tune", lambda: finetune(hybrid["dir"], args, work))
            stage("convert + distill", lambda: convert_and_distill(args, tokenizer, work))
            stage("export + reload", lambda: export_and_reload(hybrid["dir"], evaluation["path"], tokenizer, args, work))
            table = write_summary(rows, results, work)
    finally:
        torch.set_num_threads(threads)
    print(f"\n{table}")
    print(f"everything in {args.output_dir} ({time.perf_counter() - started:.0f} s); "
          f"try: {generate_hint(args.output_dir / 'export', HINT_PROMPT)}")
    return 0
