"""Source families that `phalanx convert` supports: which layers are SWA, and how a source config maps
onto `PhalanxConfig`.

A family is supported only when a tiny random checkpoint built from Transformers' own config class,
converted with no layers swapped, reproduces the source logits (tests/test_conversion_families.py).
Weights keep their Transformers names (`model.layers.{i}.self_attn.q_proj`, `input_layernorm`, ...), so
the only renames are the mixers of converted layers (see `convert.py`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from transformers import PretrainedConfig

from modeling_phalanx.configuration_phalanx import FULL_ATTENTION, PHALANX_MIXER, SLIDING_ATTENTION


@dataclass(frozen=True)
class Family:
    """How one source `model_type` maps onto `PhalanxConfig`.

    `block_kwargs(config)` returns the decoder-block flags (norms, QK-norm, biases, scaling, caps, RoPE
    quirks) that make a Phalanx decoder compute exactly what the source decoder computes.
    """

    model_type: str
    block_kwargs: Callable[[PretrainedConfig], dict[str, Any]]
    check: Callable[[PretrainedConfig], None] = lambda config: None


def _plain(config: PretrainedConfig) -> dict[str, Any]:
    return {"attention_bias": bool(getattr(config, "attention_bias", False))}


def _qwen2(config: PretrainedConfig) -> dict[str, Any]:
    # Qwen2 hard-codes bias on q/k/v and none on o_proj (modeling_qwen2.Qwen2Attention).
    return {"attention_bias": True, "attention_out_bias": False}


def _qwen3(config: PretrainedConfig) -> dict[str, Any]:
    return {"attention_bias": bool(config.attention_bias), "qk_norm": "head"}


def _gemma2(config: PretrainedConfig) -> dict[str, Any]:
    return {
        "attention_bias": bool(config.attention_bias),
        "norm_type": "gemma_rms",
        "norm_placement": "sandwich",
        "query_pre_attn_scalar": config.query_pre_attn_scalar,
        "attn_logit_softcapping": config.attn_logit_softcapping,
        "final_logit_softcapping": config.final_logit_softcapping,
        "embedding_scale": config.hidden_size**0.5,
    }


def _gemma3(config: PretrainedConfig) -> dict[str, Any]:
    return {**_gemma2(config), "qk_norm": "head"}


def _gemma3_check(config: PretrainedConfig) -> None:
    if getattr(config, "use_bidirectional_attention", False):
        raise ValueError(
            "gemma3_text checkpoints with use_bidirectional_attention=True (embedding models) are not causal LMs"
        )


def _olmo3(config: PretrainedConfig) -> dict[str, Any]:
    return {"attention_bias": bool(config.attention_bias), "norm_placement": "post", "qk_norm": "projection"}


def _cohere2(config: PretrainedConfig) -> dict[str, Any]:
    # Cohere2 applies (interleaved) RoPE on sliding layers only: its full-attention layers are NoPE.
    return {
        "attention_bias": bool(config.attention_bias),
        "norm_type": "layer_norm",
        "norm_placement": "parallel",
        "rms_norm_eps": config.layer_norm_eps,
        "rope_interleaved": True,
        "no_rope_layers": [i for i, t in enumerate(config.layer_types) if t != SLIDING_ATTENTION],
        "logit_scale": config.logit_scale,
    }


FAMILIES: dict[str, Family] = {
    f.model_type: f
    for f in (
        Family("mistral", _plain),
        Family("ministral", _plain),
        Family("qwen2", _qwen2),
        Family("qwen3", _qwen3),
        Family("gemma2", _gemma2),
        Family("gemma3_text", _gemma3, _gemma3_check),
        Family("olmo3", _olmo3),
        Family("cohere2", _cohere2),
    )
}

# Families that Transformers knows but that cannot be converted exactly, with the reason shown to users.
UNSUPPORTED_REASONS: dict[str, str] = {
    "gpt_oss": "GPT-OSS needs attention sinks and a MoE MLP with MXFP4 weights, which PhalanxConfig lacks",
    "gemma3": "multimodal Gemma3 nests the text model (model.language_model.*); convert a gemma3_text checkpoint",
}


def supported_families() -> list[str]:
    """Model types `phalanx convert` accepts, sorted."""
    return sorted(FAMILIES)


def family_for(model_type: str | None) -> Family:
    """The `Family` of a model type; ValueError naming the supported families otherwise."""
    family = FAMILIES.get(model_type)
    if family is None:
        reason = UNSUPPORTED_REASONS.get(model_type, "no exact mapping onto PhalanxConfig")
        raise ValueError(
            f"unsupported model_type {model_type!r} ({reason}); supported: {', '.join(supported_families())}"
        )
    return family


def get_family(config: PretrainedConfig) -> Family:
    """The `Family` of a source config, after the family's own checks of the config."""
    family = family_for(getattr(config, "model_type", None))
    family.check(config)
    return family


def source_layer_types(config: PretrainedConfig) -> list[str]:
    """Per-layer attention kind of a source config, in Transformers' names.

    Every supported family fills `config.layer_types` in Transformers 5.x except Mistral, where every
    layer slides when `sliding_window` is set.
    """
    layer_types = getattr(config, "layer_types", None)
    if layer_types is None:
        kind = SLIDING_ATTENTION if getattr(config, "sliding_window", None) is not None else FULL_ATTENTION
        return [kind] * config.num_hidden_layers
    return list(layer_types)


def sliding_layers(config: PretrainedConfig) -> list[int]:
    """Indices of the sliding-window attention layers of a source config."""
    return [i for i, t in enumerate(source_layer_types(config)) if t == SLIDING_ATTENTION]


def resolve_layers(config: PretrainedConfig, layers: str | list[int]) -> list[int]:
    """Turn `--layers` (`"sliding"`, `"none"`, `"3,5"` or a list of ints) into sorted layer indices.

    `"sliding"` on a checkpoint without SWA layers is an error: there is nothing obvious to convert, so
    the user must name the layers.
    """
    n = config.num_hidden_layers
    if isinstance(layers, str):
        spec = layers.strip().lower()
        if spec == "sliding":
            found = sliding_layers(config)
            if not found:
                raise ValueError(
                    f"{config.model_type} checkpoint has no sliding-window attention layers; "
                    "name the layers to convert explicitly (--layers 0,2,...) or use --layers none"
                )
            return found
        if spec == "none":
            return []
        try:
            layers = [int(p) for p in spec.split(",") if p.strip()]
        except ValueError:
            raise ValueError(
                f"--layers must be 'sliding', 'none', 'lowest-mass:K' or comma-separated layer indices, got {layers!r}"
            ) from None
        if not layers:
            raise ValueError("--layers is empty; use 'none' to convert no layers")
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in layers):
        raise TypeError(f"layers must be integers, got {layers!r}")
    bad = [i for i in layers if not 0 <= i < n]
    if bad:
        raise ValueError(f"layer indices {bad} out of range for a model with {n} layers")
    if len(set(layers)) != len(layers):
        raise ValueError(f"duplicate layer indices in {layers}")
    return sorted(layers)


def _rope_parameters(config: PretrainedConfig, layer_types: list[str]) -> dict[str, Any] | None:
    """Source RoPE parameters, re-keyed when nested by layer type so that only the attention kinds still
    present in `layer_types` keep an entry (a leftover key would no longer be read as nested)."""
    rope = copy.deepcopy(getattr(config, "rope_parameters", None))
    if not isinstance(rope, dict) or not any(isinstance(v, dict) for v in rope.values()):
        return rope
    present = {t for t in layer_types if t != PHALANX_MIXER}
    kept = {k: v for k, v in rope.items() if k in present}
    # With every attention layer converted no attention kind is left to key by: keep the full-attention entry,
    # flat (a nesting by kinds the model lacks reads as a flat dict to Transformers' RoPE validation).
    return kept or rope.get(FULL_ATTENTION, next(v for v in rope.values() if isinstance(v, dict)))


def phalanx_config_kwargs(
    config: PretrainedConfig,
    layers: list[int],
    *,
    phalanx_head_dim: int = 16,
    block_len: int = 16,
    window_blocks: int = 2,
) -> dict[str, Any]:
    """`PhalanxConfig` keyword arguments for `config` with `layers` turned into Phalanx mixers.

    The mixer is sized so that its value width equals the attention's query width
    (`num_attention_heads * head_dim`): the warm start copies `v_proj` (repeated over query groups)
    and `o_proj` unchanged.
    """
    family = get_family(config)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    width = config.num_attention_heads * head_dim
    if phalanx_head_dim <= 0 or head_dim % phalanx_head_dim:
        raise ValueError(f"phalanx_head_dim={phalanx_head_dim} must divide the attention head_dim {head_dim}")
    layer_types = source_layer_types(config)
    for i in layers:
        layer_types[i] = PHALANX_MIXER
    kwargs: dict[str, Any] = {
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": getattr(config, "num_key_value_heads", None) or config.num_attention_heads,
        "head_dim": head_dim,
        "hidden_act": getattr(config, "hidden_activation", None) or config.hidden_act,
        "max_position_embeddings": config.max_position_embeddings,
        "initializer_range": config.initializer_range,
        "rms_norm_eps": getattr(config, "rms_norm_eps", 1e-6),
        "pad_token_id": getattr(config, "pad_token_id", None),
        "bos_token_id": getattr(config, "bos_token_id", None),
        "eos_token_id": getattr(config, "eos_token_id", None),
        "tie_word_embeddings": bool(getattr(config, "tie_word_embeddings", False)),
        "rope_parameters": _rope_parameters(config, layer_types),
        "attention_dropout": getattr(config, "attention_dropout", 0.0),
        "mlp_bias": bool(getattr(config, "mlp_bias", False)),
        "layer_types": layer_types,
        "sliding_window": getattr(config, "sliding_window", None) if SLIDING_ATTENTION in layer_types else None,
        "phalanx_head_dim": phalanx_head_dim,
        "phalanx_num_heads": width // phalanx_head_dim,
        "swr_block_len": block_len,
        "swr_window_blocks": window_blocks,
    }
    kwargs.update(family.block_kwargs(config))
    # The mixer's out_proj is the source o_proj, bias included.
    out_bias = kwargs.get("attention_out_bias")
    kwargs["phalanx_out_bias"] = kwargs["attention_bias"] if out_bias is None else out_bias
    return kwargs
