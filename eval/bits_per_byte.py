"""Bits per UTF-8 byte of texts under a causal LM, overall and by token position in the scoring window.

The definition is the one ``phalanx distill`` reports (``phalanx_conversion.distill.bits_per_byte``): each
text is tokenized without special tokens and scored in windows of ``seq_len`` tokens that overlap by one
token, so every token but the first of each text is predicted; the denominator is UTF-8 bytes, without
the bytes of each text's first token. Position buckets split the same sums: a predicted token's NLL and
its bytes go to the bucket of its index in its window (1 .. ``seq_len`` - 1), so the byte-weighted mean of
the buckets is the overall number. That tells whether a model loses on the first positions of a window
(short context) or on the far ones (long-range structure).

Only torch and the model/tokenizer objects are needed: no training or conversion code.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from transformers.convert_slow_tokenizer import bytes_to_unicode

_BYTE_LEVEL_CHARS = frozenset(bytes_to_unicode().values())  # the characters byte-level tokenizers write bytes as


@dataclass(frozen=True)
class PositionBucket:
    """Predicted tokens at window positions ``start <= p < end``: their bits/byte (None when no byte falls
    there, e.g. texts shorter than ``start``), bytes and count."""

    start: int
    end: int
    bits_per_byte: float | None
    n_bytes: int
    n_tokens: int


@dataclass(frozen=True)
class BitsPerByte:
    """Overall bits/byte of a set of texts and the same sums split by window position."""

    bits_per_byte: float
    n_bytes: int
    n_tokens: int
    buckets: tuple[PositionBucket, ...]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "bits_per_byte": self.bits_per_byte,
            "bytes": self.n_bytes,
            "predicted_tokens": self.n_tokens,
            "buckets": [
                {"positions": [b.start, b.end], "bits_per_byte": b.bits_per_byte, "bytes": b.n_bytes, "predicted_tokens": b.n_tokens}
                for b in self.buckets
            ],
        }


class TokenBytes:
    """UTF-8 bytes of each predicted token of a text, summing to the bytes the overall count gives that text.

    Three ways, the first whose sum matches: the bytes a byte-level token string stands for (GPT-2 style
    and the project's byte tokenizer: a lone byte of a multi-byte character is one byte, not the 3 bytes of
    the U+FFFD it decodes to); the bytes a token decodes to alone; else the growth of the decoded prefix
    ``ids[:k+1]`` over ``ids[:k]`` (exact for any tokenizer, SentencePiece word-start spaces included, but
    quadratic in the text's length). Per-id results are cached, so use one instance per tokenizer.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.byte_level: dict[int, int | None] = {}
        self.decoded: dict[int, int] = {}
        convert = getattr(tokenizer, "convert_ids_to_tokens", None)
        self._token_string = convert if callable(convert) else None

    def _byte_level_length(self, token: int) -> int | None:
        """Bytes a byte-level token string maps back to; None when it is not one."""
        if token not in self.byte_level:
            piece = self._token_string(token) if self._token_string is not None else None
            ok = isinstance(piece, str) and piece != "" and all(c in _BYTE_LEVEL_CHARS for c in piece)
            self.byte_level[token] = len(piece) if ok else None
        return self.byte_level[token]

    def __call__(self, ids: Sequence[int], n_bytes: int) -> list[int]:
        """Bytes of ``ids[1:]``; ``n_bytes``: the text's bytes without those of its first token."""
        counts = [self._byte_level_length(t) for t in ids[1:]]
        if None not in counts and sum(counts) == n_bytes:
            return counts
        for token in ids[1:]:
            if token not in self.decoded:
                self.decoded[token] = len(self.tokenizer.decode([token]).encode("utf-8"))
        counts = [self.decoded[t] for t in ids[1:]]
        if sum(counts) == n_bytes:
            return counts
        ends = [len(self.tokenizer.decode(list(ids[: k + 1])).encode("utf-8")) for k in range(len(ids) - 1)]
        ends.append(ends[0] + n_bytes)  # the whole text's bytes, as the overall count has them
        return [after - before for before, after in zip(ends, ends[1:])]


@torch.no_grad()
def score_texts(
    model: torch.nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    seq_len: int = 512,
    batch_size: int = 8,
    bucket_edges: Sequence[int] = (),
    max_bytes: int | None = None,
    amp_dtype: torch.dtype | None = None,
) -> BitsPerByte:
    """Bits per UTF-8 byte of ``texts`` under ``model``, overall and per window-position bucket.

    ``bucket_edges`` (increasing, inside 1 .. ``seq_len`` - 1) cut positions ``0 .. seq_len`` into buckets,
    e.g. ``(512,)`` with ``seq_len=4096`` gives 0-511 and 512-4095 (position 0 is never predicted).
    ``max_bytes`` truncates each text; ``amp_dtype`` runs the forward under autocast.
    """
    if seq_len < 2:
        raise ValueError(f"seq_len must be at least 2, got {seq_len}")
    edges = [0, *bucket_edges, seq_len]
    if any(a >= b for a, b in zip(edges, edges[1:])):
        raise ValueError(f"bucket edges must increase strictly inside 1..{seq_len - 1}, got {list(bucket_edges)}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    windows: list[tuple[list[int], list[int]]] = []  # (token ids, bytes of each predicted token)
    n_bytes = 0
    token_bytes_of = TokenBytes(tokenizer)
    for text in texts:
        if max_bytes is not None:
            text = text.encode("utf-8")[:max_bytes].decode("utf-8", errors="ignore")
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) < 2:
            continue
        text_bytes = len(text.encode("utf-8")) - len(tokenizer.decode(ids[:1]).encode("utf-8"))
        n_bytes += text_bytes
        token_bytes = token_bytes_of(ids, text_bytes)
        for s in range(0, len(ids) - 1, seq_len - 1):
            window = ids[s : s + seq_len]
            windows.append((window, token_bytes[s : s + len(window) - 1]))
    if n_bytes == 0:
        raise ValueError("held-out texts are empty: nothing to score")
    windows.sort(key=lambda w: len(w[0]))  # equal lengths batch together without padding
    bucket_of = torch.bucketize(torch.arange(seq_len), torch.tensor(edges[1:-1]), right=True)
    nll = torch.zeros(len(edges) - 1, dtype=torch.float64)
    byte_sums = torch.zeros(len(edges) - 1, dtype=torch.long)
    token_sums = torch.zeros(len(edges) - 1, dtype=torch.long)
    i = 0
    while i < len(windows):
        length = len(windows[i][0])
        j = i
        while j < len(windows) and j - i < batch_size and len(windows[j][0]) == length:
            j += 1
        batch = torch.tensor([w for w, _ in windows[i:j]], device=device)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            logits = model(batch, use_cache=False).logits
        token_nll = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), batch[:, 1:], reduction="none")
        bucket = bucket_of[1:length]  # bucket of each predicted position 1 .. length - 1
        nll.index_add_(0, bucket, token_nll.sum(0).double().cpu())
        byte_sums.index_add_(0, bucket, torch.tensor([b for _, b in windows[i:j]]).sum(0))
        token_sums.index_add_(0, bucket, torch.full((length - 1,), j - i))
        i = j
    model.train(was_training)
    buckets = tuple(
        PositionBucket(
            start=edges[k], end=edges[k + 1],
            bits_per_byte=float(nll[k]) / math.log(2) / int(byte_sums[k]) if byte_sums[k] > 0 else None,
            n_bytes=int(byte_sums[k]), n_tokens=int(token_sums[k]),
        )
        for k in range(len(edges) - 1)
    )
    return BitsPerByte(float(nll.sum()) / math.log(2) / n_bytes, n_bytes, int(token_sums.sum()), buckets)
