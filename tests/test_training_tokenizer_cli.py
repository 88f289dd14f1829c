"""`phalanx tokenizer`: learns BPE from the data formats `phalanx train` reads, the folder round-trips text and
trains a model with `phalanx train --tokenizer`, and bad input gets one line and writes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoConfig, AutoTokenizer

from phalanx_cli.main import main

LINES = [f"def f{i}(x):\n    return x * {i} + {i * i}\n" for i in range(300)]


@pytest.fixture()
def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "code.jsonl"
    path.write_text("".join(json.dumps({"body": line}) + "\n" for line in LINES))
    return path


def test_learns_round_trips_and_trains(corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "tok"
    assert main(["tokenizer", "--data", str(corpus), "--text-column", "body", "--vocab-size", "400", "--output", str(out)]) == 0
    assert "400 tokens learned from 300 documents" in capsys.readouterr().out
    tok = AutoTokenizer.from_pretrained(out)
    text = "def f7(x):\n    return x * 7 + 49\n\tü€ 😀"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text  # byte-level: any text, exactly
    code = LINES[7]
    assert len(tok(code, add_special_tokens=False)["input_ids"]) < len(code) / 2  # merges learned from the corpus
    assert tok.eos_token == "<eos>" and tok.pad_token_id == 0
    model = tmp_path / "model"
    assert main(["train", "--model-config", "tiny-phalanx", "--tokenizer", str(out), "--data", str(corpus),
                 "--text-column", "body", "--seq-len", "32", "--batch-size", "2", "--max-steps", "1",
                 "--precision", "fp32", "--output", str(model)]) == 0
    assert AutoConfig.from_pretrained(model).vocab_size >= 400


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--vocab-size", "259"], "--vocab-size must exceed the 259 special and byte tokens"),
        (["--data", "/nonexistent/corpus"], "data path not found"),
        (["--text-column", "text"], "has no column 'text'"),
    ],
)
def test_errors_are_one_line_and_write_nothing(corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                               extra: list[str], message: str) -> None:
    out = tmp_path / "tok"
    assert main(["tokenizer", "--data", str(corpus), "--output", str(out), *extra]) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_refuses_an_existing_output_without_force(corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "tok"
    args = ["tokenizer", "--data", str(corpus), "--text-column", "body", "--vocab-size", "300", "--output", str(out)]
    assert main(args) == 0
    assert main(args) == 1 and "already exists" in capsys.readouterr().err
    assert main([*args, "--force"]) == 0
    assert not main(["tokenizer", "--data", str(corpus), "--text-column", "body", "--output", str(corpus)]) == 0
    assert corpus.is_file()
