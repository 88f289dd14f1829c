"""Configuration of Phalanx hybrid decoders (full attention, sliding-window attention, Phalanx SWR mixer)."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers.activations import ACT2FN
from transformers.configuration_utils import PreTrainedConfig
from transformers.modeling_rope_utils import RopeParameters

from .mlstm_phalanx import MLSTM_FORGET_GATES
from .swr_torch import MAX_HEAD_DIM, SUPPORTED_BLOCK_LENS

# Layer types, with Transformers' own names (the cache classes and mask helpers key on them); the one place they
# are spelt out. The Phalanx mixer is a "linear_attention" layer to Transformers.
FULL_ATTENTION = "full_attention"
SLIDING_ATTENTION = "sliding_attention"
PHALANX_MIXER = "linear_attention"
# Mixers from the source papers have names of their own in `layer_types` (StripedHyena 2's Hyena-SE / -MR / -LI,
# xLSTM's mLSTM); for Transformers' caches each is the recurrent-state layer kind in CACHE_LAYER_KINDS (a
# `LinearAttentionLayer` holding FIR windows in `conv_states` and recurrent states in `recurrent_states`). A new
# mixer adds a name here, an entry in CACHE_LAYER_KINDS and one in `modeling_phalanx.MIXER_CLASSES`.
HYENA_SE = "hyena_se"
HYENA_MR = "hyena_mr"
HYENA_LI = "hyena_li"
HYENA_LAYER_TYPES = (HYENA_SE, HYENA_MR, HYENA_LI)
MLSTM_MIXER = "mlstm"
CACHE_LAYER_KINDS = {HYENA_SE: "conv", HYENA_MR: "conv", HYENA_LI: "linear_attention", MLSTM_MIXER: PHALANX_MIXER}
PHALANX_LAYER_TYPES = (FULL_ATTENTION, SLIDING_ATTENTION, PHALANX_MIXER, *HYENA_LAYER_TYPES, MLSTM_MIXER)
ATTENTION_LAYER_TYPES = (FULL_ATTENTION, SLIDING_ATTENTION)
NORM_TYPES = ("rms", "gemma_rms", "layer_norm")
NORM_PLACEMENTS = ("pre", "sandwich", "post", "parallel")
QK_NORMS = (None, "head", "projection")
# Fields that must be positive integers (those in OPTIONAL_SIZE_FIELDS may also be None: derived later).
SIZE_FIELDS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "max_position_embeddings", "phalanx_head_dim", "phalanx_num_heads",
    "phalanx_num_gate_groups", "swr_block_len", "swr_window_blocks", "hyena_filter_groups", "hyena_li_modes",
)
OPTIONAL_SIZE_FIELDS = ("head_dim", "phalanx_num_heads", "phalanx_num_gate_groups", "hyena_filter_groups")
# Filter lengths of the Hyena operators: at least 2 taps, so that decoding keeps a window of past inputs.
HYENA_LENGTH_FIELDS = ("hyena_featurizer_len", "hyena_se_len", "hyena_mr_len")


@strict
class PhalanxConfig(PreTrainedConfig):
    r"""
    Configuration of a Phalanx decoder: a stack of full-attention, sliding-window-attention and Phalanx
    (sliding window recurrence, arXiv 2512.13921) layers, chosen per layer by `layer_types`.

    Standard fields keep their Llama/Qwen3 meaning. Phalanx mixer fields:

    phalanx_head_dim (`int`, defaults to 16): channels per SWR head (a multiple of 16, at most 128); distinct from
        attention's `head_dim`.
    phalanx_num_heads (`int`, *optional*): SWR heads; defaults to `hidden_size // phalanx_head_dim`.
    phalanx_num_gate_groups (`int`, *optional*): groups sharing one input gate and readout; defaults to
        `phalanx_num_heads` (one per head). Must divide `phalanx_num_heads`.
    swr_block_len (`int`, defaults to 16): SWR block length, one of 16, 32, 64.
    swr_window_blocks (`int`, defaults to 2): blocks each token sees (its own and the `W - 1` before it).
    phalanx_decay_init_range (`list[float]`, defaults to `[0.5, 0.95]`): decays `a` at initialisation, spread
        evenly over heads; the decay bias is `logit(a)`.
    phalanx_decay_cap (`float`, *optional*): upper bound on the decay, `a = cap * sigmoid(z)`.
    phalanx_out_bias (`bool`, defaults to `False`): bias on the mixer's `out_proj`.
    phalanx_output_norm (`bool`, defaults to `False`): RMS-normalise each head's output `h * c + v` (a weight per
        channel, as GLA / RetNet normalise their heads) before `out_proj`, which bounds what the mixer writes into
        the residual stream.
    phalanx_kernel_repo (`str`, *optional*): a kernel repository written by `phalanx export-kernels` (a Hub id or
        a local folder) that the mixers load their Triton kernels from with the `kernels` library, when it is
        installed and the `phalanx_kernels` package is not. Default `None`: nothing is downloaded, and without
        `phalanx_kernels` the mixers run the PyTorch SWR. Only where the model runs: not part of the weights.

    Hyena mixers of StripedHyena 2 (`"hyena_se"`, `"hyena_mr"`, `"hyena_li"` in `layer_types`; docs/hyena.md):

    hyena_featurizer_len (`int`, defaults to 3): taps of the short depthwise featurizer convolutions on q, k, v.
    hyena_se_len (`int`, defaults to 7): taps of Hyena-SE's short explicit filter.
    hyena_mr_len (`int`, defaults to 128): taps of Hyena-MR's medium explicit filter.
    hyena_mr_decay (`list[float]`, defaults to `[1e-4, 1e-2]`): `[min, max]` of Hyena-MR's per-tap decay rates
        `alpha` (filter `h_k = w_k * exp(-alpha * k)`), spread log-evenly over filter groups.
    hyena_li_modes (`int`, defaults to 16): real decaying modes of Hyena-LI's long implicit filter
        `h_k = sum_n R_n * lambda_n ** k`.
    hyena_filter_groups (`int`, *optional*): filters per Hyena layer, each shared by `hidden_size // groups`
        consecutive channels; defaults to `hidden_size` (one filter per channel).
    mLSTM mixer fields (layer type `"mlstm"`, xLSTM's matrix-memory layer; definitions in docs/mlstm.md):

    mlstm_num_heads (`int`, defaults to 4): mLSTM heads.
    mlstm_qk_dim_factor / mlstm_v_dim_factor (`float`, defaults to 0.5 / 1.0): query-key and value widths as
        fractions of `hidden_size`, split over the heads (xLSTM-7B's factors).
    mlstm_gate_soft_cap (`float`, *optional*, defaults to 15.0): `cap * tanh(x / cap)` on the input- and forget-gate
        pre-activations; None disables it.
    mlstm_forget_gate (`str`, defaults to `"sigmoid"`): `"sigmoid"` (log f = logsigmoid) or `"exp"`
        (log f = pre-activation).
    mlstm_chunk_size (`int`, defaults to 64): tokens per chunk of the chunkwise-parallel form (does not change results).
    mlstm_eps (`float`, defaults to 1e-6): added to the stabilised denominator of the readout.

    Decoder-block variants (all off by default = pre-norm SwiGLU with RMSNorm), used to represent converted
    checkpoints exactly:

    norm_type: `"rms"`, `"gemma_rms"` (x_hat * (1 + w) in fp32) or `"layer_norm"` (mean-centred, weight only).
    norm_placement: `"pre"`, `"sandwich"` (Gemma2/3 four norms), `"post"` (Olmo3) or `"parallel"` (Cohere).
    qk_norm: `None`, `"head"` (per head over `head_dim`) or `"projection"` (over the whole q/k projection).
    query_pre_attn_scalar: attention scaling is `query_pre_attn_scalar ** -0.5` (defaults to `head_dim`).
    attn_logit_softcapping / final_logit_softcapping: tanh soft-capping of attention scores / logits.
    embedding_scale: input embeddings are multiplied by this (cast to the embedding dtype first).
    logit_scale: logits are multiplied by this.
    rope_interleaved: GPT-J-style (pairwise) rotary instead of half-split.
    no_rope_layers: indices of attention layers that use no positional encoding.
    `rope_parameters` may be nested by layer type (`{"full_attention": {...}, "sliding_attention": {...}}`).

    ```python
    >>> from modeling_phalanx import PhalanxConfig, PhalanxForCausalLM
    >>> config = PhalanxConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
    ...     num_attention_heads=4, layer_types=["linear_attention", "sliding_attention", "full_attention"],
    ...     sliding_window=32)
    >>> model = PhalanxForCausalLM(config)
    ```
    """

    model_type = "phalanx"
    keys_to_ignore_at_inference = ["past_key_values", "cache"]
    # Linear-attention cache layers hold two states: the SWR state `h` and the tokens consumed `pos`.
    number_of_conv_states = 2
    # Tensor parallelism (Llama's plan): attention heads and the MLP are split; the embedding is split over the
    # vocabulary like the tied `lm_head` ("colwise_gather_output"), so a tied weight has one layout. The Phalanx mixer
    # stays replicated: its `in_proj` packs decays, gates, readout and values, which a column split would mix up.
    base_model_tp_plan = {
        "embed_tokens": "embedding_rowwise",
        "layers.*.self_attn.q_proj": "colwise",
        "layers.*.self_attn.k_proj": "colwise",
        "layers.*.self_attn.v_proj": "colwise",
        "layers.*.self_attn.o_proj": "rowwise",
        "layers.*.mlp.gate_proj": "colwise",
        "layers.*.mlp.up_proj": "colwise",
        "layers.*.mlp.down_proj": "rowwise",
    }
    base_model_pp_plan = {
        "embed_tokens": (["input_ids"], ["inputs_embeds"]),
        "layers": (["hidden_states", "attention_mask"], ["hidden_states"]),
        "norm": (["hidden_states"], ["hidden_states"]),
    }

    vocab_size: int = 32000
    hidden_size: int = 1024
    intermediate_size: int = 2816
    num_hidden_layers: int = 12
    num_attention_heads: int = 16
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    hidden_act: str = "silu"
    max_position_embeddings: int = 4096
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-6
    use_cache: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    tie_word_embeddings: bool = False
    rope_parameters: RopeParameters | dict | None = None
    attention_dropout: float | int = 0.0
    attention_bias: bool = False
    attention_out_bias: bool | None = None
    mlp_bias: bool = False
    layer_types: list[str] | None = None
    sliding_window: int | None = None

    phalanx_head_dim: int = 16
    phalanx_num_heads: int | None = None
    phalanx_num_gate_groups: int | None = None
    swr_block_len: int = 16
    swr_window_blocks: int = 2
    phalanx_decay_init_range: list[float] | tuple[float, float] | None = None
    phalanx_decay_cap: float | None = None
    phalanx_out_bias: bool = False
    phalanx_output_norm: bool = False
    phalanx_kernel_repo: str | None = None

    hyena_featurizer_len: int = 3
    hyena_se_len: int = 7
    hyena_mr_len: int = 128
    hyena_mr_decay: list[float] | tuple[float, float] | None = None
    hyena_li_modes: int = 16
    hyena_filter_groups: int | None = None
    mlstm_num_heads: int = 4
    mlstm_qk_dim_factor: float | int = 0.5
    mlstm_v_dim_factor: float | int = 1.0
    mlstm_gate_soft_cap: float | int | None = 15.0
    mlstm_forget_gate: str = "sigmoid"
    mlstm_chunk_size: int = 64
    mlstm_eps: float = 1e-6

    norm_type: str = "rms"
    norm_placement: str = "pre"
    qk_norm: str | None = None
    query_pre_attn_scalar: float | int | None = None
    attn_logit_softcapping: float | None = None
    final_logit_softcapping: float | None = None
    embedding_scale: float = 1.0
    logit_scale: float | None = None
    rope_interleaved: bool = False
    no_rope_layers: list[int] | None = None

    def __post_init__(self, **kwargs):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        self._check_sizes()
        if self.layer_types is None:
            # Default hybrid: three Phalanx layers, then one full-attention layer.
            self.layer_types = [
                FULL_ATTENTION if (i + 1) % 4 == 0 else PHALANX_MIXER for i in range(self.num_hidden_layers)
            ]
        self._check_layer_types()
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads != 0:
                raise ValueError(
                    f"hidden_size={self.hidden_size} is not divisible by num_attention_heads="
                    f"{self.num_attention_heads}; set head_dim explicitly or change the head count"
                )
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.phalanx_head_dim % 16 != 0 or not 16 <= self.phalanx_head_dim <= MAX_HEAD_DIM:
            raise ValueError(
                f"phalanx_head_dim={self.phalanx_head_dim} is unsupported: it must be a multiple of 16 up to "
                f"{MAX_HEAD_DIM}"
            )
        if self.phalanx_num_heads is None:
            if self.hidden_size % self.phalanx_head_dim != 0:
                raise ValueError(
                    f"phalanx_head_dim={self.phalanx_head_dim} does not divide hidden_size={self.hidden_size}; "
                    "set phalanx_num_heads explicitly or change phalanx_head_dim"
                )
            self.phalanx_num_heads = self.hidden_size // self.phalanx_head_dim
        if self.phalanx_num_gate_groups is None:
            self.phalanx_num_gate_groups = self.phalanx_num_heads
        if self.phalanx_decay_init_range is None:
            self.phalanx_decay_init_range = [0.5, 0.95]
        self.phalanx_decay_init_range = [float(a) for a in self.phalanx_decay_init_range]
        self._check_phalanx()
        if self.hyena_filter_groups is None:
            self.hyena_filter_groups = self.hidden_size
        if self.hyena_mr_decay is None:
            self.hyena_mr_decay = [1e-4, 1e-2]
        self._check_hyena()
        self._check_mlstm()
        self._check_block_variants()
        super().__post_init__(**kwargs)
        self._check_rope_layout()

    def _check_sizes(self) -> None:
        """Sizes and counts must be positive integers (a zero would divide by zero or build an empty model),
        the padding id must lie in the vocabulary (it indexes the embedding), and `hidden_act` must name an activation Transformers has."""
        for name in SIZE_FIELDS:
            value = getattr(self, name)
            if value is None and name in OPTIONAL_SIZE_FIELDS:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        pad = self.pad_token_id
        if pad is not None and (isinstance(pad, bool) or not isinstance(pad, int) or not 0 <= pad < self.vocab_size):
            raise ValueError(f"pad_token_id={pad!r} must lie in the vocabulary [0, {self.vocab_size})")
        if self.hidden_act not in ACT2FN:
            raise ValueError(f"hidden_act={self.hidden_act!r} is unknown; use one of Transformers' ACT2FN names, e.g. 'silu'")
        if self.layer_types is not None and not (
            isinstance(self.layer_types, (list, tuple)) and all(isinstance(t, str) for t in self.layer_types)
        ):
            raise ValueError(f"layer_types must be a list of layer-type names, got {self.layer_types!r}")

    def _check_layer_types(self) -> None:
        """Validate `layer_types` against PHALANX_LAYER_TYPES and `num_hidden_layers`."""
        unknown = sorted({t for t in self.layer_types if t not in PHALANX_LAYER_TYPES})
        if unknown:
            raise ValueError(f"layer_types contains unknown types {unknown}; allowed: {list(PHALANX_LAYER_TYPES)}")
        if len(self.layer_types) != self.num_hidden_layers:
            raise ValueError(
                f"layer_types has {len(self.layer_types)} entries but num_hidden_layers={self.num_hidden_layers}"
            )
        if SLIDING_ATTENTION in self.layer_types and (self.sliding_window is None or self.sliding_window < 1):
            raise ValueError(
                "layer_types contains 'sliding_attention' layers but sliding_window is not set (need an int >= 1)"
            )
        if self.num_attention_heads % self.num_key_value_heads != 0:
            raise ValueError(
                f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}"
            )

    def _check_phalanx(self) -> None:
        """Validate the Phalanx mixer fields (the SWR supports only some block lengths and head dims)."""
        if self.swr_block_len not in SUPPORTED_BLOCK_LENS:
            raise ValueError(f"swr_block_len={self.swr_block_len} is unsupported; use one of {SUPPORTED_BLOCK_LENS}")
        longest = -(-self.max_position_embeddings // self.swr_block_len)  # blocks of the longest sequence
        if self.swr_window_blocks > longest:
            raise ValueError(
                f"swr_window_blocks={self.swr_window_blocks} spans more than max_position_embeddings="
                f"{self.max_position_embeddings} tokens: at most {longest} blocks of {self.swr_block_len}"
            )
        if self.phalanx_num_heads < 1 or self.phalanx_num_heads % self.phalanx_num_gate_groups != 0:
            raise ValueError(
                f"phalanx_num_gate_groups={self.phalanx_num_gate_groups} must divide "
                f"phalanx_num_heads={self.phalanx_num_heads}"
            )
        low_high = self.phalanx_decay_init_range
        if len(low_high) != 2 or not 0.0 < low_high[0] <= low_high[1] < 1.0:
            raise ValueError(f"phalanx_decay_init_range must be [low, high] with 0 < low <= high < 1, got {low_high}")
        if self.phalanx_decay_cap is not None and not 0.0 < self.phalanx_decay_cap <= 1.0:
            raise ValueError(f"phalanx_decay_cap must be in (0, 1], got {self.phalanx_decay_cap}")

    def _check_hyena(self) -> None:
        """Validate the Hyena mixer fields (filter lengths, MR decay range, filter groups)."""
        for name in HYENA_LENGTH_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 2:
                raise ValueError(f"{name} must be an integer >= 2, got {value!r}")
        if self.hidden_size % self.hyena_filter_groups != 0:
            raise ValueError(
                f"hyena_filter_groups={self.hyena_filter_groups} must divide hidden_size={self.hidden_size}"
            )
        low_high = self.hyena_mr_decay
        numbers = isinstance(low_high, (list, tuple)) and all(
            isinstance(a, (int, float)) and not isinstance(a, bool) for a in low_high
        )
        if not numbers or len(low_high) != 2 or not 0.0 < low_high[0] <= low_high[1]:
            raise ValueError(f"hyena_mr_decay must be [min, max] with 0 < min <= max, got {low_high!r}")
        self.hyena_mr_decay = [float(a) for a in low_high]

    def _check_mlstm(self) -> None:
        """Validate the mLSTM fields (head splits only when the model has mLSTM layers)."""
        for name in ("mlstm_num_heads", "mlstm_chunk_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("mlstm_qk_dim_factor", "mlstm_v_dim_factor", "mlstm_gate_soft_cap", "mlstm_eps"):
            value = getattr(self, name)
            if (value is not None or name != "mlstm_gate_soft_cap") and not value > 0:
                raise ValueError(f"{name} must be positive, got {value!r}")
        if self.mlstm_forget_gate not in MLSTM_FORGET_GATES:
            raise ValueError(
                f"mlstm_forget_gate={self.mlstm_forget_gate!r} is unknown; use one of {MLSTM_FORGET_GATES}"
            )
        if MLSTM_MIXER not in self.layer_types:
            return
        for name in ("mlstm_qk_dim_factor", "mlstm_v_dim_factor"):
            width = int(self.hidden_size * getattr(self, name))
            if width < self.mlstm_num_heads or width % self.mlstm_num_heads != 0:
                raise ValueError(
                    f"{name}={getattr(self, name)} gives width int(hidden_size * factor)={width}, which "
                    f"mlstm_num_heads={self.mlstm_num_heads} heads do not split evenly"
                )

    def _check_block_variants(self) -> None:
        """Validate the decoder-block variant switches."""
        if self.norm_type not in NORM_TYPES:
            raise ValueError(f"norm_type={self.norm_type!r} is unknown; use one of {NORM_TYPES}")
        if self.norm_placement not in NORM_PLACEMENTS:
            raise ValueError(f"norm_placement={self.norm_placement!r} is unknown; use one of {NORM_PLACEMENTS}")
        if self.qk_norm not in QK_NORMS:
            raise ValueError(f"qk_norm={self.qk_norm!r} is unknown; use one of {QK_NORMS}")
        if self.no_rope_layers is not None:
            bad = [i for i in self.no_rope_layers if not 0 <= i < self.num_hidden_layers]
            if bad:
                raise ValueError(f"no_rope_layers has indices outside [0, {self.num_hidden_layers}): {bad}")
        for name in ("attn_logit_softcapping", "final_logit_softcapping", "query_pre_attn_scalar"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive when set, got {value}")

    def validate_layer_type(self) -> None:
        """Transformers' `layer_types` check (run by `save_pretrained` and `@strict`), with Phalanx's names: the base
        check allows only Transformers' own, which would refuse the further mixers (`CACHE_LAYER_KINDS`)."""
        if self.layer_types is not None:
            self._check_layer_types()

    @property
    def cache_layer_types(self) -> list[str]:
        """`layer_types` as Transformers' cache classes know them (each further mixer as its cache layer kind)."""
        return [CACHE_LAYER_KINDS.get(t, t) for t in self.layer_types]

    def _check_rope_layout(self) -> None:
        """A nested `rope_parameters` must cover every attention layer type the model uses."""
        if self.rope_parameters_by_layer_type:
            missing = [
                t for t in ATTENTION_LAYER_TYPES if t in self.layer_types and t not in self.rope_parameters
            ]
            if missing:
                raise ValueError(
                    f"rope_parameters is nested by layer type but has no entry for {missing}; add one (None = NoPE)"
                )

    def convert_rope_params_to_dict(self, **kwargs) -> dict:
        """Fold legacy `rope_scaling` / `rope_theta` keys into `rope_parameters` (flat or nested by layer type)."""
        rope_scaling = kwargs.pop("rope_scaling", None)
        self.rope_theta = kwargs.pop("rope_theta", self.default_theta)
        self.rope_parameters = rope_scaling or self.rope_parameters or {}
        self.standardize_rope_params()
        del self.rope_theta
        return kwargs

    def standardize_rope_params(self) -> None:
        """Fill `rope_type` / `rope_theta` defaults in each RoPE dict.

        Overridden because Transformers 5.17 assumes every layer type (including `"linear_attention"`) has an
        entry when `rope_parameters` is nested.
        """
        theta = getattr(self, "rope_theta", self.default_theta)
        nested = self.rope_parameters_by_layer_type
        for params in self.rope_parameters.values() if nested else [self.rope_parameters]:
            if not isinstance(params, dict):  # None = NoPE; a stray flat key beside the nesting is not an entry
                continue
            params.setdefault("rope_type", params.get("type", "default"))
            params.setdefault("rope_theta", theta)
            if params["rope_type"] in ("llama3", "yarn", "longrope"):
                params.setdefault("original_max_position_embeddings", self.max_position_embeddings)

    @property
    def rope_parameters_by_layer_type(self) -> bool:
        """Whether `rope_parameters` is a dict keyed by layer-type name (per-layer-type RoPE)."""
        return isinstance(self.rope_parameters, dict) and any(t in self.rope_parameters for t in PHALANX_LAYER_TYPES)


__all__ = ["PhalanxConfig"]
