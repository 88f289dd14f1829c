"""Sequence packing: documents -> fixed-length rows with per-sequence resets.

Documents are tokenized, closed with EOS, concatenated and cut into rows of ``seq_len`` tokens. Within
a row, ``position_ids`` restart at 0 wherever a segment begins (a new document, or the start of the
row for a document continued from the previous row). That restart is the packing signal everywhere:
Transformers' mask helpers build a block-diagonal causal mask from it when no ``attention_mask`` is
passed (``masking_utils.find_packed_sequence_indices``), flash/flex attention derive ``cu_seqlens``
from it, and the Phalanx mixer resets its recurrence and re-aligns its blocks on it. The first token of
every segment gets label -100, so no token is trained to predict across a boundary.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from .data import read_texts

IGNORE_INDEX = -100


def tokenize_documents(texts: Sequence[str], tokenizer: PreTrainedTokenizerBase) -> list[list[int]]:
    """Token ids of each text with the tokenizer's own special tokens, closed by EOS when it has one."""
    eos = tokenizer.eos_token_id
    docs = []
    for ids in tokenizer(list(texts), add_special_tokens=True)["input_ids"]:
        if eos is not None and (not ids or ids[-1] != eos):
            ids = ids + [eos]
        if ids:
            docs.append(ids)
    return docs


def pack_documents(documents: Sequence[Sequence[int]], seq_len: int) -> dict[str, torch.Tensor]:
    """Concatenate ``documents`` and cut them into rows of ``seq_len`` tokens (the tail is dropped).

    Returns ``input_ids``, ``position_ids`` and ``labels``, each (rows, seq_len) int64.
    """
    if seq_len < 2:
        raise ValueError(f"seq_len must be at least 2, got {seq_len}")
    lengths = torch.tensor([len(d) for d in documents], dtype=torch.long)
    total = int(lengths.sum())
    rows = total // seq_len
    if rows == 0:
        raise ValueError(f"the data holds {total} tokens, fewer than one row of seq_len={seq_len}")
    stream = torch.cat([torch.as_tensor(d, dtype=torch.long) for d in documents])[: rows * seq_len]
    index = torch.arange(rows * seq_len)
    starts = torch.zeros(total, dtype=torch.bool)
    starts[torch.cumsum(lengths, 0)[:-1]] = True
    starts[0] = True
    starts = starts[: rows * seq_len]
    starts[::seq_len] = True
    # Position = distance to the latest segment start at or before each token.
    segment_start = torch.cummax(torch.where(starts, index, torch.zeros_like(index)), 0).values
    position_ids = index - segment_start
    labels = stream.masked_fill(starts, IGNORE_INDEX)
    return {
        "input_ids": stream.view(rows, seq_len),
        "position_ids": position_ids.view(rows, seq_len),
        "labels": labels.view(rows, seq_len),
    }


class PackedDataset(torch.utils.data.Dataset):
    """Rows of a packed corpus; item ``i`` is a dict of (seq_len,) tensors."""

    def __init__(self, packed: dict[str, torch.Tensor]) -> None:
        self.packed = packed

    def __len__(self) -> int:
        return self.packed["input_ids"].shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {key: value[i] for key, value in self.packed.items()}


def build_packed_dataset(
    paths: Sequence[str | Path],
    tokenizer: PreTrainedTokenizerBase,
    seq_len: int,
    exclude_held_out: bool = True,
) -> PackedDataset:
    """Read text files/folders (one document per file), tokenize and pack them."""
    return PackedDataset(pack_documents(tokenize_documents(read_texts(paths, exclude_held_out), tokenizer), seq_len))


class PackedCollator:
    """Stack packed rows; no ``attention_mask``, so the position-id restarts define the sequences.

    ``use_cache=False`` is passed too: with a cache, Transformers' mask helpers skip packed-sequence
    detection (they only look at ``position_ids`` when ``past_key_values`` is None).
    """

    def __call__(self, features: list[dict[str, torch.Tensor]]) -> dict[str, Any]:
        batch: dict[str, Any] = {key: torch.stack([f[key] for f in features]) for key in features[0]}
        batch["use_cache"] = False
        return batch
