"""Generation strategies, attention backends, gradient checkpointing and torch.compile of the Phalanx model."""

from __future__ import annotations

import pytest
import torch
from test_model_cache import VOCAB, single_thread, tiny_model  # noqa: F401  (fixture import)
from transformers import TextStreamer

from phalanx_training.tokenizer import load_byte_tokenizer


@torch.no_grad()
def test_sampling_and_beam_search_agree_with_and_without_cache() -> None:
    model = tiny_model()
    prompt = torch.randint(3, VOCAB, (2, 9))
    for kwargs in (
        dict(do_sample=True, top_k=20, num_return_sequences=2),
        dict(do_sample=False, num_beams=3, num_return_sequences=2),
    ):
        runs = []
        for use_cache in (True, False):
            torch.manual_seed(7)
            runs.append(model.generate(prompt, max_new_tokens=21, use_cache=use_cache, **kwargs))
        assert runs[0].shape == (4, 30)
        assert torch.equal(runs[0], runs[1]), kwargs


@torch.no_grad()
def test_text_streamer_prints_the_generated_text(capsys: pytest.CaptureFixture) -> None:
    tokenizer = load_byte_tokenizer()
    model = tiny_model(vocab_size=len(tokenizer))
    inputs = tokenizer("To be, or not", return_tensors="pt")
    streamer = TextStreamer(tokenizer, skip_prompt=True)
    out = model.generate(**inputs, max_new_tokens=12, do_sample=False, streamer=streamer)
    expected = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=False)
    assert capsys.readouterr().out.strip("\n") == expected.strip("\n")


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


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    ids = torch.randint(3, VOCAB, (2, 41))
    grads = []
    for checkpointing in (False, True):
        model = tiny_model().train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        model(ids, labels=ids, use_cache=False).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, atol=1e-6, rtol=1e-5, msg=name)


def test_torch_compile_forward_matches_eager_mode() -> None:
    model = tiny_model()
    ids = torch.randint(3, VOCAB, (2, 29))
    with torch.no_grad():
        expected = model(ids, use_cache=False).logits
        compiled = torch.compile(model, backend="eager")  # traces the Python; no C++ toolchain needed
        got = compiled(ids, use_cache=False).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
