"""Training data in every form `--data` reads (text, jsonl, json, csv, parquet, save_to_disk folders, dataset
names offline), tokenization in several processes, the `--eval-fraction` split, `--streaming` (the same rows,
exact resume), and every TrainingArguments field reaching the Trainer with the project's aliases and defaults
on top."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch
from safetensors.torch import load_file

from phalanx_cli.main import build_parser, main
from phalanx_training.data import (
    DataSource, PackedCollator, PackedStream, build_packed_dataset, load_documents, tokenize_corpus,
)
from phalanx_training.options import CHECKPOINTING_FIELD, resolve_training_options, training_arguments
from phalanx_training.tokenizer import load_byte_tokenizer

DOCS = ["Friends, Romans, countrymen, lend me your ears.\n" * 3, "", "I come to bury Caesar, not to praise him.\n" * 2,
        "The evil that men do lives after them.\n" * 4]
SEQ_LEN = 16


@pytest.fixture(scope="module")
def corpora(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same documents as text files and in every table form (text in column `body`, beside a number column)."""
    folder = tmp_path_factory.mktemp("corpora")
    table = datasets.Dataset.from_dict({"id": list(range(len(DOCS))), "body": DOCS})
    (folder / "texts").mkdir()
    for i, doc in enumerate(DOCS):
        (folder / "texts" / f"{i:02d}.txt").write_text(doc, encoding="utf-8")
    (folder / "c.jsonl").write_text("".join(json.dumps({"id": i, "body": d}) + "\n" for i, d in enumerate(DOCS)))
    (folder / "c.json").write_text(json.dumps([{"id": i, "body": d} for i, d in enumerate(DOCS)]))
    table.to_csv(str(folder / "c.csv"), index=False)
    table.to_parquet(str(folder / "c.parquet"))
    table.save_to_disk(str(folder / "saved"))
    table.rename_column("body", "text").to_json(str(folder / "t.jsonl"))  # the default column name
    datasets.DatasetDict({"train": table.select([0]), "validation": table}).save_to_disk(str(folder / "saved_dict"))
    return {"texts": folder / "texts", "jsonl": folder / "c.jsonl", "json": folder / "c.json", "csv": folder / "c.csv",
            "parquet": folder / "c.parquet", "saved": folder / "saved", "default_column": folder / "t.jsonl", "saved_dict": folder / "saved_dict"}


def packed(source: DataSource, num_proc: int | None = None) -> dict[str, torch.Tensor]:
    return build_packed_dataset(source, load_byte_tokenizer(), SEQ_LEN, num_proc).packed


@pytest.mark.parametrize("form", ["jsonl", "json", "csv", "parquet", "saved", "default_column"])
def test_every_table_form_packs_like_the_text_files(corpora: dict[str, Path], form: str) -> None:
    expected = packed(DataSource((corpora["texts"],)))
    got = packed(DataSource((corpora[form],), text_column="text" if form == "default_column" else "body"))
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_split_of_a_saved_dataset_dict_and_description(corpora: dict[str, Path]) -> None:
    source = DataSource((corpora["saved_dict"], corpora["texts"]), text_column="body", split="validation")
    documents, description = load_documents(source)
    assert documents["text"] == DOCS + DOCS
    assert description == (f"4 documents from saved dataset {corpora['saved_dict']} (split validation) (column 'body'); "
                           f"4 text files (*.txt *.md *.text) from {corpora['texts']}")
    mixed, _ = load_documents(DataSource((corpora["parquet"], corpora["csv"], corpora["texts"]), text_column="body"))
    assert [text or "" for text in mixed["text"]] == DOCS * 3  # CSV reads the empty document as a missing value
    with pytest.raises(ValueError, match="--data-split test: .* has splits train, validation"):
        load_documents(DataSource((corpora["saved_dict"],), text_column="body", split="test"))


def test_text_column_errors(corpora: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match=r"--text-column text: .*c.jsonl has no column 'text' \(columns: id, body\)"):
        load_documents(DataSource((corpora["jsonl"],)))
    with pytest.raises(ValueError, match="--text-column id: column 'id' of .*c.parquet holds .*int64.*, not text"):
        load_documents(DataSource((corpora["parquet"],), text_column="id"))


def test_tokenizing_in_two_processes_gives_the_same_documents(corpora: dict[str, Path]) -> None:
    documents, _ = load_documents(DataSource((corpora["jsonl"],), text_column="body"))
    tokenizer = load_byte_tokenizer()
    assert tokenize_corpus(documents, tokenizer, num_proc=2) == tokenize_corpus(documents, tokenizer)


def test_eval_fraction_holds_out_the_last_rows(corpora: dict[str, Path]) -> None:
    rows = build_packed_dataset(DataSource((corpora["texts"],)), load_byte_tokenizer(), SEQ_LEN)
    train, held = rows.split(0.25)
    assert (len(train), len(held)) == (18, 6) and len(rows) == 24
    assert torch.equal(torch.cat([train.packed["input_ids"], held.packed["input_ids"]]), rows.packed["input_ids"])
    assert held.description == "the last 6 of 24 rows"
    for fraction, message in ((0.0, "between 0 and 1"), (1.0, "between 0 and 1"), (0.99, "leaves no training row")):
        with pytest.raises(ValueError, match=message):
            rows.split(fraction)


def test_a_dataset_name_offline_says_it_is_not_cached(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # read at import, before the offline fixture ran
    out = tmp_path / "out"
    assert main(["train", "--model-config", "tiny-phalanx", "--data", "nobody/no-such-corpus", "--output", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == ("phalanx train: error: dataset 'nobody/no-such-corpus' is not in the local cache and the machine is offline "
                   "(HF_HUB_OFFLINE / HF_DATASETS_OFFLINE); load it once online, or pass a local file")
    assert not out.exists()
    assert main(["train", "--model-config", "tiny-phalanx", "--data", "missing.jsonl", "--output", str(out)]) == 1
    assert "data path not found: missing.jsonl" in capsys.readouterr().err


def parsed(*argv: str) -> object:
    args = build_parser("train").parse_args(["train", "--model-config", "tiny-phalanx", *argv])
    return resolve_training_options(args)


def test_training_arguments_layer_project_defaults_aliases_and_native_fields() -> None:
    defaults = training_arguments(parsed("--output", "o"), has_eval=False)
    assert (defaults.output_dir, defaults.per_device_train_batch_size, defaults.learning_rate, defaults.max_steps) == ("o", 8, 3e-4, 1000)
    assert (defaults.lr_scheduler_type.value, defaults.weight_decay, defaults.seed, defaults.data_seed) == ("cosine", 0.1, 0, 0)
    assert defaults.eval_strategy.value == "no" and defaults.include_num_input_tokens_seen in (True, "all")
    native = training_arguments(parsed(
        "--output_dir", "n", "--per_device_train_batch_size", "3", "--learning_rate", "0.01", "--max_steps", "7",
        "--optim", "adamw_torch", "--lr_scheduler_type", "linear", "--dataloader_num_workers", "2", "--report_to", "none",
        "--adam_beta2", "0.95", "--seed", "5", "--data_seed", "9", "--save_steps", "4", f"--{CHECKPOINTING_FIELD}",
        "--eval_strategy", "no"), has_eval=True)
    assert (native.output_dir, native.per_device_train_batch_size, native.learning_rate, native.max_steps) == ("n", 3, 0.01, 7)
    assert (native.optim.value, native.lr_scheduler_type.value, native.dataloader_num_workers) == ("adamw_torch", "linear", 2)
    assert (native.adam_beta2, native.seed, native.data_seed, native.save_steps) == (0.95, 5, 9, 4)
    assert getattr(native, CHECKPOINTING_FIELD) is True and native.eval_strategy.value == "no"
    assert native.per_device_eval_batch_size == 3  # the project's: the training batch
    aliases = training_arguments(parsed("--output", "a", "--batch-size", "2", "--lr", "0.1", "--lr-scheduler", "constant",
                                        "--gradient-checkpointing", "--eval-steps", "3"), has_eval=True)
    assert (aliases.per_device_train_batch_size, aliases.learning_rate, aliases.lr_scheduler_type.value) == (2, 0.1, "constant")
    assert getattr(aliases, CHECKPOINTING_FIELD) is True and (aliases.eval_strategy.value, aliases.eval_steps) == ("steps", 3)
    epochs = training_arguments(parsed("--output", "e", "--max_steps", "-1", "--num_train_epochs", "2"), has_eval=False)
    assert (epochs.max_steps, epochs.num_train_epochs) == (-1, 2)
    with pytest.raises(ValueError, match="--max-steps must be positive, or -1"):
        training_arguments(parsed("--output", "e", "--max-steps", "0"), has_eval=False)


@pytest.mark.parametrize("argv, message", [
    (["--batch-size", "2", "--per_device_train_batch_size", "4"], "--batch-size and --per_device_train_batch_size set the same option"),
    (["--save-steps", "2", "--save_steps", "4"], "--save-steps and --save_steps set the same option"),
    (["--output_dir", "x"], "--output and --output_dir set the same option"),
    (["--precision", "fp32", "--bf16"], "--precision and --bf16 set the same option"),
    (["--resume", "--resume_from_checkpoint", "c"], "--resume and --resume_from_checkpoint set the same option"),
])
def test_an_alias_and_its_field_together_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                     argv: list[str], message: str) -> None:
    out = tmp_path / "out"
    assert main(["train", "--model-config", "tiny-phalanx", "--output", str(out), *argv]) == 1
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_help_lists_our_options_before_the_training_arguments(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    options = text[text.index("\noptions:"):]
    order = [options.index(s) for s in ("--data PATH", "--text-column", "--batch-size", "--output DIR",
                                        "Transformers TrainingArguments", "--optim", "--torch_compile", "--dataloader_num_workers")]
    assert order == sorted(order)
    with pytest.raises(SystemExit):
        main(["train", "--model-config", "tiny-phalanx", "--output", "o", "--optim", "nope"])
    usage, error = capsys.readouterr().err.splitlines()
    assert usage == "usage: phalanx train [options]" and error.startswith("phalanx train: error: argument --optim: invalid choice")


def test_train_on_jsonl_with_native_options_and_eval_fraction(corpora: dict[str, Path], tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    assert main(["train", "--model-config", "tiny-phalanx", "--data", str(corpora["jsonl"]), "--text-column", "body",
                 "--eval-fraction", "0.2", "--seq-len", str(SEQ_LEN), "--max-steps", "2", "--logging-steps", "1",
                 "--eval-steps", "1", "--precision", "fp32", "--output", str(out), "--num-proc", "2",
                 "--optim", "adamw_torch", "--report_to", "none", "--lr_scheduler_type", "linear",
                 "--dataloader_num_workers", "2", "--per_device_train_batch_size", "3", "--adam_beta1", "0.8"]) == 0
    assert f"4 documents from {corpora['jsonl']} (column 'body'); last 5 rows held out for evaluation: 19 rows x 16 tokens" \
        in capsys.readouterr().out
    saved = torch.load(out / "training_args.bin", weights_only=False)
    assert (saved.optim.value, saved.lr_scheduler_type.value, saved.dataloader_num_workers, saved.adam_beta1) == (
        "adamw_torch", "linear", 2, 0.8)
    state = json.loads((out / "trainer_state.json").read_text())
    assert [e["step"] for e in state["log_history"] if "eval_loss" in e] == [1, 2]
    assert state["num_input_tokens_seen"] == 2 * 3 * SEQ_LEN


def test_eval_data_and_eval_fraction_are_exclusive(corpora: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "--model-config", "tiny-phalanx", "--eval-data", str(corpora["texts"]), "--eval-fraction", "0.1",
                 "--output", str(tmp_path / "out")]) == 1
    assert "--eval-data and --eval-fraction both choose the evaluation rows" in capsys.readouterr().err


def test_streamed_rows_equal_the_packed_rows_in_order(corpora: dict[str, Path]) -> None:
    """Small document batches force many buffer flushes with documents cut at row ends; a DataLoader worker
    gives the same rows."""
    source = DataSource((corpora["texts"], corpora["jsonl"], corpora["saved"], corpora["csv"]), text_column="body")
    expected = build_packed_dataset(source, load_byte_tokenizer(), SEQ_LEN)
    stream = PackedStream(source, load_byte_tokenizer(), SEQ_LEN, batch_docs=1)
    rows = list(stream)
    assert len(rows) == len(expected) == 97
    for key in expected.packed:
        assert torch.equal(torch.stack([row[key] for row in rows]), expected.packed[key])
    loader = torch.utils.data.DataLoader(stream, batch_size=4, num_workers=1, collate_fn=PackedCollator())
    assert torch.equal(torch.cat([batch["input_ids"] for batch in loader]), expected.packed["input_ids"])
    assert stream.description.startswith("4 text files (*.txt *.md *.text) from ") and "documents streamed from " in stream.description


def streaming_argv(corpora: dict[str, Path], batch_size: int) -> list[str]:
    return ["train", "--model-config", "tiny-phalanx", "--data", str(corpora["jsonl"]), "--text-column", "body",
            "--streaming", "--seq-len", str(SEQ_LEN), "--batch-size", str(batch_size), "--max-steps", "8", "--save-steps", "4",
            "--logging-steps", "1", "--lr", "3e-3", "--warmup", "1", "--precision", "fp32"]


def losses(output: Path) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in json.loads((output / "trainer_state.json").read_text())["log_history"] if "loss" in e}


@pytest.fixture(scope="module")
def streaming_reference(corpora: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted --streaming run, batch 4, 8 steps: the stream of 24 rows runs into a second pass."""
    out = tmp_path_factory.mktemp("streaming") / "reference"
    assert main([*streaming_argv(corpora, 4), "--output", str(out)]) == 0
    return out


def test_streaming_run_resumes_exactly(corpora: dict[str, Path], streaming_reference: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture) -> None:
    """An interrupted and resumed --streaming run equals the uninterrupted one (losses and weights)."""
    resumed = tmp_path / "resumed"
    shutil.copytree(streaming_reference / "checkpoint-4", resumed / "checkpoint-4")
    assert main([*streaming_argv(corpora, 4), "--output", str(resumed), "--resume"]) == 0
    assert "documents streamed from " in capsys.readouterr().out
    assert [losses(resumed)[s] for s in range(5, 9)] == [losses(streaming_reference)[s] for s in range(5, 9)]
    ref_weights, weights = load_file(streaming_reference / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert all(torch.equal(ref_weights[k], weights[k]) for k in ref_weights)
    never = ["--output", str(tmp_path / "never")]
    assert main([*streaming_argv(corpora, 4), *never, "--eval-fraction", "0.1"]) == 1
    assert "--streaming reads the rows as training goes" in capsys.readouterr().err
    assert main([*streaming_argv(corpora, 4), *never, "--dataloader_num_workers", "2"]) == 1
    assert "--dataloader_num_workers must be 0 or 1" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()


def test_streaming_on_two_processes_equals_one_with_the_same_global_batch(
    corpora: dict[str, Path], streaming_reference: Path, tmp_path: Path, offline_env: dict[str, str],
) -> None:
    """Two gloo processes, each reading the stream and taking its half of every global batch, train like one."""
    out = tmp_path / "ddp"
    env = {k: v for k, v in os.environ.items() if k != "ACCELERATE_USE_CPU"} | offline_env | {"OMP_NUM_THREADS": "1"}
    if torch.cuda.is_available():
        env["ACCELERATE_USE_CPU"] = "true"  # the comparison is with the CPU reference run
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "phalanx_cli.main",
           *streaming_argv(corpora, 2), "--gradient-checkpointing", "--output", str(out)]
    # cwd outside the repository: its `kernels/` folder must not shadow the `kernels` package Transformers probes.
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es) on cpu" in proc.stdout
    ref_weights, weights = load_file(streaming_reference / "model.safetensors"), load_file(out / "model.safetensors")
    for key in ref_weights:
        torch.testing.assert_close(weights[key], ref_weights[key], atol=2e-5, rtol=1e-4)
    assert losses(out) == pytest.approx(losses(streaming_reference), rel=1e-4)


def test_bpe_tokenizer_is_deterministic_lossless_and_keeps_the_special_ids() -> None:
    """Learned merges shorten code; any text, including bytes never seen in training, decodes back exactly;
    the special tokens keep the byte tokenizer's ids; the same texts give the same tokenizer."""
    from phalanx_training.tokenizer import SPECIAL_TOKENS, load_byte_tokenizer, train_bpe_tokenizer

    sources = Path(__file__).resolve().parent.parent / "modeling_phalanx"
    texts = [path.read_text(encoding="utf-8") for path in sorted(sources.glob("*.py"))]
    tokenizer = train_bpe_tokenizer(texts, 600)
    assert len(tokenizer) == 600
    assert tokenizer.get_vocab() == train_bpe_tokenizer(texts, 600).get_vocab()
    byte = load_byte_tokenizer()
    assert [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS.values()] == [0, 1, 2]
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (
        byte.pad_token_id, byte.bos_token_id, byte.eos_token_id)
    code = "    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:\n"
    assert len(tokenizer(code)["input_ids"]) < len(code) / 2
    for text in (code, "naïve ☃ 日本\r\n\t\x00?", ""):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == text
    with pytest.raises(ValueError, match="must exceed the 259"):
        train_bpe_tokenizer(texts, 259)
