"""Phalanx hybrid decoder for Transformers: full attention, sliding-window attention and the Phalanx mixer.

Layout follows Transformers' own decoders (Qwen3, Gemma3, Olmo3, Cohere2): attention goes through the attention
interface, masks through `masking_utils`, the cache is a `DynamicCache` whose linear-attention layers hold the
Phalanx state. The Phalanx mixer (DESIGN.md section 3) runs the sliding window recurrence with Triton for CUDA
tensors through `phalanx_kernels` when that package is installed, else through the kernel repository that
`config.phalanx_kernel_repo` names (the `kernels` library loads it), and with the PyTorch reference in
`swr_torch.py` otherwise, so a Hub bundle of these flat files runs anywhere.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from dataclasses import fields

import torch
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import (
    Cache,
    CacheLayerMixin,
    DynamicCache,
    LinearAttentionCacheLayerMixin,
    StaticCache,
    StaticSlidingWindowLayer,
)
from transformers.generation import GenerationConfig, GenerationMixin, GenerationMode
from transformers.masking_utils import (
    create_causal_mask,
    create_recurrent_attention_mask,
    create_sliding_window_causal_mask,
)
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS, dynamic_rope_update
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs, can_return_tuple, logging
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .configuration_phalanx import (
    ATTENTION_LAYER_TYPES,
    FULL_ATTENTION,
    HYENA_LI,
    HYENA_MR,
    HYENA_SE,
    MLSTM_MIXER,
    PHALANX_MIXER,
    SLIDING_ATTENTION,
    PhalanxConfig,
)
from .hyena_phalanx import PhalanxHyenaMixer
from .kernel_choice import kernel_package
from .mlstm_phalanx import MLSTM_NUM_CACHE_STATES, MLSTMGateProjection, PhalanxMLSTMMixer
from .swr_torch import SWRState, phalanx_core_step_torch, phalanx_core_torch, phalanx_projection_sizes


logger = logging.get_logger(__name__)

# Transformers 5.24 renamed the cache that `generate` passes to `forward`, and the output field it reads it back
# from, from `past_key_values` to `cache` (compare `modeling_qwen3_next.py` in 5.23 and 5.24). The models take both
# names and return the cache under the installed release's name, so `generate` threads it on every allowed release.
CACHE_KWARG = "cache" if "cache" in {f.name for f in fields(BaseModelOutputWithPast)} else "past_key_values"

# Keywords `forward` takes through `**kwargs`: Transformers' own model-agnostic ones. Anything else is a mistake
# (a misspelt or renamed argument) that a silent `**kwargs` would swallow.
MODEL_KWARGS = TransformersKwargs.__required_keys__ | TransformersKwargs.__optional_keys__


def resolve_cache(cache: Cache | None, past_key_values: Cache | None) -> Cache | None:
    """The cache given under either name: `cache` (Transformers >= 5.24) or `past_key_values` (earlier releases)."""
    if past_key_values is None:
        return cache
    if cache is not None:
        raise TypeError("got both `cache` and `past_key_values`; pass the cache once")
    return past_key_values


def check_model_kwargs(kwargs: dict, method: str) -> None:
    """Refuse keywords that neither `method`'s signature nor `TransformersKwargs` names."""
    unknown = sorted(set(kwargs) - MODEL_KWARGS)
    if unknown:
        raise TypeError(f"{method}() got unexpected keyword arguments {unknown}")


def triton_kernels(repo: str | None = None) -> tuple[type, Callable, Callable] | None:
    """(SWRState, phalanx_core, phalanx_core_step) of the kernels package `kernel_choice` picks, or None (PyTorch)."""
    package = kernel_package(repo)
    return None if package is None else (package.SWRState, package.phalanx_core, package.phalanx_core_step)


# `auto_map` written to config.json so the saved folder loads with trust_remote_code and no package installed.
PHALANX_AUTO_MAP = {
    "AutoConfig": "configuration_phalanx.PhalanxConfig",
    "AutoModel": "modeling_phalanx.PhalanxModel",
    "AutoModelForCausalLM": "modeling_phalanx.PhalanxForCausalLM",
}

# Default LoRA targets: attention and Phalanx projections (PEFT suffix match). The MLP is left out on purpose;
# add "gate_proj", "up_proj", "down_proj" for more capacity.
PHALANX_LORA_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "in_proj", "out_proj"]


# ----------------------------------------------------------------------------------------------------------------
# Norms and embeddings
# ----------------------------------------------------------------------------------------------------------------


class PhalanxRMSNorm(nn.Module):
    """RMSNorm as in Llama/Qwen3: normalise in fp32, cast back, then scale by `weight` (initialised to 1).

    Adapted from `transformers.models.llama.modeling_llama.LlamaRMSNorm`.
    """

    def __init__(self, hidden_size: int | tuple[int, ...], eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states.to(input_dtype)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.variance_epsilon}"


class PhalanxGemmaRMSNorm(nn.Module):
    """Gemma RMSNorm: `x_hat * (1 + weight)` computed in fp32 (weight initialised to 0).

    Adapted from `transformers.models.gemma3.modeling_gemma3.Gemma3RMSNorm`.
    """

    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        output = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (output * (1.0 + self.weight.float())).type_as(x)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.eps}"


class PhalanxLayerNorm(nn.Module):
    """Cohere LayerNorm: mean-centred, weight only (no bias), in fp32.

    Adapted from `transformers.models.cohere.modeling_cohere.CohereLayerNorm`.
    """

    def __init__(self, hidden_size: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        mean = hidden_states.mean(-1, keepdim=True)
        variance = (hidden_states - mean).pow(2).mean(-1, keepdim=True)
        hidden_states = (hidden_states - mean) * torch.rsqrt(variance + self.variance_epsilon)
        return (self.weight.to(torch.float32) * hidden_states).to(input_dtype)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.variance_epsilon}"


NORM_CLASSES: dict[str, type[nn.Module]] = {
    "rms": PhalanxRMSNorm,
    "gemma_rms": PhalanxGemmaRMSNorm,
    "layer_norm": PhalanxLayerNorm,
}


def make_norm(config: PhalanxConfig, size: int) -> nn.Module:
    """The norm of `config.norm_type` over `size` features."""
    return NORM_CLASSES[config.norm_type](size, eps=config.rms_norm_eps)


class PhalanxScaledWordEmbedding(nn.Embedding):
    """Token embedding multiplied by `embed_scale` cast to the weight dtype (Gemma), skipped when the scale is 1.

    Adapted from `transformers.models.gemma3.modeling_gemma3.Gemma3TextScaledWordEmbedding`.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None, embed_scale: float = 1.0):
        super().__init__(num_embeddings, embedding_dim, padding_idx)
        self.scalar_embed_scale = embed_scale
        self.embed_scale = nn.Buffer(torch.tensor(embed_scale), persistent=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        embeds = super().forward(input_ids)
        if self.scalar_embed_scale == 1.0:
            return embeds
        return embeds * self.embed_scale.to(self.weight.dtype)


# ----------------------------------------------------------------------------------------------------------------
# Rotary position embeddings
# ----------------------------------------------------------------------------------------------------------------


class PhalanxRotaryEmbedding(nn.Module):
    """Rotary embedding; one frequency table (Llama layout) or one per attention layer type (Gemma3/Olmo3 layout).

    With a flat `rope_parameters` the buffers are `inv_freq` / `original_inv_freq`; with `rope_parameters` nested
    by layer type they are `{layer_type}_inv_freq` / `{layer_type}_original_inv_freq`, and a `None` entry means
    that layer type uses no RoPE. `rope_interleaved` repeats each frequency for GPT-J-style pairs (Cohere).

    Adapted from `transformers.models.llama.modeling_llama.LlamaRotaryEmbedding`; the per-layer-type tables from
    `transformers.models.gemma3.modeling_gemma3.Gemma3RotaryEmbedding`.
    """

    def __init__(self, config: PhalanxConfig, device: torch.device | None = None) -> None:
        super().__init__()
        self.max_seq_len_cached = config.max_position_embeddings
        self.original_max_seq_len = config.max_position_embeddings
        self.config = config
        self.interleaved = config.rope_interleaved
        self.nested = config.rope_parameters_by_layer_type
        if not self.nested:
            self.rope_type = config.rope_parameters["rope_type"]
            inv_freq, self.attention_scaling = self._init_fn(self.rope_type)(config, device)
            self.inv_freq = nn.Buffer(inv_freq, persistent=False)
            self.original_inv_freq = nn.Buffer(inv_freq.clone(), persistent=False)
            return
        self.layer_types = sorted(t for t in set(config.layer_types) if t in ATTENTION_LAYER_TYPES)
        self.rope_type = {}
        for layer_type in self.layer_types:
            params = config.rope_parameters[layer_type]
            if params is None:
                continue
            self.rope_type[layer_type] = params["rope_type"]
            inv_freq, scaling = self._init_fn(params["rope_type"])(config, device, layer_type=layer_type)
            setattr(self, f"{layer_type}_inv_freq", nn.Buffer(inv_freq, persistent=False))
            setattr(self, f"{layer_type}_original_inv_freq", nn.Buffer(inv_freq.clone(), persistent=False))
            setattr(self, f"{layer_type}_attention_scaling", scaling)

    def _init_fn(self, rope_type: str) -> Callable:
        return self.compute_default_rope_parameters if rope_type == "default" else ROPE_INIT_FUNCTIONS[rope_type]

    @staticmethod
    def compute_default_rope_parameters(
        config: PhalanxConfig, device: torch.device | None = None, layer_type: str | None = None, **kwargs
    ) -> tuple[torch.Tensor, float]:
        """Inverse frequencies of the original RoPE for attention's `head_dim` (attention scaling 1.0)."""
        params = config.rope_parameters if layer_type is None else config.rope_parameters[layer_type]
        base = params["rope_theta"]
        dim = config.head_dim
        exponents = torch.arange(0, dim, 2, dtype=torch.int64).to(device=device, dtype=torch.float) / dim
        inv_freq = 1.0 / (base**exponents)
        return inv_freq, 1.0

    def uses_rope(self, layer_type: str) -> bool:
        """Whether layers of `layer_type` get rotary embeddings from this module."""
        return not self.nested or layer_type in self.rope_type

    @torch.no_grad()
    @dynamic_rope_update
    def forward(
        self, x: torch.Tensor, position_ids: torch.Tensor, layer_type: str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        prefix = "" if layer_type is None else f"{layer_type}_"
        inv_freq = getattr(self, f"{prefix}inv_freq")
        attention_scaling = getattr(self, f"{prefix}attention_scaling")
        freqs = position_ids[..., None].float() * inv_freq.to(device=x.device, dtype=torch.float)
        if self.interleaved:
            emb = torch.repeat_interleave(freqs, 2, dim=-1)
        else:
            emb = torch.cat((freqs, freqs), dim=-1)
        cos = emb.cos() * attention_scaling
        sin = emb.sin() * attention_scaling
        return cos.to(dtype=x.dtype), sin.to(dtype=x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """Rotates half the hidden dims of the input (Llama layout).

    Adapted from `transformers.models.llama.modeling_llama.rotate_half`.
    """
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def rotate_pairs(x: torch.Tensor) -> torch.Tensor:
    """Rotates adjacent channel pairs (GPT-J / Cohere layout).

    Adapted from `transformers.models.cohere.modeling_cohere.rotate_half`.
    """
    x1 = x[..., ::2]
    x2 = x[..., 1::2]
    return torch.stack([-x2, x1], dim=-1).flatten(-2)


def apply_rotary_pos_emb(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, unsqueeze_dim: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Applies half-split rotary embeddings to q and k shaped (B, H, T, D).

    Adapted from `transformers.models.llama.modeling_llama.apply_rotary_pos_emb`.
    """
    cos = cos.unsqueeze(unsqueeze_dim)
    sin = sin.unsqueeze(unsqueeze_dim)
    q_embed = (q * cos) + (rotate_half(q) * sin)
    k_embed = (k * cos) + (rotate_half(k) * sin)
    return q_embed, k_embed


def apply_interleaved_rotary_pos_emb(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, unsqueeze_dim: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Applies pairwise rotary embeddings in fp32, as Cohere does.

    Adapted from `transformers.models.cohere.modeling_cohere.apply_rotary_pos_emb`.
    """
    dtype = q.dtype
    q, k = q.float(), k.float()
    cos = cos.unsqueeze(unsqueeze_dim)
    sin = sin.unsqueeze(unsqueeze_dim)
    q_embed = (q * cos) + (rotate_pairs(q) * sin)
    k_embed = (k * cos) + (rotate_pairs(k) * sin)
    return q_embed.to(dtype=dtype), k_embed.to(dtype=dtype)


# ----------------------------------------------------------------------------------------------------------------
# Attention
# ----------------------------------------------------------------------------------------------------------------


def repeat_kv(hidden_states: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(B, H_kv, T, D) -> (B, H_kv * n_rep, T, D), as `torch.repeat_interleave(x, n_rep, dim=1)`.

    Adapted from `transformers.models.llama.modeling_llama.repeat_kv`.
    """
    batch, num_key_value_heads, slen, head_dim = hidden_states.shape
    if n_rep == 1:
        return hidden_states
    hidden_states = hidden_states[:, :, None, :, :].expand(batch, num_key_value_heads, n_rep, slen, head_dim)
    return hidden_states.reshape(batch, num_key_value_heads * n_rep, slen, head_dim)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float | int = 0.0,
    scaling: float | None = None,
    softcap: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference attention with optional tanh soft-capping of the scores (Gemma2).

    Adapted from `transformers.models.gemma2.modeling_gemma2.eager_attention_forward`.
    """
    if scaling is None:
        scaling = module.head_dim**-0.5
    key_states = repeat_kv(key, module.num_key_value_groups)
    value_states = repeat_kv(value, module.num_key_value_groups)
    attn_weights = torch.matmul(query, key_states.transpose(2, 3)) * scaling
    if softcap is not None:
        attn_weights = torch.tanh(attn_weights / softcap) * softcap
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = nn.functional.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = nn.functional.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value_states)
    attn_output = attn_output.transpose(1, 2).contiguous()
    return attn_output, attn_weights


class PhalanxAttention(nn.Module):
    """Multi-head (GQA) attention, full or sliding-window, with the QK-norm / scaling / soft-cap variants.

    Adapted from `transformers.models.qwen3.modeling_qwen3.Qwen3Attention`, with the scaling and soft-capping of
    `gemma2.modeling_gemma2.Gemma2Attention`, the projection QK-norm of `olmo3.modeling_olmo3.Olmo3Attention` and
    the NoPE layers of `cohere2.modeling_cohere2.Cohere2Attention`.
    """

    def __init__(self, config: PhalanxConfig, layer_idx: int) -> None:
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.layer_type = config.layer_types[layer_idx]
        self.head_dim = config.head_dim
        self.num_key_value_groups = config.num_attention_heads // config.num_key_value_heads
        self.scaling = (config.query_pre_attn_scalar or config.head_dim) ** -0.5
        self.attention_dropout = config.attention_dropout
        self.is_causal = True
        self.sliding_window = config.sliding_window if self.layer_type == SLIDING_ATTENTION else None
        self.attn_logit_softcapping = config.attn_logit_softcapping
        self.use_rope = layer_idx not in (config.no_rope_layers or [])
        self.apply_rotary = apply_interleaved_rotary_pos_emb if config.rope_interleaved else apply_rotary_pos_emb
        q_size = config.num_attention_heads * self.head_dim
        kv_size = config.num_key_value_heads * self.head_dim
        out_bias = config.attention_bias if config.attention_out_bias is None else config.attention_out_bias
        self.q_proj = nn.Linear(config.hidden_size, q_size, bias=config.attention_bias)
        self.k_proj = nn.Linear(config.hidden_size, kv_size, bias=config.attention_bias)
        self.v_proj = nn.Linear(config.hidden_size, kv_size, bias=config.attention_bias)
        self.o_proj = nn.Linear(q_size, config.hidden_size, bias=out_bias)
        self.qk_norm = config.qk_norm
        if self.qk_norm == "head":
            self.q_norm = make_norm(config, self.head_dim)
            self.k_norm = make_norm(config, self.head_dim)
        elif self.qk_norm == "projection":
            self.q_norm = make_norm(config, q_size)
            self.k_norm = make_norm(config, kv_size)

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None,
        attention_mask: torch.Tensor | None,
        cache: Cache | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        query_states = self.q_proj(hidden_states)
        key_states = self.k_proj(hidden_states)
        if self.qk_norm == "projection":
            query_states, key_states = self.q_norm(query_states), self.k_norm(key_states)
        query_states = query_states.view(hidden_shape)
        key_states = key_states.view(hidden_shape)
        if self.qk_norm == "head":
            query_states, key_states = self.q_norm(query_states), self.k_norm(key_states)
        query_states = query_states.transpose(1, 2)
        key_states = key_states.transpose(1, 2)
        value_states = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)

        if self.use_rope and position_embeddings is not None:
            cos, sin = position_embeddings
            query_states, key_states = self.apply_rotary(query_states, key_states, cos, sin)

        if cache is not None:
            # `unmasked`: a one-token step on a full static window may count its token on the device (see
            # PhalanxStaticSlidingWindowLayer); other cache layers ignore it.
            key_states, value_states = cache.update(
                key_states, value_states, self.layer_idx, unmasked=attention_mask is None
            )

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        softcap_kwargs = {} if self.attn_logit_softcapping is None else {"softcap": self.attn_logit_softcapping}
        attn_output, attn_weights = attention_interface(
            self,
            query_states,
            key_states,
            value_states,
            attention_mask,
            dropout=self.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
            sliding_window=self.sliding_window,
            **softcap_kwargs,
            **kwargs,
        )
        attn_output = attn_output.reshape(*input_shape, -1).contiguous()
        return self.o_proj(attn_output), attn_weights


# ----------------------------------------------------------------------------------------------------------------
# Phalanx mixer
# ----------------------------------------------------------------------------------------------------------------


def mixers_hold_state(cache: Cache | None, layer_types: list[str]) -> bool:
    """Whether any mixer layer of ``cache`` holds a state already (a continued forward)."""
    return cache is not None and any(
        cache.layers[i].is_recurrent_states_initialized[0] for i, t in enumerate(layer_types) if t in MIXER_CLASSES
    )


def sees_full_window(
    cache: Cache | None, layer_idx: int, query_length: int, attention_mask: torch.Tensor | None
) -> bool:
    """Whether the sliding layer `layer_idx` decodes one unpadded token against a static window that is full: every
    cached key is then visible and the layer needs no mask. Transformers builds that mask from the layer's Python
    token count (`cumulative_length_int`), so a compiled decoding step took a new int input at every token, and
    CUDA-graph trees record one graph per value: the SWAX preset's fast decode ran at 29 tokens/s on the H200
    (`benchmarks/results/hyena_h200_s16/`). Only the comparison below is traced, as a guard."""
    if cache is None or query_length != 1 or attention_mask is not None:
        return False
    layer = cache.layers[layer_idx]
    return isinstance(layer, StaticSlidingWindowLayer) and layer.cumulative_length_int >= layer.max_cache_len


def create_phalanx_masks(
    config: PhalanxConfig,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor | None,
    cache: Cache | None,
    position_ids: torch.Tensor | None,
) -> dict[str, torch.Tensor | None]:
    """The mask of each layer type: causal (full), sliding-window causal, and the 2D padding mask the mixer layers
    (Phalanx, Hyena, mLSTM) handle padding with. Each attention mask is sized by a layer of its own kind (Transformers 5.17
    would otherwise take the first non-sliding layer, which may be a mixer layer, and size a static cache's mask
    wrongly)."""
    layer_types = config.layer_types
    mask_kwargs = {
        "config": config,
        "inputs_embeds": inputs_embeds,
        "attention_mask": attention_mask,
        CACHE_KWARG: cache,
        "position_ids": position_ids,
    }
    masks = {}
    if FULL_ATTENTION in layer_types:
        masks[FULL_ATTENTION] = create_causal_mask(**mask_kwargs, layer_idx=layer_types.index(FULL_ATTENTION))
    if SLIDING_ATTENTION in layer_types:
        layer_idx = layer_types.index(SLIDING_ATTENTION)
        full_window = sees_full_window(cache, layer_idx, inputs_embeds.shape[1], attention_mask)
        masks[SLIDING_ATTENTION] = (
            None if full_window else create_sliding_window_causal_mask(**mask_kwargs, layer_idx=layer_idx)
        )
    mixer_types = {t for t in layer_types if t not in ATTENTION_LAYER_TYPES}
    if mixer_types:
        padding_mask = create_recurrent_attention_mask(**mask_kwargs)
        masks.update(dict.fromkeys(mixer_types, padding_mask))
    return masks


def default_position_ids(
    attention_mask: torch.Tensor | None, cache: Cache | None, seqlen: int, device: torch.device
) -> torch.Tensor:
    """Positions of the new tokens when the caller gives none: from a 2D mask covering the cached and new tokens,
    the count of real tokens before each one (padding gets 0), as `generate` computes them; otherwise they follow
    the cache. Phalanx blocks are aligned to these positions."""
    past_seen = cached_tokens(cache) if cache is not None else 0
    mask = attention_mask if isinstance(attention_mask, torch.Tensor) else None  # not a per-layer-type dict
    if mask is not None and mask.ndim == 2 and mask.shape[1] == past_seen + seqlen:
        positions = mask.long().cumsum(-1) - 1
        return positions.masked_fill(mask == 0, 0)[:, -seqlen:]
    return (torch.arange(seqlen, device=device) + past_seen).unsqueeze(0)


def sequence_starts(position_ids: torch.Tensor) -> tuple[torch.Tensor | None, int | None]:
    """`cu_seqlens` of the batch flattened to one packed row and its longest sequence, or (None, None) when every
    row is one sequence.

    A position equal to 0 starts a new sequence (as `DataCollatorWithFlattening` and left-padded generation
    produce); the first token of every row always starts one. Both come from one host copy of the start flags, so
    the layers (which get both) wait for the device no more in the forward.
    """
    starts = position_ids == 0
    starts[:, 0] = True
    starts = starts.cpu()
    if not bool(starts[:, 1:].any()):
        return None, None
    flat = starts.reshape(-1)
    cu_seqlens = torch.cat([torch.nonzero(flat).squeeze(-1), torch.tensor([flat.numel()])])
    return cu_seqlens.to(position_ids.device), int((cu_seqlens[1:] - cu_seqlens[:-1]).max())


class PhalanxInputProjection(nn.Linear):
    """The mixer's `in_proj` (a plain `nn.Linear` for PEFT); its type marks where the decay-bias init applies."""

    def __init__(self, in_features: int, out_features: int, num_decay_heads: int) -> None:
        super().__init__(in_features, out_features, bias=True)
        self.num_decay_heads = num_decay_heads


class PhalanxMixer(nn.Module):
    """Phalanx token mixer: `in_proj` -> gated sliding window recurrence (SWR) core -> `out_proj`.

    `in_proj` (with bias) yields `[decay logits (H) | input-gate logits (Hg*D) | readout (Hg*D) | values (H*D)]`;
    the core computes `h = SWR(sigmoid(b) * v, logsigmoid(a))` and `h * c + v` (DESIGN.md section 3).
    """

    def __init__(self, config: PhalanxConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.phalanx_num_heads
        self.head_dim = config.phalanx_head_dim
        self.num_gate_groups = config.phalanx_num_gate_groups
        self.block_len = config.swr_block_len
        self.window_blocks = config.swr_window_blocks
        self.decay_cap = config.phalanx_decay_cap
        proj_size = sum(phalanx_projection_sizes(self.num_heads, self.head_dim, self.num_gate_groups))
        self.in_proj = PhalanxInputProjection(config.hidden_size, proj_size, self.num_heads)
        self.out_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=config.phalanx_out_bias)
        # Optional per-head RMSNorm of the core's output (config.phalanx_output_norm), in the norm's usual fp32.
        self.out_norm = PhalanxRMSNorm(self.head_dim, eps=config.rms_norm_eps) if config.phalanx_output_norm else None
        self.kernels = triton_kernels(config.phalanx_kernel_repo)

    def _core_kwargs(self) -> dict:
        return {"num_heads": self.num_heads, "head_dim": self.head_dim, "num_gate_groups": self.num_gate_groups}

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: Cache | None = None,
        cu_seqlens: torch.Tensor | None = None,
        max_seqlen: int | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[torch.Tensor, None]:
        """`attention_mask`: 2D padding mask (1 = token) or None; `position_ids` (B, T) give each row's phase when
        it continues from the cache; `cu_seqlens` and `max_seqlen` (from :func:`sequence_starts`) split rows into
        sequences."""
        seqlen = hidden_states.shape[1]
        proj = self.in_proj(hidden_states)
        if attention_mask is not None:
            # Padding contributes nothing to the state (create_recurrent_attention_mask gives a 2D mask).
            proj = proj * attention_mask[:, -seqlen:, None].to(proj.dtype)
        use_kernels = self.kernels is not None  # they send CPU tensors to their PyTorch path
        state_cls = self.kernels[0] if use_kernels else SWRState
        cache_layer = None if cache is None else cache.layers[self.layer_idx]
        cached_h = None
        if cache_layer is not None and cache_layer.is_recurrent_states_initialized[0]:
            start_pos = position_ids[:, 0].to(torch.long)
            # A row whose first position is 0 starts a new sequence: its cached state must not leak in.
            fresh = (start_pos == 0).view(-1, 1, 1, 1)
            cached_h = cache_layer.recurrent_states[0].masked_fill(fresh, 0.0)

        if cached_h is not None and seqlen == 1:
            step = self.kernels[2] if use_kernels else phalanx_core_step_torch
            y, state = step(
                proj[:, 0],
                state_cls(cached_h, start_pos),
                block_len=self.block_len,
                decay_cap=self.decay_cap,
                **self._core_kwargs(),
            )
            y = y.unsqueeze(1)
        else:
            want_state = cache_layer is not None
            y, state = self._chunk(
                proj, state_cls, cached_h, attention_mask, position_ids, cu_seqlens, max_seqlen, want_state,
                use_kernels,
            )
        if cache_layer is not None:
            cache.update_recurrent_state(state.h, self.layer_idx, state_idx=0)
            cache.update_recurrent_state(state.pos, self.layer_idx, state_idx=1)
        if self.out_norm is not None:
            y = self.out_norm(y.unflatten(-1, (self.num_heads, self.head_dim))).flatten(-2)
        return self.out_proj(y), None

    def _chunk(
        self,
        proj: torch.Tensor,
        state_cls: type,
        cached_h: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor,
        cu_seqlens: torch.Tensor | None,
        max_seqlen: int | None,
        want_state: bool,
        use_kernels: bool,
    ) -> tuple[torch.Tensor, SWRState | None]:
        """Multi-token pass (training, prefill, chunked continuation); returns y and, if wanted, each row's state.

        Without `cu_seqlens`, a row that starts afresh under a 2D padding mask starts at position -p, p its
        leading padding tokens (zeroed in `proj`, so they add nothing): its blocks align to its first token."""
        batch, seqlen, features = proj.shape
        core = self.kernels[1] if use_kernels else phalanx_core_torch
        core_kwargs = {
            "block_len": self.block_len,
            "window_blocks": self.window_blocks,
            "decay_cap": self.decay_cap,
            "output_final_state": want_state,
            **self._core_kwargs(),
        }
        if cu_seqlens is None:
            initial = None if cached_h is None else state_cls(cached_h, position_ids[:, 0].to(torch.long))
            if cached_h is None and attention_mask is not None:
                leading = (attention_mask[:, -seqlen:].cumsum(-1) == 0).sum(-1)
                initial = state_cls(None, -leading.to(torch.long))
            out = core(proj, initial_state=initial, **core_kwargs)
            return out if want_state else (out, None)

        # Rows hold several sequences: flatten to one packed row; each row's first sequence may continue the cache.
        num_seqs = cu_seqlens.numel() - 1
        row_start = torch.arange(batch, device=proj.device) * seqlen
        row_first = torch.searchsorted(cu_seqlens[:-1], row_start, right=True) - 1
        row_last = torch.searchsorted(cu_seqlens[:-1], row_start + seqlen - 1, right=True) - 1
        initial = None
        if cached_h is not None:
            h0 = cached_h.new_zeros(num_seqs, *cached_h.shape[1:])
            pos0 = torch.zeros(num_seqs, dtype=torch.long, device=proj.device)
            h0[row_first] = cached_h
            pos0[row_first] = position_ids[:, 0].to(torch.long)
            initial = state_cls(h0, pos0)
        packed = proj.reshape(1, batch * seqlen, features)
        out = core(packed, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen, initial_state=initial, **core_kwargs)
        y, state = out if want_state else (out, None)
        y = y.view(batch, seqlen, -1)
        if state is not None:
            state = state_cls(state.h[row_last], state.pos[row_last])
        return y, state


# ----------------------------------------------------------------------------------------------------------------
# MLP, decoder layer
# ----------------------------------------------------------------------------------------------------------------


class PhalanxMLP(nn.Module):
    """Gated MLP: `down(act(gate(x)) * up(x))`.

    Adapted from `transformers.models.llama.modeling_llama.LlamaMLP`.
    """

    def __init__(self, config: PhalanxConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.mlp_bias)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.mlp_bias)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=config.mlp_bias)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


# Token mixers other than attention, by layer type: each is built as `cls(config, layer_idx)` and called as
# `mixer(hidden_states, attention_mask=, position_ids=, cache=, cu_seqlens=)` returning `(output, None)`.
MIXER_CLASSES: dict[str, type[nn.Module]] = {
    PHALANX_MIXER: PhalanxMixer,
    HYENA_SE: PhalanxHyenaMixer,
    HYENA_MR: PhalanxHyenaMixer,
    HYENA_LI: PhalanxHyenaMixer,
    MLSTM_MIXER: PhalanxMLSTMMixer,
}


class PhalanxDecoderLayer(GradientCheckpointingLayer):
    """One decoder block: a token mixer (attention, or a `MIXER_CLASSES` mixer) and an MLP, with the configured norm
    placement.

    pre: `x + mix(n1(x))`, then `x + mlp(n2(x))` (Llama). sandwich: `x + n2(mix(n1(x)))`, then
    `x + n4(mlp(n3(x)))` (Gemma2/3). post: `x + n2(mix(x))`, then `x + n4(mlp(x))` (Olmo3).
    parallel: `x + mix(n1(x)) + mlp(n1(x))` (Cohere).

    Adapted from `transformers.models.llama.modeling_llama.LlamaDecoderLayer`, with the norm placements of
    `gemma2.modeling_gemma2.Gemma2DecoderLayer`, `olmo3.modeling_olmo3.Olmo3DecoderLayer` and
    `cohere.modeling_cohere.CohereDecoderLayer`.
    """

    def __init__(self, config: PhalanxConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_type = config.layer_types[layer_idx]
        self.placement = config.norm_placement
        if self.layer_type in MIXER_CLASSES:
            self.mixer = MIXER_CLASSES[self.layer_type](config, layer_idx)
        else:
            self.self_attn = PhalanxAttention(config, layer_idx)
        self.mlp = PhalanxMLP(config)
        if self.placement in ("pre", "sandwich", "parallel"):
            self.input_layernorm = make_norm(config, config.hidden_size)
        if self.placement in ("pre", "sandwich", "post"):
            self.post_attention_layernorm = make_norm(config, config.hidden_size)
        if self.placement == "sandwich":
            self.pre_feedforward_layernorm = make_norm(config, config.hidden_size)
        if self.placement in ("sandwich", "post"):
            self.post_feedforward_layernorm = make_norm(config, config.hidden_size)

    def _mix(self, hidden_states: torch.Tensor, **kwargs) -> torch.Tensor:
        token_mixer = self.mixer if self.layer_type in MIXER_CLASSES else self.self_attn
        output, _ = token_mixer(hidden_states, **kwargs)
        return output

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        cu_seqlens: torch.Tensor | None = None,
        max_seqlen: int | None = None,
        past_key_values: Cache | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> torch.Tensor:
        # The model passes the cache under the installed release's name: gradient checkpointing drops it by that name.
        cache = resolve_cache(cache, past_key_values)
        if self.layer_type in MIXER_CLASSES:
            mix_kwargs = {"position_ids": position_ids, "cu_seqlens": cu_seqlens, "max_seqlen": max_seqlen}
        else:
            mix_kwargs = {"position_embeddings": position_embeddings}
        mix_kwargs.update(attention_mask=attention_mask, cache=cache, **kwargs)

        residual = hidden_states
        if self.placement == "parallel":
            normed = self.input_layernorm(hidden_states)
            return residual + self._mix(normed, **mix_kwargs) + self.mlp(normed)
        if self.placement != "post":
            hidden_states = self.input_layernorm(hidden_states)
        hidden_states = self._mix(hidden_states, **mix_kwargs)
        if self.placement != "pre":
            hidden_states = self.post_attention_layernorm(hidden_states)
        hidden_states = residual + hidden_states

        residual = hidden_states
        if self.placement == "pre":
            hidden_states = self.post_attention_layernorm(hidden_states)
        elif self.placement == "sandwich":
            hidden_states = self.pre_feedforward_layernorm(hidden_states)
        hidden_states = self.mlp(hidden_states)
        if self.placement != "pre":
            hidden_states = self.post_feedforward_layernorm(hidden_states)
        return residual + hidden_states


# ----------------------------------------------------------------------------------------------------------------
# Cache
# ----------------------------------------------------------------------------------------------------------------


def cache_layout_config(config: PhalanxConfig) -> PhalanxConfig:
    """`config` as Transformers' caches should read it: a copy whose `layer_types` names each mixer's cache layer
    kind (`config.cache_layer_types`), with enough state slots for the mLSTM's (C, tokens consumed, n, m), or
    `config` itself when every layer type is already one of Transformers'."""
    layer_types = config.cache_layer_types
    if layer_types == config.layer_types:
        return config
    view = copy.copy(config)
    view.layer_types = layer_types
    if MLSTM_MIXER in config.layer_types:
        view.number_of_conv_states = max(config.number_of_conv_states, MLSTM_NUM_CACHE_STATES)
    return view


def cached_tokens(cache: Cache, layer_idx: int = 0) -> int:
    """The tokens `cache` holds, for every layer mix and every allowed Transformers release, whatever the cache's
    class (the model's own or a plain `DynamicCache` / `StaticCache`).

    Transformers' `Cache.get_seq_length` reads the requested layer (from 5.25 a linear-attention layer counts only
    the tokens its conv states saw: 0 for a Phalanx layer) or, up to 5.24, the first attention layer when the
    requested one is a linear-attention layer, and refuses a cache without attention layers. Here an attention
    layer answers for itself; a mixer layer is answered by the first attention layer, or without any, by the tokens
    consumed per row that each mixer keeps in `recurrent_states[1]` (Phalanx, Hyena, mLSTM keep the mixer's state
    in `recurrent_states[0]`, and for the mLSTM 2 and 3; Hyena's FIR windows sit in `conv_states`).
    """
    if layer_idx >= len(cache.layers):
        return 0
    if isinstance(cache.layers[layer_idx], CacheLayerMixin):
        return cache.layers[layer_idx].get_seq_length()
    for layer in cache.layers:
        if isinstance(layer, CacheLayerMixin):
            return layer.get_seq_length()
    for layer in cache.layers:
        if isinstance(layer, LinearAttentionCacheLayerMixin) and layer.is_recurrent_states_initialized[1]:
            return int(layer.recurrent_states[1].max())
    return 0


class PhalanxSeqLengthMixin:
    """`get_seq_length` as :func:`cached_tokens` counts (what `generate` reads of the model's caches)."""

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return cached_tokens(self, layer_idx)


class PhalanxCache(PhalanxSeqLengthMixin, DynamicCache):
    """`DynamicCache(config)` for Phalanx models: what `forward` and `generate` build by default."""

    def __init__(self, ddp_cache_data=None, config: PhalanxConfig | None = None, **kwargs) -> None:
        super().__init__(ddp_cache_data, config=None if config is None else cache_layout_config(config), **kwargs)


class PhalanxStaticSlidingWindowLayer(StaticSlidingWindowLayer):
    """Transformers' `StaticSlidingWindowLayer`, except that an unmasked one-token step on a full window counts its
    token in a device tensor (`deferred`) instead of the Python int `cumulative_length_int`.

    Transformers' layer adds each token to that int inside the step, so a compiled decoding step took a new int
    input at every token, and CUDA-graph trees record one graph per int value: the SWAX preset's fast decode ran at
    29 tokens/s on the H200 (`benchmarks/results/hyena_h200_s16/`). Such a step needs no mask (`sees_full_window`)
    and now reads no per-token Python value. The int is brought up to date (one host read) before anything else
    reads or changes the layer; a compiled region cannot do that read, so it refuses to.
    """

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        self.deferred = torch.zeros((), dtype=torch.long, device=self.device)
        self.lagging = False
        if not torch.compiler.is_compiling():
            torch._dynamo.mark_static_address(self.deferred)  # updated in place by compiled (CUDA-graph) steps

    def settle(self) -> None:
        """Add the tokens counted on the device to `cumulative_length_int`."""
        if not (self.is_initialized and self.lagging):
            return
        if torch.compiler.is_compiling():
            raise RuntimeError(
                "a compiled forward read the token count of a sliding-window cache layer after unmasked decoding "
                "steps; call cache.get_seq_length() outside the compiled region first"
            )
        self.cumulative_length_int += int(self.deferred)
        self.deferred.zero_()
        self.lagging = False

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args, unmasked: bool = False, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Transformers' update; for an unmasked one-token step on a full window, its roll of the window (adapted from
        `StaticSlidingWindowLayer.update`) with the token counted in `deferred`."""
        full = self.is_initialized and self.cumulative_length_int >= self.max_cache_len
        if not (unmasked and full and key_states.shape[-2] == 1):
            self.settle()
            return super().update(key_states, value_states, *args, **kwargs)
        index = torch.tensor([-1], dtype=torch.long, device=self.device)  # a tensor index, as Transformers' (dynamo)
        new_keys, new_values = self.keys.roll(-1, dims=-2), self.values.roll(-1, dims=-2)
        new_keys[:, :, index] = key_states
        new_values[:, :, index] = value_states
        self.keys.copy_(new_keys)
        self.values.copy_(new_values)
        self.deferred.add_(1)
        self.lagging = True
        return self.keys, self.values

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        self.settle()
        return super().get_mask_sizes(query_length)

    def get_seq_length(self) -> int:
        self.settle()
        return super().get_seq_length()

    def crop(self, tokens_to_remove: int) -> None:
        self.settle()
        super().crop(tokens_to_remove)

    def reset(self) -> None:
        self.settle()
        super().reset()


class PhalanxStaticCache(PhalanxSeqLengthMixin, StaticCache):
    """`StaticCache(config, max_cache_len)` for Phalanx models: `generate(cache_implementation="static")`.

    Attention layers get Transformers' fixed-size layers, the mixer layers the linear-attention layer, whose
    states are updated in place (fixed addresses), so `generate` can compile the decoding step.
    """

    def __init__(self, config: PhalanxConfig, max_cache_len: int, **kwargs) -> None:
        super().__init__(cache_layout_config(config), max_cache_len, **kwargs)
        for index, layer in enumerate(self.layers):
            if type(layer) is StaticSlidingWindowLayer:
                self.layers[index] = PhalanxStaticSlidingWindowLayer(max_cache_len, config.sliding_window)


# ----------------------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------------------


class PhalanxPreTrainedModel(PreTrainedModel):
    """Weight init, attention-backend flags and output capture shared by the Phalanx models.

    Adapted from `transformers.models.qwen3_next.modeling_qwen3_next.Qwen3NextPreTrainedModel`.
    """

    config_class = PhalanxConfig
    config: PhalanxConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["PhalanxDecoderLayer"]
    _skip_keys_device_placement = ["past_key_values", "cache"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    # Decoding steps and unpadded multi-token forwards compile with fullgraph=True (tests); a padded or packed
    # multi-token forward reads its sequence starts on the host once (`sequence_starts`).
    _can_compile_fullgraph = True
    _supports_attention_backend = False
    _is_stateful = True
    _can_record_outputs = {"hidden_states": PhalanxDecoderLayer, "attentions": PhalanxAttention}

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs) -> None:
        """Save as usual; `config.json`'s `auto_map` names AutoConfig, AutoModel and AutoModelForCausalLM."""
        auto_map = dict(getattr(self.config, "auto_map", None) or {})
        for auto_class, target in PHALANX_AUTO_MAP.items():
            auto_map.setdefault(auto_class, target)
        self.config.auto_map = auto_map
        super().save_pretrained(save_directory, *args, **kwargs)

    def _apply(self, fn, recurse: bool = True):
        """`nn.Module._apply` (`.to()`, `.half()`, `.cuda()`), then a new `_parameters` dict (same parameters, same
        order) in every module, so code compiled for the old parameters does not run. `_apply` swaps the parameters'
        `.data` in place, and dynamo (`skip_tensor_guards_with_matching_dict_tags`) skips the guards of tensors
        whose dict is unchanged: with torch 2.11, `generate`'s compiled static-cache step, traced in fp32, ran again
        after `model.to(torch.bfloat16)` and failed on the H200, as no input of a Phalanx decoding step changes
        dtype (a Llama's rotary buffer does, and recompiles it)."""
        result = super()._apply(fn, recurse)
        for module in self.modules():
            module._parameters = dict(module._parameters)
        return result

    def _sdpa_can_dispatch(self, is_init_check: bool = False) -> bool:
        # SDPA cannot soft-cap attention scores (Gemma2): the default then falls back to eager.
        if self.config.attn_logit_softcapping is not None:
            raise ValueError(
                "attn_logit_softcapping is set, which SDPA cannot apply; use attn_implementation='eager', "
                "'flex_attention' or 'flash_attention_2'"
            )
        return super()._sdpa_can_dispatch(is_init_check)

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        # The model builds a PhalanxCache itself (see PhalanxModel.forward), so all-Phalanx stacks work too.
        return False

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, PhalanxInputProjection):
            # Decay bias = logit(a) with a spread evenly over heads across phalanx_decay_init_range.
            low, high = self.config.phalanx_decay_init_range
            decays = torch.linspace(low, high, module.num_decay_heads, dtype=torch.float64)
            bias = torch.zeros(module.out_features, dtype=torch.float64)
            bias[: module.num_decay_heads] = torch.log(decays) - torch.log1p(-decays)
            init.copy_(module.bias, bias.to(device=module.bias.device, dtype=module.bias.dtype))
        elif isinstance(module, PhalanxHyenaMixer):
            module.init_filters()
        elif isinstance(module, MLSTMGateProjection):
            # xLSTM-7B: gate weights 0, input-gate bias -10, forget-gate biases spread over the heads.
            init.zeros_(module.weight)
            bias = module.initial_bias(self.config.mlstm_forget_gate)
            init.copy_(module.bias, bias.to(device=module.bias.device, dtype=module.bias.dtype))
        elif isinstance(module, PhalanxGemmaRMSNorm):
            init.zeros_(module.weight)
        elif isinstance(module, PhalanxScaledWordEmbedding):
            init.constant_(module.embed_scale, module.scalar_embed_scale)
        elif isinstance(module, PhalanxRotaryEmbedding) and module.nested:
            for layer_type, rope_type in module.rope_type.items():
                inv_freq, _ = module._init_fn(rope_type)(module.config, layer_type=layer_type)
                init.copy_(getattr(module, f"{layer_type}_inv_freq"), inv_freq)
                init.copy_(getattr(module, f"{layer_type}_original_inv_freq"), inv_freq)


class PhalanxModel(PhalanxPreTrainedModel):
    """Phalanx decoder stack without the language-model head.

    Adapted from `transformers.models.qwen3_next.modeling_qwen3_next.Qwen3NextModel`.
    """

    def __init__(self, config: PhalanxConfig) -> None:
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.embed_tokens = PhalanxScaledWordEmbedding(
            config.vocab_size, config.hidden_size, self.padding_idx, embed_scale=config.embedding_scale
        )
        self.layers = nn.ModuleList(
            [PhalanxDecoderLayer(config, layer_idx) for layer_idx in range(config.num_hidden_layers)]
        )
        self.norm = make_norm(config, config.hidden_size)
        self.rotary_emb = PhalanxRotaryEmbedding(config)
        self.gradient_checkpointing = False
        self.post_init()

    def _position_embeddings(
        self, hidden_states: torch.Tensor, position_ids: torch.Tensor
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor] | None]:
        """cos/sin per attention layer type (None for a NoPE layer type)."""
        types = sorted({t for t in self.config.layer_types if t in ATTENTION_LAYER_TYPES})
        if not types:
            return {}
        if not self.rotary_emb.nested:
            shared = self.rotary_emb(hidden_states, position_ids)
            return dict.fromkeys(types, shared)
        return {
            t: self.rotary_emb(hidden_states, position_ids, t) if self.rotary_emb.uses_rope(t) else None for t in types
        }

    @merge_with_config_defaults
    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        past_key_values: Cache | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPast:
        """`cache` (or `past_key_values`, its name before Transformers 5.24) continues from earlier tokens; without
        `position_ids`, positions count the tokens the 2D `attention_mask` marks (as `generate` derives them), so
        left padding does not shift the Phalanx blocks."""
        check_model_kwargs(kwargs, "PhalanxModel.forward")
        cache = resolve_cache(cache, past_key_values)
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        if use_cache and cache is None:
            cache = PhalanxCache(config=self.config)
        batch, seqlen = inputs_embeds.shape[:2]
        # Default positions restart (a row holding several sequences) only at the padding of a 2D mask, and mixers
        # starting afresh need no `sequence_starts` host read for it: a Phalanx mixer aligns its blocks to a row's
        # first unpadded token, a Hyena mixer's zeroed padding feeds its convolutions nothing, an mLSTM mixer
        # restarts where the default positions are 0 (on the device). So such a prefill compiles as one graph.
        may_restart = position_ids is not None or (
            isinstance(attention_mask, torch.Tensor)
            and (attention_mask.ndim != 2 or mixers_hold_state(cache, self.config.layer_types))
        )
        if position_ids is None:
            position_ids = default_position_ids(attention_mask, cache, seqlen, inputs_embeds.device)

        layer_types = self.config.layer_types
        mask_mapping = attention_mask
        if not isinstance(mask_mapping, dict):
            mask_mapping = create_phalanx_masks(self.config, inputs_embeds, attention_mask, cache, position_ids)

        cu_seqlens = max_seqlen = None
        if any(t in MIXER_CLASSES for t in layer_types):
            position_ids = position_ids.expand(batch, -1)
            if seqlen > 1 and may_restart:  # else no host read: the forward compiles as one graph
                cu_seqlens, max_seqlen = sequence_starts(position_ids)

        hidden_states = inputs_embeds
        position_embeddings = self._position_embeddings(hidden_states, position_ids)
        for decoder_layer in self.layers:
            layer_type = decoder_layer.layer_type
            hidden_states = decoder_layer(
                hidden_states,
                attention_mask=mask_mapping.get(layer_type),
                position_embeddings=position_embeddings.get(layer_type),
                position_ids=position_ids,
                cu_seqlens=cu_seqlens,
                max_seqlen=max_seqlen,
                **{CACHE_KWARG: cache},
                **kwargs,
            )
        hidden_states = self.norm(hidden_states)
        return BaseModelOutputWithPast(last_hidden_state=hidden_states, **{CACHE_KWARG: cache})


class PhalanxForCausalLM(PhalanxPreTrainedModel, GenerationMixin):
    """Phalanx decoder with a language-model head (optional logit scaling and soft-capping).

    Adapted from `transformers.models.llama.modeling_llama.LlamaForCausalLM`, with Cohere's logit scale and Gemma2's
    final soft-capping.
    """

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    _tp_plan = {"lm_head": "colwise_gather_output"}
    _pp_plan = {"lm_head": (["hidden_states"], ["logits"])}

    def __init__(self, config: PhalanxConfig) -> None:
        super().__init__(config)
        self.model = PhalanxModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def _prepare_cache_for_generation(
        self, generation_config: GenerationConfig, model_kwargs: dict, generation_mode, batch_size: int,
        max_cache_length: int,
    ) -> None:
        """`cache_implementation="static"` gets a `PhalanxStaticCache` sized like Transformers' own static caches;
        every other case is Transformers' (which leaves the cache to `forward`: see `_supports_default_dynamic_cache`).
        Assisted (speculative) decoding is refused on every release: a rejected draft token would need the mixers'
        states rolled back, which they do not record (Transformers refuses it for stateful models up to 5.24 and, from
        5.25, only for caches it finds uncroppable after the prefill).
        """
        if generation_mode == GenerationMode.ASSISTED_GENERATION:
            raise ValueError(
                f"assisted generation is not supported with stateful models, such as {type(self).__name__}: its "
                "recurrent states cannot be rolled back to a rejected draft token"
            )
        wants_static = generation_config.cache_implementation == "static" and generation_config.use_cache is not False
        if wants_static and model_kwargs.get(CACHE_KWARG) is None:
            max_cache_len = max(max_cache_length, getattr(generation_config, "max_cache_len", None) or 0)
            model_kwargs[CACHE_KWARG] = PhalanxStaticCache(config=self.config, max_cache_len=max_cache_len)
            return
        super()._prepare_cache_for_generation(
            generation_config, model_kwargs, generation_mode, batch_size, max_cache_length
        )

    def create_masks_for_generate(
        self,
        config: PhalanxConfig,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None,
        cache: Cache | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> dict[str, torch.Tensor | None]:
        """Masks `generate` builds ahead of a compiled step (static caches), as `forward` builds them."""
        cache = resolve_cache(cache, past_key_values)
        return create_phalanx_masks(config, inputs_embeds, attention_mask, cache, position_ids)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        past_key_values: Cache | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> CausalLMOutputWithPast:
        """As `PhalanxModel.forward`, plus `labels` for the loss and `logits_to_keep` (last N positions, or indices)."""
        check_model_kwargs(kwargs, "PhalanxForCausalLM.forward")
        outputs: BaseModelOutputWithPast = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=resolve_cache(cache, past_key_values),
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, keep, :])
        if self.config.logit_scale is not None:
            logits = logits * self.config.logit_scale
        if self.config.final_logit_softcapping is not None:
            cap = self.config.final_logit_softcapping
            logits = torch.tanh(logits / cap) * cap
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            **{CACHE_KWARG: getattr(outputs, CACHE_KWARG)},
        )


__all__ = [
    "PHALANX_LORA_TARGET_MODULES",
    "PhalanxCache",
    "PhalanxForCausalLM",
    "PhalanxModel",
    "PhalanxPreTrainedModel",
    "PhalanxStaticCache",
]
