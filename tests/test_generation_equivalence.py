"""Generation is token-exact across every way Transformers offers to run it, for each layer mix.

For all-Phalanx stacks, Phalanx + sliding + full attention hybrids and the converted-family decoder variants
(Gemma2 / Gemma3 / Olmo3 / Cohere2 blocks with a Phalanx layer), in fp32 on CPU: greedy decoding with the cache
equals decoding without it and an argmax loop over full forwards; sampling (fixed seed) and beam search agree with
and without the cache; a left-padded batch equals each prompt alone (sdpa and eager); `generate` continues from a
returned cache and starts from `inputs_embeds`; the `text-generation` pipeline, `TextStreamer` and lm-eval's
`generate_until` give the tokens `generate` gives. The tests pass the cache under the installed release's name
(`cache` from Transformers 5.24, `past_key_values` before), as `generate` itself does.
"""

from __future__ import annotations

import pytest
import torch
from test_model_cache import VOCAB, single_thread, tiny_model  # noqa: F401  (fixture import)
from transformers import TextStreamer, pipeline
from transformers.generation import CompileConfig

from modeling_phalanx.modeling_phalanx import CACHE_KWARG
from phalanx_training.tokenizer import load_byte_tokenizer

L, S, F = "linear_attention", "sliding_attention", "full_attention"
NESTED_ROPE = {F: {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e5}, S: {"rope_type": "default", "rope_theta": 1e4}}
GEMMA_BLOCK = dict(
    norm_type="gemma_rms", norm_placement="sandwich", query_pre_attn_scalar=12, hidden_act="gelu_pytorch_tanh",
    embedding_scale=32**0.5, tie_word_embeddings=True,
)
# Layer mixes: (layer_types, config overrides). Sliding windows are shorter than the prompts, so windows slide.
MIXES = {
    "phalanx_only": ([L, L, L], dict(sliding_window=None, phalanx_output_norm=True)),
    "hybrid": ([L, S, L, F], {}),
    "gemma2": ([S, L, F], dict(GEMMA_BLOCK, attn_logit_softcapping=5.0, final_logit_softcapping=3.0)),
    "gemma3": ([L, S, F], dict(GEMMA_BLOCK, qk_norm="head", rope_parameters={k: dict(v) for k, v in NESTED_ROPE.items()})),
    "olmo3": ([S, L, F], dict(norm_placement="post", qk_norm="projection", rope_parameters={k: dict(v) for k, v in NESTED_ROPE.items()})),
    "cohere2": ([S, L, F], dict(norm_type="layer_norm", norm_placement="parallel", rope_interleaved=True, no_rope_layers=[2], logit_scale=0.5, tie_word_embeddings=True)),
}
GREEDY = dict(do_sample=False, max_new_tokens=20, min_new_tokens=20)
# The mixes' models have no end-of-sequence token, so that every run generates its full length and an argmax loop
# (which knows no `min_new_tokens`) is comparable.
NO_EOS = dict(eos_token_id=None)


def mix_model(name: str, attn_implementation: str = "eager", **overrides):
    layer_types, options = MIXES[name]
    options = dict(options, **overrides)
    return tiny_model(
        num_hidden_layers=len(layer_types), layer_types=layer_types, attn_implementation=attn_implementation,
        **NO_EOS, **options,
    )


def backends(name: str) -> list[str]:
    # SDPA cannot soft-cap attention scores: Gemma2 blocks run eager only.
    return ["eager"] if "attn_logit_softcapping" in MIXES[name][1] else ["sdpa", "eager"]


def returned_cache(output):
    """The cache `generate(return_dict_in_generate=True)` returns, under the installed release's field name."""
    return getattr(output, CACHE_KWARG)


@torch.no_grad()
@pytest.mark.parametrize("name", list(MIXES))
def test_greedy_with_cache_equals_without_and_an_argmax_loop(name: str) -> None:
    model = mix_model(name)
    prompt = torch.randint(3, VOCAB, (2, 19))
    cached = model.generate(prompt, **GREEDY)
    uncached = model.generate(prompt, use_cache=False, **GREEDY)
    ids = prompt
    for _ in range(GREEDY["max_new_tokens"]):
        ids = torch.cat([ids, model(ids).logits[:, -1:].argmax(-1)], dim=1)
    assert torch.equal(uncached, ids)
    assert torch.equal(cached, ids)


@torch.no_grad()
@pytest.mark.parametrize("name", list(MIXES))
def test_sampling_and_beam_search_agree_with_and_without_cache(name: str) -> None:
    model = mix_model(name)
    prompt = torch.randint(3, VOCAB, (2, 13))
    for options in (
        dict(do_sample=True, top_k=20, temperature=0.9, num_return_sequences=2),
        dict(do_sample=False, num_beams=3, num_return_sequences=2),
    ):
        runs = []
        for use_cache in (True, False):
            torch.manual_seed(11)
            runs.append(model.generate(prompt, max_new_tokens=17, min_new_tokens=17, use_cache=use_cache, **options))
        assert runs[0].shape == (4, 30)
        assert torch.equal(runs[0], runs[1]), options


@torch.no_grad()
@pytest.mark.parametrize("name", list(MIXES))
def test_left_padded_batch_equals_each_prompt_alone(name: str) -> None:
    for backend in backends(name):
        model = mix_model(name, attn_implementation=backend)
        prompts = [torch.randint(3, VOCAB, (n,)) for n in (4, 18, 29)]
        width = max(len(p) for p in prompts)
        ids = torch.zeros(len(prompts), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt) :] = prompt
            mask[row, width - len(prompt) :] = 1
        batched = model.generate(ids, attention_mask=mask, pad_token_id=0, **GREEDY)
        for row, prompt in enumerate(prompts):
            alone = model.generate(prompt[None], pad_token_id=0, **GREEDY)
            assert torch.equal(batched[row, width:], alone[0, len(prompt) :]), (backend, row)


@torch.no_grad()
@pytest.mark.parametrize("name", list(MIXES))
def test_generate_continues_from_a_returned_cache(name: str) -> None:
    model = mix_model(name)
    prompt = torch.randint(3, VOCAB, (2, 15))
    at_once = model.generate(prompt, do_sample=False, max_new_tokens=24, min_new_tokens=24)
    first = model.generate(prompt, do_sample=False, max_new_tokens=10, min_new_tokens=10, return_dict_in_generate=True)
    cache = returned_cache(first)
    assert cache is not None
    assert cache.get_seq_length() == first.sequences.shape[1] - 1  # the last token is not yet consumed
    # An explicit mask: generated tokens may equal the pad id, which `generate` would otherwise take for padding.
    mask = torch.ones_like(first.sequences)
    second = model.generate(
        first.sequences, attention_mask=mask, do_sample=False, max_new_tokens=14, min_new_tokens=14, **{CACHE_KWARG: cache}
    )
    assert torch.equal(second, at_once)


@torch.no_grad()
@pytest.mark.parametrize("name", list(MIXES))
def test_generate_from_inputs_embeds_equals_from_ids(name: str) -> None:
    model = mix_model(name)
    prompt = torch.randint(3, VOCAB, (2, 14))
    from_ids = model.generate(prompt, **GREEDY)
    from_embeds = model.generate(inputs_embeds=model.get_input_embeddings()(prompt), **GREEDY)
    assert torch.equal(from_embeds, from_ids[:, prompt.shape[1] :])  # embeds prompts return only the new tokens


@torch.no_grad()
@pytest.mark.parametrize("name", list(MIXES))
def test_static_cache_gives_the_default_cache_tokens(name: str) -> None:
    """`generate(cache_implementation="static")` (fixed-size attention layers, in-place Phalanx states): greedy on a
    left-padded batch (sdpa and eager), beam search and sampling give the tokens of the default cache."""
    for backend in backends(name):
        model = mix_model(name, attn_implementation=backend)
        ids = torch.randint(3, VOCAB, (2, 23))
        mask = torch.ones_like(ids)
        ids[0, :9], mask[0, :9] = 0, 0
        runs = [
            model.generate(ids, attention_mask=mask, pad_token_id=0, cache_implementation=impl, **GREEDY)
            for impl in (None, "static")
        ]
        assert torch.equal(runs[0], runs[1]), backend
    out = model.generate(ids, attention_mask=mask, pad_token_id=0, cache_implementation="static",
                         return_dict_in_generate=True, **GREEDY)
    assert type(returned_cache(out)).__name__ == "PhalanxStaticCache"
    for options in (dict(num_beams=3, num_return_sequences=2), dict(do_sample=True, top_k=20)):
        runs = []
        for impl in (None, "static"):
            torch.manual_seed(5)
            runs.append(model.generate(ids, attention_mask=mask, pad_token_id=0, max_new_tokens=12,
                                       min_new_tokens=12, cache_implementation=impl, **options))
        assert torch.equal(runs[0], runs[1]), options


@torch.no_grad()
@pytest.mark.parametrize("name", ["phalanx_only", "hybrid"])
def test_compiled_static_decoding_has_no_graph_break_and_the_same_tokens(name: str) -> None:
    """`generate` compiles the decoding step with `fullgraph=True` (a graph break is an error) on the static cache;
    the tokens equal eager decoding with the default cache."""
    model = mix_model(name, attn_implementation="sdpa")
    ids = torch.randint(3, VOCAB, (2, 19))
    expected = model.generate(ids, **GREEDY)
    compile_config = CompileConfig(fullgraph=True, backend="eager")  # traces the Python; no C++ toolchain needed
    compile_config._compile_all_devices = True  # Transformers compiles on CPU only when told to
    torch._dynamo.reset()
    got = model.generate(ids, cache_implementation="static", compile_config=compile_config, **GREEDY)
    assert model._compiled_call is not None  # the step really ran compiled
    assert torch.equal(got, expected)


@torch.no_grad()
@pytest.mark.parametrize("name", ["phalanx_only", "gemma3"])
def test_a_compiled_forward_follows_the_model_to_a_new_dtype(name: str) -> None:
    """After `model.to(dtype)` the compiled callable runs the new parameters, with the parameters' order and tied
    weights kept. With torch 2.11 a Phalanx-only stack (no input changes dtype) ran the fp32 graph on bf16
    weights and failed, as `generate`'s compiled step did on the H200 (`PhalanxPreTrainedModel._apply`)."""
    torch._dynamo.reset()  # earlier tests' compiled forwards count towards the recompile limit
    model = mix_model(name)
    names = [n for n, _ in model.named_parameters()]
    ids = torch.randint(3, VOCAB, (2, 9))
    step = torch.compile(model.__call__, backend="eager", fullgraph=True)
    assert torch.equal(step(ids, use_cache=False).logits, model(ids, use_cache=False).logits)
    model.to(torch.bfloat16)
    got = step(ids, use_cache=False).logits
    assert got.dtype == torch.bfloat16 and torch.equal(got, model(ids, use_cache=False).logits)
    assert [n for n, _ in model.named_parameters()] == names
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == model.config.tie_word_embeddings


@pytest.mark.gpu
@torch.no_grad()
@pytest.mark.parametrize("name", ["phalanx_only", "hybrid", "gemma3"])
def test_gpu_compiled_static_decoding_gives_the_default_tokens(name: str) -> None:
    """On CUDA, with the Triton kernels and inductor (CUDA graphs, `generate`'s default compile mode): fp32 tokens
    equal the eager default-cache tokens; in bf16 every step's scores agree within 5% of their range while the
    two runs' tokens agree (a near tie may then pick another token, and the runs part)."""
    model = mix_model(name, attn_implementation="sdpa").cuda()
    assert any(getattr(layer.mixer, "kernels", None) is not None for layer in model.model.layers if hasattr(layer, "mixer"))
    ids = torch.randint(3, VOCAB, (2, 37), device="cuda")
    compiled = dict(cache_implementation="static", compile_config=CompileConfig(fullgraph=True))
    expected = model.generate(ids, **GREEDY)
    torch._dynamo.reset()
    got = model.generate(ids, **compiled, **GREEDY)
    assert model._compiled_call is not None
    assert torch.equal(got, expected)

    model = model.to(torch.bfloat16)
    scored = dict(output_scores=True, return_dict_in_generate=True, **GREEDY)
    eager = model.generate(ids, **scored)
    torch._dynamo.reset()
    graph = model.generate(ids, **compiled, **scored)
    for step, (a, b) in enumerate(zip(eager.scores, graph.scores)):
        assert (a.float() - b.float()).abs().max() <= 0.05 * (a.float().max() - a.float().min()), step
        if not torch.equal(eager.sequences[:, ids.shape[1] + step], graph.sequences[:, ids.shape[1] + step]):
            break


def sdpa_model(name: str):
    """A mix of MIXES, or `every_mixer`: Phalanx, Hyena-SE, Hyena-LI and mLSTM mixers with SWA and full attention."""
    if name != "every_mixer":
        return mix_model(name, attn_implementation="sdpa")
    return tiny_model(num_hidden_layers=6, layer_types=[L, "hyena_se", "hyena_li", "mlstm", S, F],
                      hyena_mr_len=16, mlstm_num_heads=2, attn_implementation="sdpa", **NO_EOS)


@torch.no_grad()
@pytest.mark.parametrize("name", ["hybrid", "every_mixer"])
def test_unpadded_forward_compiles_as_one_graph(name: str) -> None:
    """A multi-token forward without padding or caller positions reads nothing on the host: it compiles with
    `fullgraph=True` (a graph break is an error) and gives the eager logits, for every kind of mixer."""
    model = sdpa_model(name)
    ids = torch.randint(3, VOCAB, (2, 37))
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="eager")  # traces the Python; no C++ toolchain needed
    torch.testing.assert_close(compiled(ids).logits, model(ids).logits, rtol=1e-5, atol=1e-5)


@torch.no_grad()
@pytest.mark.parametrize("name", ["phalanx_only", "hybrid", "every_mixer"])
def test_left_padded_prefill_compiles_as_one_graph(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A left-padded batch without caller positions, starting afresh: the Phalanx mixers align each row's blocks
    to its first token from the mask, Hyena's zeroed padding and mLSTM's restarts at position 0 leave the others
    fresh (no `sequence_starts` host read), so the forward compiles with `fullgraph=True`, and each row's logits
    and cached state continue exactly as the prompt alone."""
    import modeling_phalanx.modeling_phalanx as modeling

    model = sdpa_model(name)
    ids = torch.randint(3, VOCAB, (3, 37))
    mask = torch.ones_like(ids)
    mask[1, :5], mask[2, :20] = 0, 0
    monkeypatch.setattr(modeling, "sequence_starts", lambda *a: pytest.fail("sequence_starts read on the host"))
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    got = compiled(ids, attention_mask=mask).logits
    torch.testing.assert_close(got, model(ids, attention_mask=mask).logits, rtol=1e-5, atol=1e-5)
    monkeypatch.undo()
    for row, pad in enumerate((0, 5, 20)):
        alone = model(ids[row:row + 1, pad:]).logits
        torch.testing.assert_close(got[row:row + 1, pad:], alone, rtol=1e-5, atol=1e-5)
    # Generation from the padded prefill's cache gives each prompt's own tokens.
    out = model.generate(ids, attention_mask=mask, pad_token_id=0, **GREEDY)
    for row, pad in enumerate((0, 5, 20)):
        assert torch.equal(out[row, ids.shape[1]:], model.generate(ids[row:row + 1, pad:], **GREEDY)[0, 37 - pad:])


@pytest.fixture(scope="module")
def byte_model_and_tokenizer():
    tokenizer = load_byte_tokenizer()
    model = tiny_model(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    return model, tokenizer


@torch.no_grad()
def test_pipeline_and_streamer_give_the_generate_tokens(byte_model_and_tokenizer, capsys) -> None:
    model, tokenizer = byte_model_and_tokenizer
    text = "Friends, Romans, countrymen"
    ids = tokenizer(text, return_tensors="pt")
    expected_ids = model.generate(**ids, **GREEDY)[0, ids["input_ids"].shape[1] :]
    expected = tokenizer.decode(expected_ids, skip_special_tokens=True)
    generator = pipeline("text-generation", model=model, tokenizer=tokenizer)
    out = generator(text, return_full_text=False, **GREEDY)
    assert out[0]["generated_text"] == expected
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    model.generate(**ids, streamer=streamer, **GREEDY)
    assert capsys.readouterr().out.rstrip("\n") == expected.rstrip("\n")


@torch.no_grad()
@pytest.mark.parametrize("gen_kwargs", [{}, {"cache_implementation": "static"}])
def test_lm_eval_generate_until_gives_the_generate_tokens(
    byte_model_and_tokenizer, gen_kwargs: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """lm-eval's `hf` model decodes as `generate` does, also with the static cache passed as a task's (or
    `phalanx eval --gen-kwargs`') generation option, which reaches the model's cache choice."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    model, tokenizer = byte_model_and_tokenizer
    seen = []
    prepare = model._prepare_cache_for_generation

    def spy(generation_config, *args, **kwargs):
        seen.append(generation_config.cache_implementation)
        return prepare(generation_config, *args, **kwargs)

    monkeypatch.setattr(model, "_prepare_cache_for_generation", spy)
    contexts = ["To be, or not to be", "Now is the winter"]
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=2, max_length=256)
    options = {"until": ["\u0000never"], "max_gen_toks": 16, "do_sample": False, **gen_kwargs}
    requests = [Instance("generate_until", doc={}, arguments=(c, dict(options)), idx=0) for c in contexts]
    got = lm.generate_until(requests)
    assert seen and set(seen) == {gen_kwargs.get("cache_implementation")}
    for context, text in zip(contexts, got):
        ids = tokenizer(context, return_tensors="pt")
        new = model.generate(**ids, do_sample=False, max_new_tokens=16, min_new_tokens=16)[0, ids["input_ids"].shape[1] :]
        assert text == tokenizer.decode(new, skip_special_tokens=True), context
