"""`phalanx distill`: chunked KL, logits from hidden states, bits-per-byte, and a tiny two-stage run
whose resume from a checkpoint gives bit-identical weights to the uninterrupted run."""

from __future__ import annotations

import json
import math
import re
import shutil
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
    logits_from_hidden,
    loss_curves,
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


def test_logits_from_hidden_and_chunked_kl(pair: tuple[Path, Path]) -> None:
    teacher = AutoModelForCausalLM.from_pretrained(pair[0]).eval()
    student = AutoModelForCausalLM.from_pretrained(pair[1]).eval()
    ids = torch.randint(3, VOCAB, (2, 37))
    for model in (teacher, student):
        with torch.no_grad():
            ref = model(ids).logits
            got = logits_from_hidden(model, model.model(ids).last_hidden_state)
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)

    h_s = student.model(ids).last_hidden_state.detach().requires_grad_(True)
    with torch.no_grad():
        h_t = teacher.model(ids).last_hidden_state
    labels = ids.roll(-1, dims=1)
    labels[:, -1] = -100
    kl, ce = chunked_kl(student, teacher, h_s, h_t, chunk=8, labels=labels, ce_weight=0.5)
    (kl + 0.5 * ce).backward()
    grad = h_s.grad.clone()

    h_ref = h_s.detach().clone().requires_grad_(True)
    log_q = F.log_softmax(logits_from_hidden(student, h_ref).double(), -1)
    log_p = F.log_softmax(logits_from_hidden(teacher, h_t).double(), -1)
    kl_ref = F.kl_div(log_q, log_p, log_target=True, reduction="sum") / (2 * 37)
    ce_ref = F.nll_loss(log_q.flatten(0, 1), labels.flatten(), ignore_index=-100)
    (kl_ref + 0.5 * ce_ref).backward()
    torch.testing.assert_close(kl.double(), kl_ref, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(ce.double(), ce_ref, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(grad, h_ref.grad, rtol=1e-4, atol=1e-7)


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


def test_two_stage_run_resumes_exactly(pair: tuple[Path, Path], tmp_path: Path) -> None:
    teacher, student = pair
    options = DistillOptions(
        stage1=StageConfig(steps=3, lr=1e-2, batch_size=2, seq_len=48),
        stage2=StageConfig(steps=2, lr=1e-3, other_lr=1e-4, batch_size=2, seq_len=48, kl_chunk=16, ce_weight=0.1),
        save_every=1,
        eval_seq_len=64,
        eval_max_bytes=300,
        device="cpu",
    )
    full = tmp_path / "full"
    metrics = distill(teacher, student, full, [TRAIN], [HELD_OUT], options)
    for key in ("bpb_teacher", "bpb_student_initial", "bpb_after_stage1", "bpb_after_stage2"):
        assert 0 < metrics[key] < 16, key
    assert metrics["tokens_stage1"] == 3 * 2 * 48 and metrics["tokens_stage2"] == 2 * 2 * 48
    assert set(metrics["final_losses_stage1"]) == {"loss", "layer0", "layer1", "layer3"}
    for name in ("loss_stage1.png", "loss_stage2.png"):
        assert (full / name).read_bytes()[:4] == b"\x89PNG"

    # Stage 1 trains only the mixers: every other tensor of the stage-1 model equals the student's.
    before, after = load_file(student / "model.safetensors"), load_file(full / "stage1" / "model.safetensors")
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".mixer." in k for k in changed)

    # Interrupt stage 2 after its first step: keep only the step-1 checkpoint, then run again.
    resumed = tmp_path / "resumed"
    shutil.copytree(full, resumed)
    shutil.rmtree(resumed / "stage2")
    shutil.rmtree(resumed / "checkpoints" / "stage2-step0000002")
    state = json.loads((resumed / "metrics.json").read_text())
    (resumed / "metrics.json").write_text(json.dumps({k: v for k, v in state.items() if "stage2" not in k}))
    again = distill(teacher, student, resumed, [TRAIN], [HELD_OUT], options)
    a, b = load_file(full / "stage2" / "model.safetensors"), load_file(resumed / "stage2" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert again["final_losses_stage2"] == metrics["final_losses_stage2"]


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
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    assert phalanx_main(["distill", str(pair[0]), str(pair[1]), "--out", str(out)]) == 1
    assert "pass --resume" in capsys.readouterr().err
    assert phalanx_main(["distill", str(pair[0]), str(pair[1]), "--out", str(tmp_path / "empty"), "--resume"]) == 1
    assert "nothing to resume" in capsys.readouterr().err


def test_loss_plot_draws_one_curve_per_quantity() -> None:
    """With CE weight 0 the stage-2 loss is the KL: one curve named for both, not two on top of each other."""
    kl_only = [{"step": 1, "loss": 0.5, "kl": 0.5}, {"step": 2, "loss": 0.25, "kl": 0.25}]
    assert loss_curves(kl_only) == {"loss = kl": [0.5, 0.25]}
    with_ce = [{"step": 1, "loss": 0.7, "kl": 0.5, "ce": 2.0}, {"step": 2, "loss": 0.45, "kl": 0.25, "ce": 2.0}]
    assert loss_curves(with_ce) == {"loss": [0.7, 0.45], "kl": [0.5, 0.25], "ce": [2.0, 2.0]}
