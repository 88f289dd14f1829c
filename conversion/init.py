"""Warm start of a Phalanx mixer from the attention layer it replaces (conversion.md section 3).

The mixer's in-projection output is `[decay (H) | input gate (Hg*D) | readout (Hg*D) | values (H*D)]`
(`modeling_phalanx.swr_torch.phalanx_projection_sizes`) and its output is `out_proj(h * c + v)`.
The converted config sizes the mixer so that H*D equals the attention's query width, which lets
`v_proj` (repeated over the query groups of GQA) and `o_proj` carry over exactly.

Schemes (`--init`):

- ``vo``: values and output from `v_proj`/`o_proj`; input gate with zero weights and bias +2
  (b = 0.88); readout with zero weights and a small constant bias, so the fresh layer computes
  `o_proj(v + 0.1 * h)`: attention to the token itself plus a little decayed local history.
- ``qkvo``: as ``vo``, plus input gate from `k_proj` (repeated over groups, bias +2) and readout
  from `q_proj / sqrt(head_dim)` (source biases carried).
- ``avg``: as ``vo``, but with a per-head readout bias `c = K (1 - a) / b` and `out_proj = o_proj / (K + 1)`
  (K = 3), so the fresh layer computes `o_proj((v + K * mean_a(v)) / (K + 1))` where `mean_a` is the
  decayed average `(1 - a) * sum_k a^k v_{t-k}` of the window: like local attention, most of the weight
  on recent tokens rather than on the token itself (the ``vo`` start is dominated by the token itself,
  whose output norm is about twice the attention's).
- ``random``: the model's own fresh initialisation (baseline for measuring the warm start).

The decay projection always keeps the model's own initialisation (zero weights, bias = logit(a) with a
spread over heads), which is new in every scheme.
"""

from __future__ import annotations

import torch

from modeling_phalanx.swr_torch import phalanx_projection_sizes

INIT_SCHEMES = ("vo", "qkvo", "avg", "random")
DEFAULT_INIT = "avg"  # best zero-shot, after stage 1 and after stage 2 (experiments/conversion_demo/RESULTS.md)
GATE_BIAS = 2.0
READOUT_BIAS = 0.1
AVG_WEIGHT = 3.0  # K of the avg scheme


def _repeat_kv(w: torch.Tensor, num_kv_heads: int, groups: int) -> torch.Tensor:
    """Rows of a k/v projection (kv_heads*d, ...) repeated so that query head j reads kv head j // groups."""
    rows = w.shape[0] // num_kv_heads
    return w.reshape(num_kv_heads, rows, *w.shape[1:]).repeat_interleave(groups, dim=0).reshape(-1, *w.shape[1:])


def warm_start_mixer(
    fresh: dict[str, torch.Tensor],
    attention: dict[str, torch.Tensor],
    *,
    scheme: str,
    num_attention_heads: int,
    num_key_value_heads: int,
    head_dim: int,
    phalanx_num_heads: int,
    phalanx_head_dim: int,
    phalanx_num_gate_groups: int,
) -> dict[str, torch.Tensor]:
    """Mixer tensors (`in_proj.*`, `out_proj.*`) for one converted layer.

    `fresh` is a freshly initialised mixer's state dict (fp32), `attention` the source layer's
    `{q,k,v,o}_proj.{weight,bias}` tensors. Returns new fp32 tensors; neither input is modified.
    """
    if scheme not in INIT_SCHEMES:
        raise ValueError(f"unknown init scheme {scheme!r}; choose one of {', '.join(INIT_SCHEMES)}")
    out = {k: v.detach().clone().float() for k, v in fresh.items()}
    if scheme == "random":
        return out
    H, D, Hg = phalanx_num_heads, phalanx_head_dim, phalanx_num_gate_groups
    width = num_attention_heads * head_dim
    if H * D != width:
        raise ValueError(f"mixer width {H}*{D} must equal the attention query width {width} for a warm start")
    groups = num_attention_heads // num_key_value_heads
    n_decay, n_gate, n_read, n_val = phalanx_projection_sizes(H, D, Hg)
    w, b = out["in_proj.weight"], out["in_proj.bias"]
    gate = slice(n_decay, n_decay + n_gate)
    read = slice(gate.stop, gate.stop + n_read)
    vals = slice(read.stop, read.stop + n_val)

    def attn(name: str) -> torch.Tensor | None:
        t = attention.get(name)
        return None if t is None else t.float()

    w[vals] = _repeat_kv(attn("v_proj.weight"), num_key_value_heads, groups)
    v_bias = attn("v_proj.bias")
    b[vals] = 0.0 if v_bias is None else _repeat_kv(v_bias, num_key_value_heads, groups)
    out["out_proj.weight"] = attn("o_proj.weight").clone()
    if "out_proj.bias" in out:
        o_bias = attn("o_proj.bias")
        out["out_proj.bias"] = torch.zeros_like(out["out_proj.bias"]) if o_bias is None else o_bias.clone()

    if scheme in ("qkvo", "avg") and Hg != H:
        raise ValueError(
            f"the {scheme} init needs one gate group per head (phalanx_num_gate_groups = phalanx_num_heads)"
        )
    if scheme == "qkvo":
        k_bias, q_bias = attn("k_proj.bias"), attn("q_proj.bias")
        w[gate] = _repeat_kv(attn("k_proj.weight"), num_key_value_heads, groups)
        b[gate] = GATE_BIAS + (0.0 if k_bias is None else _repeat_kv(k_bias, num_key_value_heads, groups))
        w[read] = attn("q_proj.weight") * head_dim**-0.5
        b[read] = 0.0 if q_bias is None else q_bias * head_dim**-0.5
    else:
        w[gate], b[gate] = 0.0, GATE_BIAS
        w[read], b[read] = 0.0, READOUT_BIAS
    if scheme == "avg":
        decay = torch.sigmoid(b[:n_decay])  # per-head a from the model's own decay initialisation
        gate_value = torch.sigmoid(torch.tensor(GATE_BIAS))
        b[read] = (AVG_WEIGHT * (1 - decay) / gate_value).repeat_interleave(D)
        out["out_proj.weight"] /= AVG_WEIGHT + 1
    return out
