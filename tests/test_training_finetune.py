"""`phalanx finetune`: LoRA on attention and Phalanx projections of a trained-style and a converted
checkpoint, adapter reload and merge give the same logits, the merged folder loads with AutoModelForCausalLM."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import PeftModel
from test_conversion_families import make_source
from transformers import AutoModelForCausalLM

from modeling_phalanx import PhalanxForCausalLM
from phalanx_cli.main import main
from phalanx_conversion.convert import convert_checkpoint
from phalanx_training.finetune_cli import MERGED_DIR
from phalanx_training.presets import get_preset
from phalanx_training.tokenizer import load_byte_tokenizer


@pytest.fixture(scope="module")
def base_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random hybrid with all three layer kinds, saved like a trained checkpoint."""
    folder = tmp_path_factory.mktemp("finetune") / "base"
    torch.manual_seed(0)
    config = get_preset("tiny-phalanx", layer_types=["linear_attention", "sliding_attention", "linear_attention", "full_attention"],
                        sliding_window=16)
    PhalanxForCausalLM(config).save_pretrained(folder)
    load_byte_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def converted_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Olmo3 checkpoint (post-norms, QK-norm) with its sliding layers converted to Phalanx."""
    root = tmp_path_factory.mktemp("converted")
    convert_checkpoint(make_source("olmo3", root / "olmo3"), root / "phalanx")
    return root / "phalanx"


@pytest.mark.parametrize("source", ["base_model", "converted_model"])
def test_lora_adapter_and_merge(source: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    base_model: Path = request.getfixturevalue(source)
    out = tmp_path / "lora"
    argv = ["finetune", str(base_model), "--output", str(out), "--seq-len", "32", "--batch-size", "2", "--max-steps", "3",
            "--lr", "1e-2", "--warmup", "0", "--logging-steps", "1", "--precision", "fp32", "--lora-r", "4", "--merge"]
    assert main(argv) == 0
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    assert (out / "loss_curve.png").is_file()

    ids = torch.randint(3, 259, (2, 40), generator=torch.Generator().manual_seed(1))
    base = AutoModelForCausalLM.from_pretrained(base_model).eval()
    with torch.no_grad():
        base_logits = base(ids).logits
        tuned = PeftModel.from_pretrained(base, out).eval()
        adapted = {name.split("base_model.model.")[-1] for name in tuned.base_model.targeted_module_names}
        tuned_logits = tuned(ids).logits
        merged = AutoModelForCausalLM.from_pretrained(out / MERGED_DIR).eval()
        merged_logits = merged(ids).logits
    layer_types = base.config.layer_types
    assert {"linear_attention", "full_attention"} <= set(layer_types)
    expected = {
        f"model.layers.{i}.mixer.{p}" if kind == "linear_attention" else f"model.layers.{i}.self_attn.{p}"
        for i, kind in enumerate(layer_types)
        for p in (("in_proj", "out_proj") if kind == "linear_attention" else ("q_proj", "k_proj", "v_proj", "o_proj"))
    }
    assert adapted == expected
    assert isinstance(merged, PhalanxForCausalLM)
    assert not any("lora" in name for name, _ in merged.named_parameters())
    assert (tuned_logits - base_logits).abs().max() > 1e-3  # training moved the adapter off its zero init
    torch.testing.assert_close(merged_logits, tuned_logits, atol=1e-4, rtol=1e-4)


def test_target_modules_option_and_errors(base_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    common = ["--seq-len", "32", "--batch-size", "2", "--max-steps", "1", "--precision", "fp32"]
    out = tmp_path / "mixer_only"
    assert main(["finetune", str(base_model), "--output", str(out), *common, "--target-modules", "in_proj"]) == 0
    adapter = (out / "adapter_config.json").read_text()
    assert '"in_proj"' in adapter and '"q_proj"' not in adapter

    assert main(["finetune", str(tmp_path / "missing"), "--output", str(tmp_path / "x"), *common]) == 1
    assert "model folder with a config.json not found" in capsys.readouterr().err
    assert main(["finetune", str(base_model), "--output", str(tmp_path / "y"), *common, "--lora-r", "0"]) == 1
    assert "--lora-r must be positive" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
