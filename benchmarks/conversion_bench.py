#!/usr/bin/env python3
"""Conversion bench (issue 21): a Gemma3 SWA teacher trained on the quality corpus, converted, distilled, measured.

One command per stage, all into one results folder OUT:

    python benchmarks/conversion_bench.py teacher CORPUS OUT [--shape 125m] [--window 512] [--steps 900 --seq-len 4096 --batch-size 8]
    python benchmarks/conversion_bench.py convert OUT [--inits vo qkvo avg random] [--lowest-mass 2 5] [--subset-inits avg]
                                                     [--block-len 16 --window-blocks 2] [--name-suffix S] [--window-probe 32 64 128 256]
    python benchmarks/conversion_bench.py distill OUT [--token-fraction 0.05] [--stage1-share 0.1] [--curve-points 4] [--students GLOB] [--tag T]
    python benchmarks/conversion_bench.py speed OUT [--train-steps 40] [--decode-batch 1 --decode-prompt 4032]
    python benchmarks/conversion_bench.py report OUT

``teacher`` trains a Transformers ``Gemma3ForCausalLM`` (5 sliding-window layers : 1 full, the width, depth and
heads of a quality-bench size) with ``phalanx train`` on the quality bench's corpus (``quality_bench.py corpus``),
with the bench's budget, seed, schedule and tokenizer option, and scores it as the bench scores every model
(``quality_bench.score_model``: held-out bits/byte overall and by position, a training sample, passkey and MQAR
through lm-eval). Its settings go to ``OUT/bench.json``; the later stages read them, so everything is scored alike.

``convert`` measures the attention mass of the teacher's SWA layers on held-out text (``phalanx convert
--analyze``'s measurement, ``OUT/analysis.json`` and ``attention_mass.png``), then runs ``phalanx convert`` for
every SWA layer with each warm start (``--inits``), and for the ``K`` layers with the least mass beyond the
Phalanx window (``--layers lowest-mass:K`` ranks them so) with ``--subset-inits``: ``OUT/students/<name>``. It
also scores the teacher with its SWA window cut to shorter spans, untrained (``--window-probe``): how much the
shorter reach alone costs, before any mixer is swapped in.

``distill`` runs ``phalanx distill`` on each student with at most 5% of the teacher's training tokens (stage 1 a
share of them, stage 2 the rest), scoring held-out bits/byte every ``steps / --curve-points`` steps of stage 2
(``--eval-every``) on the held-out sample the teacher was scored on: the recovery curve. The distilled student is
then scored like the teacher (``OUT/<student>.json``). ``--tag T`` names another recipe (batch, learning rates,
stage split) of the same students: its results go to ``OUT/<student>@T.json`` and the report compares them.

``speed`` measures, in one process, training tokens/s (a short ``phalanx train`` of each architecture) and decode
tokens/s (``bench_generate.bench_point``, greedy ``generate`` after a prompt) of the teacher and of each converted
layer set (``OUT/speed.json``). ``report`` writes ``OUT/report.md`` (teacher vs students, recall beyond the
window, speeds, which layers to convert first, the issue's goal) and ``OUT/recovery.png``.

On the GPU machine: ``benchmarks/gpu_conversion_run.sh OUT`` (two 10-minute commands; see it for the split).
"""

from __future__ import annotations

import argparse
import fnmatch
import glob
import json
import re
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality_bench as qb  # noqa: E402  (corpus, tokenizer, training, scoring and tables of the quality bench)

from phalanx_conversion.init import INIT_SCHEMES  # noqa: E402
from phalanx_training.folders import check_output, write_file  # noqa: E402
from phalanx_training.presets import SIZES  # noqa: E402

BENCH_FILE, TEACHER_FILE, CONVERT_FILE, SPEED_FILE = "bench.json", "teacher.json", "convert.json", "speed.json"
TEACHER = "teacher"
FULL_EVERY = 6  # 5 sliding-window layers : 1 full, as Gemma3
MAX_TOKEN_FRACTION = 0.05  # issue 21: distil with at most 5% of the teacher's training tokens
GOAL_BPB_RATIO = 1.03  # issue 21: distilled within 3% of the teacher's held-out bits/byte
ALL_LAYERS = "all"  # student name prefix of the conversion of every SWA layer


# ------------------------------------------------------------------------------------------------ teacher


def teacher_config(shape: str, window: int, vocab_size: int, max_positions: int) -> Any:
    """A ``Gemma3TextConfig`` with the width, depth, heads and MLP of quality-bench size ``shape``; every
    ``FULL_EVERY``-th layer and the last full attention, the others sliding-window ``window``."""
    from transformers import Gemma3TextConfig

    size = SIZES[shape]
    depth = size["num_hidden_layers"]
    return Gemma3TextConfig(
        vocab_size=vocab_size,
        hidden_size=size["hidden_size"],
        intermediate_size=size["intermediate_size"],
        num_hidden_layers=depth,
        num_attention_heads=size["num_attention_heads"],
        num_key_value_heads=size["num_key_value_heads"],
        head_dim=size["head_dim"],
        query_pre_attn_scalar=size["head_dim"],
        sliding_window=window,
        layer_types=["full_attention" if (i + 1) % FULL_EVERY == 0 or i == depth - 1 else "sliding_attention"
                     for i in range(depth)],
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
    )


def teacher_command(args: argparse.Namespace) -> None:
    """Train and score the teacher; write ``OUT/bench.json`` (the settings every stage shares) and ``OUT/teacher.json``."""
    import torch
    from transformers import TrainerState

    from phalanx_training.callbacks import logged_losses
    from phalanx_training.tokenizer import load_tokenizer

    corpus = qb.corpus_record(args.corpus)
    check_output(args.out, inputs=[args.corpus, *([args.tokenizer] if args.tokenizer else [])], force=True,
                 create_parents=True)
    if args.window >= args.seq_len:
        raise ValueError(f"--window {args.window} must be below --seq-len {args.seq_len}: recall beyond it is measured")
    path = args.out / TEACHER_FILE
    if path.exists() and not args.force:
        print(f"conversion_bench: {path} exists, skipped (--force trains the teacher again)")
        return
    args.out.mkdir(parents=True, exist_ok=True)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in ("command", "out", "force")}
    write_file(args.out / BENCH_FILE, json.dumps(settings, indent=2) + "\n")
    bench = bench_settings(args.out)
    run_dir = args.out / "runs" / TEACHER
    config = teacher_config(args.shape, args.window, len(load_tokenizer(args.tokenizer)),
                            max(args.seq_len, args.recall_max_length))
    cmd, wall = qb.train_model(bench, TEACHER, config, run_dir, args.steps)
    model_dir = run_dir / "model"
    for checkpoint in model_dir.glob("checkpoint-*"):
        shutil.rmtree(checkpoint)  # optimizer state; the final weights are the teacher
    state = TrainerState.load_from_json(str(model_dir / "trainer_state.json"))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    scores = qb.score_model(bench, TEACHER, model_dir, run_dir, device)
    first_loss, final_loss = logged_losses(state.log_history)
    result = {
        "config": TEACHER,
        "about": f"Gemma3ForCausalLM, {args.shape} shape, {FULL_EVERY - 1} sliding-{args.window} : 1 full",
        "sliding_window": args.window,
        "steps": state.global_step,
        "seq_len": args.seq_len,
        "batch_size": args.batch_size,
        "tokens": state.global_step * args.seq_len * args.batch_size,
        "train_command": cmd,
        "train": {"tokens_per_second": qb.steady_tokens_per_second(state.log_history), "wall_seconds": wall,
                  "first_loss": first_loss, "final_loss": final_loss,
                  "loss_curve": [[e["step"], e["loss"]] for e in state.log_history if "loss" in e]},
        **scores,
        "tokenizer": qb.tokenizer_record(args.tokenizer),
        "corpus": {"path": str(args.corpus), "held_out": corpus["held_out"], "fingerprint": corpus["fingerprint"]},
        "environment": qb.environment(device),
    }
    write_file(path, json.dumps(result, indent=2) + "\n")
    print(f"conversion_bench: teacher {scores['parameters'] / 1e6:.1f}M parameters, held-out bits/byte "
          f"{scores['heldout']['bits_per_byte']:.4f} -> {path}")


def bench_settings(out: Path) -> argparse.Namespace:
    """The teacher stage's settings (``OUT/bench.json``) as the options ``quality_bench`` trains and scores with."""
    import torch

    path = out / BENCH_FILE
    if not path.is_file():
        raise ValueError(f"{out} has no {BENCH_FILE}: run the teacher stage into it first")
    fields = json.loads(path.read_text(encoding="utf-8"))
    bench = argparse.Namespace(**fields)
    bench.corpus = Path(fields["corpus"])
    bench.tokenizer = Path(fields["tokenizer"]) if fields["tokenizer"] else None
    bench.amp_bf16 = torch.cuda.is_available() and bench.precision != "fp32"
    return bench


def load_json(path: Path, stage: str) -> dict[str, Any]:
    if not path.is_file():
        raise ValueError(f"{path} is missing: run the {stage} stage first")
    return json.loads(path.read_text(encoding="utf-8"))


def layer_set(name: str, student: dict[str, Any]) -> str:
    """The speed label of a student: its converted layers and Phalanx window, not its warm start (``all-avg`` and
    ``all-vo`` are ``all``; ``all-avg-w128`` is ``all-w128``). Results of older runs lack the field: the name less
    its init."""
    return student.get("layer_set", name.rsplit("-", 1)[0])


def teacher_dir(out: Path) -> Path:
    load_json(out / TEACHER_FILE, "teacher")
    return out / "runs" / TEACHER / "model"


# ------------------------------------------------------------------------------------------------ convert


def phalanx(argv: Sequence[str]) -> None:
    """Run a ``phalanx`` command in this process (no start-up per student); RuntimeError when it fails."""
    from phalanx_cli.main import main

    print("conversion_bench: phalanx " + " ".join(argv), flush=True)
    code = main(list(argv))
    if code != 0:
        raise RuntimeError(f"phalanx {argv[0]} exited with {code} (its error is printed above)")


def window_probe(out: Path, bench: argparse.Namespace, windows: Sequence[int]) -> dict[str, float]:
    """Held-out bits/byte of the teacher with its SWA layers' window cut to each of ``windows`` tokens, untrained
    (the same sample and windows as every score): how much of the conversion's loss the shorter reach alone
    explains, before any mixer is swapped in."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from phalanx_eval.bits_per_byte import score_texts

    device = "cuda" if torch.cuda.is_available() else "cpu"
    texts, _ = qb.text_sample(bench.corpus / "heldout", bench.eval_mb, spread=False)
    tokenizer = AutoTokenizer.from_pretrained(str(teacher_dir(out)))
    found = {}
    for window in sorted(set(windows)):
        model = AutoModelForCausalLM.from_pretrained(str(teacher_dir(out)), sliding_window=window).to(device)
        result = score_texts(model, tokenizer, texts, seq_len=bench.seq_len, batch_size=bench.eval_batch_size,
                             amp_dtype=torch.bfloat16 if bench.amp_bf16 else None)
        found[str(window)] = result.bits_per_byte
        print(f"conversion_bench: teacher with a {window}-token window: held-out bits/byte {result.bits_per_byte:.4f}",
              flush=True)
        del model
    return found


def convert_command(args: argparse.Namespace) -> None:
    """Rank the SWA layers by attention mass beyond the Phalanx window, then convert each layer set with each init."""
    from phalanx_conversion.analyze import DISTANCES, analyze_checkpoint, format_table, lowest_mass_layers, plot_mass

    bench = bench_settings(args.out)
    teacher = teacher_dir(args.out)
    reach = args.block_len * args.window_blocks
    files, _, _ = qb.sample_files(bench.corpus / "heldout", bench.eval_mb, spread=False)
    masses = analyze_checkpoint(teacher, files, seq_len=args.analyze_seq_len, max_tokens=args.analyze_tokens,
                                distances=tuple(sorted({*DISTANCES, reach})))
    print(format_table(masses, bench.window))
    plot_mass(masses, args.out / "attention_mass.png", f"teacher: attention mass per SWA layer ({args.analyze_seq_len}-token "
              "sequences of held-out text)")
    swa = [m.layer for m in masses]
    sets = {ALL_LAYERS: ("sliding", swa, list(args.inits))}
    for k in sorted(set(args.lowest_mass)):
        layers = lowest_mass_layers(masses, k, reach)
        if layers != swa:  # K = every SWA layer is the conversion of all of them
            sets[f"low{k}"] = (f"lowest-mass:{k}", layers, list(args.subset_inits))
    record = load_json(args.out / CONVERT_FILE, "convert") if (args.out / CONVERT_FILE).is_file() else {"students": {}}
    more = f"-{args.name_suffix}" if args.name_suffix else ""
    probe = [w for w in args.window_probe if w < bench.window]
    if probe and ("window_probe" not in record or args.force):
        record["window_probe"] = window_probe(args.out, bench, probe)
    if not args.name_suffix or "reach" not in record:  # the report ranks layers at the unsuffixed students' reach
        record.update({
            "reach": reach, "block_len": args.block_len, "window_blocks": args.window_blocks,
            "analysis": [{"layer": m.layer, "beyond": m.beyond} for m in masses],
            "ranking": [m.layer for m in sorted(masses, key=lambda m: (m.beyond[reach], m.layer))],
        })
    (args.out / "students").mkdir(exist_ok=True)
    for prefix, (rule, layers, inits) in sets.items():
        for init in inits:
            name = f"{prefix}-{init}{more}"
            folder = args.out / "students" / name
            argv = ["convert", str(teacher), str(folder), "--layers", ",".join(map(str, layers)), "--init", init,
                    "--block-len", str(args.block_len), "--window-blocks", str(args.window_blocks)]
            if not (folder / "config.json").is_file() or args.force:
                phalanx([*argv, *(["--force"] if args.force else [])])
            record["students"][name] = {"rule": rule, "layers": layers, "init": init, "block_len": args.block_len,
                                        "window_blocks": args.window_blocks, "layer_set": prefix + more,
                                        "convert_command": ["phalanx", *argv]}
    write_file(args.out / CONVERT_FILE, json.dumps(record, indent=2) + "\n")
    print(f"conversion_bench: {len(record['students'])} students in {args.out / 'students'}: {', '.join(record['students'])}")


# ------------------------------------------------------------------------------------------------ distill


def distill_plan(teacher_tokens: int, fraction: float, stage1_share: float, points: int, batch: int,
                 seq_len: int) -> dict[str, int]:
    """Steps of each stage within ``fraction`` (at most 5%) of the teacher's tokens: stage 1 takes ``stage1_share``
    of the steps, stage 2 the rest rounded down to a multiple of ``points`` (one curve point every ``eval_every``)."""
    if not 0 < fraction <= MAX_TOKEN_FRACTION:
        raise ValueError(f"--token-fraction {fraction} must be in (0, {MAX_TOKEN_FRACTION}]: issue 21 distils with at most "
                         f"{MAX_TOKEN_FRACTION:.0%} of the teacher's training tokens")
    steps = int(fraction * teacher_tokens) // (batch * seq_len)
    stage1 = int(steps * stage1_share)
    eval_every = (steps - stage1) // points
    if eval_every < 1:
        raise ValueError(f"{fraction:.1%} of the teacher's {teacher_tokens:,} tokens is {steps} steps of {batch} x {seq_len}: "
                         f"too few for stage 2 with {points} curve points (lower --batch-size, --seq-len or --curve-points)")
    stage2 = eval_every * points
    plan = {"stage1_steps": stage1, "stage2_steps": stage2, "eval_every": eval_every,
            "tokens": (stage1 + stage2) * batch * seq_len}
    assert plan["tokens"] <= MAX_TOKEN_FRACTION * teacher_tokens
    return plan


def recovery_curve(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """Held-out bits/byte against distillation tokens: the converted student, after stage 1, every curve point of
    stage 2 and its end (all on the same held-out sample, from ``phalanx distill``'s metrics)."""
    points = [{"tokens": 0, "bpb": metrics["bpb_student_initial"], "at": "converted"}]
    if "bpb_after_stage1" in metrics:
        points.append({"tokens": metrics["tokens_stage1"], "bpb": metrics["bpb_after_stage1"], "at": "stage 1"})
    points += [{"tokens": p["tokens"], "bpb": p["bpb"], "at": f"stage {p['stage']} step {p['step']}"}
               for p in metrics.get("bpb_curve", []) if p["stage"] == 2]
    points.append({"tokens": metrics.get("tokens_stage1", 0) + metrics["tokens_stage2"], "bpb": metrics["bpb_after_stage2"],
                   "at": "stage 2"})
    return points


def choose_students(students: dict[str, Any], globs: Sequence[str]) -> list[str]:
    """The converted students whose names match one of `globs` (``--students``), in conversion order."""
    chosen = [n for n in students if any(fnmatch.fnmatch(n, g) for g in globs)]
    if not chosen:
        raise ValueError(f"no student matches --students {' '.join(globs)}; converted: {', '.join(students)}")
    return chosen


def distill_command(args: argparse.Namespace) -> None:
    """Distil and score each selected student that has no result yet."""
    import torch

    bench = bench_settings(args.out)
    teacher = load_json(args.out / TEACHER_FILE, "teacher")
    students = load_json(args.out / CONVERT_FILE, "convert")["students"]
    chosen = choose_students(students, args.students)
    seq_len, batch = args.seq_len or bench.seq_len, args.batch_size or bench.batch_size
    plan = distill_plan(teacher["tokens"], args.token_fraction, args.stage1_share, args.curve_points, batch, seq_len)
    files, _, _ = qb.sample_files(bench.corpus / "heldout", bench.eval_mb, spread=False)  # the teacher's held-out sample
    data, _, data_bytes = qb.sample_files(bench.corpus / "train", args.data_mb, spread=True)
    print(f"conversion_bench: distilling on {len(data)} training files ({data_bytes / 1e6:.1f} MB across packages), "
          f"{plan['tokens']:,} tokens per student", flush=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for name in chosen:
        label = name + (f"@{args.tag}" if args.tag else "")
        path = args.out / f"{label}.json"
        if path.exists() and not args.force:
            print(f"conversion_bench: {path} exists, skipped (--force distils it again)")
            continue
        run_dir = args.out / "runs" / label
        texts = {"--data": [str(p) for p in data], "--eval-data": [str(p) for p in files]}
        argv = ["distill", str(teacher_dir(args.out)), str(args.out / "students" / name), "--out", str(run_dir / "distill"),
                "--stage1-steps", str(plan["stage1_steps"]), "--stage2-steps", str(plan["stage2_steps"]),
                "--stage1-lr", str(args.stage1_lr), "--stage2-lr", str(args.stage2_lr),
                "--stage2-other-lr", str(args.stage2_other_lr), "--ce-weight", str(args.ce_weight),
                "--batch-size", str(batch), "--seq-len", str(seq_len),
                "--eval-every", str(plan["eval_every"]), "--save-every", str(plan["stage1_steps"] + plan["stage2_steps"]),
                "--logging-steps", str(max(1, plan["eval_every"] // 5)), "--precision", bench.precision,
                "--seed", str(bench.seed), "--force"]
        phalanx([*argv, *(a for option, paths in texts.items() for a in (option, *paths))])
        metrics = json.loads((run_dir / "distill" / "metrics.json").read_text(encoding="utf-8"))
        if (run_dir / "distill" / "checkpoints").is_dir():  # optimizer states; stage1/ and stage2/ hold the weights
            shutil.rmtree(run_dir / "distill" / "checkpoints")
        scores = qb.score_model(bench, label, run_dir / "distill" / "stage2", run_dir, device)
        result = {
            "config": label, "student": name, **students[name], "plan": plan,
            "distill_command": ["phalanx", *argv, "--data", f"<{len(data)} training files, --data-mb {args.data_mb:g}>",
                                "--eval-data", f"<the {len(files)} held-out files the teacher was scored on>"],
            "distill_tokens": plan["tokens"], "token_fraction": plan["tokens"] / teacher["tokens"],
            "curve": recovery_curve(metrics), "curve_teacher_bpb": metrics["bpb_teacher"],
            "distill": {k: v for k, v in metrics.items() if k.startswith(("tokens", "final_losses"))},
            **scores, "environment": qb.environment(device),
        }
        write_file(path, json.dumps(result, indent=2) + "\n")
        print(f"conversion_bench: {label}: held-out bits/byte {scores['heldout']['bits_per_byte']:.4f} (teacher "
              f"{teacher['heldout']['bits_per_byte']:.4f}) after {plan['tokens']:,} tokens -> {path}", flush=True)


# -------------------------------------------------------------------------------------------------- speed


def speed_command(args: argparse.Namespace) -> None:
    """Training and decode tokens/s of the teacher and of the layer sets of the `--students` chosen, one after the other
    here; `speed.json` is rewritten after each model, so a run cut short keeps what it measured."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, TrainerState

    import bench_generate

    bench = bench_settings(args.out)
    students = load_json(args.out / CONVERT_FILE, "convert")["students"]
    models = {TEACHER: teacher_dir(args.out)}
    for name in choose_students(students, args.students):  # one per layer set: the init changes the weights, not the speed
        models.setdefault(layer_set(name, students[name]), args.out / "students" / name)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    decode = argparse.Namespace(device=device, no_compile=True, new_tokens=args.new_tokens, repeats=args.repeats,
                                bandwidth=args.bandwidth)
    train = argparse.Namespace(**vars(bench))
    train.logging_steps = max(1, args.train_steps // 20)
    prompt = args.decode_prompt or max(1, bench.seq_len - args.new_tokens)
    result = {"train_steps": args.train_steps, "seq_len": bench.seq_len, "batch_size": bench.batch_size,
              "decode_batch": args.decode_batch, "decode_prompt": prompt, "new_tokens": args.new_tokens, "models": {},
              "environment": qb.environment(device)}
    for label, folder in models.items():
        run_dir = args.out / "runs" / f"speed-{label}"
        qb.train_model(train, label, AutoConfig.from_pretrained(str(folder)), run_dir, args.train_steps)
        state = TrainerState.load_from_json(str(run_dir / "model" / "trainer_state.json"))
        shutil.rmtree(run_dir / "model")
        dtype = torch.bfloat16 if bench.amp_bf16 else torch.float32
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype).to(device).eval()
        point = bench_generate.bench_point(model, label, "default", args.decode_batch, prompt, decode)
        del model
        bench_generate.free_memory(device)
        result["models"][label] = {"folder": str(folder), "train_tokens_per_second": qb.steady_tokens_per_second(state.log_history),
                                   "decode_tokens_per_second": point["decode_tokens_per_s"],
                                   "prefill_tokens_per_second": point["prefill_tokens_per_s"]}
        write_file(args.out / SPEED_FILE, json.dumps(result, indent=2) + "\n")
        print(f"conversion_bench: {label}: {result['models'][label]['train_tokens_per_second']:,.0f} training tokens/s, "
              f"{point['decode_tokens_per_s']:,.1f} decode tokens/s", flush=True)


# ------------------------------------------------------------------------------------------------- report


def beyond_window(r: dict[str, Any], window: int) -> dict[str, float]:
    """Mean accuracy of each recall family over its distances beyond the teacher's window (and within the recall
    context, which cuts longer distances off)."""
    found = {}
    for family, data in r["recall"].get("families", {}).items():
        far = [p["acc"] for p in data["by_distance"] if window < p["distance"] < r["recall"]["max_length"]]
        if far:
            found[family] = sum(far) / len(far)
    return found


def plot_recovery(out: Path, students: Sequence[dict[str, Any]]) -> Path:
    """Held-out bits/byte over the teacher's (scored in the same windows) against distillation tokens, one line per
    student; the teacher and the goal as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    for i, r in enumerate(students):  # past ten students the colours repeat: the markers then change
        ax.plot([p["tokens"] for p in r["curve"]], [p["bpb"] / r["curve_teacher_bpb"] for p in r["curve"]],
                marker="osv^D"[i // 10 % 5], label=r["config"])
    ax.axhline(1.0, color="black", linestyle="--", label="teacher")
    ax.axhline(GOAL_BPB_RATIO, color="grey", linestyle=":", label=f"goal: teacher x {GOAL_BPB_RATIO}")
    ax.set_xlabel("distillation tokens (stage 1 + stage 2)")
    ax.set_ylabel("held-out bits / byte over the teacher's (lower is better)")
    ax.set_yscale("log")
    ax.set_title(f"Recovery of the converted students ({out.name})", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "recovery.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def distilled(out: Path, names: Sequence[str]) -> list[dict[str, Any]]:
    """The distillation results of the converted students, in conversion order: ``<student>.json`` (the default
    recipe), then its tagged recipes ``<student>@<tag>.json``."""
    paths = [p for n in names for p in (out / f"{n}.json", *sorted(out.glob(f"{glob.escape(n)}@*.json"))) if p.is_file()]
    return [json.loads(p.read_text(encoding="utf-8")) for p in paths]


def recipe(r: dict[str, Any]) -> str:
    """A result's distillation settings, read back from its recorded ``phalanx distill`` command."""
    argv = r["distill_command"]
    flag = dict(zip(argv, argv[1:]))
    stage1 = (f"stage 1: {flag['--stage1-steps']} steps, lr {flag['--stage1-lr']}" if int(flag["--stage1-steps"])
              else "no stage 1")
    ce = float(flag.get("--ce-weight", 0))  # results written before the flag existed have none
    return (f"{flag['--batch-size']} x {flag['--seq-len']}; {stage1}; stage 2: {flag['--stage2-steps']} steps, lr "
            f"{flag['--stage2-lr']} (other weights {flag['--stage2-other-lr']})" + (f", cross-entropy weight {ce:g}" if ce else ""))


def report(out: Path) -> str:
    """The markdown report of ``out``; also writes ``out/report.md`` and ``out/recovery.png``."""
    bench = bench_settings(out)
    teacher = load_json(out / TEACHER_FILE, "teacher")
    converted = load_json(out / CONVERT_FILE, "convert")
    students = distilled(out, converted["students"])
    if not students:
        raise ValueError(f"no distilled student in {out}: run the distill stage first")
    speed = json.loads((out / SPEED_FILE).read_text(encoding="utf-8"))["models"] if (out / SPEED_FILE).is_file() else {}
    window, t_bpb = bench.window, teacher["heldout"]["bits_per_byte"]
    t_far = beyond_window(teacher, window)
    families = sorted(t_far)

    def speeds(label: str) -> list[str]:
        s = speed.get(label)
        return [qb.fmt(None)] * 2 if s is None else [f"{s['train_tokens_per_second']:,.0f}", f"{s['decode_tokens_per_second']:,.1f}"]

    def far(r: dict[str, Any]) -> str:
        acc = beyond_window(r, window)
        return " / ".join(qb.fmt(acc.get(f), 2) for f in families) or "not measured"

    header = ["model", "converted layers", "init", "Phalanx blocks (length x window)", "distillation tokens (% of teacher's)", "held-out bits/byte",
              "ratio to teacher", "converted, before distillation", f"recall beyond {window} ({' / '.join(families) or '-'})",
              "training tokens/s", "decode tokens/s"]
    rows = [[TEACHER, "-", "-", "-", f"{teacher['tokens']:,} (training)", qb.fmt(t_bpb, 4), "1.000", "-", far(teacher),
             *speeds(TEACHER)]]
    met = []
    for r in students:
        bpb = r["heldout"]["bits_per_byte"]
        recall_ok = all(beyond_window(r, window).get(f, -1.0) >= t_far[f] for f in families)
        if bpb <= GOAL_BPB_RATIO * t_bpb and recall_ok and families:
            met.append(r["config"])
        rows.append([r["config"], ",".join(map(str, r["layers"])), r["init"],
                     f"{r.get('block_len', converted['block_len'])} x {r.get('window_blocks', converted['window_blocks'])}",
                     f"{r['distill_tokens']:,} ({r['token_fraction']:.2%})", qb.fmt(bpb, 4), qb.fmt(bpb / t_bpb),
                     qb.fmt(r["curve"][0]["bpb"], 4), far(r), *speeds(layer_set(r.get("student", r["config"]), r))])
    reach = converted["reach"]
    ranking = ", ".join(f"{m['layer']} ({m['beyond'][str(reach)]:.3f})"
                        for m in sorted(converted["analysis"], key=lambda m: (m["beyond"][str(reach)], m["layer"])))
    curve_rows = [[r["config"], recipe(r), f"{r['curve_teacher_bpb']:.4f}",
                   *(f"{p['bpb']:.4f} @ {p['tokens']:,}" for p in r["curve"])] for r in students]
    width = max(len(c) for c in curve_rows)
    parts = [
        f"### Conversion bench: {teacher['about']}, {teacher['parameters'] / 1e6:.1f}M parameters\n",
        f"Teacher: {teacher['steps']} steps x {teacher['batch_size']} x {teacher['seq_len']} tokens on the quality corpus "
        f"(held-out package {teacher['corpus']['held_out']}, {teacher['tokenizer']['name']} tokenizer); every model scored on "
        f"the same {bench.eval_mb:g} MB of held-out text in windows of {bench.seq_len} tokens.\n",
        qb.markdown(header, rows),
        "\nRecovery curves (held-out bits/byte @ distillation tokens; from `phalanx distill` on the same held-out sample "
        "in windows of the distillation's sequence length, where the teacher scores as its column says; the plot "
        "divides each curve by that score, so recipes of different sequence lengths compare):\n",
        qb.markdown(["student", "recipe (batch x sequence; steps and learning rates)", "teacher",
                     *(f"point {i}" for i in range(width - 3))],
                    [c + ["-"] * (width - len(c)) for c in curve_rows]),
        "\n![recovery curves](recovery.png)\n",
        f"Which layers to convert first: SWA layers by attention mass beyond the Phalanx window ({reach} tokens), least "
        f"first: {ranking} (`attention_mass.png`).\n",
        *([f"The teacher with its SWA window cut, untrained (held-out bits/byte; {window} tokens as trained: "
           f"{t_bpb:.4f}): " + ", ".join(f"{w} tokens {b:.4f}" for w, b in converted["window_probe"].items()) + ".\n"]
          if converted.get("window_probe") else []),
        f"**Goal (issue 21):** a distilled student within 3% of the teacher's held-out bits/byte (<= {GOAL_BPB_RATIO * t_bpb:.4f}) "
        f"and recall beyond the {window}-token window no worse than the teacher's: "
        + (f"met by {', '.join(met)}." if met else "not met by any student here." if families
           else "not decided (recall was not measured)."),
    ]
    for family in families:
        table = qb.recall_table([teacher, *students], family)
        if table:
            parts.append(f"\n{table}")
    env = teacher["environment"]
    parts.append(f"\nMeasured on {env['gpu']} ({env['host']}), torch {env['torch']}, transformers {env['transformers']}, "
                 f"{env['date']}.")
    text = "\n".join(parts) + "\n"
    write_file(out / "report.md", text)
    plot_recovery(out, students)
    return text


# -------------------------------------------------------------------------------------------------- CLI


def fraction(value: str) -> float:
    number = float(value)
    if not 0 <= number < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value}")
    return number


def tag(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.]+", value):
        raise argparse.ArgumentTypeError(f"must be letters, digits, '_' or '.', got {value!r}")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    pos_int, pos_float = qb.positive_int, qb.positive_float

    t = sub.add_parser("teacher", help="train and score the Gemma3 teacher")
    t.add_argument("corpus", type=Path, help="folder written by quality_bench.py corpus")
    t.add_argument("out", type=Path, help="results folder of every stage")
    t.add_argument("--shape", choices=list(SIZES), default="125m", help="width, depth and heads (default: %(default)s)")
    t.add_argument("--window", type=pos_int, default=512, help="sliding window of the SWA layers (default: %(default)s)")
    t.add_argument("--steps", type=pos_int, default=900)
    t.add_argument("--seq-len", type=pos_int, default=4096)
    t.add_argument("--batch-size", type=pos_int, default=8)
    t.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto", help="phalanx train --precision")
    t.add_argument("--lr", type=pos_float, help="phalanx train --lr (default: its default)")
    t.add_argument("--warmup", type=float, help="phalanx train --warmup (default: its default)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--logging-steps", type=pos_int, help="default: steps / 50")
    t.add_argument("--tokenizer", type=Path, help="tokenizer folder, e.g. from quality_bench.py tokenizer (default: bytes)")
    t.add_argument("--eval-mb", type=pos_float, default=4.0, help="megabytes scored per split (default: %(default)s)")
    t.add_argument("--eval-batch-size", type=pos_int, default=8)
    t.add_argument("--bucket-edge", type=pos_int, help="first position of the far bucket (default: the window)")
    t.add_argument("--recall-tasks", nargs="*", default=list(qb.DEFAULT_RECALL_TASKS), help="lm-eval tasks; none to skip")
    t.add_argument("--recall-limit", type=pos_int, help="documents per recall task (default: all)")
    t.add_argument("--recall-batch-size", type=pos_int, default=8)
    t.add_argument("--recall-max-length", type=pos_int, help="lm-eval max_length (default: --seq-len)")
    t.add_argument("--force", action="store_true", help="train the teacher again when it exists")

    c = sub.add_parser("convert", help="analyze the teacher's SWA layers and convert layer sets with each warm start")
    c.add_argument("out", type=Path)
    c.add_argument("--inits", nargs="+", choices=INIT_SCHEMES, default=list(INIT_SCHEMES),
                   help="warm starts of the conversion of every SWA layer (default: %(default)s)")
    c.add_argument("--lowest-mass", nargs="*", type=pos_int, default=[2, 5], metavar="K",
                   help="also convert the K layers with the least mass beyond the Phalanx window (default: %(default)s)")
    c.add_argument("--subset-inits", nargs="+", choices=INIT_SCHEMES, default=["avg"],
                   help="warm starts of the lowest-mass subsets (default: %(default)s)")
    c.add_argument("--block-len", type=pos_int, default=16, help="phalanx convert --block-len")
    c.add_argument("--window-blocks", type=pos_int, default=2, help="phalanx convert --window-blocks")
    c.add_argument("--analyze-seq-len", type=pos_int, default=1024, help="sequence length of the analysis")
    c.add_argument("--analyze-tokens", type=pos_int, default=16384, help="held-out tokens the analysis reads")
    c.add_argument("--window-probe", nargs="*", type=pos_int, default=[32, 64, 128, 256], metavar="TOKENS",
                   help="also score the teacher with its SWA window cut to each of these, untrained (default: "
                        "%(default)s; none to skip)")
    c.add_argument("--name-suffix", type=tag, help="appended to the students' names after a '-', e.g. w128 for a "
                   "second conversion with --block-len 64 beside the first (all-avg-w128; default: none)")
    c.add_argument("--force", action="store_true", help="convert students that exist again")

    d = sub.add_parser("distill", help="distil each student within the token budget, with a recovery curve")
    d.add_argument("out", type=Path)
    d.add_argument("--students", nargs="+", default=["*"], metavar="GLOB", help="students to distil (default: all)")
    d.add_argument("--token-fraction", type=pos_float, default=MAX_TOKEN_FRACTION,
                   help=f"distillation tokens over the teacher's training tokens, at most {MAX_TOKEN_FRACTION} (default)")
    d.add_argument("--stage1-share", type=fraction, default=0.1, help="share of the steps for stage 1 (default: %(default)s)")
    d.add_argument("--curve-points", type=pos_int, default=4, help="held-out scores during stage 2 (default: %(default)s)")
    d.add_argument("--seq-len", type=pos_int, help="distillation sequence length (default: the teacher's)")
    d.add_argument("--batch-size", type=pos_int, help="distillation batch (default: the teacher's)")
    d.add_argument("--data-mb", type=pos_float, default=16.0,
                   help="training text to distil on, a sample across packages (default: %(default)s)")
    d.add_argument("--stage1-lr", type=pos_float, default=1e-3)
    d.add_argument("--stage2-lr", type=pos_float, default=3e-4)
    d.add_argument("--stage2-other-lr", type=float, default=3e-5)
    d.add_argument("--ce-weight", type=float, default=0.0,
                   help="stage 2: weight of the cross-entropy on the training text added to the KL (default: %(default)s)")
    d.add_argument("--tag", type=tag, help="name of this recipe: results go to <student>@<tag>.json beside the default "
                   "recipe's <student>.json, so recipes of one student compare in the report")
    d.add_argument("--force", action="store_true", help="distil students that have a result again")

    s = sub.add_parser("speed", help="training and decode tokens/s of the teacher and each converted layer set")
    s.add_argument("out", type=Path)
    s.add_argument("--students", nargs="+", default=["*"], metavar="GLOB",
                   help="time the layer sets of these students (default: all), after the teacher")
    s.add_argument("--train-steps", type=pos_int, default=40, help="steps timed per model; the first quarter is warm-up")
    s.add_argument("--decode-batch", type=pos_int, default=1)
    s.add_argument("--decode-prompt", type=pos_int, help="prompt tokens before decoding (default: the teacher's "
                   "sequence length less --new-tokens, the longest context it was trained for)")
    s.add_argument("--new-tokens", type=pos_int, default=64)
    s.add_argument("--repeats", type=pos_int, default=3)
    s.add_argument("--bandwidth", type=pos_float, default=4.3e12, help="bytes/s of the device memory (H200: 4.3e12)")

    r = sub.add_parser("report", help="markdown table, recovery plot and goal line of a results folder")
    r.add_argument("out", type=Path)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "teacher":
            args.bucket_edge = args.bucket_edge or args.window
            args.recall_max_length = args.recall_max_length or args.seq_len
            teacher_command(args)
        elif args.command == "convert":
            convert_command(args)
        elif args.command == "distill":
            distill_command(args)
        elif args.command == "speed":
            speed_command(args)
        else:
            print(report(args.out))
            print(f"written: {args.out / 'report.md'}, {args.out / 'recovery.png'}")
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"conversion_bench: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
