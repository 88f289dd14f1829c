"""Model presets: six flavours per size sharing one schema, sizes up to ~1.3B, JSON configs; `phalanx train` on the
tiny multi-hybrids."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from modeling_phalanx import PhalanxConfig, PhalanxForCausalLM
from phalanx_cli.main import main
from phalanx_training.presets import FLAVOURS, PRESET_NAMES, SIZES, get_preset, load_model_config


def n_params(config: PhalanxConfig) -> int:
    with torch.device("meta"):
        model = PhalanxForCausalLM(config)
    return sum(p.numel() for p in model.parameters())


def test_flavours_differ_only_in_layer_types() -> None:
    for size in SIZES:
        transformer, swa, phalanx = (get_preset(f"{size}-{f}").to_dict() for f in ("transformer", "swa", "phalanx"))
        n = transformer["num_hidden_layers"]
        assert transformer["layer_types"] == ["full_attention"] * n
        assert swa["layer_types"] == ["full_attention" if i % 4 == 3 else "sliding_attention" for i in range(n)]
        assert phalanx["layer_types"] == ["full_attention" if i % 4 == 3 else "linear_attention" for i in range(n)]
        assert swa["sliding_window"] == SIZES[size]["sliding_window"]
        ignore = {"layer_types", "sliding_window"}
        assert {k: v for k, v in swa.items() if k not in ignore} == {k: v for k, v in phalanx.items() if k not in ignore}
        assert {k: v for k, v in transformer.items() if k not in ignore} == {k: v for k, v in phalanx.items() if k not in ignore}
        same = {k: v for k, v in phalanx.items() if k not in ignore}
        for flavour in ("stripedhyena", "multihybrid"):
            assert {k: v for k, v in get_preset(f"{size}-{flavour}").to_dict().items() if k not in ignore} == same


def test_multi_hybrid_striping() -> None:
    """StripedHyena 2: SE, MR, LI, attention repeated; the Phalanx multi-hybrid: Phalanx, Phalanx, LI, attention."""
    se, mr, li, full, phalanx = "hyena_se", "hyena_mr", "hyena_li", "full_attention", "linear_attention"
    assert get_preset("small-stripedhyena").layer_types == [se, mr, li, full] * 2
    assert get_preset("125m-multihybrid").layer_types == [phalanx, phalanx, li, full] * 3
    assert get_preset("small-stripedhyena").hyena_filter_groups == 256 // 16


def test_largest_preset_is_about_1_3b() -> None:
    config = get_preset("1.3b-phalanx")
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.head_dim) == (2048, 24, 16, 128)
    assert (config.intermediate_size, config.vocab_size) == (5504, 32000)
    for flavour in ("transformer", "swa", "phalanx"):
        assert 1.25e9 < n_params(get_preset(f"1.3b-{flavour}")) < 1.45e9
    assert n_params(get_preset("tiny-phalanx")) < 1e6


def test_overrides_and_unknown_names() -> None:
    assert get_preset("tiny-swa", sliding_window=16).sliding_window == 16
    with pytest.raises(ValueError, match="unknown model preset"):
        get_preset("huge-phalanx")
    with pytest.raises(ValueError, match="unknown model preset"):
        get_preset("tiny-mamba")
    assert len(PRESET_NAMES) == len(FLAVOURS) * len(SIZES)


def test_load_model_config_from_preset_json_and_folder(tmp_path: Path) -> None:
    config, from_preset = load_model_config("tiny-phalanx")
    assert from_preset and config.to_dict() == get_preset("tiny-phalanx").to_dict()
    saved = get_preset("tiny-swa", vocab_size=300)
    saved.save_pretrained(tmp_path)
    for spec in (str(tmp_path), str(tmp_path / "config.json")):
        loaded, from_preset = load_model_config(spec)
        assert not from_preset
        assert loaded.layer_types == saved.layer_types and loaded.vocab_size == 300


def test_load_model_config_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="neither a preset"):
        load_model_config(str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_model_config(str(bad))
    llama = tmp_path / "llama.json"
    llama.write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    with pytest.raises(ValueError, match="model_type 'llama'"):
        load_model_config(str(llama))
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        load_model_config(str(listed))


@pytest.mark.parametrize("preset", ["tiny-stripedhyena", "tiny-multihybrid"])
def test_phalanx_train_runs_the_tiny_multi_hybrids(preset: str, tmp_path: Path) -> None:
    """A few optimizer steps on the shipped sample (packed rows: the Hyena layers see sequence restarts); the loss
    is finite and the saved model reloads with its layer types."""
    out = tmp_path / "run"
    args = ["train", "--model-config", preset, "--seq-len", "32", "--max-steps", "3", "--batch-size", "2",
            "--logging-steps", "1", "--precision", "fp32", "--seed", "0", "--output", str(out)]
    assert main(args) == 0
    state = json.loads((out / "trainer_state.json").read_text())
    losses = [e["loss"] for e in state["log_history"] if "loss" in e]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    assert PhalanxForCausalLM.from_pretrained(out).config.layer_types == get_preset(preset).layer_types


def test_load_model_config_takes_a_conversion_source_family(tmp_path: Path) -> None:
    """A gemma3_text config.json (a teacher to convert) loads as its own Transformers config, not a PhalanxConfig."""
    from transformers import Gemma3TextConfig

    Gemma3TextConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=32,
                     intermediate_size=64, vocab_size=259, sliding_window=16).to_json_file(tmp_path / "config.json")
    loaded, from_preset = load_model_config(str(tmp_path))
    assert isinstance(loaded, Gemma3TextConfig) and not from_preset and loaded.sliding_window == 16
