"""Named ``PhalanxConfig`` presets, from a CPU toy to about 1.3B parameters.

Every size comes in six flavours that differ only in ``layer_types`` (one schema for all, so
comparisons change nothing else). Layer ``i`` is ``full_attention`` when ``(i + 1) % 4 == 0``; the other
layers cycle through the flavour's mixers:

- ``<size>-transformer``: every layer ``full_attention``;
- ``<size>-swa``: ``sliding_attention``, i.e. 1 full : 3 sliding;
- ``<size>-phalanx``: ``linear_attention`` (Phalanx mixer) in place of sliding;
- ``<size>-stripedhyena``: StripedHyena 2's striping, ``hyena_se, hyena_mr, hyena_li, full_attention``
  repeated (docs/hyena.md);
- ``<size>-multihybrid``: Phalanx for local mixing, Hyena-LI for long range, full attention for recall:
  ``linear_attention, linear_attention, hyena_li, full_attention`` repeated;

and one with no full attention:

- ``<size>-swax``: SWAX (design seed 002), ``sliding_attention`` and ``mlstm`` (xLSTM's mLSTM) alternating, no
  full attention; train it with ``phalanx train --swax`` for SWAX's stochastic windows.

``--model-config`` accepts a preset name or a path to a ``config.json`` (:func:`load_model_config`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from transformers import AutoConfig, PretrainedConfig

from modeling_phalanx import PhalanxConfig
from modeling_phalanx.configuration_phalanx import (
    FULL_ATTENTION,
    HYENA_LI,
    HYENA_MR,
    HYENA_SE,
    MLSTM_MIXER,
    PHALANX_MIXER,
    SLIDING_ATTENTION,
)
from phalanx_conversion.families import supported_families

# The mixers each flavour cycles through on the layers that are not full attention (None: none are).
FLAVOURS: dict[str, tuple[str, ...] | None] = {
    "transformer": None,
    "swa": (SLIDING_ATTENTION,),
    "phalanx": (PHALANX_MIXER,),
    "stripedhyena": (HYENA_SE, HYENA_MR, HYENA_LI),
    "multihybrid": (PHALANX_MIXER, PHALANX_MIXER, HYENA_LI),
    "swax": (SLIDING_ATTENTION, MLSTM_MIXER),
}
FULL_ATTENTION_EVERY = 4
# Flavours whose layers repeat their mixers with no full attention (instead of every fourth layer full).
NO_FULL_ATTENTION = frozenset({"swax"})
# Channels sharing one Hyena filter (StripedHyena 2's filter grouping); every flavour carries the field.
HYENA_GROUP_CHANNELS = 16

# Architecture per size. Widths, depths and SwiGLU sizes follow the usual Llama/Pythia ladder; the
# largest is the ~1.3B point of DESIGN.md section 9 (width 2048, 24 layers, 16 heads x 128, 5504).
# ``sliding_window`` 2048 on the GPU sizes is SWAX's long window; ``tiny`` fits CPU tests.
SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(
        hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        intermediate_size=176, vocab_size=259, max_position_embeddings=2048, sliding_window=64,
    ),
    "small": dict(
        hidden_size=256, num_hidden_layers=8, num_attention_heads=4, num_key_value_heads=4, head_dim=64,
        intermediate_size=688, vocab_size=32000, max_position_embeddings=8192, sliding_window=512,
    ),
    "125m": dict(
        hidden_size=768, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=12, head_dim=64,
        intermediate_size=2048, vocab_size=32000, max_position_embeddings=32768, sliding_window=2048,
    ),
    "350m": dict(
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, num_key_value_heads=16, head_dim=64,
        intermediate_size=2752, vocab_size=32000, max_position_embeddings=32768, sliding_window=2048,
    ),
    "760m": dict(
        hidden_size=1536, num_hidden_layers=24, num_attention_heads=12, num_key_value_heads=12, head_dim=128,
        intermediate_size=4096, vocab_size=32000, max_position_embeddings=32768, sliding_window=2048,
    ),
    "1.3b": dict(
        hidden_size=2048, num_hidden_layers=24, num_attention_heads=16, num_key_value_heads=16, head_dim=128,
        intermediate_size=5504, vocab_size=32000, max_position_embeddings=32768, sliding_window=2048,
    ),
}

PRESET_NAMES: tuple[str, ...] = tuple(f"{size}-{flavour}" for size in SIZES for flavour in FLAVOURS)


def layer_pattern(num_layers: int, flavour: str) -> list[str]:
    """``layer_types`` for ``flavour``: its cycle, or every fourth layer full attention and the rest its mixer."""
    if flavour not in FLAVOURS:
        raise ValueError(f"unknown flavour {flavour!r}; expected one of {', '.join(FLAVOURS)}")
    mixers = FLAVOURS[flavour]
    if flavour in NO_FULL_ATTENTION:
        return [mixers[i % len(mixers)] for i in range(num_layers)]
    return [
        FULL_ATTENTION if mixers is None or (i + 1) % FULL_ATTENTION_EVERY == 0
        else mixers[(i - (i + 1) // FULL_ATTENTION_EVERY) % len(mixers)]
        for i in range(num_layers)
    ]


def get_preset(name: str, **overrides: Any) -> PhalanxConfig:
    """The ``PhalanxConfig`` of preset ``name`` (e.g. ``"tiny-phalanx"``), with keyword ``overrides``."""
    size, _, flavour = name.rpartition("-")
    if size not in SIZES or flavour not in FLAVOURS:
        raise ValueError(f"unknown model preset {name!r}; available: {', '.join(PRESET_NAMES)}")
    fields = dict(SIZES[size])
    fields["layer_types"] = layer_pattern(fields["num_hidden_layers"], flavour)
    if SLIDING_ATTENTION not in fields["layer_types"]:
        fields["sliding_window"] = None
    fields["hyena_filter_groups"] = fields["hidden_size"] // HYENA_GROUP_CHANNELS
    fields.update(overrides)
    return PhalanxConfig(**fields)


def load_model_config(spec: str) -> tuple[PretrainedConfig, bool]:
    """Resolve ``--model-config``: a preset name, or a ``config.json`` file / model folder.

    A JSON config is a ``PhalanxConfig``, or the config of a source family ``phalanx convert`` supports
    (``gemma3_text``, ``qwen3``, ...): a Transformers teacher trained here, then converted and distilled.
    Returns the config and whether it came from a preset (presets take their vocabulary from the
    tokenizer; a JSON config is used as written).
    """
    if spec in PRESET_NAMES:
        return get_preset(spec), True
    path = Path(spec)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"--model-config {spec!r} is neither a preset ({', '.join(PRESET_NAMES)}) nor a config.json file"
        )
    try:
        fields = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(fields, dict):
        raise ValueError(f"{path} must hold a JSON object of PhalanxConfig fields")
    model_type = fields.get("model_type", PhalanxConfig.model_type)
    sources = supported_families()
    if model_type != PhalanxConfig.model_type and model_type not in sources:
        raise ValueError(f"{path} has model_type {model_type!r}; phalanx train builds {PhalanxConfig.model_type!r} "
                         f"models and the source families of phalanx convert ({', '.join(sources)})")
    try:
        if model_type != PhalanxConfig.model_type:
            return AutoConfig.for_model(**fields), False
        return PhalanxConfig.from_dict(fields), False
    except (ValueError, TypeError) as err:  # PhalanxConfig names the field; say which file holds it
        raise ValueError(f"{path}: {' '.join(str(err).split())}") from None
