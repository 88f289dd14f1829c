"""Sweep the launch configurations of the Hyena FIR kernels (``phalanx_kernels.fir_ops``) on the GPU.

Three launchers, each at the shapes of one Hyena-SE layer (width 2048, 16-channel filter groups, 8 x 4096 tokens):

- ``dw``: the filter gradient (``_launch_dw``), about half of Hyena-SE's backward before its sweep: 6144 x 3 (the
  featurizers) and 2048 x 7 (the filter). On the H200 its best, block_t=128, became the default and ran 2.7-2.8x
  faster than the old one (``benchmarks/results/hyena_h200_s14/``);
- ``fir``: the depthwise FIR forward and its input gradient (``_launch_fir``, ``reverse``), the rest of the backward
  (recomputed featurizers, the filter output, dz, dproj) at the same two shapes;
- ``core``: the forward of the Hyena-SE core through the direct kernels (``_launch_direct_core``: z = k * v, then the
  filter gated by q), the operator whose target is 1.5x its memory floor;
- ``scan``: the same forward in one pass, scanning rows with register histories (``_launch_scan_core``);
- ``scanbwd``: its backward in one pass (``_launch_scan_bwd``), next to the multi-pass backward it replaces
  (``_multi_pass_bwd``; packed rows keep that path);
- ``mr``: the forward of the Hyena-MR core (128 taps) as a walk over 64-row tiles (``_launch_mr_core``), on rows,
  on the same rows given as packed sequences, and with the filter stored in the rows' 16-bit dtype (one Toeplitz
  part). On the H200 it took 0.62 ms against 1.16 for the one-pass tensor-core kernel it replaced
  (``benchmarks/results/hyena_h200_s18/``), 0.46 ms with a bf16 filter (``hyena_h200_s19/``), 0.35 ms since its
  featurizer tiles are loaded as row phases (``hyena_h200_s22/``), 0.30 ms under a register cap of 128
  (``maxnreg``, swept from 255 down to 72; ``hyena_h200_s23/``), 0.28 ms since each tile's z is pushed into the next
  tiles' outputs (``hyena_h200_s24/``);
- ``mrbwd``: its backward as a walk (``_launch_mr_bwd``: the walk, then the filter gradient and the featurizers'
  backward), on rows, packed rows and a 16-bit filter, next to the multi-pass backward it replaces (unswept).

Each configuration is first checked against a float32 reference built from the mixer's PyTorch FIR
(``hyena_phalanx.causal_fir``, autograd for the gradients), then timed as the GPU work alone (CUDA-graph replay,
``bench_swr.gpu_ms``), next to its floor (the bytes it must read and write once, at the copy bandwidth measured in the
same run). The JSON holds every configuration; the table, last, the fastest ones per launcher and shape.

    python benchmarks/sweep_fir.py --json OUT/sweep_fir.json                 # GPU machine, 2-3 minutes
    python benchmarks/sweep_fir.py --device cpu --size tiny                  # smoke (TRITON_INTERPRET=1)
"""

from __future__ import annotations

import argparse
import inspect
import itertools
import json
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from modeling_phalanx.hyena_phalanx import causal_fir

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_hyena import copy_bandwidth, median_ms, randn  # noqa: E402
from bench_swr import gpu_ms  # noqa: E402

KERNELS = ("dw", "fir", "core", "scan", "scanbwd", "mr", "mrbwd")
SHAPES = {  # (batch, seqlen, channels, taps); for "core" channels is the width W and taps the filter's
    "full": {"dw": ((8, 4096, 6144, 3), (8, 4096, 2048, 7)), "fir": ((8, 4096, 6144, 3), (8, 4096, 2048, 7)),
             "core": ((8, 4096, 2048, 7),), "scan": ((8, 4096, 2048, 7),), "scanbwd": ((8, 4096, 2048, 7),),
             "mr": ((8, 4096, 2048, 128),), "mrbwd": ((8, 4096, 2048, 128),)},
    "tiny": {"dw": ((2, 40, 24, 3), (1, 70, 16, 7)), "fir": ((1, 70, 16, 7),), "core": ((2, 21, 16, 7),),
             "scan": ((2, 21, 16, 7),), "scanbwd": ((2, 21, 16, 7),), "mr": ((2, 150, 32, 128),),
             "mrbwd": ((2, 150, 32, 128),)},
}
TILES = list(itertools.product((64, 128, 256), (32, 64, 128), (4, 8)))  # (block_t, block_c, num_warps)
CONFIGS = {
    "full": {"dw": list(itertools.product((32, 64, 128), (32, 64), (4, 8), (64, 256), (False, True))),
             "fir": TILES, "core": TILES,
             "scan": list(itertools.product((128, 256, 512), (4, 8), (128, 256, 512), (2, 4))),
             "scanbwd": list(itertools.product((256, 512), (2, 4), (64, 128, 256), (2, 4))),
             # MR walks: None is the launcher's default; a cap of 255 registers is the most a thread can have
             "mr": [(None, None, 4, None), *itertools.product((None, 4096), (1, 2), (4,), (255, 128, 112))],
             "mrbwd": list(itertools.product((4096,), (None, 1, 2), (4,), (None, 128, 168)))},
    "tiny": {"dw": [(128, 64, 4, 64, False), (16, 16, 1, 4, False), (16, 16, 2, 4, True)],
             "fir": [(64, 128, 4), (16, 16, 2)], "core": [(64, 64, 4), (16, 16, 2)],
             "scan": [(512, 8, 512, 4), (8, 4, 16, 1)], "scanbwd": [(512, 4, 128, 4), (8, 4, 16, 1)],
             "mr": [(None, None, 4, None), (64, 2, 1, 128)], "mrbwd": [(4096, None, 4, None), (64, 2, 1, 128)]},
}
NAMES = {"dw": ("block_t", "block_c", "num_warps", "chunks", "taps_outer"),  # keyword arguments of the launchers
         "fir": ("block_t", "block_c", "num_warps"), "core": ("block_t", "block_c", "num_warps"),
         "scan": ("rows_per_program", "unroll", "block_c", "num_warps"),
         "scanbwd": ("rows_per_program", "unroll", "block_c", "num_warps"),
         "mr": ("rows_per_program", "strands", "num_warps", "maxnreg"),
         "mrbwd": ("rows_per_program", "strands", "num_warps", "maxnreg")}
FEATURIZER_TAPS, GROUP_CHANNELS = 3, 16  # the presets' featurizer length and channels per filter group


def fir32(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Causal depthwise FIR of x (B, T, C) with weight (C, K) in float32 through the mixer's PyTorch FIR."""
    xt = x.float().transpose(1, 2)
    return causal_fir(xt, weight.float(), xt.new_zeros(*xt.shape[:2], weight.shape[1] - 1)).transpose(1, 2)


def cases(kernel: str, shape: tuple[int, int, int, int], device: str, dtype: torch.dtype):
    """(name, reference, call(config), floor bytes, swept) of one launcher at one shape; reference in float32. A
    case that is not swept (a path the launcher replaces) runs once."""
    from phalanx_kernels import fir_ops

    batch, seqlen, channels, taps = shape
    x = randn(batch, seqlen, channels, device=device, dtype=dtype, grad=False)
    tensor_bytes = x.numel() * x.element_size()
    if kernel == "dw":
        dy = randn(batch, seqlen, channels, device=device, dtype=dtype, grad=False)
        weight = torch.zeros(channels, taps, device=device, requires_grad=True)
        want = torch.autograd.grad(fir32(x, weight), weight, dy.float())[0]
        yield "weight grad", want, lambda config: fir_ops._launch_dw(x, dy, taps, None, **config), \
            2 * tensor_bytes, True
    elif kernel == "fir":
        weight = randn(channels, taps, device=device, grad=False) / taps**0.5
        yield "fwd", fir32(x, weight), lambda config: fir_ops._launch_fir(x, weight, None, False, **config), \
            2 * tensor_bytes, True
        dy = randn(batch, seqlen, channels, device=device, dtype=dtype, grad=False)
        x32 = x.float().requires_grad_()
        want = torch.autograd.grad(fir32(x32, weight), x32, dy.float())[0]
        yield "input grad", want, lambda config: fir_ops._launch_fir(dy, weight, None, True, **config), \
            2 * tensor_bytes, True
    else:
        proj = randn(batch, seqlen, 3 * channels, device=device, dtype=dtype, grad=False)
        featurizer = randn(3 * channels, FEATURIZER_TAPS, device=device, grad=False) / FEATURIZER_TAPS**0.5
        weight = randn(channels // GROUP_CHANNELS, taps, device=device, grad=False) / taps**0.5
        q, k, v = fir32(proj, featurizer).chunk(3, dim=-1)
        want = q * fir32(k * v, weight.repeat_interleave(GROUP_CHANNELS, dim=0))
        feat_t = featurizer.t().contiguous()
        if kernel in ("scanbwd", "mrbwd"):
            dy = randn(batch, seqlen, channels, device=device, dtype=dtype, grad=False)
            leaves = [t.float().detach().requires_grad_() for t in (proj, featurizer, weight)]
            q, k, v = fir32(leaves[0], leaves[1]).chunk(3, dim=-1)
            out = q * fir32(k * v, leaves[2].repeat_interleave(GROUP_CHANNELS, dim=0))
            want = torch.cat([g.flatten() for g in torch.autograd.grad(out, leaves, dy.float())])
            whole = torch.arange(0, batch * seqlen + 1, seqlen, device=device)  # each row a packed sequence
            yield "bwd, multi-pass", want, lambda config: fir_ops._multi_pass_bwd(proj, featurizer, weight, dy, None), \
                7 * tensor_bytes, False
            if kernel == "scanbwd":
                yield "bwd", want, lambda config: fir_ops._launch_scan_bwd(proj, featurizer, weight, dy, **config), \
                    7 * tensor_bytes, True
                return
            yield "bwd, packed, multi-pass", want, lambda config: fir_ops._multi_pass_bwd(
                proj, featurizer, weight, dy, whole), 7 * tensor_bytes, False
            yield "bwd", want, lambda config: fir_ops._launch_mr_bwd(proj, featurizer, weight, dy, None, **config), \
                7 * tensor_bytes, True
            yield "bwd, packed", want, lambda config: fir_ops._launch_mr_bwd(proj, featurizer, weight, dy, whole,
                                                                             **config), 7 * tensor_bytes, True
            leaves16 = [t.float().detach().requires_grad_() for t in (proj, featurizer, weight.to(dtype))]
            q, k, v = fir32(leaves16[0], leaves16[1]).chunk(3, dim=-1)
            out = q * fir32(k * v, leaves16[2].repeat_interleave(GROUP_CHANNELS, dim=0))
            want16 = torch.cat([g.flatten() for g in torch.autograd.grad(out, leaves16, dy.float())])
            yield "bwd, filter in rows' dtype", want16, lambda config: fir_ops._launch_mr_bwd(
                proj, featurizer, weight.to(dtype), dy, None, **config), 7 * tensor_bytes, True
            return
        if kernel == "mr":
            whole = torch.arange(0, batch * seqlen + 1, seqlen, device=device)  # each row a packed sequence
            yield "fwd", want, lambda config: fir_ops._launch_mr_core(proj, feat_t, weight, None, **config), \
                4 * tensor_bytes, True
            yield "fwd, packed", want, lambda config: fir_ops._launch_mr_core(proj, feat_t, weight, whole, **config), \
                4 * tensor_bytes, True
            weight16 = weight.to(dtype)
            want16 = q * fir32(k * v, weight16.float().repeat_interleave(GROUP_CHANNELS, dim=0))
            yield "fwd, filter in rows' dtype", want16, \
                lambda config: fir_ops._launch_mr_core(proj, feat_t, weight16, None, **config), 4 * tensor_bytes, True
            return
        launch = fir_ops._launch_direct_core if kernel == "core" else fir_ops._launch_scan_core
        yield "fwd", want, lambda config: launch(proj, feat_t, weight, None, **config), 4 * tensor_bytes, True


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--size", choices=tuple(SHAPES), default="full")
    parser.add_argument("--kernels", nargs="+", choices=KERNELS, default=list(KERNELS))
    parser.add_argument("--shape", type=int, nargs=4, metavar=("B", "T", "C", "K"),
                        help="this (batch, seqlen, channels, taps) instead of the size's shapes")
    parser.add_argument("--json", help="write every configuration's result here")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda needs a CUDA GPU (use --device cpu --size tiny under TRITON_INTERPRET=1)")
    from phalanx_kernels import fir_ops

    launchers: dict[str, Callable] = {"dw": fir_ops._launch_dw, "fir": fir_ops._launch_fir,
                                      "core": fir_ops._launch_direct_core, "scan": fir_ops._launch_scan_core,
                                      "scanbwd": fir_ops._launch_scan_bwd, "mr": fir_ops._launch_mr_core,
                                      "mrbwd": fir_ops._launch_mr_bwd}
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    bandwidth = copy_bandwidth(args.device)
    results: list[dict] = []
    for kernel in args.kernels:
        params = inspect.signature(launchers[kernel]).parameters
        default = tuple(params[name].default for name in NAMES[kernel])
        for shape in [tuple(args.shape)] if args.shape else SHAPES[args.size][kernel]:
            for name, want, call, floor_bytes, swept in cases(kernel, shape, args.device, dtype):
                floor_ms = floor_bytes / bandwidth * 1e3
                for values in CONFIGS[args.size][kernel] if swept else [default]:
                    config = dict(zip(NAMES[kernel], values)) if swept else {}
                    row = {"kernel": kernel, "pass": name, "batch": shape[0], "seqlen": shape[1],
                           "channels": shape[2], "taps": shape[3], **config, "default": swept and values == default,
                           "floor_ms": floor_ms}
                    try:
                        got = call(config)  # a backward's gradients are flattened for the check, not timed
                        if isinstance(got, tuple):
                            got = torch.cat([g.float().flatten() for g in got])
                        row["rel_err"] = ((got.float() - want).norm() / want.norm()).item()
                        step = lambda: call(config)  # noqa: E731
                        # The CPU run (the interpreter) is a smoke test: one timed call after one warm-up.
                        row["ms"] = gpu_ms(step) if args.device == "cuda" else median_ms(step, args.device, 1)
                        row["x_floor"] = row["ms"] / floor_ms
                    except Exception as err:  # a configuration that does not compile (registers, shared memory)
                        row["error"] = f"{type(err).__name__}: {err}".splitlines()[0][:300]
                    results.append(row)
                    if args.json:
                        Path(args.json).write_text(json.dumps({"bandwidth": bandwidth, "results": results}, indent=1))
    print(format_table(results))
    return results


def format_table(results: list[dict]) -> str:
    """Per launcher, pass and shape: the three fastest configurations that match the reference (rel_err <= 1e-2),
    and the default."""
    lines = ["| kernel | B x T x C x K | configuration | ms | x floor | rel. error |", "|---|---|---|---:|---:|---:|"]
    for (kernel, name, *shape), rows in itertools.groupby(
        results, key=lambda r: (r["kernel"], r["pass"], r["batch"], r["seqlen"], r["channels"], r["taps"])
    ):
        rows = [r for r in rows if "ms" in r]
        good = sorted((r for r in rows if r["rel_err"] <= 1e-2), key=lambda r: r["ms"])
        for r in good[:3] + [r for r in rows if r["default"] and r not in good[:3]]:
            config = ", ".join(f"{k}={r[k]}" for k in NAMES[kernel] if k in r) or "-"
            mark = " (default)" if r["default"] else ""
            lines.append(f"| {kernel} {name} | {' x '.join(map(str, shape))} | {config}{mark} | {r['ms']:.3f} | "
                         f"{r['x_floor']:.1f} | {r['rel_err']:.1e} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
