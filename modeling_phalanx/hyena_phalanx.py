"""Hyena operators of StripedHyena 2 (arXiv 2503.01868) as Phalanx token mixers, in plain PyTorch.

One mixer class covers the three operators; they differ only in the inner causal filter `h` (docs/hyena.md):

    q, k, v = split(featurizer * in_proj(x))     depthwise causal FIR of `hyena_featurizer_len` taps per channel
    y       = out_proj(q * (h * (k * v)))         `*` between h and (k * v): causal convolution over time

    Hyena-SE  h = explicit FIR of `hyena_se_len` taps
    Hyena-MR  h_k = w_k * exp(-alpha_g * k), k < `hyena_mr_len`, alpha_g fixed per filter group (the regulariser)
    Hyena-LI  h_k = sum_n R_n * lambda_n ** k over the whole sequence, lambda_n = exp(-exp(p_n)) real in (0, 1),
              plus a direct term D (h_0 is then sum_n R_n + D); applied with an FFT convolution (directly for
              short chunks such as decoding steps)

Filters are shared by groups of `hidden_size // hyena_filter_groups` consecutive channels. Decoding keeps, per layer,
the last inputs of each FIR (featurizer: `(B, 3 * hidden, Kf - 1)`; SE / MR filter: `(B, hidden, K - 1)`) and, for
LI, the modal state `x_n` (`(B, hidden, modes)`, float32) with `x_n <- lambda_n * x_n + z_t` and
`y_t = sum_n R_n x_n + D z_t`, so a step costs O(modes), not a convolution over the prefix. This file imports only
torch and sibling modules, so a Hub bundle runs it anywhere.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.cache_utils import Cache, LinearAttentionCacheLayerMixin

from .configuration_phalanx import HYENA_LI, HYENA_MR, HYENA_SE, PhalanxConfig
from .kernel_choice import kernel_module


class HyenaState(NamedTuple):
    """What a Hyena layer needs to continue its sequences (one row per sequence).

    featurizer: (N, 3 * hidden, Kf - 1) the last inputs of the featurizer convolutions (dtype of the projections).
    filter:     SE / MR: (N, hidden, K - 1) the last inputs `k * v` of the filter; LI: (N, hidden, modes) the
                float32 modal state.
    """

    featurizer: torch.Tensor
    filter: torch.Tensor


def causal_fir(x: torch.Tensor, taps: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """`y_t = sum_k taps[c, k] * x[c, t - k]` over x (N, C, T) with taps (C, K); `context` (N, C, K - 1) holds the
    inputs before `x[..., 0]` (zeros for a sequence that starts here)."""
    full = torch.cat([context.to(x.dtype), x], dim=-1)
    return F.conv1d(full, taps.flip(-1).unsqueeze(1).to(x.dtype), groups=x.shape[1])


def last_inputs(context: torch.Tensor, x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """The `context.shape[-1]` inputs that end with token `lengths[i] - 1` of row i of x (N, C, T), reaching into
    `context` when a row is shorter: the window a continuation of that row needs. `lengths` None means all T."""
    width = context.shape[-1]
    full = torch.cat([context.to(x.dtype), x], dim=-1)
    if lengths is None:
        return full[..., full.shape[-1] - width :]
    index = lengths[:, None] + torch.arange(width, device=x.device)  # token j of x is column j + width of `full`
    return full.gather(-1, index[:, None, :].expand(-1, x.shape[1], -1))


def modal_filter(log_rates: torch.Tensor, residues: torch.Tensor, length: int) -> torch.Tensor:
    """`h_k = sum_n R_n exp(-exp(p_n) k)` for k < length: (G, length) from log_rates p and residues R (G, modes)."""
    k = torch.arange(length, device=log_rates.device, dtype=log_rates.dtype)
    return (residues[..., None] * torch.exp(-torch.exp(log_rates)[..., None] * k)).sum(-2)


DIRECT_CONV_MAX_LEN = 32  # Hyena-LI chunks up to this many tokens (decoding steps) convolve directly, not by FFT


def long_causal_conv(z: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Causal convolution `y_t = sum_{s <= t} h[g, t - s] z[.., g, :, s]` of z (N, G, Dg, T) with h (G, T): by FFT
    (zero-padded to 2T, so nothing wraps around), or, for at most `DIRECT_CONV_MAX_LEN` tokens, as a product with
    the (G, T, T) Toeplitz matrix of h, which keeps complex numbers (which inductor cannot generate code for) out
    of a compiled decoding step."""
    seqlen = z.shape[-1]
    if seqlen <= DIRECT_CONV_MAX_LEN:
        steps = torch.arange(seqlen, device=z.device)
        lag = steps[:, None] - steps[None, :]  # (t, s)
        toeplitz = torch.where(lag >= 0, h[:, lag.clamp(min=0)], 0.0)
        return torch.einsum("ngds,gts->ngdt", z, toeplitz)
    n = 2 * seqlen
    y = torch.fft.irfft(torch.fft.rfft(z, n=n) * torch.fft.rfft(h, n=n)[:, None], n=n)
    return y[..., :seqlen]


def fir_kernels(repo: str | None = None) -> tuple[Callable, Callable] | None:
    """(causal_fir, hyena_core) of the Triton FIR kernels (`fir_ops`) of the kernels package `kernel_choice` picks,
    or None: the PyTorch path (no package, or no Triton)."""
    fir_ops = kernel_module(repo, "fir_ops")
    return None if fir_ops is None else (fir_ops.causal_fir, fir_ops.hyena_core)


class PhalanxHyenaMixer(nn.Module):
    """Hyena-SE / -MR / -LI token mixer (the variant is `config.layer_types[layer_idx]`): `in_proj` -> featurizer
    convolutions -> `q * (h * (k * v))` -> `out_proj`."""

    def __init__(self, config: PhalanxConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.variant = config.layer_types[layer_idx]
        if self.variant not in (HYENA_SE, HYENA_MR, HYENA_LI):
            raise ValueError(f"layer {layer_idx} is {self.variant!r}, not a Hyena layer type")
        width = config.hidden_size
        self.width = width
        self.num_groups = config.hyena_filter_groups
        self.featurizer_len = config.hyena_featurizer_len
        self.in_proj = nn.Linear(width, 3 * width, bias=False)
        self.out_proj = nn.Linear(width, width, bias=False)
        self.featurizer = nn.Parameter(torch.empty(3 * width, self.featurizer_len))
        if self.variant == HYENA_LI:
            self.num_modes = config.hyena_li_modes
            self.log_rates = nn.Parameter(torch.empty(self.num_groups, self.num_modes))
            self.residues = nn.Parameter(torch.empty(self.num_groups, self.num_modes))
            self.direct = nn.Parameter(torch.empty(width))
        else:
            self.filter_len = config.hyena_se_len if self.variant == HYENA_SE else config.hyena_mr_len
            self.filter_taps = nn.Parameter(torch.empty(self.num_groups, self.filter_len))
            # Hyena-MR's fixed decay rates, one per group, log-evenly spaced over config.hyena_mr_decay.
            self.decay_rates = config.hyena_mr_decay if self.variant == HYENA_MR else None
        # Triton FIR for SE / MR on CUDA tensors (featurizers and filter); LI and CPU tensors take the PyTorch path.
        self.fir = None if self.variant == HYENA_LI else fir_kernels(config.phalanx_kernel_repo)

    @torch.no_grad()
    def init_filters(self) -> None:
        """Initialise the filter parameters (the projections are `nn.Linear`, initialised by the model): explicit
        taps and featurizers as a depthwise `nn.Conv1d` (uniform within 1 / sqrt(taps)); LI decay rates `exp(p)`
        log-evenly from 1e-3 to 1 over modes, residues N(0, 1 / modes), direct term 1."""
        bound = 1.0 / math.sqrt(self.featurizer_len)
        init.uniform_(self.featurizer, -bound, bound)
        if self.variant == HYENA_LI:
            rates = torch.linspace(math.log(1e-3), 0.0, self.num_modes, dtype=torch.float64)
            init.copy_(self.log_rates, rates.expand(self.num_groups, -1).to(self.log_rates))
            init.normal_(self.residues, 0.0, 1.0 / math.sqrt(self.num_modes))
            init.ones_(self.direct)
        else:
            bound = 1.0 / math.sqrt(self.filter_len)
            init.uniform_(self.filter_taps, -bound, bound)

    def group_filter(self) -> torch.Tensor:
        """SE / MR filter per group (groups, K): the taps, times MR's decay `exp(-alpha_g k)`."""
        taps = self.filter_taps
        if self.decay_rates is not None:
            low, high = (math.log(a) for a in self.decay_rates)
            alpha = torch.exp(torch.linspace(low, high, self.num_groups, device=taps.device, dtype=torch.float64))
            k = torch.arange(self.filter_len, device=taps.device, dtype=torch.float64)
            taps = taps * torch.exp(-alpha[:, None] * k).to(taps.dtype)
        return taps

    def explicit_filter(self) -> torch.Tensor:
        """SE / MR filter per channel (hidden, K): each group's filter repeated over its channels."""
        return self.group_filter().repeat_interleave(self.width // self.num_groups, dim=0)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: Cache | None = None,
        cu_seqlens: torch.Tensor | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, None]:
        """`attention_mask`: 2D padding mask (1 = token) or None; `position_ids` (B, T): a row whose first position
        is 0 starts a new sequence (nothing cached leaks in); `cu_seqlens` (flattened rows, from
        `modeling_phalanx.sequence_starts`) splits rows into sequences that must not see each other."""
        batch, seqlen, _ = hidden_states.shape
        proj = self.in_proj(hidden_states)
        if attention_mask is not None:
            proj = proj * attention_mask[:, -seqlen:, None].to(proj.dtype)  # padding feeds nothing forward
        layer = None if cache is None else cache.layers[self.layer_idx]
        state, past = self._cached_state(layer, proj, batch)
        if position_ids is None:
            position_ids = (past[:, None] + torch.arange(seqlen, device=proj.device)).to(torch.long)
        if state is not None:
            fresh = (position_ids[:, 0] == 0).view(-1, 1, 1)
            state = HyenaState(*(s.masked_fill(fresh, 0) for s in state))
        want_state = layer is not None
        if self.fir is not None and proj.is_cuda:
            y, new_state = self._kernel_path(proj, state, cu_seqlens, want_state)
        elif cu_seqlens is None:
            y, new_state = self._core(proj, state, None, want_state)
        else:
            y, new_state = self._packed(proj, state, cu_seqlens, want_state)
        if layer is not None:
            cache.update_conv_state(new_state.featurizer, self.layer_idx, state_idx=0)
            if self.variant == HYENA_LI:
                cache.update_recurrent_state(new_state.filter, self.layer_idx, state_idx=0)
            else:
                cache.update_conv_state(new_state.filter, self.layer_idx, state_idx=1)
            cache.update_recurrent_state(position_ids[:, -1].to(torch.long) + 1, self.layer_idx, state_idx=1)
        return self.out_proj(y), None

    def _cached_state(
        self, layer: LinearAttentionCacheLayerMixin | None, proj: torch.Tensor, batch: int
    ) -> tuple[HyenaState | None, torch.Tensor]:
        """The cached `HyenaState` (None before the first call) and the tokens each row has consumed."""
        past = torch.zeros(batch, dtype=torch.long, device=proj.device)
        if layer is None or not layer.is_conv_states_initialized[0]:
            return None, past
        featurizer = layer.conv_states[0][..., -(self.featurizer_len - 1) :]
        if self.variant == HYENA_LI:
            filt = layer.recurrent_states[0]
        else:
            filt = layer.conv_states[1][..., -(self.filter_len - 1) :]
        if layer.is_recurrent_states_initialized[1]:
            past = layer.recurrent_states[1]
        return HyenaState(featurizer, filt), past

    def _core(
        self, proj: torch.Tensor, state: HyenaState | None, lengths: torch.Tensor | None, want_state: bool
    ) -> tuple[torch.Tensor, HyenaState | None]:
        """Rows of proj (N, T, 3 * hidden), each one sequence continuing `state` (zeros when None); returns
        y (N, T, hidden) and, if wanted, the state after token `lengths[i] - 1` of row i (after all T when None)."""
        num_rows, seqlen, _ = proj.shape
        x = proj.transpose(1, 2)
        if state is None:
            feat_context = x.new_zeros(num_rows, 3 * self.width, self.featurizer_len - 1)
        else:
            feat_context = state.featurizer
        q, k, v = causal_fir(x, self.featurizer, feat_context).chunk(3, dim=1)
        z = k * v
        if self.variant == HYENA_LI:
            mixed, filter_state = self._long_conv(z, None if state is None else state.filter, lengths, want_state)
        else:
            if state is None:
                filt_context = z.new_zeros(num_rows, self.width, self.filter_len - 1)
            else:
                filt_context = state.filter
            mixed = causal_fir(z, self.explicit_filter(), filt_context)
            filter_state = last_inputs(filt_context, z, lengths) if want_state else None
        y = (q * mixed.to(q.dtype)).transpose(1, 2)
        if not want_state:
            return y, None
        return y, HyenaState(last_inputs(feat_context, x, lengths), filter_state)

    def _kernel_path(
        self, proj: torch.Tensor, state: HyenaState | None, cu_seqlens: torch.Tensor | None, want_state: bool
    ) -> tuple[torch.Tensor, HyenaState | None]:
        """SE / MR through the Triton FIR on token-major rows (packed sequences without padding): same results as
        `_core` / `_packed`. Each row's first sequence continues that row's state; the state returned per row is
        that of its last sequence. Without a state in or out (training) the fused core runs instead."""
        causal_fir, hyena_core = self.fir
        if state is None and not want_state:
            return hyena_core(proj, self.featurizer, self.group_filter(), cu_seqlens=cu_seqlens), None
        batch, seqlen, _ = proj.shape
        row_last = None
        if cu_seqlens is not None:
            starts = cu_seqlens[:-1]
            row_start = torch.arange(batch, device=proj.device) * seqlen
            row_last = torch.searchsorted(starts, row_start + seqlen - 1, right=True) - 1
            if state is not None:
                row_first = torch.searchsorted(starts, row_start, right=True) - 1
                state = HyenaState(*(self._scatter_rows(s, row_first, starts.numel()) for s in state))
        kwargs = {"cu_seqlens": cu_seqlens, "output_final_state": want_state}
        feats, feat_state = causal_fir(
            proj, self.featurizer, initial_state=None if state is None else state.featurizer, **kwargs
        )
        q, k, v = feats.chunk(3, dim=-1)
        mixed, filt_state = causal_fir(
            k * v, self.explicit_filter(), initial_state=None if state is None else state.filter, **kwargs
        )
        y = q * mixed
        if not want_state:
            return y, None
        new_state = HyenaState(feat_state, filt_state)
        return y, new_state if row_last is None else HyenaState(*(s[row_last] for s in new_state))

    def _long_conv(
        self, z: torch.Tensor, modal: torch.Tensor | None, lengths: torch.Tensor | None, want_state: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Hyena-LI on z (N, hidden, T) from the modal state `modal` (N, hidden, modes) or zeros: FFT convolution
        with the modal filter, the direct term, and the initial state's decaying contribution
        `sum_n R_n lambda_n ** (t + 1) x_n`. Computed in float32 (float64 for float64 inputs)."""
        num_rows, width, seqlen = z.shape
        groups, modes = self.num_groups, self.num_modes
        dtype = torch.float64 if z.dtype == torch.float64 else torch.float32
        log_rates, residues = self.log_rates.to(dtype), self.residues.to(dtype)
        log_lambda = -torch.exp(log_rates)  # (G, modes)
        zg = z.to(dtype).view(num_rows, groups, width // groups, seqlen)
        y = long_causal_conv(zg, modal_filter(log_rates, residues, seqlen))
        y = y + self.direct.to(dtype).view(groups, -1, 1) * zg
        steps = torch.arange(seqlen, device=z.device, dtype=dtype)
        if modal is not None:
            x0 = modal.to(dtype).view(num_rows, groups, width // groups, modes)
            decay = residues[..., None] * torch.exp(log_lambda[..., None] * (steps + 1))  # (G, modes, T)
            y = y + torch.einsum("bgdn,gnt->bgdt", x0, decay)
        y = y.reshape(num_rows, width, seqlen)
        if not want_state:
            return y, None
        # State after token L - 1 (L = lengths): x_n = lambda_n ** L x0_n + sum_{s < L} lambda_n ** (L - 1 - s) z_s
        # One row of weights shared by all rows when every row ends at T (no packing), else one per row.
        ends = torch.full((1,), seqlen, device=z.device) if lengths is None else lengths
        age = ends[:, None].to(dtype) - 1 - steps  # (1 or N, T); negative past a row's end
        weights = torch.exp(log_lambda[None, :, :, None] * age.clamp(min=0)[:, None, None, :])
        weights = weights * (age >= 0)[:, None, None, :]  # (1 or N, G, modes, T)
        if lengths is None:
            new = torch.einsum("bgdt,gnt->bgdn", zg, weights[0])
        else:
            new = torch.einsum("bgdt,bgnt->bgdn", zg, weights)
        if modal is not None:
            new = new + x0 * torch.exp(log_lambda[None, :, None, :] * ends.to(dtype).view(-1, 1, 1, 1))
        return y, new.reshape(num_rows, width, modes)

    def _packed(
        self, proj: torch.Tensor, state: HyenaState | None, cu_seqlens: torch.Tensor, want_state: bool
    ) -> tuple[torch.Tensor, HyenaState | None]:
        """Rows holding several sequences: gather each sequence (boundaries `cu_seqlens` over the flattened rows)
        into its own zero-padded row, run `_core`, gather the tokens back. Each row's first sequence continues that
        row's state; the state returned per row is that of its last sequence."""
        batch, seqlen, features = proj.shape
        flat = proj.reshape(batch * seqlen, features)
        starts = cu_seqlens[:-1]
        lengths = cu_seqlens[1:] - starts
        longest = int(lengths.max())
        columns = torch.arange(longest, device=proj.device)
        index = (starts[:, None] + columns).clamp(max=batch * seqlen - 1)
        seqs = flat[index] * (columns < lengths[:, None])[..., None].to(flat.dtype)  # (M, longest, features)
        row_start = torch.arange(batch, device=proj.device) * seqlen
        row_first = torch.searchsorted(starts, row_start, right=True) - 1
        row_last = torch.searchsorted(starts, row_start + seqlen - 1, right=True) - 1
        seq_state = None
        if state is not None:
            seq_state = HyenaState(*(self._scatter_rows(s, row_first, starts.numel()) for s in state))
        y, new_state = self._core(seqs, seq_state, lengths, want_state)
        token = torch.arange(batch * seqlen, device=proj.device)
        seq_of = torch.searchsorted(starts, token, right=True) - 1
        y = y[seq_of, token - starts[seq_of]].view(batch, seqlen, -1)
        if new_state is not None:
            new_state = HyenaState(*(s[row_last] for s in new_state))
        return y, new_state

    @staticmethod
    def _scatter_rows(rows: torch.Tensor, row_first: torch.Tensor, num_seqs: int) -> torch.Tensor:
        """Per-sequence copy of per-row `rows`: row i's values at sequence `row_first[i]`, zeros elsewhere."""
        out = rows.new_zeros(num_seqs, *rows.shape[1:])
        out[row_first] = rows
        return out

    def extra_repr(self) -> str:
        return f"variant={self.variant}, width={self.width}, filter_groups={self.num_groups}"


__all__ = ["HyenaState", "PhalanxHyenaMixer"]
