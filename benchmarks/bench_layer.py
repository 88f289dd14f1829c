"""Time a whole Phalanx mixer layer (in_proj + core + out_proj) on a CUDA GPU at shape A.

Compares the fused Triton core (``phalanx_kernels.phalanx_core``) with the unfused PyTorch core
(``phalanx_core_torch``) and with a sliding-window attention layer (window 512, 16 heads x 64, q/k/v/o
projections, FlexAttention, no rotary embedding) of the same width, in one run. The two Phalanx layers
share weights, so their outputs and input gradients are compared too.

    python benchmarks/bench_layer.py [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

import torch
from torch import nn

from phalanx_kernels.swr_torch import phalanx_core_torch
from phalanx_kernels import phalanx_core

from bench_swr import bench_ms

# kernels.md section 4 (H100, shape A): public PyTorch Phalanx layer and the layer floor.
ANCHORS_MS = {"public_layer_fwd": 3.86, "public_layer_fwd_bwd": 12.09, "floor_fwd": 1.0, "floor_fwd_bwd": 3.0}


class PhalanxLayer(nn.Module):
    """in_proj -> Phalanx core -> out_proj, with the core chosen by ``fused``."""

    def __init__(self, width: int, head_dim: int = 16, fused: bool = True) -> None:
        super().__init__()
        self.heads, self.head_dim, self.fused = width // head_dim, head_dim, fused
        self.in_proj = nn.Linear(width, self.heads + 3 * width, bias=True)
        self.out_proj = nn.Linear(width, width, bias=False)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        core = phalanx_core if self.fused else phalanx_core_torch
        mixed = core(self.in_proj(hidden), num_heads=self.heads, head_dim=self.head_dim,
                     num_gate_groups=self.heads, block_len=16, window_blocks=2)
        return self.out_proj(mixed)


def flex_swa(seqlen: int, window: int = 512) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """Causal sliding-window attention (window ``window``) of (B, H, T, D) q, k, v through compiled FlexAttention
    on CUDA."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    block_mask = create_block_mask(
        lambda b, h, q, kv: (q >= kv) & (q - kv < window), B=None, H=None, Q_LEN=seqlen, KV_LEN=seqlen
    )
    attn = torch.compile(flex_attention)
    return lambda q, k, v: attn(q, k, v, block_mask=block_mask)


class FlexSWALayer(nn.Module):
    """Sliding-window attention layer (window ``window``) through compiled FlexAttention."""

    def __init__(self, width: int, seqlen: int, heads: int = 16, window: int = 512) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.o_proj = nn.Linear(width, width, bias=False)
        self.attn = flex_swa(seqlen, window)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        batch, seqlen, width = hidden.shape
        q, k, v = self.qkv(hidden).view(batch, seqlen, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        out = self.attn(q, k, v)
        return self.o_proj(out.transpose(1, 2).reshape(batch, seqlen, width))


def time_layer(layer: nn.Module, hidden: torch.Tensor, dout: torch.Tensor) -> dict[str, float]:
    """Forward and forward+backward medians (ms); the backward returns d(hidden) and the weight gradients
    as a training step with zeroed gradients would, without accumulating them into ``.grad``."""
    wrt = [hidden, *layer.parameters()]

    def fwd_bwd() -> None:
        torch.autograd.grad(layer(hidden), wrt, dout)

    with torch.no_grad():
        fwd = bench_ms(lambda: layer(hidden))
    return {"fwd_ms": fwd, "fwd_bwd_ms": bench_ms(fwd_bwd)}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def run(batch: int = 8, seqlen: int = 8192, width: int = 1024) -> dict:
    torch.manual_seed(0)
    dtype = torch.bfloat16
    fused = PhalanxLayer(width, fused=True).cuda().to(dtype)
    unfused = PhalanxLayer(width, fused=False).cuda().to(dtype)
    unfused.load_state_dict(fused.state_dict())
    swa = FlexSWALayer(width, seqlen).cuda().to(dtype)
    hidden = torch.randn(batch, seqlen, width, device="cuda", dtype=dtype, requires_grad=True)
    dout = torch.randn(batch, seqlen, width, device="cuda", dtype=dtype)

    outs, grads = [], []
    for layer in (fused, unfused):
        hidden.grad = None
        out = layer(hidden)
        out.backward(dout)
        outs.append(out.detach())
        grads.append(hidden.grad.detach().clone())
    numerics = {"out_rel_err": rel_err(outs[0], outs[1]), "dhidden_rel_err": rel_err(grads[0], grads[1])}

    results = {"numerics_fused_vs_unfused": numerics}
    for name, layer in (("phalanx_fused", fused), ("phalanx_unfused", unfused), ("swa512_flex", swa)):
        results[name] = time_layer(layer, hidden, dout)
    with torch.no_grad():  # the two GEMMs alone: out_proj applied to the value columns of in_proj
        results["projections_only_fwd_ms"] = bench_ms(lambda: fused.out_proj(fused.in_proj(hidden)[..., -width:]))
    return results


def format_table(results: dict) -> str:
    lines = ["| layer (shape A, bf16) | fwd ms | fwd+bwd ms |", "|---|---:|---:|"]
    for name in ("phalanx_fused", "phalanx_unfused", "swa512_flex"):
        lines.append(f"| {name} | {results[name]['fwd_ms']:.3f} | {results[name]['fwd_bwd_ms']:.3f} |")
    lines.append(f"| projections only (fwd) | {results['projections_only_fwd_ms']:.3f} | - |")
    num = results["numerics_fused_vs_unfused"]
    lines.append(f"fused vs unfused: out rel err {num['out_rel_err']:.2e}, d(hidden) rel err {num['dhidden_rel_err']:.2e}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the raw results here")
    args = parser.parse_args()
    results = run()
    print(format_table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": results, "anchors_ms": ANCHORS_MS}, f, indent=1)


if __name__ == "__main__":
    main()
