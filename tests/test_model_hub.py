"""Phalanx model: config validation, save/load round trips, the Hub bundle in a clean process, PEFT LoRA."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from test_model_cache import VOCAB, single_thread, tiny_config, tiny_model  # noqa: F401  (fixture import)
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from modeling_phalanx import PHALANX_LORA_TARGET_MODULES, PhalanxConfig, PhalanxForCausalLM, PhalanxModel

L, S, F = "linear_attention", "sliding_attention", "full_attention"


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(hidden_size=40, num_attention_heads=3, num_key_value_heads=1), "hidden_size=40 is not divisible by num_attention_heads=3"),
        (dict(hidden_size=40, phalanx_head_dim=16), "phalanx_head_dim=16 does not divide hidden_size=40"),
        (dict(phalanx_head_dim=24), "phalanx_head_dim=24 is unsupported"),
        (dict(layer_types=[L, "mamba", F, "x"]), r"unknown types \['mamba', 'x'\]"),
        (dict(layer_types=[L, F]), "layer_types has 2 entries but num_hidden_layers=4"),
        (dict(swr_block_len=20), r"swr_block_len=20 is unsupported; use one of \(16, 32, 64\)"),
        (dict(sliding_window=None), "'sliding_attention' layers but sliding_window is not set"),
        (dict(phalanx_num_gate_groups=3), "phalanx_num_gate_groups=3 must divide phalanx_num_heads=2"),
        (dict(num_key_value_heads=3), "num_attention_heads=4 is not a multiple of num_key_value_heads=3"),
        (dict(phalanx_decay_init_range=[0.9, 0.5]), "phalanx_decay_init_range must be"),
        (dict(norm_placement="middle"), "norm_placement='middle' is unknown"),
        (dict(qk_norm="all"), "qk_norm='all' is unknown"),
        (dict(no_rope_layers=[4]), r"no_rope_layers has indices outside \[0, 4\): \[4\]"),
        (dict(rope_parameters={F: {"rope_type": "default", "rope_theta": 1e4}}), r"no entry for \['sliding_attention'\]"),
    ],
)
def test_config_validation_messages(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tiny_config(**kwargs)


def test_auto_classes_and_bit_exact_round_trip(tmp_path: Path) -> None:
    """from_pretrained -> save -> from_pretrained keeps every tensor and the logits bit-exact, including the
    non-persistent buffers (per-layer-type RoPE tables, embedding scale) that loading re-initialises."""
    rope = {F: {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e5}, S: {"rope_type": "default", "rope_theta": 1e4}}
    model = tiny_model(rope_parameters=rope, embedding_scale=32**0.5, norm_type="gemma_rms", qk_norm="head")
    model.save_pretrained(tmp_path / "a")
    auto_map = json.loads((tmp_path / "a" / "config.json").read_text())["auto_map"]
    assert set(auto_map) == {"AutoConfig", "AutoModel", "AutoModelForCausalLM"}
    assert {"configuration_phalanx.py", "modeling_phalanx.py", "swr_torch.py"} <= {p.name for p in (tmp_path / "a").iterdir()}
    assert not (tmp_path / "a" / "swr_torch.py").is_symlink()  # a real copy of the kernels' file, not the repo's link
    assert isinstance(AutoConfig.from_pretrained(tmp_path / "a"), PhalanxConfig)
    assert type(AutoModel.from_pretrained(tmp_path / "a")) is PhalanxModel
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "a")
    loaded.save_pretrained(tmp_path / "b")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "b").eval()
    reference = model.state_dict()
    assert all(torch.equal(reference[k], v) for k, v in again.state_dict().items())
    ids = torch.randint(3, VOCAB, (2, 33))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, again(ids).logits)


CLEAN_PROCESS = """
import importlib.util, json, sys
# Drop the editable install of this project: only transformers and torch may serve the bundle.
sys.meta_path = [f for f in sys.meta_path if "editable" not in getattr(f, "__module__", "")]
assert importlib.util.find_spec("modeling_phalanx") is None and importlib.util.find_spec("phalanx_kernels") is None
import torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True)
assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
ids = torch.tensor(json.loads(sys.argv[2]))
print(json.dumps(model.generate(ids, max_new_tokens=15, do_sample=False).tolist()))
"""


def assert_bundle_generates_in_a_clean_process(model, tmp_path: Path, prompt: torch.Tensor) -> None:
    """``model`` saved, copied elsewhere and loaded with ``trust_remote_code`` in a fresh interpreter that has only
    torch and transformers generates the tokens ``model`` generates."""
    model.save_pretrained(tmp_path / "saved")
    bundle = tmp_path / "elsewhere" / "bundle"
    shutil.copytree(tmp_path / "saved", bundle)
    expected = model.generate(prompt, max_new_tokens=15, do_sample=False).tolist()
    result = subprocess.run(
        [sys.executable, "-I", "-c", CLEAN_PROCESS, str(bundle), json.dumps(prompt.tolist())],
        cwd=tmp_path / "elsewhere",
        env={"HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == expected


def test_hub_bundle_generates_the_same_tokens_in_a_clean_process(tmp_path: Path) -> None:
    assert_bundle_generates_in_a_clean_process(tiny_model(), tmp_path, torch.randint(3, VOCAB, (2, 11)))


def test_lora_trains_saves_reloads_and_merges(tmp_path: Path) -> None:
    base_dir, adapter_dir = tmp_path / "base", tmp_path / "adapter"
    tiny_model().save_pretrained(base_dir)
    peft_model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base_dir),
        LoraConfig(r=4, lora_alpha=8, target_modules=PHALANX_LORA_TARGET_MODULES),
    )
    targeted = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in peft_model.named_parameters() if "lora_A" in n}
    assert targeted == {"q_proj", "k_proj", "v_proj", "o_proj", "in_proj", "out_proj"}
    ids = torch.randint(3, VOCAB, (4, 40))
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(6):
        loss = peft_model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1
    peft_model.eval()
    peft_model.save_pretrained(adapter_dir)
    with torch.no_grad():
        trained = peft_model(input_ids=ids).logits
        reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter_dir).eval()
        torch.testing.assert_close(reloaded(input_ids=ids).logits, trained, atol=0, rtol=0)
        merged = reloaded.merge_and_unload()
        assert isinstance(merged, PhalanxForCausalLM)
        torch.testing.assert_close(merged(input_ids=ids).logits, trained, atol=1e-5, rtol=1e-5)
