"""Read-only access to a Transformers checkpoint folder: where it is (a local folder or a Hub id in the local
Hugging Face cache), safetensors validation and loading, and the files that travel with a model (tokenizer,
chat template, generation config).

Every check runs before anything is written, so a corrupt or truncated source leaves no output behind
(outputs are written by :mod:`phalanx_training.folders`).
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

HUB_ID = re.compile(r"[\w][\w.-]*(/[\w][\w.-]*)?")  # `name` or `org/name`
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"

# safetensors dtype tag -> bytes per element (the tags the format defines that torch can load).
_DTYPE_BYTES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "U16": 2,
    "U32": 4,
    "U64": 8,
}

# Files copied verbatim from the source folder: tokenizer, chat template and generation config.
CARRIED_PATTERNS = (
    "tokenizer*.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.*",
    "merges.txt",
    "chat_template.json",
    "chat_template.jinja",
    "additional_chat_templates/*",
    "generation_config.json",
)


def resolve_checkpoint(src: str | os.PathLike) -> Path:
    """The checkpoint folder ``src`` names: a path (any ``os.PathLike``, or a string naming an existing path or
    written as one, ``./name``), else a Hub id (``org/name``) resolved in the local Hugging Face cache
    (``HF_HUB_CACHE``). Never downloads: a Hub id that is not cached is an error."""
    path = Path(src)
    if not isinstance(src, str) or path.exists() or not HUB_ID.fullmatch(src):
        return path
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(str(src), local_files_only=True))
    except LocalEntryNotFoundError:
        where = f"{src} is not a local folder, and not in the local Hugging Face cache ({constants.HF_HUB_CACHE})"
        if constants.HF_HUB_OFFLINE:
            raise FileNotFoundError(f"{where}, and the machine is offline (HF_HUB_OFFLINE): download it where there is "
                                    f"network (hf download {src}) or pass a checkpoint folder") from None
        raise FileNotFoundError(f"{where}; phalanx never downloads: fetch it first (hf download {src}) or pass a "
                                "checkpoint folder") from None


def _read_header(path: Path) -> dict[str, dict]:
    """Parse and check one safetensors header against the file size (catches truncation and garbage)."""
    size = path.stat().st_size
    with path.open("rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise ValueError(f"{path}: not a safetensors file (shorter than its 8-byte header length)")
        (n,) = struct.unpack("<Q", prefix)
        if n > size - 8:
            raise ValueError(f"{path}: corrupt or truncated safetensors file (header of {n} bytes, file of {size})")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: corrupt safetensors header ({err})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: corrupt safetensors header (not a JSON object)")
    header.pop("__metadata__", None)
    data_len = size - 8 - n
    for name, info in header.items():
        try:
            dtype, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{path}: corrupt safetensors header entry for {name!r}") from None
        if dtype not in _DTYPE_BYTES:
            raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {dtype}")
        if end - begin != math.prod(shape) * _DTYPE_BYTES[dtype] or not 0 <= begin <= end:
            raise ValueError(f"{path}: corrupt safetensors header, tensor {name!r} size does not match its shape")
        if end > data_len:
            raise ValueError(
                f"{path}: truncated safetensors file (tensor {name!r} ends at byte {end}, data holds {data_len})"
            )
    return header


def weight_files(src: str | os.PathLike) -> dict[str, Path]:
    """Map every tensor name of a checkpoint folder to its safetensors file, after validating every file.

    Handles a single `model.safetensors` and sharded checkpoints with `model.safetensors.index.json`.
    """
    src = Path(src)
    if not src.is_dir():
        raise FileNotFoundError(f"checkpoint folder {src} does not exist")
    if not (src / "config.json").is_file():
        raise FileNotFoundError(f"{src} has no config.json (not a Transformers checkpoint folder)")
    index = src / INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(f"{index}: corrupt index ({err!r})") from None
        shards = sorted(set(weight_map.values()))
    elif (src / SINGLE_NAME).is_file():
        weight_map, shards = None, [SINGLE_NAME]
    else:
        raise FileNotFoundError(f"{src} has no {SINGLE_NAME} or {INDEX_NAME} (only safetensors checkpoints are read)")
    located: dict[str, Path] = {}
    for shard in shards:
        path = src / shard
        if not path.is_file():
            raise FileNotFoundError(f"{path} is listed in {INDEX_NAME} but missing")
        for name in _read_header(path):
            if name in located:
                raise ValueError(f"tensor {name!r} appears in both {located[name].name} and {shard}")
            located[name] = path
    if weight_map is not None:
        missing = sorted(k for k, v in weight_map.items() if located.get(k, Path()).name != v)
        if missing:
            raise ValueError(f"{index}: {len(missing)} indexed tensors not found in their shard, e.g. {missing[:3]}")
    return located


def load_tensors(files: dict[str, Path]) -> dict[str, torch.Tensor]:
    """Load every tensor named in `files` (from `weight_files`) on the CPU, in its stored dtype."""
    by_file: dict[Path, list[str]] = {}
    for name, path in files.items():
        by_file.setdefault(path, []).append(name)
    tensors: dict[str, torch.Tensor] = {}
    for path, names in by_file.items():
        try:
            with safe_open(path, framework="pt", device="cpu") as f:
                for name in names:
                    tensors[name] = f.get_tensor(name)
        except SafetensorError as err:
            raise ValueError(f"{path}: cannot read safetensors file ({err})") from None
    return tensors


def carried_files(src: str | os.PathLike) -> list[Path]:
    """Files of `src` that travel with a converted model (paths relative to `src`)."""
    src = Path(src)
    found = {p.relative_to(src) for pattern in CARRIED_PATTERNS for p in src.glob(pattern) if p.is_file()}
    return sorted(found)
