"""What Transformers checks for every model it ships (its common test mixins), written out for Phalanx.

Also the cache edge cases: all-Phalanx stacks decoded without `position_ids`, a warm cache reused for a row that
starts a new sequence, `AutoModel` from a saved folder in a clean process, and tensor parallelism of tied weights.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from test_model_cache import VOCAB, single_thread, tiny_model  # noqa: F401  (fixture import)

from modeling_phalanx import PhalanxCache
from modeling_phalanx.modeling_phalanx import CACHE_KWARG

L, S, F = "linear_attention", "sliding_attention", "full_attention"


def cached(cache) -> dict:
    """The keyword that passes `cache` to `forward` on the installed release."""
    return {CACHE_KWARG: cache}


def phalanx_only(**overrides):
    return tiny_model(num_hidden_layers=2, layer_types=[L, L], sliding_window=None, **overrides)


@torch.no_grad()
def test_phalanx_only_decoding_without_position_ids_matches_a_full_forward() -> None:
    model = phalanx_only()
    ids = torch.randint(3, VOCAB, (2, 41))  # crosses block boundaries at 16 and 32
    full = model(ids).logits
    out = model(ids[:, :7], use_cache=True)
    cache, logits = getattr(out, CACHE_KWARG), [out.logits]
    assert isinstance(cache, PhalanxCache) and cache.get_seq_length() == 7
    for t in range(7, ids.shape[1]):
        out = model(ids[:, t : t + 1], use_cache=True, **cached(cache))
        logits.append(out.logits)
        assert cache.get_seq_length() == t + 1
    assert (torch.cat(logits, dim=1) - full).abs().max().item() <= 1e-4


@torch.no_grad()
def test_warm_cache_reused_for_a_new_sequence_equals_a_fresh_run() -> None:
    """A row whose first position is 0 starts a new sequence: nothing of the cached one may leak in, whether the new
    sequence arrives as a multi-token chunk or as a single step."""
    model = phalanx_only()
    old, new = torch.randint(3, VOCAB, (2, 37)), torch.randint(3, VOCAB, (2, 23))
    for length in (23, 1):
        cache = getattr(model(old, use_cache=True), CACHE_KWARG)
        position_ids = torch.arange(length).expand(2, -1)
        got = model(new[:, :length], position_ids=position_ids, use_cache=True, **cached(cache)).logits
        assert (got - model(new[:, :length]).logits).abs().max().item() <= 1e-5, length
        assert cache.get_seq_length() == length
        # ... and decoding goes on from the new sequence's state.
        step = model(new[:, length : length + 1], use_cache=True, **cached(cache)).logits if length == 1 else None
        if step is not None:
            assert (step - model(new[:, :2]).logits[:, 1:]).abs().max().item() <= 1e-5


@torch.no_grad()
@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_left_padding_equals_no_padding_in_a_forward(attn_implementation: str) -> None:
    """`model(**batch)` of a left-padded batch, without `position_ids`, gives each row's unpadded logits."""
    model = tiny_model(attn_implementation=attn_implementation)
    prompts = [torch.randint(3, VOCAB, (n,)) for n in (6, 19, 35)]
    width = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :], mask[row, width - len(prompt) :] = prompt, 1
    logits = model(ids, attention_mask=mask).logits
    for row, prompt in enumerate(prompts):
        alone = model(prompt[None]).logits[0]
        assert (logits[row, width - len(prompt) :] - alone).abs().max().item() <= 1e-5, row


@torch.no_grad()
def test_recurrent_padding_mask_on_continued_forwards() -> None:
    """A left-padded batch fed in two chunks through the cache (padding inside the first chunk) equals each row
    alone: the Phalanx layers mask padding in every chunk, and positions follow the mask."""
    model = tiny_model()
    prompts = [torch.randint(3, VOCAB, (n,)) for n in (9, 30)]
    width = 30
    ids = torch.zeros(2, width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :], mask[row, width - len(prompt) :] = prompt, 1
    split = 24  # row 0: 21 pads and 3 tokens in the first chunk
    first = model(ids[:, :split], attention_mask=mask[:, :split], use_cache=True)
    second = model(ids[:, split:], attention_mask=mask, use_cache=True, **cached(getattr(first, CACHE_KWARG)))
    logits = torch.cat([first.logits, second.logits], dim=1)
    for row, prompt in enumerate(prompts):
        alone = model(prompt[None]).logits[0]
        assert (logits[row, width - len(prompt) :] - alone).abs().max().item() <= 1e-5, row


@torch.no_grad()
def test_attention_and_hidden_state_outputs_during_cached_decoding() -> None:
    """`generate(output_attentions, output_hidden_states, return_dict_in_generate)`: one entry per step, each layer's
    states with the step's tokens, attention weights of the attention layers over the keys the cache holds, equal to
    the rows of a full forward's weights."""
    model = tiny_model(attn_implementation="eager")  # layers [L, S, L, F], sliding window 11
    config = model.config
    prompt, new = torch.randint(3, VOCAB, (2, 15)), 5
    out = model.generate(
        prompt, max_new_tokens=new, min_new_tokens=new, do_sample=False, output_attentions=True,
        output_hidden_states=True, return_dict_in_generate=True,
    )
    full = model(out.sequences[:, :-1], output_attentions=True)
    assert len(out.hidden_states) == len(out.attentions) == new
    for step in range(new):
        q_len = 15 if step == 0 else 1
        kv_len = 15 + step
        assert len(out.hidden_states[step]) == config.num_hidden_layers + 1
        assert all(h.shape == (2, q_len, config.hidden_size) for h in out.hidden_states[step])
        sliding, full_attn = out.attentions[step]  # attention layers in order: layer 1 (sliding), layer 3 (full)
        heads = config.num_attention_heads
        assert full_attn.shape == (2, heads, q_len, kv_len)
        window_keys = min(kv_len, config.sliding_window) if step else kv_len
        assert sliding.shape == (2, heads, q_len, window_keys)
        rows = slice(0, 15) if step == 0 else slice(kv_len - 1, kv_len)
        torch.testing.assert_close(full_attn, full.attentions[1][:, :, rows, :kv_len], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(sliding, full.attentions[0][:, :, rows, kv_len - window_keys : kv_len], atol=1e-5, rtol=1e-4)


def test_gradient_checkpointing_with_the_cache_requested_gives_the_same_gradients() -> None:
    """Training with `use_cache=True` and checkpointing: the cache is dropped (Transformers' rule), gradients are
    those of a plain run."""
    ids = torch.randint(3, VOCAB, (2, 37))
    grads = []
    for checkpointing in (False, True):
        model = tiny_model().train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        model(ids, labels=ids, use_cache=True).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, atol=1e-6, rtol=1e-5, msg=name)


@torch.no_grad()
def test_both_cache_names_are_accepted_and_no_deprecation_is_triggered() -> None:
    """`cache` (Transformers >= 5.24) and `past_key_values` (earlier) continue alike on every allowed release, and
    neither a forward nor `generate` makes our code call a deprecated Transformers argument."""
    model = tiny_model()
    ids = torch.randint(3, VOCAB, (2, 30))
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        warnings.simplefilter("error", DeprecationWarning)
        continued = []
        for name in ("cache", "past_key_values"):
            cache = getattr(model(ids[:, :12], use_cache=True), CACHE_KWARG)
            continued.append(model(ids[:, 12:], use_cache=True, **{name: cache}).logits)
        model.generate(ids, max_new_tokens=3, do_sample=False)
    assert torch.equal(continued[0], continued[1])
    assert (continued[0] - model(ids).logits[:, 12:]).abs().max().item() <= 1e-5


def test_unknown_forward_keywords_are_errors() -> None:
    model = tiny_model()
    ids = torch.randint(3, VOCAB, (1, 5))
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['past_key_value'\]"):
        model(ids, past_key_value=None)
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['token_type_ids'\]"):
        model.model(ids, token_type_ids=torch.zeros_like(ids))
    cache = getattr(model(ids, use_cache=True), CACHE_KWARG)
    with pytest.raises(TypeError, match="got both `cache` and `past_key_values`"):
        model(ids, cache=cache, past_key_values=cache)


@torch.no_grad()
def test_tied_weights_survive_save_load_and_resize(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = tiny_model(tie_word_embeddings=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    ids = torch.randint(3, VOCAB, (2, 20))
    before = model(ids).logits
    old_rows = model.model.embed_tokens.weight.clone()
    model.resize_token_embeddings(VOCAB + 7)
    assert model.config.vocab_size == VOCAB + 7
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert model.model.embed_tokens.weight.shape == (VOCAB + 7, model.config.hidden_size)
    assert torch.equal(model.model.embed_tokens.weight[:VOCAB], old_rows)
    after = model(ids).logits
    assert after.shape == (2, 20, VOCAB + 7)
    assert torch.equal(after[..., :VOCAB], before)  # old tokens keep their logits
    assert model.generate(ids, max_new_tokens=4, do_sample=False).shape == (2, 24)


def test_tensor_parallel_plan_covers_every_sharded_module_and_the_tied_embedding() -> None:
    model = tiny_model(tie_word_embeddings=True)
    plan = model.tp_plan
    names = {name for name, _ in model.named_modules()}
    for pattern in plan:
        regex = pattern.replace(".", r"\.").replace("*", r"\d+")
        assert any(re.fullmatch(regex, name) for name in names), pattern
    # A tied weight is one tensor: the embedding and the head must split it the same way (over the vocabulary).
    assert plan["lm_head"] == "colwise_gather_output"
    assert plan["model.embed_tokens"] == "embedding_rowwise"
    assert not any("mixer" in key for key in plan)  # the packed in_proj stays whole


TP_RUN = """
import json, sys, torch, torch.distributed as dist
import modeling_phalanx
from transformers import AutoModelForCausalLM
path, ids = sys.argv[1], torch.tensor(json.loads(sys.argv[2]))
try:
    from transformers.distributed import DistributedConfig
    options = {"distributed_config": DistributedConfig(tp_plan="auto")}
except ImportError:
    options = {"tp_plan": "auto"}
model = AutoModelForCausalLM.from_pretrained(path, **options).eval()
assert model.lm_head.weight is model.model.embed_tokens.weight
assert type(model.model.embed_tokens.weight).__name__ == "DTensor"
with torch.no_grad():
    result = {"logits": model(ids).logits.tolist(), "tokens": model.generate(ids, max_new_tokens=6, do_sample=False).tolist()}
if dist.get_rank() == 0:
    print(json.dumps(result))
"""


@torch.no_grad()
def test_tensor_parallel_run_on_two_cpu_processes_matches_one_process(tmp_path: Path, offline_env) -> None:
    """`from_pretrained` with the tensor-parallel plan on 2 processes (gloo, CPU) gives the logits and tokens of
    the unsharded model, tied weights included."""
    # An even vocabulary: Transformers before 5.24 split the gathered lm_head output only evenly.
    model = tiny_model(tie_word_embeddings=True, attn_implementation="eager", vocab_size=64)
    model.save_pretrained(tmp_path / "model")
    ids = torch.randint(3, 64, (2, 21))
    expected_logits = model(ids).logits
    expected_tokens = model.generate(ids, max_new_tokens=6, do_sample=False)
    (tmp_path / "run.py").write_text(TP_RUN)
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
         str(tmp_path / "run.py"), str(tmp_path / "model"), json.dumps(ids.tolist())],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    assert (torch.tensor(got["logits"]) - expected_logits).abs().max().item() <= 1e-5
    assert torch.equal(torch.tensor(got["tokens"]), expected_tokens)


@pytest.mark.parametrize("assist", ["assistant_model", "prompt_lookup"])
def test_assisted_decoding_is_refused_for_the_stateful_cache(assist: str) -> None:
    """Assisted (speculative) decoding, with a draft model or by prompt lookup, is refused with one clear error on
    every release: the mixers' states cannot be rolled back to a rejected draft token (Transformers 5.25 no longer
    refuses it for stateful models itself)."""
    model = tiny_model()
    ids = torch.randint(3, VOCAB, (1, 9))
    kwargs = {"assistant_model": tiny_model(seed=1)} if assist == "assistant_model" else {"prompt_lookup_num_tokens": 2}
    with pytest.raises(ValueError, match="not supported with stateful models, such as PhalanxForCausalLM"):
        model.generate(ids, max_new_tokens=4, do_sample=False, **kwargs)


CLEAN_AUTO_MODEL = """
import importlib.util, json, sys
sys.meta_path = [f for f in sys.meta_path if "editable" not in getattr(f, "__module__", "")]
assert importlib.util.find_spec("modeling_phalanx") is None
import torch
from transformers import AutoModel
model = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True)
with torch.no_grad():
    hidden = model(torch.tensor(json.loads(sys.argv[2]))).last_hidden_state
print(json.dumps({"class": type(model).__name__, "module": type(model).__module__, "hidden": hidden.tolist()}))
"""


@torch.no_grad()
def test_auto_model_from_a_saved_folder_in_a_clean_process(tmp_path: Path) -> None:
    model = tiny_model()
    model.save_pretrained(tmp_path / "phalanx-tiny")
    ids = torch.randint(3, VOCAB, (2, 17))
    result = subprocess.run(
        [sys.executable, "-I", "-c", CLEAN_AUTO_MODEL, str(tmp_path / "phalanx-tiny"), json.dumps(ids.tolist())],
        cwd=tmp_path,
        env={"HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    assert got["class"] == "PhalanxModel" and got["module"].startswith("transformers_modules.")
    torch.testing.assert_close(torch.tensor(got["hidden"]), model.model(ids).last_hidden_state, atol=1e-5, rtol=1e-5)
