"""The Hub kernel (``phalanx export-kernels`` loaded by the `kernels` library) against the installed
``phalanx_kernels``, on a CUDA GPU at shape A: fused core forward and forward+backward.

Both copies are loaded in one process (their torch ops live in different namespaces), share inputs, and
must give the same outputs. Run from the repository root (the script's folder, not the root, is on
``sys.path``, so ``import kernels`` finds the library):

    python benchmarks/bench_hub_kernel.py [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from bench_swr import bench_ms

import phalanx_kernels
from phalanx_hub.kernel_export import export_kernels


def time_core(core, proj: torch.Tensor, heads: int, dim: int) -> dict[str, float]:
    """Forward and forward+backward medians (ms) of ``core`` (BL 16, W 2, Hg = H) on ``proj``."""
    kw = dict(num_heads=heads, head_dim=dim, num_gate_groups=heads)
    leaf = proj.detach().requires_grad_()
    dout = torch.randn(*proj.shape[:2], heads * dim, device=proj.device, dtype=proj.dtype)

    def fwd() -> None:
        with torch.no_grad():
            core(proj, **kw)

    return {"fwd_ms": bench_ms(fwd), "fwd_bwd_ms": bench_ms(lambda: torch.autograd.grad(core(leaf, **kw), [leaf], dout))}


def run(batch: int = 8, seqlen: int = 8192, heads: int = 64, dim: int = 16) -> dict:
    from kernels import get_local_kernel

    with tempfile.TemporaryDirectory() as tmp:
        hub = get_local_kernel(export_kernels(Path(tmp) / "phalanx-kernels"))
        torch.manual_seed(0)
        proj = torch.randn(batch, seqlen, heads + 3 * heads * dim, device="cuda", dtype=torch.bfloat16)
        kw = dict(num_heads=heads, head_dim=dim, num_gate_groups=heads)
        same = torch.equal(hub.phalanx_core(proj, **kw), phalanx_kernels.phalanx_core(proj, **kw))
        results = {
            "shape": {"batch": batch, "seqlen": seqlen, "heads": heads, "head_dim": dim, "dtype": "bfloat16"},
            "device": torch.cuda.get_device_name(),
            "hub_module": hub.__name__,
            "outputs_equal": same,
            "installed": time_core(phalanx_kernels.phalanx_core, proj, heads, dim),
            "hub": time_core(hub.phalanx_core, proj, heads, dim),
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_hub_kernel: needs a CUDA GPU")
    results = run()
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
