"""Stand-ins for scoring tests: a tokenizer whose tokens span several bytes and a model of uniform logits."""

from __future__ import annotations

from types import SimpleNamespace

import torch


class ChunkTokenizer:
    """Three characters per token (so tokens span several bytes); ``strip_first`` drops a leading space when
    decoding, as SentencePiece does for a word-start piece, so tokens do not decode alone to their bytes."""

    def __init__(self, strip_first: bool = False) -> None:
        self.pieces: list[str] = []
        self.strip_first = strip_first

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        ids = []
        for i in range(0, len(text), 3):
            piece = text[i:i + 3]
            if piece not in self.pieces:
                self.pieces.append(piece)
            ids.append(self.pieces.index(piece))
        return {"input_ids": ids}

    def decode(self, ids: list[int]) -> str:
        text = "".join(self.pieces[i] for i in ids)
        return text.removeprefix(" ") if self.strip_first else text


class UniformModel(torch.nn.Module):
    """Logits 0 over ``vocab`` tokens: every predicted token costs log2(vocab) bits."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab
        self.anchor = torch.nn.Parameter(torch.zeros(()))

    def forward(self, ids: torch.Tensor, use_cache: bool = False) -> SimpleNamespace:
        return SimpleNamespace(logits=torch.zeros(*ids.shape, self.vocab))
