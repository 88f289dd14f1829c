"""Safety of `phalanx convert`: the source is never modified, output appears atomically, bad sources
and bad requests fail before anything is written, and the files that travel with a model travel."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from phalanx_cli.main import main as phalanx_main
from phalanx_conversion.checkpoint import INDEX_NAME
from phalanx_conversion.convert import convert_checkpoint
from phalanx_training.tokenizer import load_byte_tokenizer

from test_conversion_families import VOCAB, make_source


def snapshot(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under `folder`."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def leftovers(parent: Path, name: str) -> list[Path]:
    return [p for p in parent.iterdir() if p.name.startswith((name, f".{name}"))]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = make_source("gemma3_text", tmp_path_factory.mktemp("src") / "gemma3")
    (folder / "chat_template.jinja").write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    return folder


def test_source_untouched_and_tokenizer_template_generation_config_carried(source: Path, tmp_path: Path) -> None:
    before = snapshot(source)
    out = tmp_path / "out"
    convert_checkpoint(source, out)
    assert snapshot(source) == before
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        assert (out / name).read_bytes() == (source / name).read_bytes(), name
    tok = transformers.AutoTokenizer.from_pretrained(out)
    assert tok("abc")["input_ids"] == load_byte_tokenizer()("abc")["input_ids"]
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == "hi"
    assert leftovers(tmp_path, "out") == [out]


def test_existing_output_needs_force(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    with pytest.raises(ValueError, match="already exists.*--force"):
        convert_checkpoint(source, out)
    assert (out / "keep.txt").read_text() == "user data"
    convert_checkpoint(source, out, force=True)
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()
    assert leftovers(tmp_path, "out") == [out]


def test_sharded_bf16_source(tmp_path: Path) -> None:
    src = make_source("qwen3", tmp_path / "src", dtype=torch.bfloat16, max_shard_size="60KB")
    assert (src / INDEX_NAME).is_file() and len(list(src.glob("*.safetensors"))) > 1
    out = tmp_path / "out"
    result = convert_checkpoint(src, out, layers="none")
    assert result.dtype == "bfloat16"
    src_tensors = {k: v for p in src.glob("*.safetensors") for k, v in load_file(p).items()}
    out_tensors = {k: v for p in out.glob("*.safetensors") for k, v in load_file(p).items()}
    assert src_tensors.keys() == out_tensors.keys()
    assert all(
        out_tensors[k].dtype == torch.bfloat16 and torch.equal(out_tensors[k], v) for k, v in src_tensors.items()
    )
    ids = torch.randint(3, VOCAB, (1, 40))
    with torch.no_grad():
        a = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)(ids).logits
        b = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)(ids).logits
    assert (a - b).abs().max().item() <= 1e-4
    converted = convert_checkpoint(src, tmp_path / "conv", dtype="float32")
    assert converted.dtype == "float32" and converted.converted_layers == [1, 2, 3]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("truncate", r"truncated safetensors file \(tensor '[^']+' ends at byte \d+, data holds \d+\)"),
        ("garbage", r"corrupt safetensors header \(Expecting value"),
        ("missing_shard", r"\.safetensors is listed in model\.safetensors\.index\.json but missing"),
    ],
)
def test_corrupt_source_fails_before_writing(damage: str, message: str, tmp_path: Path) -> None:
    """Each damage is caught by its own check: the project's message, not a word of the test's own path."""
    src = make_source("mistral", tmp_path / "src", max_shard_size="60KB" if damage == "missing_shard" else "5GB")
    shards = sorted(src.glob("*.safetensors"))
    if damage == "truncate":
        data = shards[0].read_bytes()
        shards[0].write_bytes(data[: len(data) - 1000])
    elif damage == "garbage":
        shards[0].write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!" + b"\0" * 64)
    else:
        shards[-1].unlink()
    before = snapshot(src)
    error = FileNotFoundError if damage == "missing_shard" else ValueError
    with pytest.raises(error, match=message):
        convert_checkpoint(src, tmp_path / "out")
    assert leftovers(tmp_path, "out") == []
    assert snapshot(src) == before


def test_unsupported_family_lists_supported(tmp_path: Path) -> None:
    src = tmp_path / "llama"
    transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2
        )
    ).save_pretrained(src)
    with pytest.raises(
        ValueError,
        match="unsupported model_type 'llama'.*supported: cohere2, gemma2, gemma3_text, ministral, mistral, olmo3, "
        "qwen2, qwen3",
    ):
        convert_checkpoint(src, tmp_path / "out")
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "model_type": "not_a_transformers_model"}))
    with pytest.raises(ValueError, match="unsupported model_type 'not_a_transformers_model'.*supported: cohere2"):
        convert_checkpoint(src, tmp_path / "out")
    assert leftovers(tmp_path, "out") == []


def test_no_swa_layers_needs_explicit_layers(tmp_path: Path) -> None:
    config = transformers.Qwen3Config(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    src = tmp_path / "full"
    AutoModelForCausalLM.from_config(config).save_pretrained(src)
    with pytest.raises(ValueError, match="no sliding-window attention layers; name the layers"):
        convert_checkpoint(src, tmp_path / "out")
    with pytest.raises(ValueError, match="out of range"):
        convert_checkpoint(src, tmp_path / "out", layers="0,7")
    result = convert_checkpoint(src, tmp_path / "out", layers="0,2")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert result.converted_layers == [0, 2]
    assert model.config.layer_types == ["linear_attention", "full_attention", "linear_attention"]


def test_cli_reports_errors_as_one_line(source: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert phalanx_main(["convert", str(source), str(tmp_path / "x"), "--layers", "banana"]) == 1
    assert "phalanx convert: error: --layers must be" in capsys.readouterr().err
    assert phalanx_main(["convert", str(tmp_path / "nowhere"), str(tmp_path / "y")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert (
        phalanx_main(["convert", str(source), str(tmp_path / "z"), "--block-len", "32", "--window-blocks", "3"]) == 0
    )
    config = transformers.AutoConfig.from_pretrained(tmp_path / "z")
    assert (config.swr_block_len, config.swr_window_blocks) == (32, 3)
