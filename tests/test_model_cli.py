"""`phalanx demo` (shortened) and `phalanx generate`: output folder, reload, streamed text, clean errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_model_cache import single_thread  # noqa: F401  (fixture import)

from transformers import AutoModelForCausalLM, AutoTokenizer

from phalanx_cli.main import main


def test_demo_then_generate(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "demo"
    args = ["demo", "--steps", "4", "--batch-size", "2", "--seq-len", "48", "--max-new-tokens", "8", "--output-dir", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "identical logits" in printed and "loss" in printed
    config = json.loads((out / "config.json").read_text())
    assert set(config["layer_types"]) == {"linear_attention", "sliding_attention", "full_attention"}
    assert {"model.safetensors", "tokenizer.json", "modeling_phalanx.py"} <= {p.name for p in out.iterdir()}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".demo-")]  # no staging folder left behind

    assert main(["generate", str(out), "--prompt", "BRUTUS.", "--max-new-tokens", "6", "--device", "cpu"]) == 0
    greedy = capsys.readouterr().out
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    ids = model.generate(**tokenizer("BRUTUS.", return_tensors="pt"), max_new_tokens=6, do_sample=False)
    assert greedy == tokenizer.decode(ids[0], skip_special_tokens=True) + "\n"
    assert main(["generate", str(out), "--prompt", "BRUTUS.", "--max-new-tokens", "6", "--device", "cpu"]) == 0
    assert capsys.readouterr().out == greedy  # greedy decoding is deterministic
    assert main(["generate", str(out), "--prompt", "BRUTUS.", "--do-sample", "--max-new-tokens", "6", "--device", "cpu"]) == 0


@pytest.mark.parametrize(
    "argv,message",
    [
        (["demo", "--steps", "0"], "--steps must be >= 1"),
        (["demo", "--lr", "-1"], "--lr must be > 0"),
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
