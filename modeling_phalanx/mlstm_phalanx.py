"""The mLSTM token mixer of xLSTM (Beck et al. 2024; xLSTM-7B, Beck et al. 2025) in plain PyTorch.

Torch-only and flat, so a Hub bundle imports it as a sibling module. Definitions (docs/mlstm.md has them in full):
per head, with gate pre-activations soft-capped (`cap * tanh(x / cap)`), `log i_t = i~_t` (exponential input gate) and
`log f_t = logsigmoid(f~_t)` (or `f~_t` for the exponential forget gate), the stabilised recurrence

    m_t = max(log f_t + m_{t-1}, log i_t)                       m_0 = 0, C_0 = 0, n_0 = 0
    C_t = exp(log f_t + m_{t-1} - m_t) C_{t-1} + exp(log i_t - m_t) k_t v_t^T
    n_t = exp(log f_t + m_{t-1} - m_t) n_{t-1} + exp(log i_t - m_t) k_t
    h_t = (q_t / sqrt(d_qk))^T C_t / (max(|(q_t / sqrt(d_qk))^T n_t|, exp(-m_t)) + eps)

is computed chunkwise in parallel for training and prefill (:func:`mlstm_chunkwise`) and one step at a time for
decoding (:func:`mlstm_step`); both carry the state `(C, n, m)` in float32. A token flagged as a restart starts its
sequence from the zero state (packed sequences, `position_ids` restarts); a masked (padding) token leaves the state
unchanged. The layer around it (:class:`PhalanxMLSTMMixer`) is xLSTM's mLSTM layer: q/k/v, gate and output-gate
projections, per-head layer norm of `h`, `sigmoid(o) * norm(h)`, `out_proj`. On CUDA, multi-token forwards run the
xLSTM authors' chunkwise Triton kernel when the optional `mlstm-kernels` package imports and the installed Triton
compiles it correctly (:func:`mlstm_kernel`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from .configuration_phalanx import PhalanxConfig

# xLSTM-7B's gate bias init: input gate -10, forget gate spread over heads in [3, 6] (sigmoid(3..6) ~ 0.95..0.998).
MLSTM_IGATE_BIAS_INIT = -10.0
MLSTM_FGATE_BIAS_INIT_RANGE = (3.0, 6.0)
MLSTM_FORGET_GATES = ("sigmoid", "exp")

# Cache layout: the mLSTM state in a linear-attention cache layer's `recurrent_states`. Slot 1 holds the tokens
# consumed per row, as for the Phalanx mixer, so the cache's sequence length reads the same from either layer kind.
MLSTM_STATE_C, MLSTM_STATE_POS, MLSTM_STATE_N, MLSTM_STATE_M = 0, 1, 2, 3
MLSTM_NUM_CACHE_STATES = 4

# mlstm-kernels' chunkwise kernel takes gate pre-activations. A token with input gate -1e4 and forget gate +1e4 leaves
# (C, n, m) exactly as it was in float32 (exp(-1e4 - m) = 0, log(sigmoid(1e4)) = 0): padding, inside a row or to the
# kernel's length. Its chunk (128) and lengths: 16, 32, 64 or a multiple of 128; head widths multiples of 16.
MLSTM_KERNEL_NEUTRAL_GATE = 1e4
MLSTM_KERNEL_CHUNK = 128
MLSTM_KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# Compiled by Triton 3.3 or newer, that kernel (mlstm-kernels 2.0.6) computes wrong values: on the H200 with Triton 3.6,
# fp32 outputs off by 36% of the largest output and bf16 dq by 99% of the largest gradient
# (benchmarks/results/hyena_h200/test_mlstm_kernel_triton36.log), while the same call run by Triton 3.6's interpreter
# matches the float64 oracle to 2.4e-4; upstream reports the same (NX-AI/xlstm#107: fixed by Triton 3.2). So the
# mixer takes the kernel only from older Triton releases.
MLSTM_KERNEL_TRITON_BELOW = (3, 3)


def soft_cap(values: torch.Tensor, cap: float | None) -> torch.Tensor:
    """`cap * tanh(values / cap)`, or `values` when `cap` is None (Gemma2 / xLSTM-7B soft-capping)."""
    if cap is None:
        return values
    return cap * torch.tanh(values / cap)


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 for float64 inputs (exactness tests), float32 otherwise."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def mlstm_log_gates(
    igate_preact: torch.Tensor, fgate_preact: torch.Tensor, forget_gate: str, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log i, log f) in float32 (float64 for float64 input) from the (soft-capped) pre-activations; where `mask` is
    False the token is padding: `log i = -inf`, `log f = 0`, so it leaves the state as it was."""
    dtype = compute_dtype(igate_preact)
    log_i = igate_preact.to(dtype)
    log_f = F.logsigmoid(fgate_preact.to(dtype)) if forget_gate == "sigmoid" else fgate_preact.to(dtype)
    if mask is not None:
        log_i = log_i.masked_fill(~mask, float("-inf"))
        log_f = log_f.masked_fill(~mask, 0.0)
    return log_i, log_f


def mlstm_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_i: torch.Tensor,
    log_f: torch.Tensor,
    state: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    restart: torch.Tensor | None = None,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """One recurrent step. q, k: (B, H, Dk); v: (B, H, Dv); log_i, log_f: (B, H) float32; state (C, n, m):
    (B, H, Dk, Dv), (B, H, Dk), (B, H) float32; `restart` (B,) bool zeroes a row's state first. Returns h (B, H, Dv)
    float32 and the new state."""
    c_old, n_old, m_old = state
    if restart is not None:
        keep = (~restart).to(torch.float32)
        c_old, n_old, m_old = c_old * keep[:, None, None, None], n_old * keep[:, None, None], m_old * keep[:, None]
    dtype = compute_dtype(q)
    q = q.to(dtype) * q.shape[-1] ** -0.5
    k, v = k.to(dtype), v.to(dtype)
    m_new = torch.maximum(log_f + m_old, log_i).detach()
    f_act = torch.exp(log_f + m_old - m_new)
    i_act = torch.exp(log_i - m_new)
    c_new = f_act[..., None, None] * c_old + i_act[..., None, None] * (k[..., :, None] * v[..., None, :])
    n_new = f_act[..., None] * n_old + i_act[..., None] * k
    numerator = (q[..., None, :] @ c_new).squeeze(-2)
    qn = (q * n_new).sum(-1)
    denominator = torch.maximum(qn.abs(), torch.exp(-m_new)) + eps
    return numerator / denominator[..., None], (c_new, n_new, m_new)


def mlstm_chunkwise(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_i: torch.Tensor,
    log_f: torch.Tensor,
    restart: torch.Tensor,
    initial_state: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    chunk_size: int = 64,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Chunkwise-parallel mLSTM over a sequence, equal to :func:`mlstm_step` applied token by token.

    q, k: (B, H, T, Dk); v: (B, H, T, Dv); log_i, log_f: (B, H, T) float32 (padding as :func:`mlstm_log_gates` sets
    it); restart: (B, T) bool, True where a token starts its sequence from the zero state; initial_state (C, n, m) as
    in :func:`mlstm_step` (zeros when None). Any T >= 1. Returns h (B, H, T, Dv) float32 and the final state.

    Within a chunk of L tokens, with `b_j` the cumulative log forget gate from the chunk start and `s` ranging over
    the earlier tokens of j's own sequence in the chunk, `m_j = max(inter_j, max_s(b_j - b_s + log i_s))`, where
    `inter_j = b_j + m_chunk` when j continues the state the chunk started with, else `b_j - b_{r-1}` for j's
    sequence starting at r (the restart's `m = 0` decayed to j). Every exponent is taken after subtracting `m_j`.
    The stabiliser is a constant to autograd (in :func:`mlstm_step` too): it changes the function only through the
    `eps * exp(m)` part of the denominator, and Inductor's CPU code (torch 2.13) turned the max's gradient into NaN.
    """
    batch, heads, seqlen, dk = q.shape
    dv = v.shape[-1]
    device = q.device
    nc = -(-seqlen // chunk_size)
    pad = nc * chunk_size - seqlen
    dtype = compute_dtype(q)
    q, k, v = q.to(dtype) * dk**-0.5, k.to(dtype), v.to(dtype)
    log_i, log_f = log_i.to(dtype), log_f.to(dtype)
    if pad:
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
        log_i = F.pad(log_i, (0, pad), value=float("-inf"))
        log_f = F.pad(log_f, (0, pad), value=0.0)
        restart = F.pad(restart, (0, pad), value=False)
    L = chunk_size
    q = q.view(batch, heads, nc, L, dk)
    k = k.view(batch, heads, nc, L, dk)
    v = v.view(batch, heads, nc, L, dv)
    log_i = log_i.view(batch, heads, nc, L)
    b = log_f.view(batch, heads, nc, L).cumsum(-1)  # cumulative log forget gate within each chunk

    # Sequence ids (one more per restart); a token continues the chunk's incoming state iff its id equals the id of
    # the token before the chunk (0 before the first token, so a restart at t = 0 discards `initial_state`).
    seq_id = restart.long().cumsum(-1).view(batch, 1, nc, L)
    incoming_id = torch.cat([seq_id.new_zeros(batch, 1, 1), seq_id[..., :-1, -1]], dim=-1)
    carries = seq_id == incoming_id[..., None]  # (B, 1, nc, L)
    # Start r of each token's sequence inside the chunk (-1 when it started before the chunk) and b_{r-1}.
    local = torch.arange(L, device=device)
    starts = torch.where(restart.view(batch, 1, nc, L), local, -1).cummax(-1).values
    b_before = torch.where(starts > 0, b.gather(-1, (starts - 1).clamp(min=0).expand_as(b)), 0.0)
    phantom = b - b_before  # the restart's m = 0 decayed to j (used where the token does not carry)

    causal = torch.ones(L, L, dtype=torch.bool, device=device).tril()
    same_seq = (seq_id[..., :, None] == seq_id[..., None, :]) & causal  # (B, 1, nc, L, L)
    log_d = torch.where(same_seq, b[..., :, None] - b[..., None, :] + log_i[..., None, :], float("-inf"))
    m_intra = log_d.detach().amax(-1)  # (B, H, nc, L), -inf where no earlier token of the sequence is in the chunk

    # The state each chunk starts with, and the final one, for all chunks at once (no loop over chunks).
    if initial_state is None:
        initial_state = (q.new_zeros(batch, heads, dk, dv), q.new_zeros(batch, heads, dk), q.new_zeros(batch, heads))
    initial_state = tuple(t.to(dtype) for t in initial_state)
    c_all, n_all, m_all = _chunk_states(k, v, b, log_d, m_intra, carries, phantom, initial_state)
    c_start, n_start, m_start = c_all[:, :, :nc], n_all[:, :, :nc], m_all[:, :, :nc]

    # Outputs of all chunks at once: the incoming state's share plus the causal (decay-weighted) attention inside.
    inter = torch.where(carries, b + m_start[..., None], phantom)
    m = torch.maximum(inter, m_intra).detach()  # (B, H, nc, L)
    inter_scale = torch.exp(torch.where(carries, b + m_start[..., None] - m, float("-inf")))
    scores = (q @ k.transpose(-2, -1)) * torch.exp(log_d - m[..., None])
    numerator = (q @ c_start) * inter_scale[..., None] + scores @ v
    qn = (q * n_start[..., None, :]).sum(-1) * inter_scale + scores.sum(-1)
    denominator = torch.maximum(qn.abs(), torch.exp(-m)) + eps
    h = (numerator / denominator[..., None]).view(batch, heads, nc * L, dv)[:, :, :seqlen]
    return h, (c_all[:, :, nc], n_all[:, :, nc], m_all[:, :, nc])


def _chunk_states(
    k: torch.Tensor,
    v: torch.Tensor,
    b: torch.Tensor,
    log_d: torch.Tensor,
    m_intra: torch.Tensor,
    carries: torch.Tensor,
    phantom: torch.Tensor,
    initial_state: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The states (C, n, m) that chunks 0..nc start with, and the final one (index nc), in closed form rather than
    by a loop over chunks (one small launch per chunk dominated training time at 4K tokens).

    With chunk j's end-of-chunk contribution `U_j` (its tokens' k v weighted to the stabiliser `m_{j+1}`) and its
    cumulative log forget gate `g_j` (its `b` at the last token), the loop `C_{j+1} = exp(g_j + m_j - m_{j+1}) C_j
    + U_j` unrolls to `C_n = sum_{j<n} exp(S_n - S_{j+1} + m_{j+1} - m_n) U_j` (+ the initial state's term), `S`
    the prefix sums of `g`, summed only while no chunk in between starts a sequence afresh; the max-plus recurrence
    of `m` unrolls the same way. `S` and the exponents are taken in float64 (float32 on MPS, which has no float64):
    prefix sums of log gates grow with the length, and their differences must stay exact."""
    c0, n0, m0 = initial_state
    batch, heads, nc, L, dk = k.shape
    dtype = k.dtype
    wide = torch.float32 if k.device.type == "mps" else torch.float64
    carry = carries[..., -1]  # (B, 1, nc): chunk j's last token continues the state chunk j started with
    gate = torch.where(carry, b[..., -1], 0.0).to(wide)
    prefix = F.pad(gate.cumsum(-1), (1, 0))  # S_n, n = 0..nc
    fresh = F.pad((~carry).long().cumsum(-1), (1, 0))  # chunks before n that start a sequence afresh
    later = torch.arange(nc + 1, device=k.device)[:, None] > torch.arange(nc, device=k.device)  # n > j
    linked = later & (fresh[..., :, None] == fresh[..., None, 1:])  # no fresh start in chunks j+1 .. n-1
    gap = prefix[..., :, None] - prefix[..., None, 1:]  # S_n - S_{j+1}: (B, H, nc + 1, nc)
    from_initial = fresh == 0
    with torch.no_grad():  # the stabiliser is a constant to autograd (see mlstm_chunkwise)
        m_end = torch.where(carry, m_intra[..., -1], torch.maximum(m_intra[..., -1], phantom[..., -1])).to(wide)
        m_all = torch.maximum(
            torch.where(linked, gap + m_end[..., None, :], float("-inf")).amax(-1),
            torch.where(from_initial, prefix + m0.to(wide)[..., None], float("-inf")),
        )  # (B, H, nc + 1)
    weights = torch.exp(log_d[..., -1, :] - m_all[..., 1:, None].to(dtype))  # (B, H, nc, L)
    k_weighted = k * weights[..., None]
    decay = torch.exp(torch.where(linked, gap + (m_all[..., None, 1:] - m_all[..., :, None]), float("-inf")))
    decay = decay.to(dtype)
    c_all = (decay @ (k_weighted.transpose(-2, -1) @ v).flatten(-2)).view(batch, heads, nc + 1, dk, -1)
    n_all = decay @ k_weighted.sum(-2)
    initial = torch.exp(torch.where(from_initial, prefix + (m0.to(wide)[..., None] - m_all), float("-inf"))).to(dtype)
    c_all = c_all + initial[..., None, None] * c0[:, :, None]
    n_all = n_all + initial[..., None] * n0[:, :, None]
    return c_all, n_all, m_all.to(dtype)


def mlstm_kernel(forget_gate: str, qk_head_dim: int, v_head_dim: int) -> Callable | None:
    """mlstm-kernels' chunkwise Triton kernel (`triton_xl_chunk`, forward and backward, final states) when that
    optional package imports under a Triton release that compiles it correctly (below
    :data:`MLSTM_KERNEL_TRITON_BELOW`) and the layer fits it, else None (the PyTorch path). It computes `log sigmoid`
    of the forget pre-activation itself, so the exponential forget gate stays on PyTorch; its tensor-core tiles need
    head widths that are multiples of 16."""
    if forget_gate != "sigmoid" or qk_head_dim % 16 or v_head_dim % 16:
        return None
    try:
        import triton
        from mlstm_kernels.torch.chunkwise.triton_xl_chunk import mlstm_chunkwise__xl_chunk
    except ImportError:  # no mlstm-kernels, or no Triton
        return None
    release = tuple(int(part) for part in re.findall(r"\d+", triton.__version__)[:2])
    return mlstm_chunkwise__xl_chunk if release < MLSTM_KERNEL_TRITON_BELOW else None


def mlstm_kernel_length(seqlen: int) -> int:
    """The length mlstm-kernels' chunkwise kernel accepts for `seqlen` tokens: a power of two from 16 below its chunk
    (128), else the next multiple of the chunk."""
    if seqlen < MLSTM_KERNEL_CHUNK:
        return max(16, 1 << (seqlen - 1).bit_length())
    return -(-seqlen // MLSTM_KERNEL_CHUNK) * MLSTM_KERNEL_CHUNK


def mlstm_kernel_chunkwise(
    kernel: Callable,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    igate_preact: torch.Tensor,
    fgate_preact: torch.Tensor,
    mask: torch.Tensor | None,
    restart: torch.Tensor | None,
    initial_state: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None:
    """:func:`mlstm_chunkwise` through `kernel` (:func:`mlstm_kernel`), or None where the kernel cannot express the
    call and the caller runs the PyTorch path: a restart after a row's first token (packed sequences: the kernel has
    no per-token reset), or a dtype it lacks (float64).

    q, k, v: (B, H, T, D) in the kernel's dtype; gate pre-activations (B, H, T) (soft-capped, forget gate sigmoid);
    `mask` (B, 1, T) bool or None; `restart` (B, T) bool or None (None: no restarts, no check). Padding anywhere and
    the pad to the kernel's length are neutral tokens (:data:`MLSTM_KERNEL_NEUTRAL_GATE`); a row that restarts at or
    before its first token starts from the zero state (its `initial_state` row is zeroed). The check of the restarts
    reads one flag from the GPU. Returns h (B, H, T, Dv) in q's dtype and the final (C, n, m) in float32.
    """
    if q.dtype not in MLSTM_KERNEL_DTYPES:
        return None
    batch, heads, seqlen, _ = q.shape
    if restart is not None:
        position = torch.arange(seqlen, device=q.device)
        real = mask[:, 0] if mask is not None else torch.ones_like(restart)
        first_real = torch.where(real, position, seqlen).amin(-1, keepdim=True)
        if bool((restart & (position > first_real)).any()):
            return None
        if initial_state is not None:
            keep = (~restart.any(-1)).to(torch.float32)
            initial_state = tuple(t * keep.view(-1, *[1] * (t.dim() - 1)) for t in initial_state)
    i_pre, f_pre = igate_preact.float(), fgate_preact.float()
    if mask is not None:
        i_pre = i_pre.masked_fill(~mask, -MLSTM_KERNEL_NEUTRAL_GATE)
        f_pre = f_pre.masked_fill(~mask, MLSTM_KERNEL_NEUTRAL_GATE)
    pad = mlstm_kernel_length(seqlen) - seqlen
    if pad:
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
        i_pre = F.pad(i_pre, (0, pad), value=-MLSTM_KERNEL_NEUTRAL_GATE)
        f_pre = F.pad(f_pre, (0, pad), value=MLSTM_KERNEL_NEUTRAL_GATE)
    c0, n0, m0 = (None, None, None) if initial_state is None else initial_state
    h, (c, n, m) = kernel(
        q, k, v, i_pre, f_pre, c0, n0, None if m0 is None else m0[..., None], return_last_states=True, eps=eps,
        chunk_size=MLSTM_KERNEL_CHUNK, autocast_kernel_dtype=q.dtype,
    )
    return h[:, :, :seqlen], (c, n, m.view(batch, heads))


class MLSTMGateProjection(nn.Linear):
    """Input- or forget-gate pre-activation (one per head); its type marks where xLSTM's gate init applies."""

    def __init__(self, in_features: int, num_heads: int, kind: str) -> None:
        super().__init__(in_features, num_heads, bias=True)
        self.kind = kind

    def initial_bias(self, forget_gate: str) -> torch.Tensor:
        """xLSTM-7B's bias: -10 for the input gate; forget gates spread over [3, 6] in sigmoid terms (the exponential
        forget gate gets `logsigmoid` of those, so both start with the same forgetting)."""
        if self.kind == "igate":
            return torch.full((self.out_features,), MLSTM_IGATE_BIAS_INIT, dtype=torch.float64)
        bias = torch.linspace(*MLSTM_FGATE_BIAS_INIT_RANGE, self.out_features, dtype=torch.float64)
        return bias if forget_gate == "sigmoid" else F.logsigmoid(bias)


class MLSTMMultiHeadLayerNorm(nn.Module):
    """Layer norm of each head's `h` over its channels (in fp32 or wider, no bias), then one weight per channel of all
    heads.

    Adapted from `transformers.models.xlstm.modeling_xlstm.xLSTMMultiHeadLayerNorm`.
    """

    def __init__(self, num_heads: int, head_dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_heads * head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, T, H, D) -> (B, T, H * D) in x's dtype."""
        input_dtype = x.dtype
        x = x.to(compute_dtype(x))
        x = (x - x.mean(-1, keepdim=True)) * torch.rsqrt(x.var(-1, keepdim=True, unbiased=False) + self.eps)
        return self.weight * x.to(input_dtype).flatten(-2)

    def extra_repr(self) -> str:
        return f"heads={self.num_heads}, head_dim={self.head_dim}, eps={self.eps}"


class PhalanxMLSTMMixer(nn.Module):
    """xLSTM's mLSTM layer as a Phalanx token mixer: `out_proj(sigmoid(o) * norm(mLSTM(q, k, v, i, f)))`.

    Projections keep the names of `transformers.models.xlstm.modeling_xlstm.xLSTMLayer` (weight_mode="single"), so
    its weights load by name; the cache keeps `(C, n, m)` and the tokens consumed in a linear-attention cache layer.
    """

    def __init__(self, config: PhalanxConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.mlstm_num_heads
        self.qk_dim = int(config.hidden_size * config.mlstm_qk_dim_factor)
        self.v_dim = int(config.hidden_size * config.mlstm_v_dim_factor)
        self.qk_head_dim = self.qk_dim // self.num_heads
        self.v_head_dim = self.v_dim // self.num_heads
        self.gate_soft_cap = config.mlstm_gate_soft_cap
        self.forget_gate = config.mlstm_forget_gate
        self.chunk_size = config.mlstm_chunk_size
        self.eps = config.mlstm_eps
        self.kernel = mlstm_kernel(self.forget_gate, self.qk_head_dim, self.v_head_dim)
        hidden = config.hidden_size
        self.q = nn.Linear(hidden, self.qk_dim, bias=False)
        self.k = nn.Linear(hidden, self.qk_dim, bias=False)
        self.v = nn.Linear(hidden, self.v_dim, bias=False)
        self.ogate_preact = nn.Linear(hidden, self.v_dim, bias=False)
        self.igate_preact = MLSTMGateProjection(hidden, self.num_heads, "igate")
        self.fgate_preact = MLSTMGateProjection(hidden, self.num_heads, "fgate")
        self.multihead_norm = MLSTMMultiHeadLayerNorm(self.num_heads, self.v_head_dim, eps=config.rms_norm_eps)
        self.out_proj = nn.Linear(self.v_dim, hidden, bias=False)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache=None,
        cu_seqlens: torch.Tensor | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, None]:
        """`attention_mask`: 2D padding mask (1 = token) or None; `position_ids` (B, T): a 0 restarts the state (packed
        sequences; a row continuing the cache starts above 0); `cu_seqlens` (of the batch flattened to one row) marks
        restarts too. Without either, each row continues the cache, or starts from zero."""
        batch, seqlen, _ = hidden_states.shape
        heads = self.num_heads
        q = self.q(hidden_states).view(batch, seqlen, heads, self.qk_head_dim).transpose(1, 2)
        k = self.k(hidden_states).view(batch, seqlen, heads, self.qk_head_dim).transpose(1, 2)
        v = self.v(hidden_states).view(batch, seqlen, heads, self.v_head_dim).transpose(1, 2)
        o = self.ogate_preact(hidden_states)
        i_pre = soft_cap(self.igate_preact(hidden_states), self.gate_soft_cap).transpose(1, 2)
        f_pre = soft_cap(self.fgate_preact(hidden_states), self.gate_soft_cap).transpose(1, 2)
        mask = None if attention_mask is None else attention_mask[:, None, -seqlen:].bool()
        log_i, log_f = mlstm_log_gates(i_pre, f_pre, self.forget_gate, mask)
        restart = self._restarts(batch, seqlen, position_ids, cu_seqlens, hidden_states.device)
        # Restarts can only come from positions or cu_seqlens; without either the kernel skips its check.
        kernel_restart = None if position_ids is None and cu_seqlens is None else restart

        cache_layer = None if cache is None else cache.layers[self.layer_idx]
        state = None
        if cache_layer is not None and cache_layer.is_recurrent_states_initialized[MLSTM_STATE_C]:
            state = tuple(cache_layer.recurrent_states[i] for i in (MLSTM_STATE_C, MLSTM_STATE_N, MLSTM_STATE_M))
        if state is not None and seqlen == 1:
            first = (q[:, :, 0], k[:, :, 0], v[:, :, 0], log_i[..., 0], log_f[..., 0])
            h, state = mlstm_step(*first, state, restart[:, 0], self.eps)
            h = h[:, :, None]
        else:
            result = None
            # Eager CUDA only: under torch.compile the PyTorch path compiles into the graph (the kernel's launch
            # wrapper and its restart check would break it).
            if self.kernel is not None and hidden_states.is_cuda and not torch.compiler.is_compiling():
                gates = (i_pre, f_pre, mask, kernel_restart)
                result = mlstm_kernel_chunkwise(self.kernel, q, k, v, *gates, state, self.eps)
            if result is None:  # no kernel, or one it cannot express (see mlstm_kernel_chunkwise)
                result = mlstm_chunkwise(q, k, v, log_i, log_f, restart, state, self.chunk_size, self.eps)
            h, state = result
        if cache_layer is not None:
            self._update_cache(cache, state, restart, position_ids, seqlen)

        h = h.transpose(1, 2).to(hidden_states.dtype)  # (B, T, H, Dv)
        h = torch.sigmoid(o) * self.multihead_norm(h)
        return self.out_proj(h), None

    def _restarts(
        self,
        batch: int,
        seqlen: int,
        position_ids: torch.Tensor | None,
        cu_seqlens: torch.Tensor | None,
        device: torch.device,
    ) -> torch.Tensor:
        """(B, T) bool: tokens that start their sequence from the zero state."""
        if position_ids is not None:
            return (position_ids == 0).expand(batch, seqlen)
        restart = torch.zeros(batch * seqlen, dtype=torch.bool, device=device)
        if cu_seqlens is not None:
            restart[cu_seqlens[:-1].long()] = True
        return restart.view(batch, seqlen)

    def _update_cache(
        self, cache, state: tuple, restart: torch.Tensor, position_ids: torch.Tensor | None, seqlen: int
    ) -> None:
        """Store (C, n, m) and the tokens each row has consumed: one past its last position, or without positions,
        the tokens since its last restart (added to the cached count when it has none)."""
        if position_ids is not None:
            pos = position_ids[:, -1].long().expand(restart.shape[0]) + 1
        else:
            cache_layer = cache.layers[self.layer_idx]
            previous = torch.zeros(restart.shape[0], dtype=torch.long, device=restart.device)
            if cache_layer.is_recurrent_states_initialized[MLSTM_STATE_POS]:
                previous = cache_layer.recurrent_states[MLSTM_STATE_POS]
            last_restart = torch.where(restart, torch.arange(seqlen, device=restart.device), -1).amax(-1)
            pos = torch.where(last_restart >= 0, seqlen - last_restart, previous + seqlen)
        for index, tensor in zip((MLSTM_STATE_C, MLSTM_STATE_N, MLSTM_STATE_M, MLSTM_STATE_POS), (*state, pos)):
            cache.update_recurrent_state(tensor, self.layer_idx, state_idx=index)


__all__ = ["PhalanxMLSTMMixer", "mlstm_chunkwise", "mlstm_kernel", "mlstm_kernel_chunkwise", "mlstm_step"]
