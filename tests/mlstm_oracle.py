"""Float64 step-by-step mLSTM, written from the xLSTM papers' equations, independent of `mlstm_phalanx`.

xLSTM (Beck et al. 2024, section 2.3), unstabilised: `C_t = f_t C_{t-1} + i_t v_t k_t^T`, `n_t = f_t n_{t-1} + i_t k_t`,
`h~_t = C_t q_t / max(|n_t^T q_t|, 1)` with `i_t = exp(i~_t)` and `f_t = sigmoid(f~_t)` (or `exp(f~_t)`), keys scaled by
`1 / sqrt(d)` (here: queries, as xLSTM-7B does; the product is the same). xLSTM-7B (Beck et al. 2025) soft-caps the
gate pre-activations and adds `eps` to the stabilised denominator `max(|n'^T q|, exp(-m_t)) + eps`; in unstabilised
terms that is `max(|n^T q|, 1) + eps * exp(m_t)`, with the stabiliser `m_t = max(log f_t + m_{t-1}, log i_t)`,
`m_0 = 0`.
"""

from __future__ import annotations

import math

import torch


def mlstm_oracle(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    i_pre: torch.Tensor,
    f_pre: torch.Tensor,
    forget_gate: str = "sigmoid",
    eps: float = 1e-6,
    starts: torch.Tensor | None = None,
    keep: torch.Tensor | None = None,
) -> torch.Tensor:
    """q, k: (B, T, H, Dk); v: (B, T, H, Dv); i_pre, f_pre: (B, T, H) soft-capped pre-activations; `starts` (B, T)
    bool restarts a sequence from the zero state at that token; `keep` (B, T) bool, False for padding (skipped: the
    state is left as it was). Returns h (B, T, H, Dv) float64 (padding rows 0)."""
    q, k, v, i_pre, f_pre = (t.double() for t in (q, k, v, i_pre, f_pre))
    batch, seqlen, heads, dk = q.shape
    dv = v.shape[-1]
    out = torch.zeros(batch, seqlen, heads, dv, dtype=torch.float64)
    for row in range(batch):
        for head in range(heads):
            c = torch.zeros(dv, dk, dtype=torch.float64)
            n = torch.zeros(dk, dtype=torch.float64)
            m = 0.0
            for t in range(seqlen):
                if starts is not None and starts[row, t]:
                    c, n, m = torch.zeros_like(c), torch.zeros_like(n), 0.0
                if keep is not None and not keep[row, t]:
                    continue
                log_i = float(i_pre[row, t, head])
                if forget_gate == "sigmoid":
                    log_f = float(torch.nn.functional.logsigmoid(f_pre[row, t, head]))
                else:
                    log_f = float(f_pre[row, t, head])
                m = max(log_f + m, log_i)
                kt = k[row, t, head] / dk**0.5
                c = torch.exp(torch.tensor(log_f, dtype=torch.float64)) * c + torch.exp(
                    torch.tensor(log_i, dtype=torch.float64)
                ) * torch.outer(v[row, t, head], kt)
                n = torch.exp(torch.tensor(log_f, dtype=torch.float64)) * n + torch.exp(
                    torch.tensor(log_i, dtype=torch.float64)
                ) * kt
                qt = q[row, t, head]
                denominator = max(abs(float(n @ qt)), 1.0) + eps * math.exp(m)
                out[row, t, head] = (c @ qt) / denominator
    return out
