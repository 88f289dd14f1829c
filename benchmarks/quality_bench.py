#!/usr/bin/env python3
"""Quality bench on real text (issue 15): held-out bits/byte, recall and training speed of model recipes.

Five subcommands:

    python benchmarks/quality_bench.py corpus OUT [--packages torch transformers ...] [--held-out sklearn] [--max-mb N]
    python benchmarks/quality_bench.py run CORPUS OUT --configs NAME [NAME ...] --steps N --seq-len L --batch-size B
                                       [--budget tokens|seconds --seconds S] [--precision bf16]
    python benchmarks/quality_bench.py speed CORPUS OUT --configs NAME [NAME ...] --seq-len L --batch-size B [--steps N]
    python benchmarks/quality_bench.py tokenizer CORPUS [--vocab-size 8192]
    python benchmarks/quality_bench.py report OUT

``corpus`` builds a text corpus from the ``.py`` sources of installed packages, split by package: the
held-out package goes to ``OUT/heldout/``, the rest to ``OUT/train/``, one ``<package>/<path>.py.txt`` file
per source file (``phalanx train --data`` reads ``*.txt`` recursively, one document per file). Files are
read as bytes and decoded strictly as UTF-8 (others are skipped and counted, never altered); exact
duplicates (sha256) are dropped, held-out files first, so no held-out file is also trained on.

``run`` trains each configuration of :data:`RECIPES` (a preset plus ``PhalanxConfig`` overrides) with
``phalanx train`` (same seed, data order, steps and schedule), then scores it: held-out bits/byte overall
and by window position (``phalanx_eval.bits_per_byte``), bits/byte on a sample of the training files,
training tokens/s after warm-up and final loss from ``trainer_state.json``, passkey and MQAR accuracy against distance
through the project's lm-eval harness. One JSON per configuration and budget, written atomically, so
several calls fill one results folder. ``--budget seconds`` trains each configuration for as many steps as
fit in ``--seconds`` at its own speed, measured by its equal-token run in the same folder.

``speed`` measures a configuration's training tokens/s with a short ``phalanx train`` of the same shape
(``OUT/<config>.speed.json``, which the tables, the plot and ``--budget seconds`` prefer over a run's own
figure): for a configuration trained elsewhere, or measured again next to a new one.

``tokenizer`` learns a byte-level BPE tokenizer on the training files (``CORPUS/tokenizer-bpe<N>/``); ``run``
and ``speed`` take it with ``--tokenizer`` (default: the byte tokenizer). Bits/byte stay comparable across
tokenizers; one results folder holds one tokenizer's runs.

``report`` prints markdown tables at equal tokens and at equal wall-clock time and plots held-out
bits/byte against training tokens/s (``OUT/report.md``, ``OUT/frontier.png``).

On the GPU machine (after ``source benchmarks/gpu_env.sh``; carry ``.whl`` for lm-eval) a command runs at
most 10 minutes: build the corpus once per machine, then at most two 125M configurations per command, one
after the other (three trained at once on one H200 were no faster than in turn: none finished in 500 s):

    [ -f /tmp/qb_corpus/corpus.json ] || python3 benchmarks/quality_bench.py corpus /tmp/qb_corpus
    python3 benchmarks/quality_bench.py run /tmp/qb_corpus RESULTS --configs 125m-phalanx \
        --steps 900 --seq-len 4096 --batch-size 8 --precision bf16
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import json
import math
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from modeling_phalanx.configuration_phalanx import FULL_ATTENTION, PHALANX_MIXER, SLIDING_ATTENTION
from phalanx_training.folders import output_folder, write_file
from phalanx_training.presets import SIZES, get_preset

DEFAULT_TRAIN_PACKAGES = ("torch", "transformers", "jax", "scipy", "sympy", "pandas", "numpy", "flax", "optax", "matplotlib")
DEFAULT_HELD_OUT = "sklearn"
CORPUS_FILE = "corpus.json"
DEFAULT_RECALL_TASKS = ("phalanx_passkey", "phalanx_mqar")
FULL, SLIDING, PHALANX = FULL_ATTENTION, SLIDING_ATTENTION, PHALANX_MIXER  # short names for the layer cycles


# ----------------------------------------------------------------------------------------- configurations


@dataclass(frozen=True)
class Recipe:
    """A preset flavour plus ``PhalanxConfig`` overrides; ``cycle`` repeats a unit of layer types to the depth;
    ``train_args`` are extra ``phalanx train`` options (SWAX's stochastic windows)."""

    flavour: str
    about: str
    overrides: dict[str, Any] = field(default_factory=dict)
    cycle: tuple[str, ...] = ()
    train_args: tuple[str, ...] = ()


SWAX_ARGS = ("--swax", "--swax-long-window", "2048")

# Each recipe exists at every preset size: configuration ``<size>-<recipe>``, e.g. ``125m-phalanx-full1to2``.
RECIPES: dict[str, Recipe] = {
    "transformer": Recipe("transformer", "every layer full attention"),
    "swa": Recipe("swa", "3 sliding : 1 full, the preset's window (2048; tiny 64)"),
    "swa512": Recipe("swa", "3 sliding-512 : 1 full", {"sliding_window": 512}),
    "phalanx": Recipe("phalanx", "3 Phalanx : 1 full (SWR 16 x 2 blocks)"),
    "phalanx-full1to2": Recipe("phalanx", "2 Phalanx : 1 full", cycle=(PHALANX, PHALANX, FULL)),
    "phalanx-full1to1": Recipe("phalanx", "1 Phalanx : 1 full", cycle=(PHALANX, FULL)),
    "phalanx-w4": Recipe("phalanx", "3 Phalanx : 1 full, SWR window 4 blocks of 16", {"swr_window_blocks": 4}),
    "phalanx-b64w4": Recipe("phalanx", "3 Phalanx : 1 full, SWR window 4 blocks of 64", {"swr_block_len": 64, "swr_window_blocks": 4}),
    "phalanx-outnorm": Recipe("phalanx", "3 Phalanx : 1 full, per-head output RMSNorm", {"phalanx_output_norm": True}),
    "phalanx-full1to1-outnorm": Recipe(
        "phalanx", "1 Phalanx : 1 full, per-head output RMSNorm", {"phalanx_output_norm": True}, cycle=(PHALANX, FULL)
    ),
    "multi": Recipe("swa", "Phalanx, sliding, Phalanx, full (window as the preset)", cycle=(PHALANX, SLIDING, PHALANX, FULL)),
    "multi-swa512": Recipe("swa", "Phalanx, sliding-512, Phalanx, full", {"sliding_window": 512}, cycle=(PHALANX, SLIDING, PHALANX, FULL)),
    "multi-swa512-outnorm": Recipe(
        "swa", "Phalanx, sliding-512, Phalanx, full; per-head output RMSNorm",
        {"sliding_window": 512, "phalanx_output_norm": True}, cycle=(PHALANX, SLIDING, PHALANX, FULL),
    ),
    # Control: layers that mix nothing (attention to the token itself only) in place of the Phalanx layers of
    # phalanx-full1to1, to tell a mixer that hurts from one that adds nothing beyond the full-attention layers.
    "selfonly-full1to1": Recipe("swa", "1 self-only (sliding window 1) : 1 full", {"sliding_window": 1}, cycle=(SLIDING, FULL)),
    # SWAX (the third source paper): each step trains the sliding layers at window 128 or 2048 (128 with p=0.5,
    # the last 10% of the steps at 2048), evaluated at 2048 (at every size, so the tiny ones run too).
    "swa-swax": Recipe("swa", "3 sliding : 1 full, SWAX stochastic windows 128/2048", train_args=SWAX_ARGS),
    "multi-swax": Recipe(
        "swa", "Phalanx, sliding (SWAX 128/2048), Phalanx, full", cycle=(PHALANX, SLIDING, PHALANX, FULL), train_args=SWAX_ARGS
    ),
    # The multi-hybrid presets of the source papers (issue 20 item 4), as `phalanx train` builds them.
    "stripedhyena": Recipe("stripedhyena", "Hyena-SE, -MR, -LI cycling, 1 full in 4 (StripedHyena 2)"),
    "multihybrid": Recipe("multihybrid", "Phalanx, Phalanx, Hyena-LI cycling, 1 full in 4"),
    "swax": Recipe("swax", "sliding (SWAX 128/2048) and mLSTM alternating, no full attention", train_args=SWAX_ARGS),
    "phalanx-b64w4-outnorm": Recipe(
        "phalanx", "3 Phalanx : 1 full, SWR window 4 blocks of 64, per-head output RMSNorm",
        {"swr_block_len": 64, "swr_window_blocks": 4, "phalanx_output_norm": True},
    ),
}
CONFIG_NAMES = tuple(f"{size}-{recipe}" for size in SIZES for recipe in RECIPES)


def split_name(name: str) -> tuple[str, str]:
    """``(size, recipe)`` of configuration ``name``, e.g. ``("125m", "phalanx-outnorm")``."""
    found = next(((s, r) for s in SIZES for r in RECIPES if name == f"{s}-{r}"), None)
    if found is None:
        raise ValueError(f"unknown configuration {name!r}; known: {', '.join(CONFIG_NAMES)}")
    return found


def recipe_of(name: str) -> Recipe:
    return RECIPES[split_name(name)[1]]


def model_config(name: str, vocab_size: int) -> Any:
    """The ``PhalanxConfig`` of configuration ``name`` with the tokenizer's vocabulary size."""
    size, recipe = split_name(name)
    spec = RECIPES[recipe]
    overrides = dict(spec.overrides, vocab_size=vocab_size)
    if spec.cycle:
        depth = SIZES[size]["num_hidden_layers"]
        overrides["layer_types"] = [spec.cycle[i % len(spec.cycle)] for i in range(depth)]
    return get_preset(f"{size}-{spec.flavour}", **overrides)


# ------------------------------------------------------------------------------------------------ corpus


def decode_source(data: bytes) -> str | None:
    """``data`` as UTF-8 text, or None when it is not valid UTF-8 (never replaced or guessed)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def package_sources(name: str) -> tuple[Path, list[Path]] | None:
    """Where an installed top-level package lives and its ``.py`` files (sorted); None when not installed."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:
        root = Path(next(iter(spec.submodule_search_locations)))
        return root, sorted(p for p in root.rglob("*.py") if p.is_file())
    if spec.origin and spec.origin.endswith(".py"):
        origin = Path(spec.origin)
        return origin.parent, [origin]
    return None


def package_version(name: str) -> str:
    """Version of the distribution that provides top-level package ``name`` (``sklearn`` -> scikit-learn)."""
    for dist in importlib.metadata.packages_distributions().get(name, []):
        try:
            return f"{dist} {importlib.metadata.version(dist)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    return "unknown"


@dataclass
class PackageStats:
    """What the corpus took from one package."""

    role: str
    version: str
    path: str
    files: int = 0
    bytes: int = 0
    not_utf8: list[str] = field(default_factory=list)
    duplicates: int = 0
    over_cap: int = 0


def build_corpus(out: Path, train: Sequence[str], held_out: str, max_mb: float | None, force: bool) -> dict[str, Any]:
    """Write ``out/train``, ``out/heldout`` and ``out/corpus.json``; return the summary."""
    if held_out in train:
        raise ValueError(f"--held-out {held_out} is also in --packages")
    found = {name: package_sources(name) for name in (held_out, *train)}
    missing = [name for name, src in found.items() if src is None]
    if found[held_out] is None:
        raise ValueError(f"held-out package {held_out!r} is not installed; name another with --held-out")
    if all(found[name] is None for name in train):
        raise ValueError(f"none of the training packages is installed: {', '.join(train)}")
    stats: dict[str, PackageStats] = {}
    seen: set[str] = set()
    candidates: list[tuple[str, str, str, str]] = []  # (sha256, package, relative path, text)
    for name in (held_out, *train):  # held-out first: a training file equal to a held-out one is dropped
        if found[name] is None:
            continue
        root, files = found[name]
        st = stats[name] = PackageStats("heldout" if name == held_out else "train", package_version(name), str(root))
        for path in files:
            data = path.read_bytes()
            rel = path.relative_to(root).as_posix()
            text = decode_source(data)
            if text is None:
                st.not_utf8.append(rel)
                continue
            digest = hashlib.sha256(data).hexdigest()
            if digest in seen:
                st.duplicates += 1
                continue
            seen.add(digest)
            candidates.append((digest, name, rel, text))
    # The cap keeps a uniform sample of training files: taken in sha256 order, so every package is cut alike.
    cap = None if max_mb is None else int(max_mb * 1e6)
    kept: list[tuple[str, str, str]] = []
    train_bytes = 0
    for digest, name, rel, text in sorted(candidates):
        size = len(text.encode("utf-8"))
        if name != held_out and cap is not None and train_bytes + size > cap:
            stats[name].over_cap += 1
            continue
        train_bytes += size if name != held_out else 0
        stats[name].files += 1
        stats[name].bytes += size
        kept.append((name, rel, text))
    with output_folder(out, inputs=[found[n][0] for n in stats], force=force, create_parents=True) as staging:
        for name, rel, text in kept:
            path = staging / stats[name].role / name / f"{rel}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8", newline="")  # the source bytes as they are (CRLF kept)
        summary = {
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "python": platform.python_version(),
            "layout": "train/<package>/<path>.py.txt and heldout/<package>/<path>.py.txt, one source file per text file",
            "held_out": held_out,
            "max_mb": max_mb,
            "missing": missing,
            "packages": {name: vars(st) for name, st in stats.items()},
            # Several machines build the corpus anew: equal fingerprints mean the same files and contents.
            "fingerprint": hashlib.sha256("".join(
                f"{stats[name].role}/{name}/{rel}\0{hashlib.sha256(text.encode()).hexdigest()}\n" for name, rel, text in sorted(kept)
            ).encode()).hexdigest(),
            "train": {"files": sum(s.files for s in stats.values() if s.role == "train"), "bytes": train_bytes},
            "heldout": {"files": stats[held_out].files, "bytes": stats[held_out].bytes},
        }
        (staging / CORPUS_FILE).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def print_corpus(summary: dict[str, Any], out: Path) -> None:
    """The corpus table: one row per package, then totals and missing packages."""
    print(f"\ncorpus {out}\n")
    print("| package | role | version | files | MB | not UTF-8 (skipped) | duplicates (dropped) | over --max-mb |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for name, st in summary["packages"].items():
        print(f"| {name} | {st['role']} | {st['version']} | {st['files']} | {st['bytes'] / 1e6:.2f} | "
              f"{len(st['not_utf8'])} | {st['duplicates']} | {st['over_cap']} |")
    for role in ("train", "heldout"):
        print(f"\n{role}: {summary[role]['files']} files, {summary[role]['bytes'] / 1e6:.2f} MB in {out / role}")
    print(f"fingerprint {summary['fingerprint']}")
    if summary["missing"]:
        print(f"not installed (skipped): {', '.join(summary['missing'])}")


# -------------------------------------------------------------------------------------------------- run


def result_path(out: Path, name: str, budget: str, seconds: float | None) -> Path:
    """``OUT/<config>.tokens.json`` or ``OUT/<config>.seconds-<S>.json``."""
    return out / (f"{name}.tokens.json" if budget == "tokens" else f"{name}.seconds-{seconds:g}.json")


def steady_tokens_per_second(log_history: Sequence[dict[str, Any]], skip_fraction: float = 0.25) -> float:
    """Training tokens/s after warm-up (Triton compilation, allocator growth): the tokens seen between the logged
    step at ``skip_fraction`` of the run and the last one, over the training time between them."""
    logged = [e for e in log_history if "num_input_tokens_seen" in e and "train_runtime" in e and "loss" in e]
    if len(logged) < 2:
        raise ValueError("the run logged fewer than two steps with tokens and runtime; log more often (--logging-steps)")
    first, last = logged[min(int(len(logged) * skip_fraction), len(logged) - 2)], logged[-1]
    return (last["num_input_tokens_seen"] - first["num_input_tokens_seen"]) / (last["train_runtime"] - first["train_runtime"])


def speed_path(out: Path, name: str) -> Path:
    """``OUT/<config>.speed.json``: the configuration's training tokens/s measured with the GPU to itself."""
    return out / f"{name}.speed.json"


def throughput(out: Path, r: dict[str, Any]) -> float:
    """Training tokens/s of result ``r``: from the configuration's speed run when there is one of the same shape,
    else its own run's."""
    path = speed_path(out, r["config"])
    if path.is_file():
        speed = json.loads(path.read_text(encoding="utf-8"))
        same_tokenizer = speed.get("tokenizer", BYTE_TOKENIZER) == r.get("tokenizer", BYTE_TOKENIZER)
        if same_tokenizer and (speed["seq_len"], speed["batch_size"]) == (r["seq_len"], r["batch_size"]):
            return speed["tokens_per_second"]
    return r["train"]["tokens_per_second"]


def steps_for_seconds(out: Path, name: str, seconds: float, seq_len: int, batch_size: int) -> int:
    """Steps that fit in ``seconds`` at the speed measured for ``name`` at this shape (its speed run, else its
    equal-token run)."""
    source = result_path(out, name, "tokens", None)
    if not source.is_file():
        raise ValueError(f"--budget seconds needs {source} (run {name} with --budget tokens first: it measures the speed)")
    measured = json.loads(source.read_text(encoding="utf-8"))
    if (measured["seq_len"], measured["batch_size"]) != (seq_len, batch_size):
        raise ValueError(f"{source} was measured at seq_len {measured['seq_len']}, batch {measured['batch_size']}; "
                         f"run with those or measure this shape first")
    return max(1, int(seconds * throughput(out, measured) / (seq_len * batch_size)))


def text_sample(folder: Path, max_mb: float, spread: bool) -> tuple[list[str], int]:
    """Texts under ``folder`` up to ``max_mb``: in path order, or (``spread``) in sha256-of-path order, a
    sample across packages. Returns the texts and their bytes."""
    _, texts, total = sample_files(folder, max_mb, spread)
    return texts, total


def sample_files(folder: Path, max_mb: float, spread: bool) -> tuple[list[Path], list[str], int]:
    """The files of :func:`text_sample`, their texts and bytes (a command that reads files scores the same sample)."""
    from phalanx_training.data import list_text_files, read_text

    files = list_text_files([folder], exclude_held_out=False)
    if spread:
        files.sort(key=lambda p: hashlib.sha256(p.relative_to(folder).as_posix().encode()).hexdigest())
    paths, texts, total = [], [], 0
    for path in files:
        text = read_text(path)
        size = len(text.encode("utf-8"))
        if texts and total + size > max_mb * 1e6:
            break
        paths.append(path)
        texts.append(text)
        total += size
    return paths, texts, total


def train_command(args: argparse.Namespace, config_path: Path, model_dir: Path, steps: int,
                  extra: Sequence[str] = ()) -> list[str]:
    """The ``phalanx train`` command line of the model config at ``config_path`` (same seed, data, schedule for
    all; a recipe's own training options, ``extra``, last)."""
    cmd = [
        sys.executable, "-m", "phalanx_cli.main", "train", "--model-config", str(config_path),
        "--data", str(args.corpus / "train"), "--include-held-out", "--seq-len", str(args.seq_len),
        "--batch-size", str(args.batch_size), "--max-steps", str(steps), "--seed", str(args.seed),
        "--precision", args.precision, "--logging-steps", str(args.logging_steps or max(1, steps // 50)),
        "--save-steps", str(steps), "--save-total-limit", "1", "--output", str(model_dir), "--force",
    ]
    for option, value in (("--lr", args.lr), ("--warmup", args.warmup), ("--tokenizer", args.tokenizer)):
        if value is not None:
            cmd += [option, str(value)]
    return cmd + list(extra)


def recall(args: argparse.Namespace, model_dir: Path, run_dir: Path, device: str) -> dict[str, Any]:
    """Passkey and MQAR accuracy per distance through the project's lm-eval harness, or why it was skipped."""
    if not args.recall_tasks:
        return {"skipped": "no --recall-tasks given"}
    if importlib.util.find_spec("lm_eval") is None:
        return {"skipped": "lm_eval is not installed (on the GPU machine: carry .whl and source benchmarks/gpu_env.sh)"}
    from phalanx_eval.harness import evaluate, write_json
    from phalanx_eval.plots import plot_recall, recall_curves

    results = evaluate(
        str(model_dir), list(args.recall_tasks), limit=args.recall_limit, batch_size=args.recall_batch_size,
        device=device, max_length=args.recall_max_length, dtype="bfloat16" if args.amp_bf16 else "float32",
    )
    write_json(results, run_dir / "recall_results.json")
    plot_recall(results, run_dir / "recall.png", results["config"]["max_length"])
    curves = recall_curves(results)
    return {
        "max_length": results["config"]["max_length"],
        "limit": args.recall_limit,
        "families": {
            family: {
                "mean_acc": sum(p.acc for p in points) / len(points),
                "by_distance": [{"distance": p.distance, "acc": p.acc, "perplexity": p.perplexity} for p in points],
            }
            for family, points in curves.items()
        },
    }


def train_config(args: argparse.Namespace, name: str, run_dir: Path, steps: int) -> tuple[list[str], float]:
    """Train configuration ``name`` for ``steps`` steps into ``run_dir/model`` (:func:`train_model`)."""
    from phalanx_training.tokenizer import load_tokenizer

    config = model_config(name, len(load_tokenizer(args.tokenizer)))
    return train_model(args, name, config, run_dir, steps, recipe_of(name).train_args)


def train_model(args: argparse.Namespace, name: str, config: Any, run_dir: Path, steps: int,
                extra: Sequence[str] = ()) -> tuple[list[str], float]:
    """Train model ``config`` (any config ``phalanx train --model-config`` takes) for ``steps`` steps into
    ``run_dir/model`` (``run_dir`` is recreated), ``extra`` training options last; return the ``phalanx train``
    command and the wall-clock seconds it took."""
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    config_path = run_dir / "config.json"
    config.to_json_file(config_path)
    cmd = train_command(args, config_path, run_dir / "model", steps, extra)
    log = run_dir / "train.log"
    print(f"quality_bench: training {name} for {steps} steps ({steps * args.batch_size * args.seq_len:,} tokens); log {log}", flush=True)
    start = time.perf_counter()
    with log.open("w", encoding="utf-8") as sink:
        code = subprocess.run(cmd, stdout=sink, stderr=subprocess.STDOUT, check=False).returncode
    wall = time.perf_counter() - start
    if code != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-5:]
        print("\n".join(tail), file=sys.stderr)
        raise RuntimeError(f"phalanx train failed for {name} (exit {code}); see {log}")
    return cmd, wall


def speed_one(args: argparse.Namespace, name: str) -> Path:
    """Train ``name`` for ``--steps`` steps, alone on the device, and write its steady training tokens/s."""
    import torch
    from transformers import TrainerState

    run_dir = args.out / "runs" / f"{name}.speed"
    cmd, _ = train_config(args, name, run_dir, args.steps)
    state = TrainerState.load_from_json(str(run_dir / "model" / "trainer_state.json"))
    shutil.rmtree(run_dir / "model")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    result = {"config": name, "tokenizer": tokenizer_record(args.tokenizer), "seq_len": args.seq_len,
              "batch_size": args.batch_size, "steps": state.global_step,
              "tokens_per_second": steady_tokens_per_second(state.log_history), "train_command": cmd,
              "environment": environment(device)}
    path = speed_path(args.out, name)
    write_file(path, json.dumps(result, indent=2) + "\n")
    print(f"quality_bench: {name}: {result['tokens_per_second']:,.0f} training tokens/s -> {path}", flush=True)
    return path


def run_one(args: argparse.Namespace, name: str) -> Path | None:
    """Train and score one configuration; return its result JSON, or None when it exists already."""
    import torch
    from transformers import AutoConfig, TrainerState

    from phalanx_training.callbacks import logged_losses

    seconds = args.seconds if args.budget == "seconds" else None
    path = result_path(args.out, name, args.budget, seconds)
    if path.exists() and not args.force:
        print(f"quality_bench: {path} exists, skipped (--force reruns it)")
        return None
    steps = args.steps if seconds is None else steps_for_seconds(args.out, name, seconds, args.seq_len, args.batch_size)
    run_dir = args.out / "runs" / path.stem
    cmd, wall = train_config(args, name, run_dir, steps)
    model_dir = run_dir / "model"
    state = TrainerState.load_from_json(str(model_dir / "trainer_state.json"))
    for checkpoint in model_dir.glob("checkpoint-*"):
        shutil.rmtree(checkpoint)  # optimizer state; only the final weights are scored

    device = "cuda" if torch.cuda.is_available() else "cpu"
    scores = score_model(args, name, model_dir, run_dir, device)
    config = AutoConfig.from_pretrained(str(model_dir))  # as trained: SWAX, for one, sets the sliding window

    first_loss, final_loss = logged_losses(state.log_history)
    corpus = corpus_record(args.corpus)
    result = {
        "config": name,
        "about": recipe_of(name).about,
        "model_config": {k: getattr(config, k) for k in ("sliding_window", "swr_block_len", "swr_window_blocks")},
        "budget": args.budget,
        "seconds_budget": seconds,
        "steps": state.global_step,
        "seq_len": args.seq_len,
        "batch_size": args.batch_size,
        "tokens": state.global_step * args.seq_len * args.batch_size,
        "seed": args.seed,
        "train_command": cmd,
        "train": {
            "tokens_per_second": steady_tokens_per_second(state.log_history),
            "wall_seconds": wall,
            "first_loss": first_loss,
            "final_loss": final_loss,
            "loss_curve": [[e["step"], e["loss"]] for e in state.log_history if "loss" in e],
        },
        **scores,
        "tokenizer": tokenizer_record(args.tokenizer),
        "corpus": {"path": str(args.corpus), "held_out": corpus["held_out"], "fingerprint": corpus["fingerprint"],
                   "packages": {n: p["version"] for n, p in corpus["packages"].items()}},
        "environment": environment(device),
    }
    for keep in ("trainer_state.json", "loss_curve.png"):
        shutil.copy2(model_dir / keep, run_dir / keep)
    if not args.keep_models:
        shutil.rmtree(model_dir)
    write_file(path, json.dumps(result, indent=2) + "\n")
    return path


def score_model(args: argparse.Namespace, name: str, model_dir: Path, run_dir: Path, device: str) -> dict[str, Any]:
    """Score the model in ``model_dir`` as every bench scores: held-out bits/byte overall and by position bucket,
    bits/byte on a sample of the training files (``--eval-mb`` each, windows of ``--seq-len``), and recall
    (:func:`recall`, its files in ``run_dir``); with its layer types and parameter count."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import modeling_phalanx  # noqa: F401  (registers the phalanx model type)
    from phalanx_eval.bits_per_byte import score_texts

    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).to(device)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    amp = torch.bfloat16 if args.amp_bf16 else None
    edges = (args.bucket_edge or args.seq_len // 8,)
    scores = {}
    for key, folder, spread in (("heldout", args.corpus / "heldout", False), ("train_sample", args.corpus / "train", True)):
        texts, n_bytes = text_sample(folder, args.eval_mb, spread)
        print(f"quality_bench: scoring {name} on {len(texts)} {key} files ({n_bytes / 1e6:.2f} MB)", flush=True)
        result = score_texts(model, tokenizer, texts, seq_len=args.seq_len, batch_size=args.eval_batch_size,
                             bucket_edges=edges, amp_dtype=amp)
        scores[key] = {"files": len(texts), **result.as_dict()}
    found = {"layer_types": list(model.config.layer_types), "parameters": sum(p.numel() for p in model.parameters()),
             "bucket_edges": [0, *edges, args.seq_len], **scores}
    del model
    return {**found, "recall": recall(args, model_dir, run_dir, device)}


def environment(device: str) -> dict[str, str]:
    """Machine and versions the numbers were measured with."""
    import torch

    versions = {}
    for dist in ("torch", "triton", "transformers", "lm_eval"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    return {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "host": platform.node(), "gpu": gpu, **versions}


def summary_row(r: dict[str, Any], tokens_per_second: float) -> list[str]:
    """One row of the run table printed after ``run`` (and of the report); the speed from :func:`throughput`."""
    buckets = " / ".join(fmt(b["bits_per_byte"]) for b in r["heldout"]["buckets"])
    rec = r["recall"].get("families", {})
    acc = " / ".join(fmt(rec[f]["mean_acc"], 2) if f in rec else "-" for f in DEFAULT_RECALL_TASKS)
    return [r["config"], f"{r['parameters'] / 1e6:.1f}M", str(r["steps"]), f"{r['tokens']:,}",
            fmt(r["train"]["final_loss"]), fmt(r["train_sample"]["bits_per_byte"]), fmt(r["heldout"]["bits_per_byte"]),
            buckets, acc, f"{tokens_per_second:,.0f}"]


def fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table, numbers right-aligned."""
    align = ["---" if i == 0 else "---:" for i in range(len(header))]
    return "\n".join("| " + " | ".join(row) + " |" for row in (header, align, *rows))


def table_header(results: Sequence[dict[str, Any]]) -> list[str]:
    edges = results[0]["bucket_edges"]
    buckets = " / ".join(f"{a}-{b - 1}" for a, b in zip(edges, edges[1:]))
    return ["config", "parameters", "steps", "tokens", "final training loss (nats/token)", "bits/byte, training sample",
            "bits/byte, held-out", f"held-out bits/byte by position ({buckets})", "passkey / MQAR mean acc",
            "training tokens/s"]


# ----------------------------------------------------------------------------------------------- report


def load_results(out: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Equal-token and equal-wall-clock results in ``out``, each sorted by configuration name."""
    tokens = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(out.glob("*.tokens.json"))]
    clock = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(out.glob("*.seconds-*.json"))]
    return tokens, clock


def recall_table(results: Sequence[dict[str, Any]], family: str) -> str | None:
    """Accuracy per distance of one recall family; None when no result has it."""
    have = [r for r in results if family in r["recall"].get("families", {})]
    if not have:
        return None
    distances = sorted({p["distance"] for r in have for p in r["recall"]["families"][family]["by_distance"]})
    rows = []
    for r in have:
        acc = {p["distance"]: p["acc"] for p in r["recall"]["families"][family]["by_distance"]}
        rows.append([r["config"], *(fmt(acc.get(d), 2) for d in distances)])
    return markdown(["config", *(f"{family} acc @ {d}" for d in distances)], rows)


def plot_frontier(out: Path, tokens: Sequence[dict[str, Any]], clock: Sequence[dict[str, Any]], title: str) -> Path:
    """Held-out bits/byte against training tokens/s, one point per result; ``out/frontier.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    for results, marker, label in ((tokens, "o", "equal tokens"), (clock, "s", "equal wall-clock")):
        if not results:
            continue
        xs = [throughput(out, r) for r in results]
        ys = [r["heldout"]["bits_per_byte"] for r in results]
        ax.scatter(xs, ys, marker=marker, label=label)
        for r, x, y in zip(results, xs, ys):
            ax.annotate(r["config"], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel("training throughput (tokens / s)")
    ax.set_ylabel("held-out bits / byte (lower is better)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = out / "frontier.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def budget_groups(tokens: Sequence[dict[str, Any]], clock: Sequence[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """Results that share one budget (and row shape), each group under a title that names it."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in tokens:
        groups.setdefault(f"Equal tokens ({r['steps']} steps x {r['batch_size']} x {r['seq_len']} tokens", []).append(r)
    for r in clock:
        title = (f"Equal wall-clock time ({r['seconds_budget']:g} s of training each at batch {r['batch_size']} x "
                 f"{r['seq_len']} tokens, steps from each configuration's own speed")
        groups.setdefault(title, []).append(r)
    return [(f"{title}; {rows[0].get('tokenizer', BYTE_TOKENIZER)['name']} tokenizer; held-out package "
             f"{rows[0]['corpus']['held_out']})", rows) for title, rows in groups.items()]


def report(out: Path) -> str:
    """The markdown report of ``out``; also writes ``out/report.md`` and ``out/frontier.png``."""
    tokens, clock = load_results(out)
    if not tokens and not clock:
        raise ValueError(f"no results in {out} (*.tokens.json, *.seconds-*.json): run the bench first")
    parts = []
    for title, results in budget_groups(tokens, clock):
        parts.append(f"### {title}\n")
        parts.append(markdown(table_header(results), [summary_row(r, throughput(out, r)) for r in results]))
        parts.extend(f"\n{t}" for t in (recall_table(results, f) for f in DEFAULT_RECALL_TASKS) if t)
        parts.append("")
    everything = [*tokens, *clock]
    fingerprints = {r["corpus"]["fingerprint"] for r in everything}
    if len(fingerprints) > 1:
        parts.append(f"**Warning: these results come from {len(fingerprints)} different corpora** (corpus fingerprints differ).\n")
    setups = sorted({tuple(r["environment"][k] for k in ("gpu", "host", "torch", "transformers")) for r in everything})
    dates = sorted(r["environment"]["date"] for r in everything)
    when = dates[0] if dates[0] == dates[-1] else f"{dates[0]} to {dates[-1]}"
    where = "; ".join(f"{gpu} ({host}), torch {torch_v}, transformers {tf}" for gpu, host, torch_v, tf in setups)
    parts.append(f"Measured on {where}, {when}.")
    text = "\n".join(parts) + "\n"
    write_file(out / "report.md", text)
    plot_frontier(out, tokens, clock,
                  f"Held-out bits/byte ({everything[0]['corpus']['held_out']}) vs training tokens/s, results {out.name}")
    return text


# -------------------------------------------------------------------------------------------------- CLI


def positive_float(value: str) -> float:
    number = float(value)
    if not number > 0 or not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {value}")
    return number


def positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return number


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("corpus", help="build the corpus from installed packages' .py sources")
    c.add_argument("out", type=Path)
    c.add_argument("--packages", nargs="+", default=list(DEFAULT_TRAIN_PACKAGES), help="training packages (default: %(default)s)")
    c.add_argument("--held-out", default=DEFAULT_HELD_OUT, help="held-out package (default: %(default)s)")
    c.add_argument("--max-mb", type=positive_float, help="cap on training megabytes (a uniform sample of files)")
    c.add_argument("--force", action="store_true", help="replace an existing OUT")

    def add_training_options(sp: argparse.ArgumentParser, steps_help: str, steps_default: int | None) -> None:
        """Options of ``phalanx train`` shared by ``run`` and ``speed`` (same data, schedule and shape)."""
        sp.add_argument("corpus", type=Path, help="folder written by the corpus command")
        sp.add_argument("out", type=Path, help="results folder (one JSON per configuration and budget)")
        sp.add_argument("--configs", nargs="+", required=True, choices=CONFIG_NAMES, metavar="NAME",
                        help=f"<size>-<recipe>; recipes: {', '.join(RECIPES)}")
        sp.add_argument("--steps", type=positive_int, default=steps_default, help=steps_help)
        sp.add_argument("--seq-len", type=positive_int, required=True)
        sp.add_argument("--batch-size", type=positive_int, required=True)
        sp.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto", help="phalanx train --precision")
        sp.add_argument("--lr", type=positive_float, help="phalanx train --lr (default: its default)")
        sp.add_argument("--warmup", type=float, help="phalanx train --warmup (default: its default)")
        sp.add_argument("--seed", type=int, default=0)
        sp.add_argument("--logging-steps", type=positive_int, help="default: steps / 50")
        sp.add_argument("--tokenizer", type=Path, help="tokenizer folder, e.g. from the tokenizer command (default: bytes)")

    r = sub.add_parser("run", help="train and score configurations")
    add_training_options(r, "optimizer steps, the same for every configuration (--budget tokens)", None)
    r.add_argument("--budget", choices=("tokens", "seconds"), default="tokens",
                   help="tokens: --steps for all; seconds: the steps each configuration trains in --seconds")
    r.add_argument("--seconds", type=positive_float, help="training seconds per configuration (--budget seconds)")
    r.add_argument("--eval-mb", type=positive_float, default=4.0, help="megabytes scored per split (default: %(default)s)")
    r.add_argument("--eval-batch-size", type=positive_int, default=8)
    r.add_argument("--bucket-edge", type=positive_int, help="first position of the far bucket (default: seq_len / 8)")
    r.add_argument("--recall-tasks", nargs="*", default=list(DEFAULT_RECALL_TASKS), help="lm-eval tasks; none to skip")
    r.add_argument("--recall-limit", type=positive_int, help="documents per recall task (default: all)")
    r.add_argument("--recall-batch-size", type=positive_int, default=8)
    r.add_argument("--recall-max-length", type=positive_int, help="lm-eval max_length (default: the harness's)")
    r.add_argument("--keep-models", action="store_true", help="keep the trained weights under OUT/runs")
    r.add_argument("--force", action="store_true", help="rerun configurations whose result exists")

    tk = sub.add_parser("tokenizer", help="learn a byte-level BPE tokenizer on the corpus's training files")
    tk.add_argument("corpus", type=Path, help="folder written by the corpus command")
    tk.add_argument("--vocab-size", type=positive_int, default=8192, help="tokens, special and byte ones included (default: %(default)s)")
    tk.add_argument("--force", action="store_true", help="replace an existing tokenizer folder")

    sp = sub.add_parser("speed", help="training tokens/s of configurations, each alone on the device")
    add_training_options(sp, "steps timed; the first quarter is warm-up (default: %(default)s)", 100)

    rep = sub.add_parser("report", help="markdown tables and the speed/quality plot of a results folder")
    rep.add_argument("out", type=Path)
    return p


def run_command(args: argparse.Namespace) -> None:
    """Check the options, run each configuration, print the table of this call."""
    import torch

    fingerprint = corpus_record(args.corpus)["fingerprint"]
    if (args.budget == "seconds") != (args.seconds is not None):
        raise ValueError("--seconds goes with --budget seconds, and --budget seconds needs --seconds")
    if (args.budget == "tokens") != (args.steps is not None):
        raise ValueError("--steps goes with --budget tokens (the default), and --budget tokens needs --steps")
    if args.bucket_edge is not None and args.bucket_edge >= args.seq_len:
        raise ValueError(f"--bucket-edge {args.bucket_edge} must be below --seq-len {args.seq_len}")
    tokens, clock = load_results(args.out) if args.out.is_dir() else ([], [])
    tokenizer = tokenizer_record(args.tokenizer)
    if any(r.get("tokenizer", BYTE_TOKENIZER) != tokenizer for r in (*tokens, *clock)):
        raise ValueError(f"{args.out} holds results of another tokenizer than {tokenizer['name']}; use a new results folder")
    if any(r["corpus"]["fingerprint"] != fingerprint for r in (*tokens, *clock)):
        raise ValueError(f"{args.out} holds results measured on another corpus (fingerprint differs from {args.corpus}); "
                         "use a new results folder or rebuild the same corpus")
    args.amp_bf16 = torch.cuda.is_available() and args.precision != "fp32"
    args.out.mkdir(parents=True, exist_ok=True)
    done = [p for p in (run_one(args, name) for name in args.configs) if p is not None]
    if done:
        results = [json.loads(p.read_text(encoding="utf-8")) for p in done]
        print("\n" + markdown(table_header(results), [summary_row(r, throughput(args.out, r)) for r in results]))
        print("\nresults: " + ", ".join(map(str, done)))


def corpus_record(corpus: Path) -> dict[str, Any]:
    """The ``corpus.json`` of a folder written by the corpus command."""
    if not (corpus / CORPUS_FILE).is_file():
        raise ValueError(f"{corpus} is not a corpus folder (no {CORPUS_FILE}); build it with the corpus command")
    return json.loads((corpus / CORPUS_FILE).read_text(encoding="utf-8"))


BYTE_TOKENIZER = {"name": "byte"}  # what results without a tokenizer record were measured with


def tokenizer_record(folder: Path | None) -> dict[str, Any]:
    """What a run's tokenizer was: the byte tokenizer, or a folder's name, vocabulary size and tokenizer.json hash."""
    if folder is None:
        return dict(BYTE_TOKENIZER)
    from phalanx_training.tokenizer import load_tokenizer

    digest = hashlib.sha256((folder / "tokenizer.json").read_bytes()).hexdigest() if (folder / "tokenizer.json").is_file() else None
    return {"name": folder.name, "vocab_size": len(load_tokenizer(folder)), "sha256": digest}


def tokenizer_command(args: argparse.Namespace) -> Path:
    """Learn a byte-level BPE tokenizer on the corpus's training files; write ``CORPUS/tokenizer-bpe<N>/``."""
    from phalanx_training.data import list_text_files, read_text
    from phalanx_training.tokenizer import train_bpe_tokenizer

    corpus_record(args.corpus)
    files = list_text_files([args.corpus / "train"], exclude_held_out=False)
    tokenizer = train_bpe_tokenizer((read_text(p) for p in files), args.vocab_size)
    out = args.corpus / f"tokenizer-bpe{args.vocab_size}"
    with output_folder(out, inputs=[args.corpus / "train"], force=args.force) as staging:
        tokenizer.save_pretrained(str(staging))
    texts, n_bytes = text_sample(args.corpus / "heldout", 1.0, spread=False)
    n_tokens = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
    print(f"quality_bench: {out}: {len(tokenizer)} tokens learned from {len(files)} files; "
          f"{n_bytes / max(n_tokens, 1):.2f} bytes per token on {n_bytes / 1e6:.2f} MB of held-out text")
    return out


def speed_command(args: argparse.Namespace) -> None:
    """Measure each configuration's training speed alone on the device (``OUT/<config>.speed.json``)."""
    corpus_record(args.corpus)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.configs:
        speed_one(args, name)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "corpus":
            print_corpus(build_corpus(args.out, args.packages, args.held_out, args.max_mb, args.force), args.out)
        elif args.command == "run":
            run_command(args)
        elif args.command == "speed":
            speed_command(args)
        elif args.command == "tokenizer":
            tokenizer_command(args)
        else:
            print(report(args.out))
            print(f"written: {args.out / 'report.md'}, {args.out / 'frontier.png'}")
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"quality_bench: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
