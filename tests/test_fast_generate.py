"""`generation_phalanx.fast_generate` (the decode loop without per-token host synchronisation) gives `generate`'s
greedy tokens; it runs as the `custom_generate` strategy of an exported folder and as `phalanx generate`'s decoder.

CPU, fp32, tiny models: the step runs eagerly here; `fullgraph=True` compilation is checked with the eager backend
(no C++ toolchain needed). The CUDA-graph path is the GPU test at the end.
"""

from __future__ import annotations

import ast
import io
import sys
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import torch
from test_generation_equivalence import GREEDY, mix_model
from test_model_cache import VOCAB, single_thread  # noqa: F401  (fixture import)
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, TextStreamer

import modeling_phalanx.generation_phalanx as generation_phalanx
from modeling_phalanx.generation_phalanx import decode_step, fast_generate
from modeling_phalanx.modeling_phalanx import CACHE_KWARG, PhalanxStaticCache, PhalanxStaticSlidingWindowLayer
from phalanx_cli.main import main
from phalanx_training.tokenizer import load_byte_tokenizer

MIX_NAMES = ["phalanx_only", "hybrid"]


@torch.no_grad()
@pytest.mark.parametrize("name", MIX_NAMES)
@pytest.mark.parametrize("prompt_len", [1, 19])
def test_greedy_tokens_equal_generate_static_and_default(name: str, prompt_len: int) -> None:
    model = mix_model(name)
    prompt = torch.randint(3, VOCAB, (2, prompt_len))
    default = model.generate(prompt, **GREEDY)
    static = model.generate(prompt, cache_implementation="static", **GREEDY)
    fast = fast_generate(model, prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=20, check_every=7)
    assert torch.equal(static, default)
    assert torch.equal(fast, default)


@torch.no_grad()
@pytest.mark.parametrize("name", MIX_NAMES)
def test_a_left_padded_batch_gives_generate_tokens(name: str) -> None:
    model = mix_model(name)
    prompt = torch.randint(3, VOCAB, (3, 17))
    mask = torch.ones_like(prompt)
    mask[1, :6] = 0
    mask[2, :1] = 0
    prompt[mask == 0] = 0
    expected = model.generate(prompt, attention_mask=mask, pad_token_id=0, **GREEDY)
    assert torch.equal(model.generate(prompt, attention_mask=mask, pad_token_id=0, cache_implementation="static", **GREEDY), expected)
    assert torch.equal(fast_generate(model, prompt, attention_mask=mask, max_new_tokens=20), expected)


@torch.no_grad()
@pytest.mark.parametrize("name", MIX_NAMES)
@pytest.mark.parametrize("check_every", [1, 5, 64])
def test_rows_stop_at_their_own_eos_and_are_padded_as_generate_does(name: str, check_every: int) -> None:
    model = mix_model(name)
    prompt = torch.randint(3, VOCAB, (2, 13))
    free = model.generate(prompt, **GREEDY)[:, 13:]
    eos = int(free[0, 4])  # row 0 ends at its 5th token or earlier; row 1 at its own
    end = 13 + int((free[0] == eos).int().argmax()) + 1
    expected = model.generate(prompt, do_sample=False, max_new_tokens=20, eos_token_id=eos, pad_token_id=0)
    got = fast_generate(model, prompt, max_new_tokens=20, eos_token_id=[eos], pad_token_id=0, check_every=check_every)
    assert torch.equal(got, expected)
    assert got[0, end - 1] == eos and (got[0, end:] == 0).all()


@torch.no_grad()
def test_the_step_compiles_with_fullgraph_and_gives_the_same_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    """`fullgraph=True` turns any graph break or host read in the step into an error."""
    model = mix_model("hybrid")
    prompt = torch.randint(3, VOCAB, (2, 11))
    mask = torch.ones_like(prompt)
    mask[0, :4] = 0
    torch._dynamo.reset()
    monkeypatch.setitem(generation_phalanx._COMPILED_STEP, "step", torch.compile(decode_step, backend="eager", fullgraph=True))
    got = fast_generate(model, prompt, max_new_tokens=12, compile=True)
    assert torch.equal(got, fast_generate(model, prompt, max_new_tokens=12, compile=False))
    padded = fast_generate(model, prompt, attention_mask=mask, max_new_tokens=12, compile=True)
    assert torch.equal(padded, fast_generate(model, prompt, attention_mask=mask, max_new_tokens=12, compile=False))
    sampled = fast_generate(model, prompt, max_new_tokens=6, do_sample=True, temperature=0.7, top_k=5, compile=True)
    assert sampled.shape == (2, 17)


@torch.no_grad()
@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_steps_on_a_full_sliding_window_compile_to_one_graph_without_int_inputs(
    monkeypatch: pytest.MonkeyPatch, attn_implementation: str
) -> None:
    """Past a full sliding window the compiled step takes no Python int: CUDA-graph trees record one graph per int
    value, and Transformers' layer, counting its tokens in an int, made the SWAX preset decode at 29 tokens/s on the
    H200. One graph serves every step, with tensor inputs only, and gives the eager loop's tokens."""
    model = mix_model("hybrid", attn_implementation=attn_implementation, sliding_window=6)
    prompt = torch.randint(3, VOCAB, (2, 9))
    inputs = []

    def capture(graph_module: torch.fx.GraphModule, example_inputs: list) -> object:
        inputs.append(example_inputs)
        return graph_module.forward

    torch._dynamo.reset()
    weight = next(model.parameters())
    monkeypatch.setitem(generation_phalanx._COMPILED_STEP, "key", (weight.dtype, weight.device))
    monkeypatch.setitem(generation_phalanx._COMPILED_STEP, "step", torch.compile(decode_step, backend=capture, fullgraph=True))
    got = fast_generate(model, prompt, max_new_tokens=12, compile=True)
    assert torch.equal(got, fast_generate(model, prompt, max_new_tokens=12, compile=False))
    assert len(inputs) == 1, f"{len(inputs)} graphs"
    assert all(isinstance(value, torch.Tensor) for value in inputs[0]), [type(v).__name__ for v in inputs[0]]


@torch.no_grad()
def test_tokens_counted_on_the_device_are_exact_for_what_follows() -> None:
    """Unmasked one-token steps on a full window count on the device; the length, a masked continuation and a
    reset then see every token (logits equal a forward over the whole sequence without a cache)."""
    model = mix_model("hybrid", sliding_window=6)
    tokens = torch.randint(3, VOCAB, (2, 17))
    cache = PhalanxStaticCache(model.config, max_cache_len=24)
    sliding = [layer for layer in cache.layers if isinstance(layer, PhalanxStaticSlidingWindowLayer)]
    assert sliding
    model(tokens[:, :9], **{CACHE_KWARG: cache})
    for t in range(9, 13):
        model(tokens[:, t : t + 1], position_ids=torch.tensor([[t]]), **{CACHE_KWARG: cache})
    assert all(layer.lagging and int(layer.deferred) == 4 for layer in sliding)
    assert cache.get_seq_length() == 13
    assert all(not layer.lagging and layer.cumulative_length_int == 13 for layer in sliding)
    for t in range(13, 15):  # more device-counted steps, then a masked multi-token continuation
        model(tokens[:, t : t + 1], position_ids=torch.tensor([[t]]), **{CACHE_KWARG: cache})
    tail = model(tokens[:, 15:], attention_mask=torch.ones(2, 17, dtype=torch.long), **{CACHE_KWARG: cache}).logits
    torch.testing.assert_close(tail, model(tokens).logits[:, 15:], rtol=1e-5, atol=1e-5)
    cache.reset()
    assert cache.get_seq_length() == 0


@torch.no_grad()
def test_sampling_is_seeded_and_stays_in_the_top_k() -> None:
    model = mix_model("hybrid")
    prompt = torch.randint(3, VOCAB, (2, 9))
    torch.manual_seed(1)
    first = fast_generate(model, prompt, max_new_tokens=8, do_sample=True, temperature=0.9, top_k=1)
    assert torch.equal(first, fast_generate(model, prompt, max_new_tokens=8))  # top-1 sampling is greedy
    torch.manual_seed(3)
    a = fast_generate(model, prompt, max_new_tokens=8, do_sample=True, temperature=2.0)
    torch.manual_seed(3)
    assert torch.equal(a, fast_generate(model, prompt, max_new_tokens=8, do_sample=True, temperature=2.0))


@torch.no_grad()
def test_the_loop_drives_a_transformers_llama_with_its_static_cache() -> None:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    model = LlamaForCausalLM(config).eval()
    prompt = torch.randint(3, VOCAB, (2, 15))
    expected = model.generate(prompt, eos_token_id=None, **GREEDY)
    assert torch.equal(fast_generate(model, prompt, max_new_tokens=20), expected)


@torch.no_grad()
def test_streamer_gets_the_prompt_then_the_checked_chunks() -> None:
    model = mix_model("hybrid")
    tokenizer = load_byte_tokenizer()
    prompt = torch.randint(3, VOCAB, (1, 7))

    def printed(run) -> str:
        out = io.StringIO()
        with redirect_stdout(out):
            run(TextStreamer(tokenizer))
        return out.getvalue()

    expected = printed(lambda streamer: model.generate(prompt, streamer=streamer, **GREEDY))
    assert printed(lambda streamer: fast_generate(model, prompt, max_new_tokens=20, check_every=6, streamer=streamer)) == expected


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(max_new_tokens=0), "max_new_tokens must be an int >= 1, got 0"),
        (dict(do_sample=True, temperature=0.0), "temperature must be > 0, got 0.0"),
        (dict(do_sample=True, top_k=0), "top_k must be None or an int >= 1, got 0"),
        (dict(check_every=0), "check_every must be an int >= 1, got 0"),
        (dict(attention_mask=torch.tensor([[1, 1, 0]])), "attention_mask must be left-padded"),
        (dict(attention_mask=torch.tensor([[1, 1]])), r"attention_mask must be a tensor shaped like input_ids \(1, 3\)"),
    ],
)
def test_bad_arguments_get_one_line_errors(kwargs: dict, message: str) -> None:
    model = mix_model("phalanx_only")
    with pytest.raises(ValueError, match=message) as err:
        fast_generate(model, torch.tensor([[5, 6, 7]]), **kwargs)
    assert "\n" not in str(err.value)


@torch.no_grad()
def test_custom_generate_from_an_exported_folder(tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "export"
    assert main(["export", str(tiny_model), str(out)]) == 0
    assert sorted(p.name for p in (out / "custom_generate").iterdir()) == [
        "generate.py", "generation_phalanx.py", "requirements.txt"
    ]
    model = AutoModelForCausalLM.from_pretrained(out).eval()  # the installed classes: standard generate
    prompt = torch.randint(3, 200, (2, 9))
    expected = model.generate(prompt, max_new_tokens=10, do_sample=False)
    got = model.generate(prompt, max_new_tokens=10, do_sample=False, custom_generate=str(out), trust_remote_code=True)
    assert torch.equal(got, expected)
    # Loaded with trust_remote_code, Transformers routes the folder's plain `generate` to the strategy: the loop runs a
    # left-padded batch too; what it does not run (beam search) still gets the standard `generate`.
    remote = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
    assert remote.generate.func.__module__.endswith("custom_generate.generate")
    assert torch.equal(remote.generate(prompt, max_new_tokens=10, do_sample=False), expected)
    mask = torch.ones_like(prompt)
    mask[1, :3] = 0
    assert torch.equal(
        remote.generate(prompt, attention_mask=mask, max_new_tokens=6, do_sample=False),
        model.generate(prompt, attention_mask=mask, max_new_tokens=6, do_sample=False),
    )
    beams = remote.generate(prompt, max_new_tokens=4, num_beams=2, do_sample=False)
    assert torch.equal(beams, model.generate(prompt, max_new_tokens=4, num_beams=2, do_sample=False))


def test_phalanx_generate_prints_the_same_text_with_either_decoder(tiny_model: Path, capsys: pytest.CaptureFixture) -> None:
    args = ["generate", str(tiny_model), "--prompt", "BRUTUS.", "--max-new-tokens", "9", "--device", "cpu"]
    assert main(args) == 0
    fast = capsys.readouterr().out
    assert main([*args, "--decoder", "generate"]) == 0
    assert capsys.readouterr().out == fast
    tokenizer = load_byte_tokenizer()
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    ids = model.generate(**tokenizer("BRUTUS.", return_tensors="pt"), max_new_tokens=9, do_sample=False)
    assert fast == tokenizer.decode(ids[0], skip_special_tokens=True) + "\n"


@pytest.mark.gpu
@torch.no_grad()
@pytest.mark.parametrize("name", MIX_NAMES)
def test_cuda_graph_loop_gives_generate_tokens(name: str) -> None:
    """fp32: the compiled (CUDA-graph) loop gives `generate`'s tokens; bf16: it runs, and its first token (from the
    eager prefill) is `generate`'s (later bf16 tokens may part at near-ties where compiled kernels round otherwise)."""
    model = mix_model(name).to("cuda")
    prompt = torch.randint(3, VOCAB, (2, 37), device="cuda")
    mask = torch.ones_like(prompt)
    mask[1, :5] = 0
    for kwargs in ({}, {"attention_mask": mask}):
        expected = model.generate(prompt, cache_implementation="static", pad_token_id=0, **kwargs, **GREEDY)
        assert torch.equal(fast_generate(model, prompt, max_new_tokens=20, **kwargs), expected)
    model.to(torch.bfloat16)
    expected = model.generate(prompt, cache_implementation="static", **GREEDY)
    got = fast_generate(model, prompt, max_new_tokens=20)
    assert got.shape == expected.shape and torch.equal(got[:, :38], expected[:, :38])


@torch.no_grad()
def test_the_custom_generate_entry_runs_the_loop_only_for_what_it_covers(monkeypatch: pytest.MonkeyPatch) -> None:
    model = mix_model("hybrid")
    prompt = torch.randint(3, VOCAB, (2, 9))
    calls = []
    monkeypatch.setattr(generation_phalanx, "fast_generate", lambda *a, **k: calls.append(k) or "fast")
    assert generation_phalanx.generate(model=model, inputs=prompt, max_new_tokens=5) == "fast"
    assert calls[-1]["max_new_tokens"] == 5 and calls[-1]["do_sample"] is False
    assert calls[-1]["compile"] is None  # compiled on CUDA, as generate compiles its static-cache step
    assert generation_phalanx.generate(model, prompt, max_new_tokens=5, disable_compile=True) == "fast"
    assert calls.pop()["compile"] is False
    assert generation_phalanx.generate(model, input_ids=prompt, do_sample=True, temperature=0.5) == "fast"
    assert (calls[-1]["temperature"], calls[-1]["top_k"], calls[-1]["max_new_tokens"]) == (0.5, 50, 20 - 9)
    left = torch.ones_like(prompt)
    left[0, 0] = 0
    assert generation_phalanx.generate(model, prompt, attention_mask=left, max_new_tokens=3) == "fast"
    right = left.flip(1)
    for kwargs in (dict(num_beams=2), dict(attention_mask=right), dict(return_dict_in_generate=True), dict(top_p=0.5)):
        out = generation_phalanx.generate(model, prompt, max_new_tokens=3, **kwargs)
        assert not isinstance(out, str), kwargs
    assert len(calls) == 3


def test_the_loop_module_imports_only_torch_and_the_standard_library() -> None:
    """It is copied alone into `custom_generate/`, where no sibling module exists."""
    tree = ast.parse(Path(generation_phalanx.__file__).read_text(encoding="utf-8"))
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level == 0}
    assert not any(isinstance(node, ast.ImportFrom) and node.level for node in ast.walk(tree))
    assert imported - set(sys.stdlib_module_names) == {"torch"}
