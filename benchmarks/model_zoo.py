"""The end-to-end models compared in the benchmarks (issue 7): one place that defines them.

- ``transformer``: Transformers' own ``LlamaForCausalLM`` with SDPA attention.
- ``phalanx_full``: ``PhalanxForCausalLM`` with every layer full attention, SDPA (the same Transformer built
  from ``PhalanxConfig``, to separate the model code's cost from the layer mix's).
- ``swa_hybrid``: ``PhalanxForCausalLM`` with 1 full : 3 sliding-window (512) layers, FlexAttention.
- ``phalanx_hybrid``: ``PhalanxForCausalLM`` with 1 full : 3 Phalanx layers, SDPA for the full layers.
- ``bound``: the Llama model whose attention core is replaced by a free copy of ``v`` (projections
  kept): the speed a hybrid could reach if its mixers cost nothing beyond their projections.
- ``stripedhyena``, ``multihybrid``, ``swax``: the training presets of those flavours at the same size
  (``phalanx_training.presets``: Hyena-SE / MR / LI with full attention; Phalanx, Phalanx, Hyena-LI with full
  attention; SWA-2048 and mLSTM), FlexAttention where they have sliding layers, else SDPA (issue 20 item 3).
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface, LlamaConfig, LlamaForCausalLM, PreTrainedModel

from modeling_phalanx import PhalanxConfig, PhalanxForCausalLM
from modeling_phalanx.configuration_phalanx import FULL_ATTENTION, PHALANX_MIXER, SLIDING_ATTENTION
from phalanx_training.presets import SIZES, get_preset

PRESET_MODELS = ("stripedhyena", "multihybrid", "swax")
MODELS = ("transformer", "swa_hybrid", "phalanx_hybrid", "bound", "phalanx_full", *PRESET_MODELS)

# Architecture fields taken from the training presets (``1.3b``: width 2048, 24 layers, 16 heads x 128,
# SwiGLU 5504, vocab 32000, as in kernels.md section 4; ``tiny`` for CPU smoke runs).
ARCH_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
               "intermediate_size", "vocab_size")


def _free_v_attention(module, query, key, value, attention_mask, **kwargs):
    """Attention core that costs nothing: returns v (repeated over GQA groups) in the interface's layout."""
    groups = query.shape[1] // value.shape[1]
    out = value.repeat_interleave(groups, dim=1) if groups > 1 else value
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register("free_v", _free_v_attention)


def build_model(name: str, size: str = "1.3b", sliding_window: int = 512, max_positions: int = 32768,
                attn_implementation: str | None = None) -> PreTrainedModel:
    """Build benchmark model ``name`` at ``size`` with random weights on the current default device; attention runs
    through ``attn_implementation`` when given, else the model's training choice (FlexAttention with sliding
    layers, SDPA otherwise; ``free_v`` for ``bound``)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {MODELS}")
    dims = {field: SIZES[size][field] for field in ARCH_FIELDS}
    n = dims["num_hidden_layers"]
    if name in ("transformer", "bound"):
        config = LlamaConfig(**dims, max_position_embeddings=max_positions,
                             pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
        attn = "free_v" if name == "bound" else attn_implementation or "sdpa"
        return LlamaForCausalLM._from_config(config, attn_implementation=attn)
    ids = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)
    if name in PRESET_MODELS:
        config = get_preset(f"{size}-{name}", max_position_embeddings=max_positions, **ids)
        attn = attn_implementation or ("flex_attention" if SLIDING_ATTENTION in config.layer_types else "sdpa")
        return PhalanxForCausalLM._from_config(config, attn_implementation=attn)
    mixer = {"swa_hybrid": SLIDING_ATTENTION, "phalanx_hybrid": PHALANX_MIXER, "phalanx_full": FULL_ATTENTION}[name]
    layer_types = [FULL_ATTENTION if i % 4 == 0 else mixer for i in range(n)]
    config = PhalanxConfig(**dims, max_position_embeddings=max_positions,
                           layer_types=layer_types, sliding_window=sliding_window if name == "swa_hybrid" else None,
                           **ids)
    attn = attn_implementation or ("flex_attention" if name == "swa_hybrid" else "sdpa")
    return PhalanxForCausalLM._from_config(config, attn_implementation=attn)


def cache_bytes(cache) -> int:
    """Bytes held by every tensor of a Transformers cache (KV and recurrent states)."""
    total = 0
    for layer in cache.layers:
        for value in vars(layer).values():
            tensors = value if isinstance(value, (list, tuple)) else [value]
            total += sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))
    return total
