"""Phalanx model: mixer against a float64 loop, incremental decoding, chunked prefill, packed sequences, and
caches made only of Phalanx layers (left padding and generation: test_generation_equivalence.py)."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from modeling_phalanx import PhalanxCache, PhalanxConfig, PhalanxForCausalLM
from modeling_phalanx.modeling_phalanx import CACHE_KWARG, PhalanxMixer, cached_tokens

L, S, F = "linear_attention", "sliding_attention", "full_attention"
VOCAB = 61


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Tiny models spend their time in thread hand-offs: one thread is several times faster on 2 cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_config(**overrides) -> PhalanxConfig:
    kwargs = dict(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, layer_types=[L, S, L, F], sliding_window=11, phalanx_num_gate_groups=1,
        pad_token_id=0, bos_token_id=1, eos_token_id=2, max_position_embeddings=256,
    )
    kwargs.update(overrides)
    return PhalanxConfig(**kwargs)


def tiny_model(seed: int = 0, **overrides) -> PhalanxForCausalLM:
    torch.manual_seed(seed)
    model = PhalanxForCausalLM(tiny_config(**overrides)).eval()
    with torch.no_grad():  # larger weights than the init so that every path moves the logits
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def mixer_reference(mixer: PhalanxMixer, x: torch.Tensor) -> torch.Tensor:
    """DESIGN.md section 3 written out as a float64 loop over tokens and window start positions."""
    H, D, G = mixer.num_heads, mixer.head_dim, mixer.num_gate_groups
    BL, W = mixer.block_len, mixer.window_blocks
    proj = torch.nn.functional.linear(x.double(), mixer.in_proj.weight.double(), mixer.in_proj.bias.double())
    z_a, z_b, c, v = torch.split(proj, [H, G * D, G * D, H * D], dim=-1)
    a = torch.sigmoid(z_a) * (mixer.decay_cap or 1.0)  # (B, T, H)
    group = torch.arange(H) // (H // G)
    b = torch.sigmoid(z_b).view(*x.shape[:2], G, D)[:, :, group]
    c = c.view(*x.shape[:2], G, D)[:, :, group]
    v = v.view(*x.shape[:2], H, D)
    u = b * v
    out = torch.zeros_like(v)
    for t in range(x.shape[1]):
        start = max(0, (t // BL - W + 1) * BL)
        h = torch.zeros_like(v[:, 0])
        for s in range(start, t + 1):
            h = a[:, s, :, None] * h + u[:, s]
        out[:, t] = h * c[:, t] + v[:, t]
    if mixer.out_norm is not None:  # RMS over each head's channels, times a weight per channel
        rms = out.pow(2).mean(-1, keepdim=True).add(mixer.out_norm.variance_epsilon).sqrt()
        out = out / rms * mixer.out_norm.weight.double()
    bias = None if mixer.out_proj.bias is None else mixer.out_proj.bias.double()
    return torch.nn.functional.linear(out.reshape(*x.shape[:2], H * D), mixer.out_proj.weight.double(), bias).float()


@pytest.mark.parametrize(
    "options",
    [
        dict(swr_window_blocks=2, phalanx_num_gate_groups=1),
        dict(swr_window_blocks=3, phalanx_num_gate_groups=2, phalanx_decay_cap=0.9, phalanx_out_bias=True),
        dict(swr_window_blocks=2, phalanx_output_norm=True),
    ],
)
def test_mixer_matches_float64_loop(options: dict) -> None:
    torch.manual_seed(1)
    mixer = PhalanxMixer(tiny_config(hidden_size=64, **options), layer_idx=0)
    with torch.no_grad():
        mixer.in_proj.bias.normal_()
        if mixer.out_norm is not None:
            mixer.out_norm.weight.normal_()
        if mixer.out_proj.bias is not None:
            mixer.out_proj.bias.normal_()
    x = torch.randn(2, 53, 64)
    got, _ = mixer(x, position_ids=torch.arange(53).expand(2, -1))
    torch.testing.assert_close(got, mixer_reference(mixer, x), atol=2e-5, rtol=1e-4)


def test_decay_bias_init_spreads_over_heads() -> None:
    model = PhalanxForCausalLM(tiny_config(hidden_size=64, phalanx_decay_init_range=[0.6, 0.9]))
    mixer = model.model.layers[0].mixer
    decays = torch.sigmoid(mixer.in_proj.bias[: mixer.num_heads].double())
    torch.testing.assert_close(decays, torch.linspace(0.6, 0.9, mixer.num_heads, dtype=torch.float64))
    assert torch.all(mixer.in_proj.bias[mixer.num_heads :] == 0)


def decode_logits(model: PhalanxForCausalLM, ids: torch.Tensor, prompt_len: int) -> torch.Tensor:
    """Logits from a prefill of `prompt_len` tokens, then one token per step with the cache."""
    out = model(ids[:, :prompt_len], use_cache=True)
    cache, logits = getattr(out, CACHE_KWARG), [out.logits]
    for t in range(prompt_len, ids.shape[1]):
        out = model(ids[:, t : t + 1], use_cache=True, **{CACHE_KWARG: cache})
        logits.append(out.logits)
    return torch.cat(logits, dim=1)


@torch.no_grad()
def test_incremental_decoding_matches_full_forward_for_every_prompt_phase() -> None:
    model = tiny_model()
    ids = torch.randint(3, VOCAB, (2, 44))  # crosses two block boundaries of 16 after every prompt
    full = model(ids).logits
    for prompt_len in range(1, 17):
        diff = (decode_logits(model, ids, prompt_len) - full).abs().max().item()
        assert diff <= 1e-4, f"prompt length {prompt_len}: max diff {diff}"


@torch.no_grad()
@pytest.mark.parametrize("block_len,window_blocks", [(32, 1), (16, 3)])
def test_incremental_decoding_other_windows(block_len: int, window_blocks: int) -> None:
    model = tiny_model(swr_block_len=block_len, swr_window_blocks=window_blocks)
    ids = torch.randint(3, VOCAB, (1, 75))
    full = model(ids).logits
    for prompt_len in (5, block_len, block_len + 3):
        assert (decode_logits(model, ids, prompt_len) - full).abs().max().item() <= 1e-4


@torch.no_grad()
def test_chunked_prefill_matches_one_shot() -> None:
    model = tiny_model()
    ids = torch.randint(3, VOCAB, (2, 61))
    full = model(ids).logits
    cache, pieces, start = DynamicCache(config=model.config), [], 0  # a plain DynamicCache works too
    for size in (7, 20, 1, 33):
        out = model(ids[:, start : start + size], use_cache=True, **{CACHE_KWARG: cache})
        start += size
        pieces.append(out.logits)
    assert (torch.cat(pieces, dim=1) - full).abs().max().item() <= 1e-4
    # the model's count (Transformers' own `get_seq_length` of a plain cache whose first layer is a mixer reads 0
    # from 5.25 on: only conv-state updates count there)
    assert cached_tokens(cache) == 61
    config = model.config
    state = cache.layers[0].recurrent_states[0]  # the SWR state h of the first Phalanx layer
    assert state.shape == (2, config.phalanx_num_heads, config.swr_window_blocks, config.phalanx_head_dim)
    assert state.dtype == torch.float32
    hidden = model(ids, output_hidden_states=True).hidden_states
    assert len(hidden) == config.num_hidden_layers + 1


def test_packed_loss_equals_mean_of_separate_sequences() -> None:
    model = tiny_model()
    lengths = (13, 21, 30)
    seqs = [torch.randint(3, VOCAB, (n,)) for n in lengths]
    separate_sum, tokens = 0.0, 0
    for seq in seqs:
        loss = model(seq[None], labels=seq[None], use_cache=False).loss
        separate_sum += loss * (len(seq) - 1)
        tokens += len(seq) - 1
    ids = torch.cat(seqs)[None]
    position_ids = torch.cat([torch.arange(n) for n in lengths])[None]
    labels = ids.clone()
    labels[0, torch.tensor([0, 13, 34])] = -100  # first token of each sequence (DataCollatorWithFlattening)
    packed = model(ids, labels=labels, position_ids=position_ids, use_cache=False).loss
    torch.testing.assert_close(packed, separate_sum / tokens, atol=1e-5, rtol=1e-5)


def _host_reads(model: PhalanxForCausalLM, ids: torch.Tensor, position_ids: torch.Tensor, monkeypatch) -> int:
    """Tensor values a packed training forward reads on the host (each a device sync on a GPU)."""
    reads = []
    for name in ("cpu", "item", "tolist", "__bool__", "__int__"):
        method = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda self, *a, _m=method, **k: reads.append(1) or _m(self, *a, **k))
    model(ids, position_ids=position_ids, use_cache=False)
    monkeypatch.undo()
    return len(reads)


def test_packed_forward_reads_cu_seqlens_on_the_host_once_not_per_layer(monkeypatch) -> None:
    """`cu_seqlens` and its longest sequence are derived once per forward (one host copy); the layers read none."""
    ids = torch.randint(3, VOCAB, (2, 40))
    position_ids = torch.cat([torch.arange(13), torch.arange(27)])[None].expand(2, -1)
    reads = [
        _host_reads(tiny_model(num_hidden_layers=n, layer_types=[L] * n, sliding_window=None), ids, position_ids, monkeypatch)
        for n in (1, 4)
    ]
    assert reads[0] == reads[1] <= 3, reads


@torch.no_grad()
def test_phalanx_only_cache_continues_packed_rows() -> None:
    """A model of only Phalanx layers: `get_seq_length` works, and a chunk that continues one sequence and starts
    another in the same row gives what the two sequences give separately."""
    model = tiny_model(num_hidden_layers=2, layer_types=[L, L], sliding_window=None)
    first = torch.randint(3, VOCAB, (1, 40))
    second = torch.randint(3, VOCAB, (1, 19))
    out = model(first[:, :25], use_cache=True)
    cache = getattr(out, CACHE_KWARG)
    assert isinstance(cache, PhalanxCache) and cache.get_seq_length() == 25
    chunk = torch.cat([first[:, 25:], second], dim=1)
    position_ids = torch.cat([torch.arange(25, 40), torch.arange(19)])[None]
    got = model(chunk, position_ids=position_ids, use_cache=True, **{CACHE_KWARG: cache}).logits
    assert (got[:, :15] - model(first).logits[:, 25:]).abs().max().item() <= 1e-4
    assert (got[:, 15:] - model(second).logits).abs().max().item() <= 1e-4
    assert cache.get_seq_length() == 19  # the row's current sequence
    generated = model.generate(first[:, :9], max_new_tokens=12, do_sample=False)
    assert generated.shape == (1, 21)


@torch.no_grad()
def test_the_cache_length_does_not_depend_on_transformers_cache_get_seq_length(monkeypatch) -> None:
    """From 5.25 on, Transformers' `Cache.get_seq_length()` reads layer 0, which counts 0 tokens when it is a Phalanx
    layer; up to 5.24 it read the first attention layer. The model's caches and its positions must not depend on
    either: with the base method made to answer 5.25's way on every release, decoding from a cache still matches
    the full forward and the model's caches still count every token, whichever layer is asked."""
    from transformers.cache_utils import Cache, CacheLayerMixin

    def layer_zero_only(self, layer_idx: int = 0) -> int:
        layer = self.layers[layer_idx]
        return layer.get_seq_length() if isinstance(layer, CacheLayerMixin) else 0

    monkeypatch.setattr(Cache, "get_seq_length", layer_zero_only)
    model = tiny_model()
    assert model.config.layer_types[0] not in ("full_attention", "sliding_attention")  # layer 0 is a mixer
    ids = torch.randint(3, VOCAB, (2, 40))
    full = model(ids).logits
    assert (decode_logits(model, ids, 17) - full).abs().max().item() <= 1e-4
    cache = PhalanxCache(config=model.config)
    model(ids, use_cache=True, **{CACHE_KWARG: cache})
    assert [cache.get_seq_length(i) for i in range(len(cache.layers))] == [40] * len(cache.layers)
