"""`phalanx distill` on the Trainer: chunked KL, bits-per-byte, a tiny two-stage run whose resume from a
checkpoint gives bit-identical weights to the uninterrupted run, gradient accumulation equal to the larger
batch, two DDP processes (gloo) equal to one with the same global batch, and one-line errors."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from phalanx_cli.main import main as phalanx_main
from phalanx_conversion.convert import convert_checkpoint
from phalanx_conversion.distill import (
    DistillOptions,
    StageConfig,
    bits_per_byte,
    chunked_kl,
    distill,
)
from phalanx_training.tokenizer import load_byte_tokenizer

from test_conversion_families import VOCAB, make_source

ROOT = Path(__file__).resolve().parent.parent
TRAIN, HELD_OUT = ROOT / "data" / "shakespeare", ROOT / "eval" / "tasks" / "data"


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny Cohere2 teacher (scaled logits, parallel blocks) and its default conversion."""
    root = tmp_path_factory.mktemp("distill")
    teacher = make_source("cohere2", root / "teacher")
    convert_checkpoint(teacher, root / "student")
    return teacher, root / "student"


def test_chunked_kl_equals_the_whole_kl(pair: tuple[Path, Path]) -> None:
    """KL between the two models' own logits, in chunks recomputed in backward: value and gradient of the
    float64 KL over the whole sequence."""
    teacher = AutoModelForCausalLM.from_pretrained(pair[0]).eval()
    student = AutoModelForCausalLM.from_pretrained(pair[1]).eval()
    ids = torch.randint(3, VOCAB, (2, 37))
    with torch.no_grad():
        t = teacher(ids).logits
    s = student(ids).logits.detach().requires_grad_(True)
    kl = chunked_kl(s, t, chunk=8)
    kl.backward()
    s_ref = s.detach().double().requires_grad_(True)
    kl_ref = (F.softmax(t.double(), -1) * (F.log_softmax(t.double(), -1) - F.log_softmax(s_ref, -1))).sum() / (2 * 37)
    kl_ref.backward()
    torch.testing.assert_close(kl.double(), kl_ref, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(s.grad.double(), s_ref.grad, rtol=1e-4, atol=1e-9)


def test_bits_per_byte_of_uniform_model(pair: tuple[Path, Path]) -> None:
    """A model whose logits are all zero costs log2(V) bits for every predicted token."""
    model = AutoModelForCausalLM.from_pretrained(pair[1]).eval()
    model.config.logit_scale = 0.0
    # Byte tokens: every byte but the first of each text is predicted, and only those bytes count.
    text = "To be, or not to be, that is the question: é " * 3
    got = bits_per_byte(model, load_byte_tokenizer(), [text, "ab"], seq_len=16, batch_size=3)
    assert abs(got - math.log2(VOCAB)) < 1e-5  # fp32 logits; a miscounted byte would be off by ~1e-2
    with pytest.raises(ValueError, match="empty"):
        bits_per_byte(model, load_byte_tokenizer(), ["a"], seq_len=16)


OPTIONS = DistillOptions(
    stage1=StageConfig(steps=3, lr=1e-2, batch_size=2, seq_len=48),
    stage2=StageConfig(steps=2, lr=1e-3, other_lr=1e-4, batch_size=2, seq_len=48, kl_chunk=16, ce_weight=0.1),
    save_every=1,
    logging_steps=1,
    eval_seq_len=64,
    eval_max_bytes=300,
    device="cpu",
)


@pytest.fixture(scope="module")
def full_run(pair: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """One uninterrupted single-process run of both stages."""
    out = tmp_path_factory.mktemp("distill-run") / "full"
    return out, distill(pair[0], pair[1], out, [TRAIN], [HELD_OUT], OPTIONS)


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def test_two_stage_run_resumes_exactly(pair: tuple[Path, Path], full_run: tuple[Path, dict], tmp_path: Path) -> None:
    teacher, student = pair
    full, metrics = full_run
    for key in ("bpb_teacher", "bpb_student_initial", "bpb_after_stage1", "bpb_after_stage2"):
        assert 0 < metrics[key] < 16, key
    assert metrics["tokens_stage1"] == 3 * 2 * 48 and metrics["tokens_stage2"] == 2 * 2 * 48
    assert metrics["tokens_per_second_stage1"] > 0 and metrics["tokens_per_second_stage2"] > 0
    assert set(metrics["final_losses_stage1"]) == {"loss", "layer0", "layer1", "layer3"}
    assert set(metrics["final_losses_stage2"]) == {"loss", "kl", "ce"}
    for name in ("loss_stage1.png", "loss_stage2.png"):
        assert (full / name).read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in (full / "checkpoints" / "stage2").iterdir()) == ["checkpoint-1", "checkpoint-2"]

    # Stage 1 trains only the mixers: every other tensor of the stage-1 model equals the student's.
    before, after = weights(student), weights(full / "stage1")
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".mixer." in k for k in changed)

    # Interrupt stage 2 after its first step (keep only its step-1 checkpoint), or stage 1 after its second
    # (the trained module is then the mixers alone), and run again.
    for stage, cut, later in (("stage2", "checkpoint-2", []), ("stage1", "checkpoint-3", ["stage2"])):
        resumed = tmp_path / f"resumed-{stage}"
        shutil.copytree(full, resumed)
        for folder in (stage, *later):
            shutil.rmtree(resumed / folder)
        shutil.rmtree(resumed / "checkpoints" / stage / cut)
        for folder in later:
            shutil.rmtree(resumed / "checkpoints" / folder)
        state = json.loads((resumed / "metrics.json").read_text())
        kept = {k: v for k, v in state.items() if not any(f in k for f in (stage, *later))}
        (resumed / "metrics.json").write_text(json.dumps(kept))
        again = distill(teacher, student, resumed, [TRAIN], [HELD_OUT], OPTIONS)
        a, b = weights(full / "stage2"), weights(resumed / "stage2")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), stage
        assert again[f"final_losses_{stage}"] == metrics[f"final_losses_{stage}"]


def test_gradient_accumulation_equals_the_larger_batch(pair: tuple[Path, Path], tmp_path: Path) -> None:
    """Two micro-batches of one row per step give the weights of one batch of two rows (CE off: its mean over
    a micro-batch's labelled tokens is the one term whose split depends on the batch)."""
    def options(batch: int, accum: int) -> DistillOptions:
        stage = {"batch_size": batch, "grad_accum": accum, "seq_len": 48}
        return DistillOptions(stage1=StageConfig(steps=3, lr=1e-2, **stage),
                              stage2=StageConfig(steps=2, lr=1e-3, other_lr=1e-4, kl_chunk=16, **stage),
                              save_every=10, logging_steps=1, eval_seq_len=64, eval_max_bytes=64, device="cpu")

    distill(*pair, tmp_path / "big", [TRAIN], [HELD_OUT], options(2, 1))
    distill(*pair, tmp_path / "accum", [TRAIN], [HELD_OUT], options(1, 2))
    for stage in ("stage1", "stage2"):
        ref, got = weights(tmp_path / "big" / stage), weights(tmp_path / "accum" / stage)
        for key in ref:
            torch.testing.assert_close(got[key], ref[key], atol=2e-5, rtol=1e-4)


def test_two_processes_equal_one_with_the_same_global_batch(pair: tuple[Path, Path], tmp_path: Path) -> None:
    """`accelerate launch --multi_gpu --num_processes 2 -m phalanx_cli.main distill ...` on a machine without
    CUDA forms one DDP group over gloo (the teacher on each process): one row per process gives the weights and
    losses of one process with two rows."""
    common = ["--data", str(TRAIN / "julius_caesar_gut.txt"), "--stage1-steps", "3", "--stage2-steps", "2",
              "--seq-len", "48", "--kl-chunk", "16", "--stage1-lr", "1e-2", "--stage2-lr", "1e-3",
              "--eval-max-bytes", "64", "--logging-steps", "1", "--save-every", "10", "--device", "cpu"]
    assert phalanx_main(["distill", str(pair[0]), str(pair[1]), "--out", str(tmp_path / "one"), *common,
                         "--batch-size", "2"]) == 0
    env = {k: v for k, v in os.environ.items() if k != "ACCELERATE_USE_CPU"} | {"OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "phalanx_cli.main", "distill", str(pair[0]),
           str(pair[1]), "--out", str(tmp_path / "ddp"), *common, "--batch-size", "1"]
    # cwd outside the repository: its `kernels/` folder must not shadow the `kernels` package Transformers probes.
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "distill: 2 process(es) on cpu" in proc.stderr
    summary = json.loads(proc.stdout)  # printed once, by the first process
    assert summary["tokens_stage1"] == 3 * 2 * 48
    for stage in ("stage1", "stage2"):
        ref, got = weights(tmp_path / "one" / stage), weights(tmp_path / "ddp" / stage)
        for key in ref:
            torch.testing.assert_close(got[key], ref[key], atol=2e-5, rtol=1e-4)
    ref_metrics, metrics = (json.loads((tmp_path / run / "metrics.json").read_text()) for run in ("one", "ddp"))
    assert metrics["processes"] == 2
    for stage in ("final_losses_stage1", "final_losses_stage2"):
        assert metrics[stage] == pytest.approx(ref_metrics[stage], rel=1e-4)


def test_cli_runs_and_refuses_to_mix_runs(
    pair: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    small = [
        "--stage1-steps",
        "1",
        "--stage2-steps",
        "1",
        "--batch-size",
        "1",
        "--seq-len",
        "32",
        "--eval-max-bytes",
        "100",
        "--device",
        "cpu",
    ]
    assert (
        phalanx_main(
            ["distill", str(pair[0]), str(pair[1]), "--out", str(tmp_path / "ok"), "--data", str(TRAIN), *small]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["tokens_stage1"] == summary["tokens_stage2"] == 32 and "bpb_after_stage2" in summary
    assert (tmp_path / "ok" / "stage2" / "config.json").is_file()
    diverging = [*small, "--stage1-steps", "3", "--stage1-lr", "1e30"]
    assert phalanx_main(
        ["distill", str(pair[0]), str(pair[1]), "--out", str(tmp_path / "nan"), "--data", str(TRAIN), *diverging]
    ) == 1
    err = capsys.readouterr().err  # progress bars, then one error line and no traceback
    assert "Traceback" not in err
    assert re.fullmatch(r"phalanx distill: error: stage 1 loss is \S+ at step \d+: training diverged; lower "
                        r"--stage1-lr, or --resume from the last checkpoint", err.strip().splitlines()[-1])
    for option, message in ((["--report-to", "nonsense"], "--report-to nonsense: unknown integration"),
                            (["--precision", "bf16"], "--precision bf16 needs --device cuda")):
        assert phalanx_main(["distill", str(pair[0]), str(pair[1]), "--out", str(tmp_path / "bad"), *small, *option]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0] and not (tmp_path / "bad").exists()
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    assert phalanx_main(["distill", str(pair[0]), str(pair[1]), "--out", str(out)]) == 1
    assert "pass --resume" in capsys.readouterr().err
    assert phalanx_main(["distill", str(pair[0]), str(pair[1]), "--out", str(tmp_path / "empty"), "--resume"]) == 1
    assert "nothing to resume" in capsys.readouterr().err
