"""``phalanx_eval.bits_per_byte``: the same number as ``phalanx distill``'s bits/byte, split by window position."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from modeling_phalanx import PhalanxConfig, PhalanxForCausalLM
from phalanx_conversion.distill import bits_per_byte
from phalanx_eval.bits_per_byte import TokenBytes, score_texts
from phalanx_training.tokenizer import load_byte_tokenizer

from fakes import ChunkTokenizer, UniformModel

TEXTS = ["def f(x):\n    return x * 2  # é ü 漢字\n" * 9, "ab", "import os\n" * 30, "x"]


def tiny_model(vocab: int) -> PhalanxForCausalLM:
    torch.manual_seed(0)
    config = PhalanxConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        head_dim=16, layer_types=["linear_attention", "full_attention"], max_position_embeddings=256,
    )
    return PhalanxForCausalLM(config).eval()


def byte_weighted_mean(result) -> float:
    return sum(b.bits_per_byte * b.n_bytes for b in result.buckets) / sum(b.n_bytes for b in result.buckets)


@pytest.mark.parametrize(("seq_len", "batch_size", "edges"), [(16, 3, (4,)), (40, 2, (8, 20)), (64, 8, ())])
def test_equals_distill_bits_per_byte(seq_len: int, batch_size: int, edges: tuple[int, ...]) -> None:
    tok = load_byte_tokenizer()
    model = tiny_model(len(tok))
    want = bits_per_byte(model, tok, TEXTS, seq_len=seq_len, batch_size=batch_size, max_bytes=200)
    got = score_texts(model, tok, TEXTS, seq_len=seq_len, batch_size=batch_size, bucket_edges=edges, max_bytes=200)
    assert got.bits_per_byte == pytest.approx(want, rel=1e-6)
    assert got.bits_per_byte == pytest.approx(byte_weighted_mean(got), rel=1e-9)
    assert [(b.start, b.end) for b in got.buckets] == list(zip((0, *edges), (*edges, seq_len)))
    # byte tokenizer: one byte per token, and every byte but each text's first is predicted
    kept = [t.encode()[:200].decode(errors="ignore").encode() for t in TEXTS]
    assert got.n_bytes == got.n_tokens == sum(len(t) - 1 for t in kept if len(t) > 1)
    assert all(b.n_bytes == b.n_tokens > 0 for b in got.buckets)


def test_buckets_follow_window_positions() -> None:
    """Tokens at window position p go to the bucket of p: a model that is certain after position 4 costs
    nothing there, so all the bits lie in the first bucket."""

    class Certain(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.anchor = torch.nn.Parameter(torch.zeros(()))

        def forward(self, ids: torch.Tensor, use_cache: bool = False) -> SimpleNamespace:
            logits = torch.zeros(*ids.shape, 300)
            nxt = torch.roll(ids, -1, dims=1)  # the true next token, known from position 4 on
            logits[:, 4:].scatter_(2, nxt[:, 4:, None], 1e4)
            return SimpleNamespace(logits=logits)

    tok = load_byte_tokenizer()
    got = score_texts(Certain(), tok, ["0123456789" * 5], seq_len=16, bucket_edges=(5,))
    first, rest = got.buckets
    assert first.n_tokens == 4 * 4 and rest.n_tokens == 49 - 16  # 4 windows (positions 1-4 in each), rest of 49
    assert first.bits_per_byte == pytest.approx(math.log2(300), rel=1e-6)
    assert rest.bits_per_byte == pytest.approx(0.0, abs=1e-6)


def test_tokens_spanning_several_bytes() -> None:
    text = "abcdéfghij"  # tokens abc dé fgh ij: bytes 3, 3 (é is two), 3, 2; the first token is not predicted
    tok = ChunkTokenizer()
    got = score_texts(UniformModel(10), tok, [text], seq_len=3, bucket_edges=(2,))
    want = bits_per_byte(UniformModel(10), ChunkTokenizer(), [text], seq_len=3)
    assert got.bits_per_byte == pytest.approx(want, rel=1e-6)
    assert got.bits_per_byte == pytest.approx(3 * math.log2(10) / 8, rel=1e-6)  # 3 predicted tokens over 8 bytes
    # windows [abc dé fgh] [fgh ij]: position 1 holds dé and ij (5 bytes), position 2 holds fgh (3 bytes)
    assert [(b.n_tokens, b.n_bytes) for b in got.buckets] == [(2, 5), (1, 3)]


def test_tokens_that_do_not_decode_alone_use_prefix_growth() -> None:
    tok = ChunkTokenizer(strip_first=True)
    text = "ab cd ef g"  # pieces "ab " "cd " "ef " "g" decode alone to their own bytes
    assert TokenBytes(tok)(tok(text)["input_ids"], len(text) - 3) == [3, 3, 1]
    text = "ab  cd  e"  # pieces "ab " " cd" "  e" alone decode to "cd" and " e" (4 bytes, not 6)
    ids = tok(text)["input_ids"]
    assert TokenBytes(tok)(ids, len(text) - 3) == [3, 3]
    got = score_texts(UniformModel(10), tok, [text], seq_len=8)
    assert got.n_bytes == sum(b.n_bytes for b in got.buckets) == 6
    assert got.bits_per_byte == pytest.approx(2 * math.log2(10) / 6, rel=1e-6)


def test_refuses_empty_texts_and_bad_edges() -> None:
    tok = load_byte_tokenizer()
    model = tiny_model(len(tok))
    with pytest.raises(ValueError, match="empty"):
        score_texts(model, tok, ["a", ""], seq_len=16)
    with pytest.raises(ValueError, match="bucket edges"):
        score_texts(model, tok, TEXTS, seq_len=16, bucket_edges=(16,))
