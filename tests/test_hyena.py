"""Hyena-SE / -MR / -LI mixers (StripedHyena 2): the mixer against a float64 loop written from the equations in
docs/hyena.md, packed sequences, padding, chunked prefill plus single steps, static-cache generation, gradients,
torch.compile, config validation, save / load and the Hub bundle in a clean process."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import torch
from test_model_cache import single_thread  # noqa: F401  (fixture import)
from test_model_hub import assert_bundle_generates_in_a_clean_process
from transformers.cache_utils import DYNAMIC_LAYER_TYPE_MAPPING, LinearAttentionLayer

from modeling_phalanx import PhalanxCache, PhalanxConfig, PhalanxForCausalLM
from modeling_phalanx.hyena_phalanx import PhalanxHyenaMixer
from modeling_phalanx.modeling_phalanx import CACHE_KWARG, PhalanxStaticCache, sequence_starts
from phalanx_hub.card import layer_table

SE, MR, LI, F, L = "hyena_se", "hyena_mr", "hyena_li", "full_attention", "linear_attention"
VARIANTS = (SE, MR, LI)
VOCAB = 61


def hyena_config(**overrides) -> PhalanxConfig:
    kwargs = dict(
        vocab_size=VOCAB, hidden_size=16, intermediate_size=24, num_hidden_layers=5, num_attention_heads=2,
        layer_types=[SE, MR, L, LI, F], hyena_se_len=4, hyena_mr_len=9, hyena_li_modes=3, hyena_filter_groups=4,
        hyena_mr_decay=[0.05, 0.5], phalanx_num_gate_groups=1, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        max_position_embeddings=256,
    )
    kwargs.update(overrides)
    return PhalanxConfig(**kwargs)


def perturb(module: torch.nn.Module, seed: int, scale: float = 0.1) -> None:
    """Random offsets on every parameter, so that no path is hidden by a special initial value."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * scale)


def hyena_model(seed: int = 0, **overrides) -> PhalanxForCausalLM:
    torch.manual_seed(seed)
    model = PhalanxForCausalLM(hyena_config(**overrides)).eval()
    perturb(model, seed + 1, 0.05)
    return model


def make_mixer(variant: str, seed: int = 0, **overrides) -> PhalanxHyenaMixer:
    config = hyena_config(num_hidden_layers=1, layer_types=[variant], **overrides)
    torch.manual_seed(seed)
    mixer = PhalanxHyenaMixer(config, 0)
    mixer.init_filters()
    perturb(mixer, seed + 1)
    return mixer.double().eval()


def reference_filter(mixer: PhalanxHyenaMixer, length: int) -> torch.Tensor:
    """The causal filter h (channels, length) of docs/hyena.md, tap by tap in float64."""
    width, groups = mixer.width, mixer.num_groups
    h = torch.zeros(width, length, dtype=torch.float64)
    for c in range(width):
        g = c // (width // groups)
        for k in range(length):
            if mixer.variant == LI:
                lam = [math.exp(-math.exp(p)) for p in mixer.log_rates[g].tolist()]
                h[c, k] = sum(r * lam_n**k for r, lam_n in zip(mixer.residues[g].tolist(), lam))
                if k == 0:
                    h[c, k] += mixer.direct[c].item()
            elif k < mixer.filter_len:
                h[c, k] = mixer.filter_taps[g, k].item()
                if mixer.variant == MR:  # alpha_g log-evenly spaced over hyena_mr_decay = [a, b]
                    a, b = mixer.decay_rates
                    alpha = a * (b / a) ** (g / (groups - 1)) if groups > 1 else a
                    h[c, k] *= math.exp(-alpha * k)
    return h


def reference_sequence(mixer: PhalanxHyenaMixer, x: torch.Tensor) -> torch.Tensor:
    """y = out_proj(q * (h * (k * v))) for one sequence x (T, hidden), written as float64 loops over time."""
    x = x.double()
    seqlen, width = x.shape[0], mixer.width
    u = x @ mixer.in_proj.weight.double().T  # (T, 3W)
    feat = torch.zeros_like(u)
    for t in range(seqlen):
        for j in range(mixer.featurizer_len):
            if t - j >= 0:
                feat[t] += mixer.featurizer[:, j].double() * u[t - j]
    q, k, v = feat[:, :width], feat[:, width : 2 * width], feat[:, 2 * width :]
    z = k * v
    h = reference_filter(mixer, seqlen)
    mixed = torch.zeros_like(z)
    for t in range(seqlen):
        for s in range(t + 1):
            mixed[t] += h[:, t - s] * z[s]
    return (q * mixed) @ mixer.out_proj.weight.double().T


@pytest.mark.parametrize("seqlen", [13, 45])  # LI: the direct convolution (<= 32 tokens), then the FFT
@pytest.mark.parametrize("variant", VARIANTS)
def test_mixer_matches_float64_reference(variant: str, seqlen: int) -> None:
    mixer = make_mixer(variant)
    x = torch.randn(2, seqlen, 16, dtype=torch.float64)
    got, _ = mixer(x)
    expected = torch.stack([reference_sequence(mixer, row) for row in x])
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def import_vortex_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """`vortex.model.engine`, or a skip when vtx is not installed. Importing vortex configures the root logger and
    opens `activations_debug.log` in the working directory: import it from `tmp_path` and drop the handlers it added."""
    root = logging.getLogger()
    before = set(root.handlers)
    monkeypatch.chdir(tmp_path)
    engine_module = pytest.importorskip("vortex.model.engine", exc_type=ImportError)
    for handler in set(root.handlers) - before:
        root.removeHandler(handler)
        handler.close()
    return engine_module


@pytest.mark.filterwarnings("ignore:Casting complex values to real:UserWarning")  # inside vortex's modal prefill
@pytest.mark.parametrize("variant", VARIANTS)
def test_matches_vortex_operators(variant: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Against the StripedHyena 2 authors' inference engine (`pip install vtx`, CPU): prefill through
    `parallel_fir` / `parallel_iir`, then one step through `step_fir` / `step_iir` from the states our cache holds
    (vortex keeps taps in `conv1d` order, hence the flips; it has one modal system per channel)."""
    engine_module = import_vortex_engine(tmp_path, monkeypatch)
    conv1d = torch.nn.functional.conv1d
    mixer = make_mixer(variant, seed=11).float()
    config = hyena_config(num_hidden_layers=1, layer_types=[variant])
    x = torch.randn(2, 13, 16)
    width, prefill = mixer.width, x.shape[1] - 1
    with torch.no_grad():
        cache = PhalanxCache(config=config)
        ours = mixer(x[:, :prefill], cache=cache)[0]
        layer = cache.layers[0]
        inner = layer.recurrent_states[0] if variant == LI else layer.conv_states[1]
        ours_states = [layer.conv_states[0].clone(), inner.clone()]
        ours_step = mixer(x[:, prefill:], cache=cache)[0]

        engine = engine_module.HyenaInferenceEngine()
        params = type("InferenceParams", (), {"state_dict": {}})()
        modes = config.hyena_li_modes
        dims = (width, 1, width, modes, 1)
        featurizer = mixer.featurizer.flip(-1)[:, None]
        u = mixer.in_proj(x[:, :prefill]).transpose(1, 2)
        feat, feat_state = engine.parallel_fir(
            conv1d, u, featurizer, None, prefill, dims, gate=False, dim_last=False,
            fir_length=mixer.featurizer_len, inference_params=params,
        )
        if variant == LI:
            group = width // mixer.num_groups
            residues = mixer.residues.repeat_interleave(group, 0)
            log_poles = -torch.exp(mixer.log_rates).repeat_interleave(group, 0)[..., None]
            t = torch.arange(prefill)[None, None]
            h = (residues[..., None] * (log_poles * t).exp()).sum(1)[None]
            y = engine.parallel_iir(
                feat, h, mixer.direct, prefill, log_poles, residues, t, dims, 0, inference_params=params
            )
            inner_state = params.state_dict[0].real
        else:
            taps = mixer.explicit_filter().flip(-1)[:, None]
            y, inner_state = engine.parallel_fir(
                conv1d, feat, taps, None, prefill, dims, gate=True, dim_last=False,
                fir_length=mixer.filter_len, inference_params=params,
            )
            y = y.transpose(1, 2)
        torch.testing.assert_close(ours, mixer.out_proj(y), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours_states[0], feat_state, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(ours_states[1], inner_state, rtol=1e-5, atol=1e-5)

        z_pre, _ = engine.step_fir(mixer.in_proj(x[:, prefill]), feat_state, weight=featurizer)
        q, k, v = z_pre.split([width] * 3, dim=1)
        if variant == LI:
            y, _ = engine.step_iir(q, k, v, mixer.direct, residues, log_poles, inner_state)
        else:
            y, _ = engine.step_fir(k * v, inner_state, weight=taps)
            y = y * q
        torch.testing.assert_close(ours_step[:, 0], mixer.out_proj(y), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_packed_sequences_do_not_leak(variant: str) -> None:
    """Rows packing several sequences (position_ids restart at 0) equal each sequence run on its own."""
    mixer = make_mixer(variant, seed=3)
    lengths = [[5, 1, 7], [9, 4]]
    x = torch.randn(2, 13, 16, dtype=torch.float64)
    position_ids = torch.stack([torch.cat([torch.arange(n) for n in row_lengths]) for row_lengths in lengths])
    got, _ = mixer(x, position_ids=position_ids, cu_seqlens=sequence_starts(position_ids)[0])
    for row, row_lengths in enumerate(lengths):
        start = 0
        for n in row_lengths:
            expected = reference_sequence(mixer, x[row, start : start + n])
            torch.testing.assert_close(got[row, start : start + n], expected, rtol=1e-10, atol=1e-10)
            start += n


@pytest.mark.parametrize("variant", VARIANTS)
def test_gradcheck(variant: str) -> None:
    """Gradients for the input and every parameter (filters, featurizers, LI modes and direct term) in float64."""
    sizes = dict(hidden_size=4, phalanx_num_heads=1, hyena_filter_groups=2, hyena_li_modes=2, hyena_mr_len=4)
    mixer = make_mixer(variant, seed=5, **sizes)
    names = [name for name, _ in mixer.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for _, p in mixer.named_parameters())
    x = torch.randn(1, 6, 4, dtype=torch.float64, requires_grad=True)

    def f(x, *params):
        return torch.func.functional_call(mixer, dict(zip(names, params)), (x,))[0]

    assert torch.autograd.gradcheck(f, (x, *params))


def run_in_chunks(model: PhalanxForCausalLM, ids: torch.Tensor, cuts: list[int], cache=None, **kwargs) -> torch.Tensor:
    """Logits of ids fed in the chunks [0, cuts[0]), [cuts[0], cuts[1]), ..., [cuts[-1], T) through one cache."""
    logits = []
    bounds = [0, *cuts, ids.shape[1]]
    for a, b in zip(bounds[:-1], bounds[1:]):
        out = model(ids[:, a:b], use_cache=True, **{CACHE_KWARG: cache}, **kwargs)
        cache = getattr(out, CACHE_KWARG)
        logits.append(out.logits)
    return torch.cat(logits, dim=1)


@pytest.mark.parametrize("layer_types", [[SE, MR, L, LI, F], [LI, MR, SE, LI, SE]], ids=["hybrid", "hyena-only"])
def test_chunked_prefill_and_steps_equal_one_pass(layer_types: list[str]) -> None:
    """Prefill in uneven chunks, then single steps, equals one full pass (also with no attention layer at all)."""
    model = hyena_model(layer_types=layer_types)
    ids = torch.randint(3, VOCAB, (2, 23))
    with torch.no_grad():
        full = model(ids).logits
        chunked = run_in_chunks(model, ids, [1, 8, 11, 19, 20, 21, 22])
    torch.testing.assert_close(chunked, full, rtol=1e-5, atol=1e-5)


def test_decoding_steps_run_no_fft(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hyena-LI's single steps convolve directly (no complex numbers in a compiled decoding step: inductor generates
    no code for them), and still give the one-pass logits."""
    model = hyena_model(layer_types=[LI, F, LI], num_hidden_layers=3)
    ids = torch.randint(3, VOCAB, (2, 40))
    with torch.no_grad():
        full = model(ids).logits
        out = model(ids[:, :36], use_cache=True)
        steps = [out.logits]

        def refuse(*args, **kwargs):
            raise AssertionError("torch.fft called in a decoding step")

        monkeypatch.setattr(torch.fft, "rfft", refuse)
        for t in range(36, 40):
            out = model(ids[:, t : t + 1], past_key_values=out.past_key_values, use_cache=True)
            steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)


def test_sequences_restarting_inside_a_continued_chunk_do_not_see_the_cache() -> None:
    """A chunk continuing the cache in which row 0 starts a new sequence mid-chunk and row 1 starts one at its first
    token: the continued tokens equal one full pass, the new sequences equal fresh runs of their own tokens, and
    single steps after the chunk continue each row's new sequence (the state of a row's last sequence is kept)."""
    model = hyena_model(seed=9, layer_types=[LI, MR, SE, L, LI])
    ids = torch.randint(3, VOCAB, (2, 17))
    second = torch.tensor([[8, 9, 10, 0, 1, 2, 3], [0, 1, 2, 3, 4, 5, 6]])
    with torch.no_grad():
        out = model(ids[:, :8], use_cache=True)
        cache = getattr(out, CACHE_KWARG)
        got = model(ids[:, 8:15], position_ids=second, use_cache=True, **{CACHE_KWARG: cache}).logits
        torch.testing.assert_close(got[0, :3], model(ids[:1, :11]).logits[0, 8:], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got[0, 3:], model(ids[:1, 11:15]).logits[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got[1], model(ids[1:, 8:15]).logits[0], rtol=1e-5, atol=1e-5)
        steps = [
            model(ids[:, t : t + 1], position_ids=second[:, -1:] + t - 14, **{CACHE_KWARG: cache}).logits
            for t in (15, 16)
        ]
        torch.testing.assert_close(torch.cat(steps, 1)[0], model(ids[:1, 11:]).logits[0, 4:], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(torch.cat(steps, 1)[1], model(ids[1:, 8:]).logits[0, 7:], rtol=1e-5, atol=1e-5)


def state_shapes(cache: PhalanxCache) -> list[list[tuple[int, ...] | None]]:
    """Shapes of the conv states and the first recurrent state of every linear-attention cache layer."""
    shapes = []
    for layer in cache.layers:
        if isinstance(layer, LinearAttentionLayer):
            states = [*layer.conv_states.values(), layer.recurrent_states[0]]
            shapes.append([None if s is None else tuple(s.shape) for s in states])
    return shapes


def test_cache_layers_hold_fir_windows_and_modal_state() -> None:
    """Hyena layers are Transformers `LinearAttentionLayer`s: FIR windows in `conv_states`, LI's modal state in
    `recurrent_states[0]`, tokens consumed in `recurrent_states[1]`; a decoding step leaves every shape unchanged."""
    model = hyena_model()
    cache = PhalanxCache(config=model.config)
    assert all(isinstance(cache.layers[i], LinearAttentionLayer) for i in range(4))
    ids = torch.randint(3, VOCAB, (2, 17))
    with torch.no_grad():
        run_in_chunks(model, ids[:, :16], [], cache=cache)
        shapes = state_shapes(cache)
        model(ids[:, 16:], use_cache=True, **{CACHE_KWARG: cache})
    se, mr, li = cache.layers[0], cache.layers[1], cache.layers[3]
    assert tuple(se.conv_states[0].shape) == (2, 48, 2) and tuple(se.conv_states[1].shape) == (2, 16, 3)
    assert tuple(mr.conv_states[1].shape) == (2, 16, 8)
    assert tuple(li.recurrent_states[0].shape) == (2, 16, 3) and li.recurrent_states[0].dtype == torch.float32
    assert li.recurrent_states[1].tolist() == [17, 17] and cache.get_seq_length() == 17
    assert state_shapes(cache) == shapes


def test_left_padding_gives_the_tokens_of_unpadded_runs() -> None:
    model = hyena_model(seed=2)
    prompts = [torch.randint(3, VOCAB, (n,)) for n in (9, 5)]
    padded = torch.zeros(2, 9, dtype=torch.long)
    mask = torch.zeros(2, 9, dtype=torch.long)
    for i, p in enumerate(prompts):
        padded[i, 9 - len(p) :] = p
        mask[i, 9 - len(p) :] = 1
    kwargs = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    batched = model.generate(padded, attention_mask=mask, **kwargs)[:, 9:]
    for i, p in enumerate(prompts):
        alone = model.generate(p[None], **kwargs)[0, len(p) :]
        assert batched[i].tolist() == alone.tolist()


def test_static_cache_generation_matches_dynamic_and_compiles_without_graph_breaks() -> None:
    from transformers import CompileConfig

    model = hyena_model(seed=4)
    ids = torch.randint(3, VOCAB, (2, 7))
    kwargs = dict(max_new_tokens=6, do_sample=False)
    dynamic = model.generate(ids, **kwargs)
    assert torch.equal(model.generate(ids, cache_implementation="static", **kwargs), dynamic)
    compile_config = CompileConfig(fullgraph=True, backend="eager")
    compile_config._compile_all_devices = True
    got = model.generate(ids, cache_implementation="static", compile_config=compile_config, **kwargs)
    assert model._compiled_call is not None
    assert torch.equal(got, dynamic)
    assert isinstance(PhalanxStaticCache(model.config, 16).layers[3], LinearAttentionLayer)


@pytest.mark.parametrize("variant", VARIANTS)
def test_mixer_compiles_fullgraph_forward_and_backward(variant: str) -> None:
    """The mixer traces with `fullgraph=True` (AOT autograd, so the backward graph too) and matches eager mode."""
    mixer = make_mixer(variant, seed=6).float()
    x = torch.randn(2, 11, 16, requires_grad=True)
    compiled = torch.compile(lambda x: mixer(x)[0], fullgraph=True, backend="aot_eager")
    got = compiled(x)
    expected = mixer(x)[0]
    torch.testing.assert_close(got, expected)
    grads = torch.autograd.grad(got.square().sum(), (x, *mixer.parameters()))
    expected_grads = torch.autograd.grad(expected.square().sum(), (x, *mixer.parameters()))
    for g, e in zip(grads, expected_grads):
        torch.testing.assert_close(g, e)


def test_model_compiles_and_trains() -> None:
    """A Hyena hybrid under torch.compile, on rows with packed sequences, gives eager mode's logits, and the backward
    reaches every filter parameter (the model-level `fullgraph=True` is not available: `sequence_starts` inspects
    position_ids on the host)."""
    model = hyena_model(seed=6).train()
    ids = torch.randint(3, VOCAB, (2, 12))
    packed = torch.tensor([[*range(5), *range(7)], [*range(12)]])  # row 0 holds two sequences
    eager = model(ids, position_ids=packed, labels=ids)
    compiled = torch.compile(model, backend="eager")(ids, position_ids=packed, labels=ids)
    torch.testing.assert_close(compiled.logits, eager.logits)
    compiled.loss.backward()
    for i in (0, 1, 3):
        mixer = model.model.layers[i].mixer
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in mixer.parameters())


def test_save_load_round_trip_keeps_layer_names_and_logits(tmp_path: Path) -> None:
    model = hyena_model(seed=7)
    model.save_pretrained(tmp_path / "a")
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["layer_types"] == [SE, MR, L, LI, F] and config["hyena_mr_decay"] == [0.05, 0.5]
    assert (tmp_path / "a" / "hyena_phalanx.py").exists()
    loaded = PhalanxForCausalLM.from_pretrained(tmp_path / "a").eval()
    ids = torch.randint(3, VOCAB, (2, 10))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_hub_bundle_generates_the_same_tokens_in_a_clean_process(tmp_path: Path) -> None:
    assert_bundle_generates_in_a_clean_process(hyena_model(seed=8), tmp_path, torch.randint(3, VOCAB, (2, 6)))


def test_caches_use_transformers_layer_kinds() -> None:
    """`config.cache_layer_types` names Transformers' layer kinds; `PhalanxCache` builds the layers Transformers maps
    them to; the config itself keeps the Hyena names."""
    config = hyena_config()
    assert config.cache_layer_types == ["conv", "conv", L, L, F] and config.layer_types == [SE, MR, L, LI, F]
    expected = [DYNAMIC_LAYER_TYPE_MAPPING[kind] for kind in config.cache_layer_types]
    assert [type(layer) for layer in PhalanxCache(config=config).layers] == expected
    assert expected[:4] == [LinearAttentionLayer] * 4


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(hyena_se_len=1), "hyena_se_len must be an integer >= 2, got 1"),
        (dict(hyena_featurizer_len=0), "hyena_featurizer_len must be an integer >= 2, got 0"),
        (dict(hyena_mr_len=2.5), r"hyena_mr_len must be an integer >= 2, got 2.5"),
        (dict(hyena_filter_groups=3), "hyena_filter_groups=3 must divide hidden_size=16"),
        (dict(hyena_li_modes=0), "hyena_li_modes must be a positive integer, got 0"),
        (dict(hyena_mr_decay=[0.5, 0.1]), r"hyena_mr_decay must be \[min, max\] with 0 < min <= max"),
        (dict(hyena_mr_decay="ab"), r"hyena_mr_decay must be \[min, max\] with 0 < min <= max, got 'ab'"),
        (dict(layer_types=[SE, "hyena", F, F, F]), r"unknown types \['hyena'\]"),
    ],
)
def test_config_validation_messages(kwargs: dict, message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        hyena_config(**kwargs)


def test_model_card_names_the_hyena_layers() -> None:
    table = layer_table(hyena_config())
    assert "| 0 | Hyena-SE (short explicit filter) | 4 taps |" in table
    assert "| 1 | Hyena-MR (medium regularized filter) | 9 taps, decay rates 0.05-0.5 per tap |" in table
    assert "| 3 | Hyena-LI (long implicit filter) | 3 modes over the whole sequence |" in table


@pytest.mark.gpu
@pytest.mark.parametrize("variant", VARIANTS)
def test_cuda_compiled_static_decode_matches_eager(variant: str) -> None:
    """Static-cache decoding with `generate`'s compiled step (inductor, fullgraph, CUDA graphs) on CUDA gives the
    tokens of the eager step, for each variant next to attention (the 1.3B StripedHyena preset's compiled step once
    failed in inductor on the H200: benchmarks/results/hyena_h200_s14)."""
    from transformers import CompileConfig

    config = hyena_config(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                          layer_types=[variant, F], hyena_se_len=7, hyena_mr_len=128, hyena_li_modes=16,
                          hyena_filter_groups=16)
    torch.manual_seed(0)
    model = PhalanxForCausalLM(config).cuda().eval()
    ids = torch.randint(3, VOCAB, (2, 40), device="cuda")
    kwargs = dict(max_new_tokens=8, do_sample=False, cache_implementation="static")
    eager = model.generate(ids, disable_compile=True, **kwargs)
    compiled = model.generate(ids, compile_config=CompileConfig(fullgraph=True), **kwargs)
    assert model._compiled_call is not None
    assert torch.equal(compiled, eager)
