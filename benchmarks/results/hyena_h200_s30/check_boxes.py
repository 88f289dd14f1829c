"""Session 30, on the CPU (no GPU needed): the index arithmetic of the permuted Gluon MR walk.

Emulates the TMA boxes of ``gluon_fir.descriptors(permuted=True)`` with ``torch.as_strided`` (the descriptors'
shapes and strides) and checks that a box holds row ``stored(s)`` at slot s, that the permuted Toeplitz blocks give
``P H P^T (P z) = P (H z)``, and that y's box puts slot s at row ``stored(s)``. ``stored`` mirrors the kernel's
``_stored_row`` (a Gluon function, which does not run on the CPU). Prints the descriptors' views, then "ok".

    python benchmarks/results/hyena_h200_s30/check_boxes.py
"""
import torch

from phalanx_kernels import gluon_fir


def stored(i):
    """``gluon_fir._stored_row``: row 4 g + r of a 16-row block sits at 4 r + g (its own inverse)."""
    return (i // 16) * 16 + (i % 4) * 4 + (i // 4) % 4


B, T, W = 2, 96, 32
proj = torch.arange(B * T * 3 * W, dtype=torch.float64).reshape(B, T, 3 * W)
y = torch.zeros(B, T, W, dtype=torch.float64)
pd, _, yd = gluon_fir.descriptors(proj.bfloat16(), y.bfloat16(), 128, 16, permuted=True)
print(pd.shape, pd.strides, pd.block_shape, yd.shape, yd.strides, yd.block_shape)

b, t0, inp, col = 1, 32, 2, 16
view = proj.as_strided(list(pd.shape), list(pd.strides))
box = view[b, t0 // 16:t0 // 16 + 4, :, :, inp * W + col:inp * W + col + 16].reshape(64, 16)  # shared-memory order
for s in range(64):
    assert torch.equal(box[s], proj[b, t0 + stored(s), inp * W + col:inp * W + col + 16]), s

K, BT = 100, 64
h = torch.randn(K, dtype=torch.float64)
i = torch.arange(BT)[:, None]
j = torch.arange(BT)[None, :]


def toeplitz(blk: int, permuted: bool) -> torch.Tensor:
    """Block ``blk`` of the filter's Toeplitz matrix, rows and columns in the stored order if ``permuted``."""
    lag = (stored(i) - stored(j) if permuted else i - j) + blk * BT
    return torch.where((lag >= 0) & (lag < K), h[lag.clamp(0, K - 1)], torch.zeros(()))


z = torch.randn(BT, 16, dtype=torch.float64)
order = stored(torch.arange(BT))
for blk in range(3):
    assert torch.allclose(toeplitz(blk, True) @ z[order], (toeplitz(blk, False) @ z)[order]), blk

acc = torch.randn(64, 16, dtype=torch.float64)
y.as_strided(list(yd.shape), list(yd.strides))[b, t0 // 16:t0 // 16 + 4, :, :, col:col + 16] = acc.reshape(4, 4, 4, 16)
for s in range(64):
    assert torch.equal(y[b, t0 + stored(s), col:col + 16], acc[s]), s
print("ok")
