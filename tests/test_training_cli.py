"""`phalanx train` end to end on the shipped sample (JSON hybrid config, SWAX, eval data): outputs, exact
resume, two-process DDP (gloo) equal to one process with the same global batch, and clean errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from modeling_phalanx import PhalanxForCausalLM
from phalanx_cli.main import main
from phalanx_training.callbacks import LOSS_CURVE_FILE, PEAK_MEMORY_ENV, plot_loss_curve
from phalanx_training.presets import get_preset
from phalanx_training.tokenizer import load_byte_tokenizer

STEPS = 6
LAYER_TYPES = ["linear_attention", "sliding_attention", "linear_attention", "full_attention"]


def train_losses(output: Path) -> dict[int, float]:
    state = json.loads((output / "trainer_state.json").read_text())
    return {e["step"]: e["loss"] for e in state["log_history"] if "loss" in e}


@pytest.fixture(scope="module")
def common(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Options shared by every run: a JSON hybrid with all three layer kinds, SWAX windows, eval text."""
    folder = tmp_path_factory.mktemp("inputs")
    get_preset("tiny-phalanx", layer_types=LAYER_TYPES, sliding_window=16).save_pretrained(folder)
    (folder / "eval.txt").write_text("Now is the winter of our discontent made glorious summer by this sun of York.\n" * 12)
    return ["--model-config", str(folder / "config.json"), "--swax", "--swax-short-window", "4", "--seq-len", "32",
            "--max-steps", str(STEPS), "--logging-steps", "1", "--lr", "3e-3", "--warmup", "1", "--precision", "fp32",
            "--seed", "0", "--eval-data", str(folder / "eval.txt")]


@pytest.fixture(scope="module")
def reference(common: list[str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted single-process run, batch 4, checkpoint and evaluation at step 3."""
    out = tmp_path_factory.mktemp("train") / "reference"
    assert main(["train", *common, "--batch-size", "4", "--save-steps", "3", "--output", str(out)]) == 0
    return out


def test_output_folder(reference: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(reference)
    assert isinstance(model, PhalanxForCausalLM)
    assert model.config.layer_types == LAYER_TYPES
    assert model.config.sliding_window == 16  # SWAX leaves the long window in the saved config
    assert model.config.vocab_size == 259 and model.config.eos_token_id == 2
    assert (reference / "tokenizer.json").is_file()
    assert (reference / LOSS_CURVE_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in reference.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]
    losses = train_losses(reference)
    assert sorted(losses) == list(range(1, STEPS + 1))
    assert losses[STEPS] < losses[1]
    state = json.loads((reference / "trainer_state.json").read_text())
    assert all(e["train_tokens_per_second"] > 0 for e in state["log_history"] if "loss" in e)
    assert [e["step"] for e in state["log_history"] if "eval_loss" in e] == [3, 6]
    assert state["num_input_tokens_seen"] == STEPS * 4 * 32


def test_resume_reproduces_the_uninterrupted_run(common: list[str], reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "resumed"
    shutil.copytree(reference / "checkpoint-3", out / "checkpoint-3")
    assert main(["train", *common, "--batch-size", "4", "--save-steps", "3", "--output", str(out), "--resume"]) == 0
    ref_losses, resumed_losses = train_losses(reference), train_losses(out)
    assert [resumed_losses[s] for s in range(4, STEPS + 1)] == [ref_losses[s] for s in range(4, STEPS + 1)]
    ref_weights, weights = load_file(reference / "model.safetensors"), load_file(out / "model.safetensors")
    assert all(torch.equal(ref_weights[k], weights[k]) for k in ref_weights)


def test_gradient_accumulation_equals_the_larger_batch(common: list[str], reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "accumulated"
    assert main(["train", *common, "--batch-size", "2", "--grad-accum", "2", "--save-steps", "100", "--output", str(out)]) == 0
    ref_weights, weights = load_file(reference / "model.safetensors"), load_file(out / "model.safetensors")
    for key in ref_weights:
        torch.testing.assert_close(weights[key], ref_weights[key], atol=2e-5, rtol=1e-4)
    assert train_losses(out) == pytest.approx(train_losses(reference), rel=1e-5)


def test_two_processes_equal_one_with_the_same_global_batch(common: list[str], reference: Path, tmp_path: Path) -> None:
    """The README's `accelerate launch --multi_gpu --num_processes 2` on a machine without CUDA (and without
    ACCELERATE_USE_CPU) forms one DDP group over gloo: with gradient checkpointing (exact recomputation) it
    equals the plain single-process run, instead of two independent trainings."""
    out = tmp_path / "ddp"
    env = {k: v for k, v in os.environ.items() if k != "ACCELERATE_USE_CPU"} | {"OMP_NUM_THREADS": "1"}
    if torch.cuda.is_available():
        env["ACCELERATE_USE_CPU"] = "true"  # the comparison is with the CPU reference run
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "phalanx_cli.main", "train", *common, "--batch-size", "2", "--save-steps", "100", "--gradient-checkpointing",
           "--output", str(out)]
    # cwd outside the repository: its `kernels/` folder must not shadow the `kernels` package Transformers probes.
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es) on cpu" in proc.stdout and proc.stdout.count("phalanx train: done") == 1
    ref_weights, weights = load_file(reference / "model.safetensors"), load_file(out / "model.safetensors")
    for key in ref_weights:
        torch.testing.assert_close(weights[key], ref_weights[key], atol=2e-5, rtol=1e-4)
    ref_losses, ddp_losses = train_losses(reference), train_losses(out)
    assert ddp_losses == pytest.approx(ref_losses, rel=1e-4)


def test_peak_memory_is_printed_on_request(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """PHALANX_LOG_PEAK_MEMORY=1: the process prints one `peak_memory {json}` line when training ends (on the CPU,
    its peak resident set size); without it, none."""
    args = ["train", "--model-config", "tiny-transformer", "--seq-len", "16", "--batch-size", "2", "--max-steps", "1",
            "--precision", "fp32"]
    assert main([*args, "--output", str(tmp_path / "quiet")]) == 0
    assert "\npeak_memory " not in "\n" + capsys.readouterr().out
    monkeypatch.setenv(PEAK_MEMORY_ENV, "1")
    assert main([*args, "--output", str(tmp_path / "out")]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("peak_memory ")]
    assert len(lines) == 1
    record = json.loads(lines[0].removeprefix("peak_memory "))
    assert record["rank"] == 0 and record["world_size"] == 1 and record["max_rss"] > 2**20


def test_tokenizer_folder_sets_the_preset_vocabulary(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    tokenizer = load_byte_tokenizer()
    tokenizer.add_tokens(["<user>", "<assistant>", "<tool>"])
    tokenizer.save_pretrained(tmp_path / "tok")
    out = tmp_path / "out"
    args = ["train", "--tokenizer", str(tmp_path / "tok"), "--seq-len", "16", "--batch-size", "2", "--max-steps", "1",
            "--precision", "fp32", "--output", str(out)]
    assert main([*args, "--model-config", "tiny-transformer"]) == 0
    assert AutoConfig.from_pretrained(out).vocab_size == 262
    assert len(AutoTokenizer.from_pretrained(out)) == 262
    get_preset("tiny-transformer", vocab_size=260).save_pretrained(tmp_path / "small_vocab")
    assert main([*args, "--model-config", str(tmp_path / "small_vocab"), "--output", str(tmp_path / "never")]) == 1
    assert "vocab_size 260 is smaller than the tokenizer's 262 tokens" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--model-config", "tiny-mamba"], "neither a preset"),
        (["--model-config", "tiny-phalanx", "--swax"], "--swax needs sliding_attention"),
        (["--model-config", "tiny-swa", "--swax", "--swax-short-window", "64"], "short_window < long_window"),
        (["--model-config", "tiny-swa", "--swax-long-window", "32"], "only applies with --swax"),
        (["--model-config", "tiny-phalanx", "--resume"], "no checkpoint"),
        (["--model-config", "tiny-phalanx", "--data", "/nonexistent/corpus"], "data path not found"),
        (["--model-config", "tiny-phalanx", "--batch-size", "0"], "--batch-size must be positive"),
        (["--model-config", "tiny-phalanx", "--tokenizer", "/nonexistent/tokenizer"], "tokenizer folder not found"),
    ],
)
def test_errors_are_one_line_and_write_nothing(tmp_path: Path, capsys: pytest.CaptureFixture, extra: list[str], message: str) -> None:
    out = tmp_path / "out"
    assert main(["train", "--output", str(out), *extra]) == 1
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_loss_curve_needs_logged_losses(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no logged losses"):
        plot_loss_curve([{"step": 1, "learning_rate": 1e-3}], tmp_path / "curve.png", "title")
    assert not (tmp_path / "curve.png").exists()
    plot_loss_curve([{"step": 1, "loss": 2.0}, {"step": 2, "eval_loss": 1.5}], tmp_path / "curve.png", "title")
    assert (tmp_path / "curve.png").read_bytes()[:4] == b"\x89PNG"
