"""mLSTM mixer (layer type "mlstm"): the chunkwise and step paths against a float64 oracle written from the xLSTM
papers' equations (tests/mlstm_oracle.py) and against Transformers' own xLSTM (its pure-PyTorch mLSTM functions and
its mLSTM layer with the same weights); gradients; torch.compile; the model with mLSTM layers (chunked prefill,
packed sequences, generate with the default and the static cache, left padding); config fields, save / load and the
Hub bundle in a clean process."""

from __future__ import annotations

import importlib.util

import json
import sys
from pathlib import Path

import pytest
import torch
from mlstm_oracle import mlstm_oracle
from test_model_cache import VOCAB, single_thread, tiny_config, tiny_model  # noqa: F401  (fixture import)
from test_model_hub import assert_bundle_generates_in_a_clean_process
from transformers import AutoModelForCausalLM
from transformers.generation import CompileConfig
from transformers.models.xlstm import modeling_xlstm as xlstm

from modeling_phalanx import PhalanxCache, PhalanxConfig, PhalanxForCausalLM
from modeling_phalanx.mlstm_phalanx import (
    MLSTMGateProjection,
    PhalanxMLSTMMixer,
    mlstm_chunkwise,
    mlstm_kernel,
    mlstm_kernel_chunkwise,
    mlstm_log_gates,
    mlstm_step,
    soft_cap,
)
from modeling_phalanx.modeling_phalanx import CACHE_KWARG

M, L, S, F = "mlstm", "linear_attention", "sliding_attention", "full_attention"
GREEDY = dict(do_sample=False, max_new_tokens=12, min_new_tokens=12)


def core_inputs(
    forget_gate: str, dtype: torch.dtype, batch: int = 2, seqlen: int = 29, seed: int = 0, dims: tuple = (3, 8, 6)
) -> dict:
    """Random q/k/v and soft-capped gate pre-activations (B, T, H, *), with restarts and padding in both rows;
    `dims`: (heads, Dk, Dv)."""
    g = torch.Generator().manual_seed(seed)
    heads, dk, dv = dims
    q, k = (torch.randn(batch, seqlen, heads, dk, generator=g, dtype=dtype) for _ in range(2))
    v = torch.randn(batch, seqlen, heads, dv, generator=g, dtype=dtype)
    i_pre = soft_cap(torch.randn(batch, seqlen, heads, generator=g, dtype=dtype) * 6, 15.0)
    if forget_gate == "sigmoid":
        f_pre = soft_cap(torch.randn(batch, seqlen, heads, generator=g, dtype=dtype) * 2 + 2, 15.0)
    else:  # log f = f~ directly: keep the products of exp gates inside float64 for the oracle
        f_pre = soft_cap(torch.randn(batch, seqlen, heads, generator=g, dtype=dtype) * 0.5, 15.0)
    starts = torch.zeros(batch, seqlen, dtype=torch.bool)
    starts[0, [0, 9, 10]] = True
    starts[1, [4, 17]] = True
    keep = torch.ones(batch, seqlen, dtype=torch.bool)
    keep[1, :3] = False  # left padding
    keep[0, 20:23] = False  # padding in the middle leaves the state as it was
    return dict(q=q, k=k, v=v, i_pre=i_pre, f_pre=f_pre, starts=starts, keep=keep)


def run_chunkwise(inputs: dict, forget_gate: str, chunk_size: int, initial_state=None):
    heads_first = {name: inputs[name].transpose(1, 2) for name in ("q", "k", "v", "i_pre", "f_pre")}
    log_i, log_f = mlstm_log_gates(heads_first["i_pre"], heads_first["f_pre"], forget_gate, inputs["keep"][:, None])
    h, state = mlstm_chunkwise(
        heads_first["q"], heads_first["k"], heads_first["v"], log_i, log_f, inputs["starts"], initial_state, chunk_size
    )
    return h.transpose(1, 2), state


def run_steps(inputs: dict, forget_gate: str):
    q, k, v = inputs["q"], inputs["k"], inputs["v"]
    batch, seqlen, heads, dk = q.shape
    log_i, log_f = mlstm_log_gates(inputs["i_pre"], inputs["f_pre"], forget_gate, inputs["keep"][..., None])
    state = (q.new_zeros(batch, heads, dk, v.shape[-1]), q.new_zeros(batch, heads, dk), q.new_zeros(batch, heads))
    outputs = []
    for t in range(seqlen):
        h, state = mlstm_step(q[:, t], k[:, t], v[:, t], log_i[:, t], log_f[:, t], state, inputs["starts"][:, t])
        outputs.append(h)
    return torch.stack(outputs, dim=1), state


@pytest.mark.parametrize("forget_gate", ["sigmoid", "exp"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_chunkwise_and_step_match_the_float64_oracle(forget_gate: str, dtype: torch.dtype) -> None:
    """Restarts (packed sequences), left padding and padding mid-sequence, every chunk size (1, uneven, longer
    than the sequence): exact in float64, to float32 rounding in float32."""
    inputs = core_inputs(forget_gate, dtype)
    names = ("q", "k", "v", "i_pre", "f_pre", "starts", "keep")
    expected = mlstm_oracle(**{n: inputs[n] for n in names}, forget_gate=forget_gate)
    keep = inputs["keep"]
    scale = expected[keep].abs().max()
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    stepped, step_state = run_steps(inputs, forget_gate)
    assert (stepped.double() - expected)[keep].abs().max() <= tol * scale
    for chunk_size in (1, 4, 7, 16, 64):
        got, state = run_chunkwise(inputs, forget_gate, chunk_size)
        assert got.dtype == dtype
        assert (got.double() - expected)[keep].abs().max() <= tol * scale, chunk_size
        for a, b in zip(state, step_state):
            torch.testing.assert_close(a, b, rtol=tol * 10, atol=tol * 10)


def test_chunkwise_continues_from_a_state() -> None:
    """Splitting a sequence anywhere and continuing from the returned (C, n, m) equals one pass."""
    inputs = core_inputs("sigmoid", torch.float64, seed=3)
    inputs["starts"][:] = False  # restarts would discard the state; here every row continues
    whole, whole_state = run_chunkwise(inputs, "sigmoid", 8)
    for split in (1, 8, 13):
        first = {n: (t[:, :split] if t.dim() > 1 else t) for n, t in inputs.items()}
        second = {n: (t[:, split:] if t.dim() > 1 else t) for n, t in inputs.items()}
        h1, state = run_chunkwise(first, "sigmoid", 8)
        h2, state = run_chunkwise(second, "sigmoid", 8, initial_state=state)
        torch.testing.assert_close(torch.cat([h1, h2], dim=1), whole, rtol=1e-10, atol=1e-10)
        for a, b in zip(state, whole_state):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_gradients_of_chunkwise_equal_those_of_the_step_loop() -> None:
    """Backward through the chunkwise form (with its masked exponents) equals backward through the recurrence, with
    no NaN from padding or restarts."""
    inputs = core_inputs("sigmoid", torch.float64, seed=5)
    leaves = {n: inputs[n].clone().requires_grad_() for n in ("q", "k", "v", "i_pre", "f_pre")}
    weights = torch.randn(inputs["v"].shape, dtype=torch.float64) * inputs["keep"][..., None, None]
    grads = []
    for run in (lambda x: run_chunkwise(x, "sigmoid", 8)[0], lambda x: run_steps(x, "sigmoid")[0]):
        out = run({**inputs, **leaves})
        grads.append(torch.autograd.grad((out * weights).sum(), list(leaves.values())))
    for name, a, b in zip(leaves, *grads):
        assert torch.isfinite(a).all(), name
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


def mixer_config(**overrides) -> PhalanxConfig:
    options = dict(
        hidden_size=32, num_hidden_layers=1, layer_types=[M], mlstm_num_heads=2, mlstm_chunk_size=8,
        mlstm_gate_soft_cap=15.0,
    )
    options.update(overrides)
    return tiny_config(**options)


def randomised_mixer(config: PhalanxConfig, seed: int = 0) -> PhalanxMLSTMMixer:
    torch.manual_seed(seed)
    mixer = PhalanxMLSTMMixer(config, 0)
    with torch.no_grad():
        for p in mixer.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
        mixer.igate_preact.bias.add_(2.0)
    return mixer.eval()


@pytest.mark.parametrize("forget_gate", ["sigmoid", "exp"])
def test_mixer_matches_the_oracle_with_xlstm_layer_around_it(forget_gate: str) -> None:
    """The whole layer in float64: projections, soft caps, per-head layer norm, output gate, out_proj; a padding
    mask and `position_ids` restarts."""
    config = mixer_config(mlstm_forget_gate=forget_gate, mlstm_gate_soft_cap=5.0)
    mixer = randomised_mixer(config).double()
    x = torch.randn(2, 19, 32, dtype=torch.float64)
    mask = torch.ones(2, 19, dtype=torch.long)
    mask[1, :4] = 0
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    position_ids[0, 11:] = torch.arange(8)  # a second sequence packed into row 0
    with torch.no_grad():
        got, _ = mixer(x, attention_mask=mask, position_ids=position_ids)
        expected = layer_oracle(mixer, config, x, position_ids == 0, mask.bool())
    real = mask.bool()
    torch.testing.assert_close(got[real], expected[real], rtol=1e-9, atol=1e-9)


def layer_oracle(mixer, config, x, starts, keep):
    """xLSTM's mLSTM layer around the oracle: soft caps, per-head layer norm, output gate, out_proj."""
    heads = config.mlstm_num_heads
    split = lambda t: t.view(*x.shape[:2], heads, -1)  # noqa: E731
    cap = config.mlstm_gate_soft_cap
    h = mlstm_oracle(
        split(mixer.q(x)), split(mixer.k(x)), split(mixer.v(x)),
        cap * torch.tanh(mixer.igate_preact(x) / cap), cap * torch.tanh(mixer.fgate_preact(x) / cap),
        forget_gate=config.mlstm_forget_gate, eps=config.mlstm_eps, starts=starts, keep=keep,
    )
    normed = (h - h.mean(-1, keepdim=True)) / (h.var(-1, keepdim=True, unbiased=False) + config.rms_norm_eps).sqrt()
    return mixer.out_proj(torch.sigmoid(mixer.ogate_preact(x)) * normed.flatten(-2) * mixer.multihead_norm.weight)


def test_cu_seqlens_marks_restarts_like_position_ids() -> None:
    """Without `position_ids`, `cu_seqlens` of the flattened batch restarts the state at each sequence start."""
    mixer = randomised_mixer(mixer_config())
    x = torch.randn(2, 13, 32)
    position_ids = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5, 6, 7], [8, 9, 10, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9]])
    cu_seqlens = torch.tensor([0, 5, 13, 16, 26])  # flattened: row 1 begins at 13, its second sequence at 16
    with torch.no_grad():
        by_positions, _ = mixer(x, position_ids=position_ids)
        by_cu_seqlens, _ = mixer(x, cu_seqlens=cu_seqlens)
        unpacked, _ = mixer(x)
    torch.testing.assert_close(by_cu_seqlens, by_positions)
    assert not torch.allclose(unpacked, by_positions)


needs_native_xlstm = pytest.mark.skipif(
    xlstm.external_xlstm, reason="the `xlstm` package is installed: Transformers then uses its kernels, not native ones"
)


@needs_native_xlstm
@pytest.mark.parametrize("seqlen", [24, 21, 1])
def test_layer_matches_transformers_xlstm_layer(seqlen: int) -> None:
    """Transformers' `xLSTMLayer` (weight_mode="single", pure-PyTorch backend: chunkwise for whole chunks, the
    recurrent sequence kernel for the rest, the step kernel for one token) with the mixer's weights, loaded by
    name, gives the mixer's output and state."""
    from transformers import xLSTMConfig

    hf_config = xLSTMConfig(
        hidden_size=32, num_heads=2, qk_dim_factor=0.5, v_dim_factor=1.0, gate_soft_cap=15.0, chunk_size=8,
        mode="inference", weight_mode="single", use_bias=False, norm_eps=1e-6, eps=1e-6, num_hidden_layers=1,
        vocab_size=VOCAB,
    )
    mixer = randomised_mixer(mixer_config(rms_norm_eps=1e-6))
    layer = xlstm.xLSTMLayer(hf_config).eval()
    missing = layer.load_state_dict(mixer.state_dict(), strict=True)
    assert not missing.missing_keys and not missing.unexpected_keys
    x = torch.randn(2, seqlen, 32)
    cache = PhalanxCache(config=mixer_config())
    with torch.no_grad():
        expected, (c_state, n_state, m_state) = layer(x)
        got, _ = mixer(x, position_ids=torch.arange(seqlen)[None], cache=cache)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    states = cache.layers[0].recurrent_states
    torch.testing.assert_close(states[0], c_state, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(states[2], n_state, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(states[3], m_state.squeeze(-1), rtol=1e-4, atol=1e-5)


def head_major_inputs(seed: int) -> tuple[torch.Tensor, ...]:
    """Float64 q, k, v, gate pre-activations (B=2, H=2, T=16; Dk 8, Dv 4) and a nonzero state (C, n, m), laid out
    head-major as Transformers' and the xLSTM authors' mLSTM functions take them."""
    g = torch.Generator().manual_seed(seed)
    batch, heads, seqlen, dk, dv = 2, 2, 16, 8, 4
    q, k = (torch.randn(batch, heads, seqlen, dk, generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.randn(batch, heads, seqlen, dv, generator=g, dtype=torch.float64)
    i_pre = torch.randn(batch, heads, seqlen, generator=g, dtype=torch.float64) * 3
    f_pre = torch.randn(batch, heads, seqlen, generator=g, dtype=torch.float64) + 3
    c0 = torch.randn(batch, heads, dk, dv, generator=g, dtype=torch.float64)
    n0 = torch.randn(batch, heads, dk, generator=g, dtype=torch.float64)
    m0 = torch.randn(batch, heads, generator=g, dtype=torch.float64)
    return q, k, v, i_pre, f_pre, c0, n0, m0


@needs_native_xlstm
def test_core_matches_transformers_mlstm_functions_from_a_state() -> None:
    """Transformers' native chunkwise and recurrent mLSTM functions, continuing from a nonzero (C, n, m), give the
    chunkwise and step paths' outputs and final states (float64)."""
    q, k, v, i_pre, f_pre, c0, n0, m0 = head_major_inputs(seed=7)
    log_i, log_f = mlstm_log_gates(i_pre, f_pre, "sigmoid")
    no_restart = torch.zeros(q.shape[0], q.shape[2], dtype=torch.bool)
    got, state = mlstm_chunkwise(q, k, v, log_i, log_f, no_restart, (c0, n0, m0), chunk_size=4)
    common = dict(query=q, key=k, value=v, igate=i_pre, fgate=f_pre, c_initial=c0, n_initial=n0)
    common["m_initial"] = m0[..., None]
    for name, expected, expected_state in (
        ("chunkwise", *xlstm.mlstm_chunkwise_native_autograd(**common, return_last_states=True, chunk_size=4)),
        ("recurrent", *xlstm.mlstm_recurrent_sequence_native(**common, return_last_states=True, dtype_state=q.dtype)),
    ):
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9, msg=name)
        for a, b in zip(state, expected_state):
            torch.testing.assert_close(a, b.reshape(a.shape), rtol=1e-9, atol=1e-9, msg=name)


def test_core_matches_the_xlstm_authors_mlstm_kernels() -> None:
    """`mlstm-kernels` (the xLSTM authors' package; optional, skipped when absent): its native chunkwise and
    recurrent-sequence functions from a nonzero state, and its quadratic parallel form from zero (with `eps = 0`:
    the parallel form's stabiliser has no `m_0` term, which only moves the `eps * exp(m)` part of the denominator)."""
    kernels = pytest.importorskip("mlstm_kernels.torch")
    from mlstm_kernels.torch.recurrent.native_sequence import mlstm_recurrent_sequence__native_fw

    q, k, v, i_pre, f_pre, c0, n0, m0 = head_major_inputs(seed=11)
    log_i, log_f = mlstm_log_gates(i_pre, f_pre, "sigmoid")
    no_restart = torch.zeros(q.shape[0], q.shape[2], dtype=torch.bool)
    got, got_state = mlstm_chunkwise(q, k, v, log_i, log_f, no_restart, (c0, n0, m0), chunk_size=4)
    common = dict(q=q, k=k, v=v, i=i_pre, f=f_pre, c_initial=c0, n_initial=n0, m_initial=m0[..., None])
    common["return_last_states"] = True
    chunkwise = kernels.get_mlstm_kernel("chunkwise--native_autograd")
    for name, (expected, expected_state) in (
        ("chunkwise", chunkwise(**common, chunk_size=4)),
        ("recurrent", mlstm_recurrent_sequence__native_fw(**common, dtype_state=torch.float64)),
    ):
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9, msg=name)
        for a, b in zip(got_state, expected_state):
            torch.testing.assert_close(a, b.reshape(a.shape), rtol=1e-9, atol=1e-9, msg=name)
    parallel = kernels.get_mlstm_kernel("parallel--native_autograd")(q=q, k=k, v=v, i=i_pre, f=f_pre, eps=0.0)
    from_zero, _ = mlstm_chunkwise(q, k, v, log_i, log_f, no_restart, chunk_size=4, eps=0.0)
    torch.testing.assert_close(from_zero, parallel, rtol=1e-9, atol=1e-9)


def test_mixer_backward_and_compile_fullgraph() -> None:
    """Gradients reach every parameter; the forward (chunkwise with padding and restarts, and the cached step)
    compiles with `fullgraph=True` and matches eager."""
    mixer = randomised_mixer(mixer_config())
    x = torch.randn(2, 19, 32, requires_grad=True)
    mask = torch.ones(2, 19, dtype=torch.long)
    mask[1, :5] = 0
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    out, _ = mixer(x, attention_mask=mask, position_ids=position_ids)
    (out * mask[..., None]).square().sum().backward()
    for name, p in list(mixer.named_parameters()) + [("x", x)]:
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    compiled = torch.compile(mixer, fullgraph=True, backend="eager")
    with torch.no_grad():
        torch.testing.assert_close(
            compiled(x, attention_mask=mask, position_ids=position_ids)[0],
            mixer(x, attention_mask=mask, position_ids=position_ids)[0],
        )


@pytest.mark.slow
def test_inductor_compiled_forward_and_backward_match_eager() -> None:
    """torch.compile's default backend (Inductor, C++ on CPU; about 40 s here): outputs and every gradient match
    eager mode, none NaN (see `soft_cap`)."""
    mixer = randomised_mixer(mixer_config())
    x = torch.randn(2, 24, 32)
    mask = torch.ones(2, 24, dtype=torch.long)
    mask[1, :5] = 0
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    results = []
    for module in (mixer, torch.compile(mixer, fullgraph=True)):
        leaf = x.clone().requires_grad_()
        out, _ = module(leaf, attention_mask=mask, position_ids=position_ids)
        (out * mask[..., None]).sum().backward()
        results.append([out, leaf.grad] + [p.grad.clone() for p in mixer.parameters()])
        mixer.zero_grad()
    for eager, compiled in zip(*results):
        assert torch.isfinite(compiled).all()
        torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)


MIXES = {
    "mlstm_only": [M, M, M],
    "swax": [S, M, S, M],
    "with_phalanx_and_full": [M, L, S, F],
}


def mix_model(name: str, **overrides):
    layer_types = MIXES[name]
    options = dict(mlstm_num_heads=2, mlstm_chunk_size=8, eos_token_id=None)
    options.update(overrides)
    return tiny_model(num_hidden_layers=len(layer_types), layer_types=layer_types, **options)


def recurrent_model(layer_types: list[str]):
    options = dict(mlstm_num_heads=2, mlstm_chunk_size=8)
    return tiny_model(num_hidden_layers=len(layer_types), layer_types=layer_types, **options)


@torch.no_grad()
@pytest.mark.parametrize("name", list(MIXES))
def test_chunked_prefill_and_steps_equal_one_pass(name: str) -> None:
    model = mix_model(name)
    ids = torch.randint(3, VOCAB, (2, 30))
    full = model(ids).logits
    cache = None
    pieces = []
    for start, stop in ((0, 13), (13, 14), (14, 23), (23, 24), (24, 25), (25, 30)):
        out = model(ids[:, start:stop], use_cache=True, **{CACHE_KWARG: cache})
        cache = getattr(out, CACHE_KWARG)
        pieces.append(out.logits)
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-4, atol=1e-5)
    assert cache.get_seq_length() == 30


@torch.no_grad()
@pytest.mark.parametrize("layer_types", [[M, M], [M, L, M]])
def test_packed_sequences_equal_separate_rows(layer_types: list[str]) -> None:
    """Three sequences packed in one row with `position_ids` restarting at 0 give each sequence's own logits (the
    recurrent layers; packed attention is Transformers' business), in training and with a cache."""
    model = recurrent_model(layer_types)
    seqs = [torch.randint(3, VOCAB, (1, n)) for n in (17, 12, 5)]
    packed = torch.cat(seqs, dim=1)
    position_ids = torch.cat([torch.arange(s.shape[1]) for s in seqs])[None]
    expected = torch.cat([model(s).logits for s in seqs], dim=1)
    torch.testing.assert_close(model(packed, position_ids=position_ids).logits, expected, rtol=1e-4, atol=1e-5)
    out = model(packed, position_ids=position_ids, use_cache=True)
    cache = getattr(out, CACHE_KWARG)
    assert cache.get_seq_length() == 5  # the last sequence's tokens
    torch.testing.assert_close(out.logits, expected, rtol=1e-4, atol=1e-5)


@torch.no_grad()
@pytest.mark.parametrize("layer_types", [[M, M], [M, L, M]])
def test_warm_cache_reused_for_a_new_sequence_equals_a_fresh_run(layer_types: list[str]) -> None:
    """A row whose first position is 0 starts a new sequence: nothing cached leaks in, as a chunk or a single step,
    and decoding goes on from the new sequence's state (recurrent layers: an attention cache keeps its keys)."""
    model = recurrent_model(layer_types)
    old, new = torch.randint(3, VOCAB, (2, 37)), torch.randint(3, VOCAB, (2, 24))
    for length in (23, 1):
        cache = getattr(model(old, use_cache=True), CACHE_KWARG)
        position_ids = torch.arange(length).expand(2, -1)
        got = model(new[:, :length], position_ids=position_ids, use_cache=True, **{CACHE_KWARG: cache}).logits
        torch.testing.assert_close(got, model(new[:, :length]).logits, rtol=1e-4, atol=1e-5)
        assert cache.get_seq_length() == length
        step = model(new[:, length : length + 1], use_cache=True, **{CACHE_KWARG: cache}).logits
        torch.testing.assert_close(step, model(new[:, : length + 1]).logits[:, -1:], rtol=1e-4, atol=1e-5)


@torch.no_grad()
@pytest.mark.parametrize("name", ["mlstm_only", "swax"])
def test_left_padding_in_one_pass_and_across_chunks_equals_each_row_alone(name: str) -> None:
    """`model(ids, attention_mask=mask)` of a left-padded batch, without `position_ids`, in one forward and in two
    chunks through the cache (row 0's first chunk nearly all padding), gives each row's own logits."""
    model = mix_model(name, attn_implementation="sdpa")
    prompts = [torch.randint(3, VOCAB, (n,)) for n in (9, 30)]
    ids = torch.zeros(2, 30, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        ids[row, 30 - len(prompt) :], mask[row, 30 - len(prompt) :] = prompt, 1
    whole = model(ids, attention_mask=mask).logits
    first = model(ids[:, :24], attention_mask=mask[:, :24], use_cache=True)
    second = model(ids[:, 24:], attention_mask=mask, use_cache=True, **{CACHE_KWARG: getattr(first, CACHE_KWARG)})
    chunked = torch.cat([first.logits, second.logits], dim=1)
    for row, prompt in enumerate(prompts):
        alone = model(prompt[None]).logits[0]
        for logits in (whole, chunked):
            torch.testing.assert_close(logits[row, 30 - len(prompt) :], alone, rtol=1e-4, atol=1e-5)


@torch.no_grad()
@pytest.mark.parametrize("name", list(MIXES))
def test_generate_default_and_static_cache_and_left_padding(name: str) -> None:
    """Greedy with the cache equals without it and an argmax loop; the static cache gives the same tokens;
    a left-padded batch gives each prompt's own tokens; beam search agrees with and without the cache."""
    model = mix_model(name, attn_implementation="sdpa")
    prompt = torch.randint(3, VOCAB, (2, 17))
    cached = model.generate(prompt, **GREEDY)
    ids = prompt
    for _ in range(GREEDY["max_new_tokens"]):
        ids = torch.cat([ids, model(ids).logits[:, -1:].argmax(-1)], dim=1)
    assert torch.equal(cached, ids)
    assert torch.equal(model.generate(prompt, use_cache=False, **GREEDY), ids)
    assert torch.equal(model.generate(prompt, cache_implementation="static", **GREEDY), ids)
    beam = dict(num_beams=3, max_new_tokens=8, min_new_tokens=8)
    beams = [model.generate(prompt, use_cache=use_cache, **beam) for use_cache in (True, False)]
    assert torch.equal(beams[0], beams[1])

    prompts = [torch.randint(3, VOCAB, (n,)) for n in (5, 21)]
    batch = torch.zeros(2, 21, dtype=torch.long)
    mask = torch.zeros_like(batch)
    for row, p in enumerate(prompts):
        batch[row, 21 - len(p) :], mask[row, 21 - len(p) :] = p, 1
    for options in ({}, dict(cache_implementation="static")):
        batched = model.generate(batch, attention_mask=mask, pad_token_id=0, **GREEDY, **options)
        for row, p in enumerate(prompts):
            alone = model.generate(p[None], pad_token_id=0, **GREEDY)
            assert torch.equal(batched[row, 21:], alone[0, len(p) :]), (options, row)


def test_compiled_static_decoding_has_no_graph_break() -> None:
    model = mix_model("swax", attn_implementation="sdpa")
    prompt = torch.randint(3, VOCAB, (2, 9))
    expected = model.generate(prompt, **GREEDY)
    compile_config = CompileConfig(fullgraph=True, backend="eager")
    compile_config._compile_all_devices = True
    got = model.generate(prompt, cache_implementation="static", compile_config=compile_config, **GREEDY)
    assert model._compiled_call is not None
    assert torch.equal(got, expected)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(mlstm_num_heads=3), r"mlstm_qk_dim_factor=0.5 gives width int\(hidden_size \* factor\)=16, which"),
        (dict(mlstm_v_dim_factor=0.3), "mlstm_v_dim_factor=0.3 gives width"),
        (dict(mlstm_forget_gate="tanh"), r"mlstm_forget_gate='tanh' is unknown; use one of \('sigmoid', 'exp'\)"),
        (dict(mlstm_gate_soft_cap=0.0), "mlstm_gate_soft_cap must be positive, got 0.0"),
        (dict(mlstm_eps=-1.0), "mlstm_eps must be positive"),
        (dict(mlstm_chunk_size=0), "mlstm_chunk_size must be a positive integer, got 0"),
        (dict(mlstm_num_heads=0), "mlstm_num_heads must be a positive integer, got 0"),
    ],
)
def test_config_validation_messages(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tiny_config(layer_types=[M, S, M, F], **kwargs)


def test_head_split_is_checked_only_with_mlstm_layers() -> None:
    tiny_config(mlstm_num_heads=3)  # no mLSTM layer: nothing to split
    assert tiny_config(mlstm_gate_soft_cap=None, layer_types=[M, S, M, F]).mlstm_gate_soft_cap is None


@pytest.mark.parametrize("forget_gate", ["sigmoid", "exp"])
def test_gate_init_is_xlstms(forget_gate: str) -> None:
    """Gate weights 0, input-gate bias -10, forget-gate biases spread over [3, 6] (as logsigmoid for exp gates)."""
    model = PhalanxForCausalLM(mixer_config(mlstm_forget_gate=forget_gate, mlstm_num_heads=4))
    mixer = model.model.layers[0].mixer
    for gate in (mixer.igate_preact, mixer.fgate_preact):
        assert isinstance(gate, MLSTMGateProjection)
        assert torch.equal(gate.weight, torch.zeros_like(gate.weight))
    assert torch.equal(mixer.igate_preact.bias, torch.full((4,), -10.0))
    expected = torch.linspace(3.0, 6.0, 4, dtype=torch.float64)
    expected = expected if forget_gate == "sigmoid" else torch.nn.functional.logsigmoid(expected)
    torch.testing.assert_close(mixer.fgate_preact.bias, expected.float())
    assert torch.equal(mixer.multihead_norm.weight, torch.ones(32))


def test_config_round_trip_keeps_layer_types_and_cache_kinds(tmp_path: Path) -> None:
    """config.json stores "mlstm" (Transformers' own `layer_types` check would refuse it: the config overrides it),
    the cache sees a linear-attention layer, and save / from_pretrained round-trips the model bit-exactly."""
    model = mix_model("swax", mlstm_forget_gate="exp", mlstm_gate_soft_cap=None)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["layer_types"] == MIXES["swax"]
    assert saved["mlstm_forget_gate"] == "exp" and saved["mlstm_gate_soft_cap"] is None
    assert "mlstm_phalanx.py" in {p.name for p in tmp_path.iterdir()}
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert loaded.config.layer_types == MIXES["swax"]
    assert loaded.config.cache_layer_types == [S, L, S, L]
    ids = torch.randint(3, VOCAB, (2, 20))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)


def test_hub_bundle_with_mlstm_layers_generates_in_a_clean_process(tmp_path: Path) -> None:
    assert_bundle_generates_in_a_clean_process(mix_model("swax"), tmp_path, torch.randint(3, VOCAB, (2, 11)))


# mlstm-kernels' chunkwise Triton kernel: chosen at construction, run on CUDA for multi-token forwards.

XL_CHUNK = "mlstm_kernels.torch.chunkwise.triton_xl_chunk"


def native_as_kernel(*args, chunk_size: int, **kwargs):
    """mlstm-kernels' PyTorch chunkwise form called as the Triton kernel is (runs on CPU), after checking that the
    length is one the Triton kernel accepts (16, 32, 64 or a multiple of its chunk)."""
    from mlstm_kernels.torch import get_mlstm_kernel

    seqlen = args[0].shape[2]
    assert chunk_size == 128 and (seqlen in (16, 32, 64) or seqlen % 128 == 0), seqlen
    return get_mlstm_kernel("chunkwise--native_autograd")(*args, chunk_size=16, **kwargs)


def kernel_call(kernel, inputs: dict, restart: torch.Tensor | None, initial_state=None):
    """:func:`mlstm_kernel_chunkwise` on the (B, T, H, *) inputs of :func:`core_inputs`, heads-first."""
    q, k, v, i_pre, f_pre = (inputs[n].transpose(1, 2) for n in ("q", "k", "v", "i_pre", "f_pre"))
    result = mlstm_kernel_chunkwise(kernel, q, k, v, i_pre, f_pre, inputs["keep"][:, None], restart, initial_state)
    return None if result is None else (result[0].transpose(1, 2), result[1])


def unpacked(inputs: dict) -> dict:
    """`inputs` with every row one sequence: restarts only at and before a row's first token (left padding, as
    `generate` gives them positions)."""
    starts = torch.zeros_like(inputs["starts"])
    starts[0, 0] = True
    starts[1, : int(inputs["keep"][1].long().argmax()) + 1] = True
    return {**inputs, "starts": starts}


def test_kernel_is_chosen_only_where_it_fits(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel (when mlstm-kernels and Triton import) for the sigmoid forget gate and head widths that are
    multiples of 16; None for the exponential forget gate, narrow heads, or without the package (the PyTorch path)."""
    pytest.importorskip(XL_CHUNK)
    import triton

    monkeypatch.setattr(triton, "__version__", "3.2.0")
    assert mlstm_kernel("sigmoid", 16, 32) is not None
    assert mlstm_kernel("exp", 16, 32) is None
    assert mlstm_kernel("sigmoid", 8, 32) is None and mlstm_kernel("sigmoid", 16, 24) is None
    for release in ("3.3.0", "3.6.0+git4f1e2a", "4.0.1"):  # releases that compile it wrongly (MLSTM_KERNEL_TRITON_BELOW)
        monkeypatch.setattr(triton, "__version__", release)
        assert mlstm_kernel("sigmoid", 16, 32) is None, release
    monkeypatch.setattr(triton, "__version__", "3.2.0")
    monkeypatch.setitem(sys.modules, XL_CHUNK, None)  # the import raises ImportError: as without the package
    assert mlstm_kernel("sigmoid", 16, 32) is None
    assert PhalanxMLSTMMixer(mixer_config(hidden_size=64), 0).kernel is None


def test_mixer_with_the_kernel_runs_the_pytorch_path_on_cpu_tensors(monkeypatch: pytest.MonkeyPatch) -> None:
    """A mixer built with the kernel never calls it for CPU tensors: the output equals the kernel-less mixer's."""
    pytest.importorskip(XL_CHUNK)
    import triton

    monkeypatch.setattr(triton, "__version__", "3.2.0")  # a release the mixer takes the kernel from
    mixer = randomised_mixer(mixer_config(hidden_size=64))  # heads of 16 (q, k) and 32 (v): the kernel fits
    assert mixer.kernel is not None

    def fail(*args, **kwargs):
        raise AssertionError("the Triton kernel ran on CPU tensors")

    x = torch.randn(2, 21, 64)
    with torch.no_grad():
        mixer.kernel = fail
        got, _ = mixer(x, position_ids=torch.arange(21).expand(2, -1))
        mixer.kernel = None
        expected, _ = mixer(x, position_ids=torch.arange(21).expand(2, -1))
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize("seqlen", [29, 150])
def test_kernel_call_pads_and_falls_back_exactly(seqlen: int) -> None:
    """:func:`mlstm_kernel_chunkwise` with mlstm-kernels' PyTorch chunkwise form standing in for the Triton kernel
    (same arguments; on CPU): padding anywhere and the pad to the kernel's length (32, 256) leave the state as it
    was, a row restarting at or before its first token starts from zero while the other continues the initial
    state, final states match; packed rows (restarts after a row's first token) and float64 return None."""
    pytest.importorskip("mlstm_kernels.torch")
    inputs = unpacked(core_inputs("sigmoid", torch.float32, seqlen=seqlen, seed=7))
    keep = inputs["keep"]
    names = ("q", "k", "v", "i_pre", "f_pre", "starts", "keep")
    expected = mlstm_oracle(**{n: inputs[n] for n in names})
    got, _ = kernel_call(native_as_kernel, inputs, inputs["starts"])
    scale = expected[keep].abs().max()
    assert (got.double() - expected)[keep].abs().max() <= 5e-4 * scale  # float32 (the PyTorch path: 2e-4 at 150)

    state = tuple(t.float() for t in core_state(2, 3, 8, 6))
    starts = inputs["starts"].clone()
    starts[0] = False  # row 0 continues the state; row 1 (left padding) starts afresh
    got, got_state = kernel_call(native_as_kernel, {**inputs, "starts": starts}, starts, state)
    expected, expected_state = run_chunkwise({**inputs, "starts": starts}, "sigmoid", 16, state)
    scale = expected[keep].abs().max()
    assert (got - expected)[keep].abs().max() <= 5e-4 * scale
    for a, b in zip(got_state, expected_state):
        assert (a - b).abs().max() <= 5e-4 * b.abs().max()

    packed = core_inputs("sigmoid", torch.float32, seqlen=seqlen, seed=7)
    assert kernel_call(native_as_kernel, packed, packed["starts"]) is None
    as_float64 = {n: (t.double() if t.is_floating_point() else t) for n, t in inputs.items()}
    assert kernel_call(native_as_kernel, as_float64, None) is None


def core_state(batch: int, heads: int, dk: int, dv: int, device: str = "cpu") -> tuple:
    """A random nonzero float64 (C, n, m)."""
    g = torch.Generator().manual_seed(13)
    state = (torch.randn(batch, heads, dk, dv, generator=g), torch.randn(batch, heads, dk, generator=g),
             torch.randn(batch, heads, generator=g))
    return tuple(t.double().to(device) for t in state)


def gpu_kernel(qk_head_dim: int, v_head_dim: int):
    """The kernel a mixer takes on this GPU machine; skips where the installed Triton compiles it wrongly."""
    import triton

    assert importlib.util.find_spec("mlstm_kernels"), "mlstm-kernels is not installed on the GPU machine (carry .whl)"
    kernel = mlstm_kernel("sigmoid", qk_head_dim, v_head_dim)
    if kernel is None:
        pytest.skip(f"mlstm-kernels' Triton kernel is off under Triton {triton.__version__}: it computes wrong values "
                    "there (docs/mlstm.md, MLSTM_KERNEL_TRITON_BELOW), so the mixer runs its PyTorch path")
    return kernel


# Largest error over the largest reference value; set before any GPU run (the tests print what they measure).
KERNEL_TOLERANCE = {torch.float32: (5e-3, 1e-2), torch.bfloat16: (3e-2, 5e-2)}  # (forward, gradients)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_triton_kernel_matches_the_float64_oracle_forward_and_backward(dtype: torch.dtype) -> None:
    """The Triton kernel on CUDA (2 x 300 tokens, padded to 384; 4 heads of 64; left and middle padding): outputs
    against the float64 oracle, gradients of q, k, v and both gates against the float64 PyTorch path; from a
    nonzero state, outputs and final (C, n, m) against the float64 PyTorch path."""
    kernel = gpu_kernel(64, 64)
    inputs = unpacked(core_inputs("sigmoid", torch.float64, seqlen=300, seed=3, dims=(4, 64, 64)))
    # The references see exactly the kernel's inputs (rounded to `dtype`), so only the kernel's own error counts.
    inputs = {n: (t.to(dtype).double() if t.is_floating_point() else t) for n, t in inputs.items()}
    keep = inputs["keep"]
    on_gpu = {n: (t.to("cuda", dtype) if t.is_floating_point() else t.cuda()) for n, t in inputs.items()}
    forward_tol, grad_tol = KERNEL_TOLERANCE[dtype]

    names = ("q", "k", "v", "i_pre", "f_pre", "starts", "keep")
    expected = mlstm_oracle(**{n: inputs[n] for n in names})
    leaves = {n: on_gpu[n].clone().requires_grad_() for n in ("q", "k", "v", "i_pre", "f_pre")}
    got, _ = kernel_call(kernel, {**on_gpu, **leaves}, on_gpu["starts"])
    error = (got.double().cpu() - expected)[keep].abs().max() / expected[keep].abs().max()
    print(f"{dtype} forward: error / largest output {float(error):.2e}")  # the GPU log keeps it (-rA)
    assert error <= forward_tol, float(error)

    weights = torch.randn(got.shape, dtype=torch.float64) * keep[..., None, None]
    grads = torch.autograd.grad((got.double() * weights.cuda()).sum(), list(leaves.values()))
    ref_leaves = {n: inputs[n].clone().requires_grad_() for n in leaves}
    reference, _ = run_chunkwise({**inputs, **ref_leaves}, "sigmoid", 64)
    ref_grads = torch.autograd.grad((reference * weights).sum(), list(ref_leaves.values()))
    for name, a, b in zip(leaves, grads, ref_grads):
        error = (a.double().cpu() - b).abs().max() / b.abs().max()
        print(f"{dtype} d{name}: error / largest gradient {float(error):.2e}")
        assert error <= grad_tol, (name, float(error))

    starts = inputs["starts"].clone()
    starts[0] = False  # row 0 continues the state
    state = tuple(t.float().double() for t in core_state(2, 4, 64, 64))
    got, got_state = kernel_call(kernel, {**on_gpu, "starts": starts.cuda()}, starts.cuda(),
                                 tuple(t.float().cuda() for t in state))
    expected, expected_state = run_chunkwise({**inputs, "starts": starts}, "sigmoid", 64, state)
    error = (got.double().cpu() - expected)[keep].abs().max() / expected[keep].abs().max()
    assert error <= forward_tol, float(error)
    for a, b in zip(got_state, expected_state):
        assert (a.double().cpu() - b).abs().max() <= forward_tol * b.abs().max()


@pytest.mark.gpu
def test_model_with_the_triton_kernel_matches_its_pytorch_path() -> None:
    """A model with mLSTM layers on CUDA, kernel path against PyTorch path (fp32): logits, and the gradients of a
    training step; the kernel did run, and packed rows fell back to PyTorch."""
    model = mix_model("swax", hidden_size=128, intermediate_size=256, num_attention_heads=4).cuda().train()
    calls = []
    for layer in model.model.layers:
        if layer.layer_type == M:
            assert layer.mixer.kernel is gpu_kernel(layer.mixer.qk_head_dim, layer.mixer.v_head_dim)
            kernel = layer.mixer.kernel
            layer.mixer.kernel = lambda *a, _k=kernel, **kw: calls.append(1) or _k(*a, **kw)
    input_ids = torch.randint(3, VOCAB, (2, 200), device="cuda")
    results = []
    for use_kernel in (True, False):
        if not use_kernel:
            for layer in model.model.layers:
                if layer.layer_type == M:
                    layer.mixer.kernel = None
        model.zero_grad()
        out = model(input_ids, labels=input_ids)
        out.loss.backward()
        results.append([out.logits.detach()] + [p.grad.clone() for p in model.parameters() if p.grad is not None])
    assert len(calls) == 2  # both mLSTM layers, once each
    for name, a, b in zip(["logits"] + [n for n, p in model.named_parameters() if p.grad is not None], *results):
        error = (a - b).abs().max() / b.abs().max()
        print(f"{name}: kernel vs PyTorch path, error / largest value {float(error):.2e}")
        assert error <= 1e-2, name
