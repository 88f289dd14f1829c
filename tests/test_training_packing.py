"""Sequence packing: positions restart per segment, boundary labels are masked, and a packed row gives the
same logits as running each of its segments alone."""

from __future__ import annotations

import random

import pytest
import torch

from modeling_phalanx import PhalanxConfig, PhalanxForCausalLM
from phalanx_training.data import IGNORE_INDEX, PackedCollator, PackedDataset, pack_documents, tokenize_documents
from phalanx_training.tokenizer import load_byte_tokenizer


def reference_pack(documents: list[list[int]], seq_len: int) -> tuple[list, list, list]:
    """Token-by-token loop: a segment starts at each document start and at each row start."""
    ids, pos, labels = [], [], []
    for doc in documents:
        for k, token in enumerate(doc):
            ids.append(token)
            pos.append(k)
    rows = len(ids) // seq_len
    out_ids, out_pos, out_labels = [], [], []
    for r in range(rows):
        row_ids = ids[r * seq_len : (r + 1) * seq_len]
        row_pos, row_labels, offset = [], [], 0
        for j in range(seq_len):
            doc_pos = pos[r * seq_len + j]
            if j == 0:
                offset = doc_pos  # a document continued from the previous row restarts here
            elif doc_pos == 0:
                offset = 0
            row_pos.append(doc_pos - offset)
            row_labels.append(IGNORE_INDEX if doc_pos - offset == 0 else row_ids[j])
        out_ids.append(row_ids)
        out_pos.append(row_pos)
        out_labels.append(row_labels)
    return out_ids, out_pos, out_labels


@pytest.mark.parametrize("seq_len", [7, 16, 33])
def test_pack_documents_matches_reference_loop(seq_len: int) -> None:
    rng = random.Random(seq_len)
    docs = [[rng.randrange(3, 259) for _ in range(rng.randrange(1, 40))] for _ in range(25)]
    packed = pack_documents(docs, seq_len)
    ref_ids, ref_pos, ref_labels = reference_pack(docs, seq_len)
    assert packed["input_ids"].tolist() == ref_ids
    assert packed["position_ids"].tolist() == ref_pos
    assert packed["labels"].tolist() == ref_labels
    assert packed["input_ids"].dtype == packed["position_ids"].dtype == torch.long


def test_pack_documents_errors() -> None:
    with pytest.raises(ValueError, match="fewer than one row"):
        pack_documents([[5, 6, 7]], 8)
    with pytest.raises(ValueError, match="seq_len"):
        pack_documents([[5, 6, 7]], 1)


def test_tokenize_documents_closes_each_text_with_eos() -> None:
    tok = load_byte_tokenizer()
    docs = tokenize_documents(["ab", "", "xyz"], tok)
    assert docs == [[ord("a") + 3, ord("b") + 3, tok.eos_token_id], [tok.eos_token_id], [ord(c) + 3 for c in "xyz"] + [tok.eos_token_id]]


def test_packed_row_logits_equal_separate_segments() -> None:
    torch.manual_seed(0)
    config = PhalanxConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
        layer_types=["linear_attention", "sliding_attention", "full_attention"], sliding_window=12,
    )
    model = PhalanxForCausalLM(config).eval()
    rng = random.Random(1)
    docs = [[rng.randrange(3, 64) for _ in range(n)] for n in (5, 37, 1, 20, 18, 9, 26)]
    dataset = PackedDataset(pack_documents(docs, 45))
    batch = PackedCollator()([dataset[i] for i in range(len(dataset))])
    assert "attention_mask" not in batch and batch["use_cache"] is False
    with torch.no_grad():
        packed = model(**batch)
        assert torch.isfinite(packed.loss)
        ids, pos = batch["input_ids"], batch["position_ids"]
        n_segments = 0
        for r in range(ids.shape[0]):
            starts = (pos[r] == 0).nonzero().flatten().tolist() + [ids.shape[1]]
            for s, e in zip(starts[:-1], starts[1:]):
                alone = model(ids[r : r + 1, s:e]).logits
                torch.testing.assert_close(packed.logits[r : r + 1, s:e], alone, atol=2e-5, rtol=1e-4)
                n_segments += 1
    assert n_segments > ids.shape[0]  # rows really hold several segments
