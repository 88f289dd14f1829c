"""Attention backends and torch.compile of the Phalanx model (generation: test_generation_equivalence.py)."""

from __future__ import annotations

import pytest
import torch
from test_model_cache import VOCAB, single_thread, tiny_model  # noqa: F401  (fixture import)


@torch.no_grad()
@pytest.mark.parametrize(
    "backend",
    # flex_attention compiles its kernels with inductor: about a minute on a 2-core CPU, hence "slow".
    ["sdpa", pytest.param("flex_attention", marks=pytest.mark.slow)],
)
def test_attention_backends_agree_with_eager(backend: str) -> None:
    eager = tiny_model(attn_implementation="eager")
    other = tiny_model(attn_implementation=backend)
    assert other.config._attn_implementation == backend
    ids = torch.randint(3, VOCAB, (2, 37))
    mask = torch.ones_like(ids)
    mask[1, :6] = 0
    expected = eager(ids, attention_mask=mask).logits
    got = other(ids, attention_mask=mask).logits
    assert (expected - got)[mask.bool()].abs().max().item() <= 1e-4


def test_torch_compile_forward_matches_eager_mode() -> None:
    model = tiny_model()
    ids = torch.randint(3, VOCAB, (2, 29))
    with torch.no_grad():
        expected = model(ids, use_cache=False).logits
        compiled = torch.compile(model, backend="eager")  # traces the Python; no C++ toolchain needed
        got = compiled(ids, use_cache=False).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
