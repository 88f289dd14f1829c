"""Exactness defines support: every supported family, converted with no layers swapped, reproduces the
source logits; converted by default it loads through the Auto classes, keeps every other tensor
bit-identical and generates with the cache."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from modeling_phalanx.modeling_phalanx import PhalanxForCausalLM
from phalanx_conversion.convert import convert_checkpoint
from phalanx_conversion.families import FAMILIES, sliding_layers
from phalanx_conversion.init import AVG_WEIGHT, GATE_BIAS, READOUT_BIAS
from phalanx_training.tokenizer import load_byte_tokenizer

VOCAB = 259  # the byte tokenizer
WINDOW = 24
S, F = "sliding_attention", "full_attention"
COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
    max_position_embeddings=256,
)


def source_config(model_type: str) -> transformers.PretrainedConfig:
    """A tiny config of `model_type` with SWA layers, a short window and every quirk switched on."""
    mixed = [S, S, F, S]
    if model_type == "mistral":
        return transformers.MistralConfig(**COMMON, head_dim=16, sliding_window=WINDOW)
    if model_type == "ministral":
        return transformers.MinistralConfig(**COMMON, head_dim=16, sliding_window=WINDOW, layer_types=mixed)
    if model_type == "qwen2":
        return transformers.Qwen2Config(**COMMON, use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1)
    if model_type == "qwen3":
        return transformers.Qwen3Config(
            **COMMON,
            head_dim=16,
            use_sliding_window=True,
            sliding_window=WINDOW,
            max_window_layers=1,
            attention_bias=True,
        )
    if model_type == "gemma2":
        return transformers.Gemma2Config(
            **COMMON,
            head_dim=16,
            sliding_window=WINDOW,
            query_pre_attn_scalar=24,
            layer_types=mixed,
            attn_logit_softcapping=5.0,
            final_logit_softcapping=3.0,
        )
    if model_type == "gemma3_text":
        rope = {
            F: {"rope_type": "linear", "factor": 4.0, "rope_theta": 1e6},
            S: {"rope_type": "default", "rope_theta": 1e4},
        }
        return transformers.Gemma3TextConfig(
            **COMMON,
            head_dim=16,
            sliding_window=WINDOW,
            query_pre_attn_scalar=24,
            layer_types=mixed,
            rope_parameters=rope,
        )
    if model_type == "olmo3":
        rope = {
            F: {"rope_type": "linear", "factor": 2.0, "rope_theta": 5e5},
            S: {"rope_type": "default", "rope_theta": 5e5},
        }
        return transformers.Olmo3Config(**COMMON, sliding_window=WINDOW, layer_types=mixed, rope_parameters=rope)
    if model_type == "cohere2":
        return transformers.Cohere2Config(
            **COMMON, sliding_window=WINDOW, layer_types=mixed, logit_scale=0.5, attention_bias=True
        )
    raise KeyError(model_type)


def make_source(
    model_type: str, folder: Path, dtype: torch.dtype = torch.float32, seed: int = 0, **save_kwargs
) -> Path:
    """Save a tiny random checkpoint of `model_type` (with the byte tokenizer) to `folder`.

    Every parameter, norms and biases included, gets random noise so that no term can hide behind an
    initial value of 0 or 1.
    """
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(source_config(model_type))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model.to(dtype).save_pretrained(folder, **save_kwargs)
    load_byte_tokenizer().save_pretrained(folder)
    return folder


def logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits.double()


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sources")
    return {name: make_source(name, root / name) for name in FAMILIES}


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_no_swap_reproduces_source_logits(model_type: str, sources: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "none"
    convert_checkpoint(sources[model_type], out, layers="none")
    # Eager attention is the reference: Transformers 5.17's Gemma2 defaults to SDPA, which drops its soft-capping.
    src = AutoModelForCausalLM.from_pretrained(sources[model_type], attn_implementation="eager").eval()
    dst = AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    assert isinstance(dst, PhalanxForCausalLM)
    ids = torch.randint(3, VOCAB, (2, 77), generator=torch.Generator().manual_seed(1))  # longer than the window
    diff = (logits(src, ids) - logits(dst, ids)).abs().max().item()
    assert diff <= 1e-4, f"{model_type}: max |logit diff| {diff}"


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_default_conversion_loads_keeps_tensors_and_generates(
    model_type: str, sources: dict[str, Path], tmp_path: Path
) -> None:
    src_dir, out = sources[model_type], tmp_path / "conv"
    result = convert_checkpoint(src_dir, out)
    src_config = transformers.AutoConfig.from_pretrained(src_dir)
    assert result.converted_layers == sliding_layers(src_config) != []
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    assert isinstance(model, PhalanxForCausalLM)
    assert [i for i, t in enumerate(model.config.layer_types) if t == "linear_attention"] == result.converted_layers

    src_tensors, out_tensors = load_file(src_dir / "model.safetensors"), load_file(out / "model.safetensors")
    converted = tuple(f"model.layers.{i}.self_attn." for i in result.converted_layers)
    kept = [k for k in src_tensors if not k.startswith(converted)]
    for key in kept:
        assert out_tensors[key].dtype == src_tensors[key].dtype and torch.equal(out_tensors[key], src_tensors[key]), (
            key
        )
    assert set(out_tensors) - set(kept) == {
        f"model.layers.{i}.mixer.{p}"
        for i in result.converted_layers
        for p in model.model.layers[i].mixer.state_dict()
    }

    prompt = torch.randint(3, VOCAB, (1, 40), generator=torch.Generator().manual_seed(2))
    model.generation_config.eos_token_id = None  # a random model may emit EOS at once; decode all 6 tokens
    generated = model.generate(prompt, max_new_tokens=6, do_sample=False, pad_token_id=0)
    # Reference: greedy decoding by re-running the whole sequence without a cache.
    ids = prompt
    for _ in range(6):
        ids = torch.cat([ids, logits(model, ids)[:, -1:].argmax(-1)], dim=1)
    assert torch.equal(generated, ids)


@pytest.mark.parametrize("scheme", ["vo", "qkvo", "avg"])
def test_warm_start_matches_attention_weights(scheme: str, sources: dict[str, Path], tmp_path: Path) -> None:
    """One token sees only itself: softmax attention returns o_proj(v); the warm-started mixer returns
    out_proj(v + c * sigmoid(b) * v) with out_proj, c, b from the scheme. Checked in float64 from the
    source weights."""
    src_dir = sources["qwen3"]  # GQA, q/k/v/o biases, QK-norm (dropped by the mixer)
    out = tmp_path / scheme
    result = convert_checkpoint(src_dir, out, init=scheme)
    layer = result.converted_layers[0]
    src = AutoModelForCausalLM.from_pretrained(src_dir, dtype=torch.float64).eval()
    dst = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float64).eval()
    attn = src.model.layers[layer].self_attn
    x = torch.randn(3, 1, 64, dtype=torch.float64)
    groups = 2  # 4 query heads over 2 kv heads, head_dim 16
    v = attn.v_proj(x).view(3, 1, 2, 16).repeat_interleave(groups, dim=2).flatten(2)
    sigma2 = math.exp(GATE_BIAS) / (1 + math.exp(GATE_BIAS))
    if scheme == "vo":
        expected = attn.o_proj(v + READOUT_BIAS * sigma2 * v)
    elif scheme == "qkvo":
        k = attn.k_proj(x).view(3, 1, 2, 16).repeat_interleave(groups, dim=2).flatten(2)
        expected = attn.o_proj(v + attn.q_proj(x) / 4.0 * torch.sigmoid(k + GATE_BIAS) * v)
    else:  # avg: per-head decays a spread over phalanx_decay_init_range; c * b = K (1 - a)
        low, high = dst.config.phalanx_decay_init_range
        a = torch.linspace(low, high, dst.config.phalanx_num_heads, dtype=torch.float64).repeat_interleave(16)
        expected = attn.o_proj(v * (1 + AVG_WEIGHT * (1 - a)) / (AVG_WEIGHT + 1))
    with torch.no_grad():
        got, _ = dst.model.layers[layer].mixer(x, position_ids=torch.zeros(3, 1, dtype=torch.long))
        ref_attn = attn.o_proj(v)
    # The checkpoint is fp32 (like its source): agreement to fp32 rounding; a wrong mapping is off by O(1).
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(got, ref_attn)  # the history term is really there


def test_remote_code_path_in_clean_process(sources: dict[str, Path], tmp_path: Path) -> None:
    """Loading with trust_remote_code in a process where the project packages cannot be imported (as on
    a machine with only torch and transformers) uses the bundled files."""
    out = tmp_path / "remote"
    convert_checkpoint(sources["gemma3_text"], out)
    assert "auto_map" in json.loads((out / "config.json").read_text())
    ids = torch.randint(3, VOCAB, (1, 50), generator=torch.Generator().manual_seed(3))
    expected = logits(AutoModelForCausalLM.from_pretrained(out).eval(), ids)
    torch.save({"ids": ids, "expected": expected}, tmp_path / "io.pt")
    script = f"""
import sys, torch
class NoProject:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "modeling_phalanx" or name.startswith("phalanx_"):
            raise ModuleNotFoundError(name)
sys.meta_path.insert(0, NoProject())
from transformers import AutoModelForCausalLM
m = AutoModelForCausalLM.from_pretrained({str(out)!r}, trust_remote_code=True).eval()
assert type(m).__module__.startswith("transformers_modules"), type(m).__module__
io = torch.load({str(tmp_path / "io.pt")!r})
with torch.no_grad():
    diff = (m(io["ids"]).logits.double() - io["expected"]).abs().max().item()
assert diff <= 1e-5, diff
print(m.generate(io["ids"][:, :8], max_new_tokens=4, do_sample=False, pad_token_id=0).shape)
"""
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "torch.Size([1, 12])" in proc.stdout


def test_a_source_of_sliding_layers_only_converts_to_a_model_that_loads(tmp_path: Path) -> None:
    """Gemma3 with per-layer-type RoPE and no global layer: with every layer converted no attention kind is left to
    key the RoPE nesting by; the student keeps the full-attention entry flat, saves, loads and runs."""
    config = source_config("gemma3_text")
    config.layer_types = [S] * config.num_hidden_layers
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "src")
    load_byte_tokenizer().save_pretrained(tmp_path / "src")
    convert_checkpoint(tmp_path / "src", tmp_path / "out")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert set(model.config.layer_types) == {"linear_attention"}
    assert model.config.rope_parameters["rope_theta"] == config.rope_parameters[F]["rope_theta"]
    assert torch.isfinite(logits(model, torch.randint(3, VOCAB, (1, 33)))).all()
