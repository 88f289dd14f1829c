"""The SWAX preset (sliding-window attention and mLSTM layers alternating), `phalanx train --swax` on it, and the
model card's layer table."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from modeling_phalanx import PhalanxForCausalLM
from phalanx_cli.main import main
from phalanx_hub.card import layer_table
from phalanx_training.presets import SIZES, get_preset

M, S = "mlstm", "sliding_attention"


def n_params(name: str) -> int:
    with torch.device("meta"):
        model = PhalanxForCausalLM(get_preset(name))
    return sum(p.numel() for p in model.parameters())


def test_swax_preset_alternates_sliding_attention_and_mlstm() -> None:
    for size in SIZES:
        config = get_preset(f"{size}-swax")
        assert config.layer_types == [S, M] * (config.num_hidden_layers // 2)
        assert config.sliding_window == SIZES[size]["sliding_window"]
        assert config.cache_layer_types == ["sliding_attention", "linear_attention"] * (config.num_hidden_layers // 2)
    # The mLSTM layer costs about what an attention layer does: the preset is the size its name says.
    assert abs(n_params("1.3b-swax") / n_params("1.3b-swa") - 1) < 0.01


def test_phalanx_train_runs_swax_with_stochastic_windows(tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["train", "--model-config", "tiny-swax", "--swax", "--swax-short-window", "4", "--swax-long-window", "16",
            "--seq-len", "32", "--batch-size", "2", "--max-steps", "4", "--logging-steps", "1", "--lr", "3e-3",
            "--warmup", "1", "--precision", "fp32", "--seed", "0", "--output", str(out)]
    assert main(args) == 0
    state = json.loads((out / "trainer_state.json").read_text())
    losses = [e["loss"] for e in state["log_history"] if "loss" in e]
    assert len(losses) == 4 and all(0 < loss < 20 for loss in losses)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.layer_types == [S, M, S, M] and model.config.sliding_window == 16
    prompt = torch.randint(3, 259, (1, 9))
    assert model.generate(prompt, max_new_tokens=5, min_new_tokens=5, do_sample=False).shape == (1, 14)


def test_model_card_names_the_mlstm_layers() -> None:
    table = layer_table(get_preset("tiny-swax"))
    details = "4 heads, key dim 32, value dim 64, sigmoid forget gate, gate soft cap 15.0"
    assert f"| 1 | mLSTM (xLSTM matrix memory) | {details} |" in table
    assert "| 0 | sliding-window attention | window 64 tokens |" in table
