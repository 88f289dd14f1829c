"""`phalanx demo` (shortened: every stage, real outputs, atomic output folder) and `phalanx generate`: reload,
streamed text, clean errors."""

from __future__ import annotations

import json
import math
from argparse import Namespace
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from test_model_cache import single_thread  # noqa: F401  (fixture import)

from transformers import AutoModelForCausalLM, AutoTokenizer

from phalanx_cli import demo
from phalanx_cli.main import main


DEMO_ARGS = [
    "--steps", "6", "--batch-size", "2", "--seq-len", "48", "--max-new-tokens", "8", "--eval-limit", "1",
    "--finetune-steps", "2", "--teacher-steps", "4", "--distill-steps", "2", "--eval-max-bytes", "256",
]


def test_demo_runs_every_stage_then_generate(tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "demo"
    assert main(["demo", *DEMO_ARGS, "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| stage | result | seconds |" in printed and "identical logits" in printed
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]  # no staging folder left behind
    summary = json.loads((out / "summary.json").read_text())
    assert (out / "summary.md").read_text() in printed
    tokenizer = AutoTokenizer.from_pretrained(out / "export")
    probe = tokenizer("CASSIUS.\nWhat, Brutus!", return_tensors="pt")["input_ids"]

    # 1. phalanx train: every layer kind, the Trainer's loss log, a loadable model
    hybrid = out / summary["train hybrid"]["dir"]
    config = json.loads((hybrid / "config.json").read_text())
    assert set(config["layer_types"]) == {"linear_attention", "sliding_attention", "full_attention"}
    assert (hybrid / "loss_curve.png").is_file()
    assert all(math.isfinite(summary["train hybrid"][k]) for k in ("loss_first", "loss_last"))
    model = AutoModelForCausalLM.from_pretrained(hybrid).eval()
    with torch.no_grad():
        logits = model(probe).logits
    # 2. the sample starts with the prompt
    assert (out / "sample.txt").read_text().startswith("BRUTUS.\n")
    # 3. lm-eval results: finite held-out bits-per-byte, an accuracy
    results = json.loads((out / "eval" / "eval_results.json").read_text())["results"]
    bpb = results["phalanx_bpb"]["bits_per_byte,none"]
    assert math.isfinite(bpb) and bpb == summary["evaluate (lm-eval)"]["bpb"]
    assert 0.0 <= results["phalanx_passkey_64"]["acc,none"] <= 1.0
    # 4. LoRA: adapter saved, merged model loads and differs from the base (the adapter trained)
    assert (out / "lora" / "adapter_model.safetensors").is_file()
    merged = AutoModelForCausalLM.from_pretrained(out / summary["LoRA fine-tune"]["dir"]).eval()
    with torch.no_grad():
        assert not torch.equal(merged(probe).logits, logits)
    # 5. conversion: the Gemma3 teacher's sliding layers became Phalanx mixers; every bpb is finite
    assert json.loads((out / "teacher" / "config.json").read_text())["model_type"] == "gemma3_text"
    converted = summary["convert + distill"]["converted_layers"]
    distilled = json.loads((out / "distill" / "stage2" / "config.json").read_text())
    assert converted == [0, 1, 2] and [distilled["layer_types"][i] for i in converted] == ["linear_attention"] * 3
    assert all(math.isfinite(v) for v in summary["convert + distill"]["bpb"].values())
    # 6. export: remote code loaded it, same logits as the trained model, card carries the lm-eval number
    export = out / "export"
    assert summary["export + reload"]["class"].startswith("transformers_modules.")
    with torch.no_grad():
        assert torch.equal(AutoModelForCausalLM.from_pretrained(export).eval()(probe).logits, logits)
    card = ModelCard.load(export / "README.md")
    card_metrics = {(r.dataset_type, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert card_metrics[("phalanx_bpb", "bits_per_byte")] == pytest.approx(bpb, rel=1e-6)  # the card rounds
    # the reload check fails when the remote-code logits differ
    monkeypatch.setattr(demo, "REMOTE_CODE_RELOAD", demo.REMOTE_CODE_RELOAD.replace(".logits,", ".logits + 1e-6,"))
    with pytest.raises(ValueError, match="gives different logits"):
        demo.export_and_reload(hybrid, out / "eval" / "eval_results.json", tokenizer, Namespace(prompt="BRUTUS.\n"), tmp_path / "again")

    assert main(["generate", str(export), "--prompt", "BRUTUS.", "--max-new-tokens", "6", "--device", "cpu"]) == 0
    greedy = capsys.readouterr().out
    ids = model.generate(**tokenizer("BRUTUS.", return_tensors="pt"), max_new_tokens=6, do_sample=False)
    assert greedy == tokenizer.decode(ids[0], skip_special_tokens=True) + "\n"
    assert main(["generate", str(export), "--prompt", "BRUTUS.", "--max-new-tokens", "6", "--device", "cpu"]) == 0
    assert capsys.readouterr().out == greedy  # greedy decoding is deterministic
    assert main(["generate", str(export), "--prompt", "BRUTUS.", "--do-sample", "--max-new-tokens", "6", "--device", "cpu"]) == 0


def test_failed_demo_keeps_the_previous_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "demo"
    out.mkdir()
    (out / "summary.md").write_text("earlier run")

    def broken_eval(*args: object) -> dict:
        raise ValueError("lm-eval failed")

    monkeypatch.setattr(demo, "run_eval", broken_eval)
    assert main(["demo", *DEMO_ARGS, "--output-dir", str(out)]) == 1
    assert "lm-eval failed" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["demo"] and [p.name for p in out.iterdir()] == ["summary.md"]
    assert (out / "summary.md").read_text() == "earlier run"


@pytest.mark.parametrize(
    "argv,message",
    [
        (["demo", "--steps", "0"], "--steps must be >= 1"),
        (["demo", "--lr", "-1"], "--lr must be > 0"),
        (["demo", "--eval-limit", "0"], "--eval-limit must be >= 1"),
        (["generate", "missing-folder", "--prompt", "x"], "no model folder at missing-folder"),
    ],
)
def test_cli_errors_are_one_clean_line(argv: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_generate_requires_a_tokenizer(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from test_model_cache import tiny_model

    tiny_model().save_pretrained(tmp_path)
    assert main(["generate", str(tmp_path), "--prompt", "x"]) == 1
    assert "no tokenizer files" in capsys.readouterr().err
