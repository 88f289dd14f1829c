"""Turn the SWA layers of a Transformers checkpoint into Phalanx mixers (`phalanx convert SRC OUT`).

Everything except the mixers of the converted layers is carried over bit for bit: embeddings, norms,
MLPs, the kept attention layers, the head. The source folder is only read. All checks (safetensors
integrity, family support, layer selection, tensor names and shapes against the Phalanx model) run
before anything is written; the output is written to a temporary folder and renamed when complete.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, PretrainedConfig

from modeling_phalanx.configuration_phalanx import PhalanxConfig
from modeling_phalanx.modeling_phalanx import PhalanxForCausalLM, PhalanxMixer

from phalanx_training.checks import check_finite_weights
from phalanx_training.folders import check_output, output_folder

from . import CONVERSION_RECORD
from .checkpoint import carried_files, load_tensors, resolve_checkpoint, weight_files
from .families import family_for, get_family, phalanx_config_kwargs, resolve_layers
from .init import DEFAULT_INIT, warm_start_mixer

DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_ATTN_KEY = re.compile(r"^model\.layers\.(\d+)\.self_attn\.(.+)$")


@dataclass
class ConversionResult:
    """What `convert_checkpoint` wrote."""

    out: str
    source: str
    model_type: str
    converted_layers: list[int]
    init: str
    block_len: int
    window_blocks: int
    dtype: str


def source_name(src: Path) -> str:
    """How the conversion record names its source: the Hub id of a Hub-cache snapshot
    (``.../models--ORG--NAME/snapshots/REV`` -> ``ORG/NAME``), else the folder's name; never an absolute
    local path, which would leak into model cards and mean nothing elsewhere."""
    parts = src.resolve().parts
    for i, part in enumerate(parts[:-2]):
        if part.startswith("models--") and parts[i + 1] == "snapshots":
            return part.removeprefix("models--").replace("--", "/")
    return src.resolve().name


def read_source_config(src: str | os.PathLike) -> PretrainedConfig:
    """The source `config.json` through AutoConfig (local files only), for a supported family only.

    The model type is checked on the raw JSON first, so a type Transformers does not know still gets the
    list of supported families.
    """
    path = Path(src) / "config.json"
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read {path}: {err}") from None
    family_for(raw.get("model_type") if isinstance(raw, dict) else None)
    try:
        return AutoConfig.from_pretrained(src, local_files_only=True)
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"cannot read {path}: {err}") from None


def _fresh_mixer(model: PhalanxForCausalLM, layer: int) -> dict[str, torch.Tensor]:
    """State dict of a freshly initialised mixer, using the model's own `_init_weights` (fp32, CPU)."""
    mixer = PhalanxMixer(model.config, layer)
    mixer.apply(model._init_weights)
    return mixer.state_dict()


def build_state_dict(
    src_tensors: dict[str, torch.Tensor],
    config: PhalanxConfig,
    source_config: PretrainedConfig,
    layers: list[int],
    init: str,
    dtype: torch.dtype | None,
    seed: int = 0,
) -> tuple[PhalanxForCausalLM, dict[str, torch.Tensor]]:
    """The Phalanx state dict for `src_tensors`, checked against a (meta-device) Phalanx model.

    Returns the meta model and the state dict; raises ValueError if any tensor is missing, unexpected or
    of the wrong shape.
    """
    with torch.device("meta"):
        model = PhalanxForCausalLM(config)
    tied = bool(config.tie_word_embeddings)
    attention: dict[int, dict[str, torch.Tensor]] = {i: {} for i in layers}
    state: dict[str, torch.Tensor] = {}
    for key, tensor in src_tensors.items():
        match = _ATTN_KEY.match(key)
        if match and int(match.group(1)) in attention:
            attention[int(match.group(1))][match.group(2)] = tensor
        elif not (tied and key == "lm_head.weight"):
            state[key] = tensor if dtype is None or not tensor.is_floating_point() else tensor.to(dtype)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        for i, attn in attention.items():
            if "v_proj.weight" not in attn or "o_proj.weight" not in attn:
                raise ValueError(f"source layer {i} has no self_attn.v_proj/o_proj weights to convert")
            mixer = warm_start_mixer(
                _fresh_mixer(model, i),
                attn,
                scheme=init,
                num_attention_heads=config.num_attention_heads,
                num_key_value_heads=config.num_key_value_heads,
                head_dim=config.head_dim,
                phalanx_num_heads=config.phalanx_num_heads,
                phalanx_head_dim=config.phalanx_head_dim,
                phalanx_num_gate_groups=config.phalanx_num_gate_groups,
            )
            target = dtype or attn["v_proj.weight"].dtype
            state.update({f"model.layers.{i}.mixer.{k}": v.to(target) for k, v in mixer.items()})
    finally:
        torch.random.set_rng_state(generator_state)
    expected = {k: v.shape for k, v in model.state_dict().items() if not (tied and k == "lm_head.weight")}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if state[k].shape != expected[k])
    if missing or unexpected or wrong:
        raise ValueError(
            f"{source_config.model_type} checkpoint does not map onto the Phalanx model: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}, wrong shape {wrong[:5]}"
        )
    return model, state


def convert_checkpoint(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    layers: str | list[int] = "sliding",
    block_len: int = 16,
    window_blocks: int = 2,
    phalanx_head_dim: int = 16,
    init: str = DEFAULT_INIT,
    dtype: str = "auto",
    force: bool = False,
    max_shard_size: str | int = "5GB",
    seed: int = 0,
) -> ConversionResult:
    """Convert checkpoint `src` (a folder, or a Hub id in the local cache) into a `PhalanxForCausalLM` folder `out`.

    `layers`: "sliding" (every SWA layer), "none", or layer indices (any attention layer). `dtype`:
    "auto" keeps every source tensor's dtype (converted mixers take their layer's dtype); otherwise
    every floating tensor is cast. Tokenizer, chat template and generation config are copied.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    src_path = resolve_checkpoint(src)
    files = weight_files(src_path)
    check_output(out, inputs=[src_path], force=force)
    source_config = read_source_config(src_path)
    get_family(source_config)
    layer_idx = resolve_layers(source_config, layers)
    kwargs = phalanx_config_kwargs(
        source_config, layer_idx, phalanx_head_dim=phalanx_head_dim, block_len=block_len, window_blocks=window_blocks
    )
    config = PhalanxConfig(**kwargs)
    tensors = load_tensors(files)
    check_finite_weights(tensors, src_path)
    target = DTYPES[dtype]
    model, state = build_state_dict(tensors, config, source_config, layer_idx, init, target, seed)
    float_dtypes = {t.dtype for t in state.values() if t.is_floating_point()}
    saved_dtype = target or (float_dtypes.pop() if len(float_dtypes) == 1 else torch.float32)
    model.config.dtype = saved_dtype
    model.load_state_dict(state, strict=False, assign=True)
    result = ConversionResult(
        out=str(out),
        source=source_name(src_path),
        model_type=source_config.model_type,
        converted_layers=layer_idx,
        init=init,
        block_len=block_len,
        window_blocks=window_blocks,
        dtype=str(saved_dtype).removeprefix("torch."),
    )
    with output_folder(out, inputs=[src_path], force=force) as tmp:
        model.save_pretrained(tmp, state_dict=state, max_shard_size=max_shard_size)
        for rel in carried_files(src_path):
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src_path / rel, tmp / rel)
        record = {k: v for k, v in asdict(result).items() if k != "out"}  # local paths mean nothing on a model card
        (tmp / CONVERSION_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return result
