"""A decode loop without per-token host synchronisation: `fast_generate`, and `generate`, the `custom_generate` entry.

`generate(max_new_tokens=...)` spends most of a batch-1 step on host work (logits processors, stopping criteria
that read the device, growing masks and kwargs). `fast_generate` prefills through the model with the static cache
`generate(cache_implementation="static")` builds, then runs each decoding step (forward, argmax or sampling, EOS
bookkeeping, writing the token into a preallocated buffer) on fixed tensors updated in place; on CUDA the step is
compiled with `mode="reduce-overhead"` (CUDA graphs), and the host reads the device only every `check_every` steps
(end of sequence, streaming). It drives any Transformers causal LM whose forward takes `position_ids`,
`logits_to_keep` and a static cache (Phalanx models and, for comparison, `LlamaForCausalLM`).

Torch only, no sibling imports: `phalanx export` copies this file next to `custom_generate/generate.py` too, whose
`generate` forwards to the `generate` below, as Transformers' `custom_generate` mechanism expects.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

# `generate` arguments the fast loop reads; any other non-default generation setting falls back to `generate`.
FAST_CONFIG_FIELDS = frozenset(
    {"max_new_tokens", "max_length", "do_sample", "temperature", "top_k", "eos_token_id", "pad_token_id",
     "bos_token_id", "cache_implementation", "use_cache", "compile_config", "disable_compile", "transformers_version"}
)
# Arguments `generate` hands a `custom_generate` function besides `model`, which must be unset for the fast loop.
UNSUPPORTED_ARGUMENTS = (
    "logits_processor", "stopping_criteria", "prefix_allowed_tokens_fn", "synced_gpus",
    "assistant_model", "negative_prompt_ids", "negative_prompt_attention_mask",
)


def static_cache(model: torch.nn.Module, batch_size: int, max_cache_len: int) -> tuple[str, Any]:
    """The cache `model.generate(cache_implementation="static")` would build for `batch_size` rows of `max_cache_len`
    tokens (the model's own `_prepare_cache_for_generation`: `PhalanxStaticCache` for Phalanx models), and the
    keyword `generate` passes it to `forward` under on the installed release (`cache` from Transformers 5.24 on,
    `past_key_values` before)."""
    generation_config = type(model.generation_config)(
        cache_implementation="static", num_beams=1, num_return_sequences=1
    )
    model_kwargs: dict[str, Any] = {}
    model._prepare_cache_for_generation(generation_config, model_kwargs, None, batch_size, max_cache_len)
    ((name, cache),) = model_kwargs.items()
    return name, cache


def pick_tokens(logits: torch.Tensor, do_sample: bool, temperature: float, top_k: int | None) -> torch.Tensor:
    """Next token per row from last-position `logits` (batch, vocab): argmax, or a sample at `temperature` from the
    `top_k` most likely tokens, drawn with torch ops only (exponential race, no `multinomial` host work)."""
    if not do_sample:
        return logits.argmax(dim=-1)
    scores = logits.float() / temperature
    if top_k is not None and top_k < scores.shape[-1]:
        kth = torch.topk(scores, top_k, dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return (probs / torch.empty_like(probs).exponential_(1)).argmax(dim=-1)


def decode_step(
    model: torch.nn.Module,
    cache: Any,
    cache_name: str,
    tokens: torch.Tensor,
    position: torch.Tensor,
    padding: torch.Tensor,
    attention_mask: torch.Tensor | None,
    sequences: torch.Tensor,
    finished: torch.Tensor,
    eos: torch.Tensor | None,
    pad_token_id: int,
    do_sample: bool,
    temperature: float,
    top_k: int | None,
) -> None:
    """One decoding step on fixed tensors: forward `tokens` (batch, 1) at cache slot `position` (1,), pick the next
    tokens, pad rows already finished (as `generate` does), mark rows that emit EOS, write the tokens into
    `sequences` at `position + 1`, and advance `tokens` and `position` in place. A left-padded row's position id
    is its slot minus its `padding` (batch, 1); `attention_mask` (batch, cache length) is the prompt's mask followed
    by ones, or None without padding."""
    logits = model(
        input_ids=tokens, attention_mask=attention_mask, position_ids=position.view(1, 1) - padding, use_cache=True,
        logits_to_keep=1, **{cache_name: cache},
    ).logits[:, -1]
    next_tokens = pick_tokens(logits, do_sample, temperature, top_k)
    if eos is not None:
        next_tokens = torch.where(finished, pad_token_id, next_tokens)
        finished.logical_or_(torch.isin(next_tokens, eos))
    sequences.index_copy_(1, position + 1, next_tokens[:, None])
    tokens.copy_(next_tokens[:, None])
    position.add_(1)


_COMPILED_STEP: dict[str, Any] = {}


def compiled_step(model: torch.nn.Module) -> Any:
    """`decode_step` compiled with CUDA graphs (`mode="reduce-overhead"`, `fullgraph=True`), once per process and
    parameter dtype and device. `model.to(dtype)` swaps only the parameters' `.data`, and dynamo, which skips tensor
    guards on parameters whose module dicts are unchanged, then ran the graph traced for the old dtype (seen on the
    H200: fp32 activations into a bf16 matmul); so a new dtype or device first drops `decode_step`'s compiled code."""
    weight = next(model.parameters())
    key = (weight.dtype, weight.device)
    if _COMPILED_STEP.get("key") != key:
        if "key" in _COMPILED_STEP:
            torch._C._dynamo.eval_frame.reset_code(decode_step.__code__)
        _COMPILED_STEP.update(key=key, step=torch.compile(decode_step, mode="reduce-overhead", fullgraph=True))
    return _COMPILED_STEP["step"]


def check_fast_arguments(
    input_ids: Any, max_new_tokens: Any, do_sample: bool, temperature: Any, top_k: Any, check_every: Any,
    attention_mask: Any,
) -> None:
    """One-line errors for arguments `fast_generate` cannot run."""
    if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2 or input_ids.shape[1] == 0:
        raise ValueError("input_ids must be a (batch, length) tensor with at least one token")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    if do_sample and not (isinstance(temperature, (int, float)) and temperature > 0):
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    if do_sample and top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be None or an int >= 1, got {top_k!r}")
    if isinstance(check_every, bool) or not isinstance(check_every, int) or check_every < 1:
        raise ValueError(f"check_every must be an int >= 1, got {check_every!r}")
    if attention_mask is not None:
        if not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask must be a tensor shaped like input_ids {tuple(input_ids.shape)}")
        if not bool((attention_mask[:, 1:] >= attention_mask[:, :-1]).all()):
            raise ValueError("attention_mask must be left-padded (zeros only before each row's tokens)")


@torch.no_grad()
def fast_generate(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    max_new_tokens: int = 20,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    eos_token_id: int | list[int] | None = None,
    pad_token_id: int | None = None,
    compile: bool | None = None,
    check_every: int = 16,
    streamer: Any = None,
) -> torch.Tensor:
    """Prompt plus up to `max_new_tokens` tokens per row, as `model.generate(cache_implementation="static")` returns.

    `eos_token_id=None` decodes `max_new_tokens` tokens (pass `model.generation_config.eos_token_id` to stop at EOS,
    as `generate` does by default). Greedy decoding gives `generate`'s tokens; sampling (temperature, top-k) draws
    from the same distribution with its own use of the random generator, so its tokens differ from `generate`'s
    for a seed. Rows stop at their own EOS and are padded with `pad_token_id` (default: the first EOS id) after it;
    the host checks for EOS (and feeds `streamer`) every `check_every` steps, so up to `check_every - 1` steps past
    the last EOS are computed and dropped (the first check follows the prefill, so a streamer gets the first token
    at once). `compile=None` compiles the step on CUDA only. A left-padded batch takes its `attention_mask` as
    `generate` does (positions count each row's real tokens; the step's mask is the prompt's mask followed by ones,
    fixed at the cache's length); right padding is refused (ValueError).
    """
    check_fast_arguments(input_ids, max_new_tokens, do_sample, temperature, top_k, check_every, attention_mask)
    device = input_ids.device
    batch, prompt_len = input_ids.shape
    total = prompt_len + max_new_tokens
    eos_ids = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id or [])
    eos = torch.tensor(eos_ids, dtype=torch.long, device=device) if eos_ids else None
    pad = pad_token_id if pad_token_id is not None else (eos_ids[0] if eos_ids else 0)
    compile = device.type == "cuda" if compile is None else compile

    cache_name, cache = static_cache(model, batch, total - 1)  # as `generate` sizes it: the last token is never fed back
    sequences = torch.full((batch, total), pad, dtype=torch.long, device=device)
    sequences[:, :prompt_len] = input_ids
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    padding = torch.zeros(batch, 1, dtype=torch.long, device=device)
    step_mask = None
    if attention_mask is not None:
        attention_mask = attention_mask.to(device)
        padding = prompt_len - attention_mask.long().sum(dim=1, keepdim=True)
        step_mask = torch.ones(batch, total - 1, dtype=attention_mask.dtype, device=device)
        step_mask[:, :prompt_len] = attention_mask
    if streamer is not None:
        streamer.put(input_ids.cpu())

    logits = model(
        input_ids=input_ids, attention_mask=attention_mask, use_cache=True, logits_to_keep=1, **{cache_name: cache}
    ).logits[:, -1]
    first = pick_tokens(logits, do_sample, temperature, top_k)
    if eos is not None:
        finished |= torch.isin(first, eos)
    sequences[:, prompt_len] = first
    tokens = first[:, None].clone()
    position = torch.tensor([prompt_len], dtype=torch.long, device=device)

    step = decode_step
    if compile:
        step = compiled_step(model)
        for buffer in (tokens, position, padding, sequences, finished, *([] if step_mask is None else [step_mask])):
            torch._dynamo.mark_static_address(buffer)
    streamed = prompt_len
    done = prompt_len + 1  # tokens written so far
    while True:
        if done == total or (done - prompt_len - 1) % check_every == 0:
            if eos is not None and bool(finished.all()):
                break
            if streamer is not None:
                streamer.put(sequences[:, streamed:done].cpu())
                streamed = done
            if done == total:
                break
        if compile and device.type == "cuda":
            torch.compiler.cudagraph_mark_step_begin()
        step(
            model, cache, cache_name, tokens, position, padding, step_mask, sequences, finished, eos, pad, do_sample,
            temperature, top_k,
        )
        done += 1

    end = done
    if eos is not None and bool(finished.all()):
        generated = sequences[:, prompt_len:done]
        first_eos = torch.isin(generated, eos).int().argmax(dim=1)  # every row has one
        end = prompt_len + int(first_eos.max()) + 1
    if streamer is not None:
        if end > streamed:
            streamer.put(sequences[:, streamed:end].cpu())
        streamer.end()
    return sequences[:, :end].clone()


def generate(model: torch.nn.Module, inputs: torch.Tensor | None = None, **kwargs: Any) -> Any:
    """The `custom_generate` entry: `model.generate(..., custom_generate=FOLDER, trust_remote_code=True)` calls this
    with `generate`'s arguments. Greedy or temperature/top-k sampling over a batch without right padding runs
    `fast_generate`; anything else (beam search, logits processors, dict outputs, other sampling settings) runs the
    model's standard `generate` with the same arguments, since Transformers also routes a folder's plain
    `generate` here once it is loaded with `trust_remote_code=True`. On CUDA the step is compiled (CUDA graphs)
    unless `disable_compile=True`, the switch Transformers' own `generate` honours for the static cache."""
    arguments = dict(kwargs)
    generation_config = copy.deepcopy(arguments.pop("generation_config", None) or model.generation_config)
    input_ids = inputs if inputs is not None else arguments.pop("input_ids", None)
    attention_mask = arguments.pop("attention_mask", None)
    streamer = arguments.pop("streamer", None)
    unset = all(arguments.pop(name, None) in (None, False) for name in UNSUPPORTED_ARGUMENTS)
    model_kwargs = generation_config.update(**arguments)
    defaults = type(generation_config)._get_default_generation_params()
    other_settings = {
        name for name, value in generation_config.to_diff_dict().items()
        if name not in FAST_CONFIG_FIELDS and not name.startswith("_") and value not in (None, False)
        and value != defaults.get(name)
    }
    right_padded = isinstance(attention_mask, torch.Tensor) and not bool(
        (attention_mask[:, 1:] >= attention_mask[:, :-1]).all()
    )
    fast = (
        unset and not model_kwargs and not other_settings and not right_padded and isinstance(input_ids, torch.Tensor)
        and input_ids.ndim == 2 and generation_config.cache_implementation in (None, "static")
        and generation_config.use_cache is not False
    )
    if not fast:
        return type(model).generate(model, inputs, **kwargs)
    prompt_len = input_ids.shape[1]
    max_new_tokens = generation_config.max_new_tokens
    if max_new_tokens is None:
        max_new_tokens = (generation_config.max_length or defaults["max_length"]) - prompt_len
    top_k = generation_config.top_k if generation_config.top_k is not None else defaults["top_k"]
    return fast_generate(
        model, input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
        do_sample=bool(generation_config.do_sample), temperature=generation_config.temperature or 1.0,
        top_k=top_k or None, eos_token_id=generation_config.eos_token_id,
        pad_token_id=generation_config.pad_token_id, streamer=streamer,
        compile=False if generation_config.disable_compile else None,
    )
