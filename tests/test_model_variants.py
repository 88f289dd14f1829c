"""Decoder-block variants: a Phalanx model whose layers are all attention reproduces Transformers' own
Mistral / Qwen2 / Qwen3 / Gemma2 / Gemma3 / Olmo3 / Cohere2 models when given their weights."""

from __future__ import annotations

import pytest
import torch
import transformers

from modeling_phalanx import PhalanxConfig, PhalanxForCausalLM

S, F = "sliding_attention", "full_attention"
LAYERS = [S, F, S]
WINDOW = 6
COMMON = dict(
    vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=3, num_attention_heads=4,
    num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2, max_position_embeddings=128,
    attn_implementation="eager",
)
NESTED_ROPE = {F: {"rope_type": "linear", "factor": 4.0, "rope_theta": 1e6}, S: {"rope_type": "default", "rope_theta": 1e4}}


def family_configs(family: str) -> tuple[transformers.PreTrainedConfig, dict]:
    """(Transformers config, matching PhalanxConfig kwargs) for a tiny model of `family`."""
    base = {k: v for k, v in COMMON.items() if k != "attn_implementation"}
    if family == "mistral":
        hf = transformers.MistralConfig(**COMMON, head_dim=16, sliding_window=WINDOW)
        return hf, dict(base, head_dim=16, layer_types=[S] * 3, sliding_window=WINDOW)
    if family == "qwen2":
        hf = transformers.Qwen2Config(**COMMON, layer_types=LAYERS, use_sliding_window=True, sliding_window=WINDOW)
        return hf, dict(base, layer_types=LAYERS, sliding_window=WINDOW, attention_bias=True, attention_out_bias=False)
    if family == "qwen3":
        hf = transformers.Qwen3Config(
            **COMMON, head_dim=16, layer_types=LAYERS, use_sliding_window=True, sliding_window=WINDOW, attention_bias=True
        )
        return hf, dict(base, head_dim=16, layer_types=LAYERS, sliding_window=WINDOW, attention_bias=True, qk_norm="head")
    gemma = dict(
        norm_type="gemma_rms", norm_placement="sandwich", query_pre_attn_scalar=24, hidden_act="gelu_pytorch_tanh",
        embedding_scale=48**0.5, tie_word_embeddings=True,
    )
    if family == "gemma2":
        caps = dict(attn_logit_softcapping=5.0, final_logit_softcapping=3.0)
        hf = transformers.Gemma2Config(
            **COMMON, head_dim=16, layer_types=LAYERS, sliding_window=WINDOW, query_pre_attn_scalar=24, **caps
        )
        return hf, dict(base, head_dim=16, layer_types=LAYERS, sliding_window=WINDOW, **gemma, **caps)
    if family == "gemma3":
        hf = transformers.Gemma3TextConfig(
            **COMMON, head_dim=16, layer_types=LAYERS, sliding_window=WINDOW, query_pre_attn_scalar=24,
            rope_parameters={k: dict(v) for k, v in NESTED_ROPE.items()},
        )
        return hf, dict(
            base, head_dim=16, layer_types=LAYERS, sliding_window=WINDOW, qk_norm="head",
            rope_parameters={k: dict(v) for k, v in NESTED_ROPE.items()}, **gemma,
        )
    if family == "olmo3":
        hf = transformers.Olmo3Config(
            **COMMON, layer_types=LAYERS, sliding_window=WINDOW, rope_parameters={k: dict(v) for k, v in NESTED_ROPE.items()}
        )
        return hf, dict(
            base, layer_types=LAYERS, sliding_window=WINDOW, norm_placement="post", qk_norm="projection", rms_norm_eps=1e-5,
            rope_parameters={k: dict(v) for k, v in NESTED_ROPE.items()},
        )
    if family == "cohere2":
        hf = transformers.Cohere2Config(
            **COMMON, layer_types=LAYERS, sliding_window=WINDOW, logit_scale=0.5, attention_bias=True, layer_norm_eps=1e-5
        )
        return hf, dict(
            base, layer_types=LAYERS, sliding_window=WINDOW, norm_type="layer_norm", norm_placement="parallel",
            rope_interleaved=True, no_rope_layers=[1], logit_scale=0.5, attention_bias=True, rms_norm_eps=1e-5,
            tie_word_embeddings=True,
        )
    raise KeyError(family)


FAMILIES = ["mistral", "qwen2", "qwen3", "gemma2", "gemma3", "olmo3", "cohere2"]


@pytest.mark.parametrize("family", FAMILIES)
def test_matches_transformers_family(family: str) -> None:
    torch.manual_seed(0)
    hf_config, phalanx_kwargs = family_configs(family)
    reference = transformers.AutoModelForCausalLM.from_config(hf_config).eval()
    with torch.no_grad():
        for p in reference.parameters():  # no term may hide behind an initial 0 or 1
            p.add_(torch.randn_like(p) * 0.1)
    model = PhalanxForCausalLM(PhalanxConfig(**phalanx_kwargs)).eval()  # default backend (sdpa unless soft-capped)
    model.load_state_dict(reference.state_dict(), strict=True)
    ids = torch.randint(3, 97, (2, 23))
    mask = torch.ones_like(ids)
    mask[0, :5] = 0  # left padding in one row
    with torch.no_grad():
        expected = reference(ids, attention_mask=mask).logits
        got = model(ids, attention_mask=mask).logits
    real = mask.bool()
    assert (expected - got)[real].abs().max().item() <= 1e-4
