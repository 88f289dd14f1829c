"""Time the Hyena-SE / -MR kernels (Triton causal FIR) next to their memory floor and the Phalanx SWR core.

H200 runs: ``benchmarks/results/hyena_h200/bench_hyena_partial_s7.json`` (the Hyena rows, per call only) and
``benchmarks/results/hyena_h200_s13/`` (width 2048 with its peers, width 4096 at 4K). Per shape (width W = 2048 or
4096, 4K-32K tokens with 32768 tokens per call, bf16):

- ``fir``: the causal depthwise FIR alone (``phalanx_kernels.fir_ops.causal_fir``) on (B, T, W) with K taps;
  floor: forward reads x and writes y (4 bytes per token-channel), backward reads x and dy and writes dx (6).
- ``mixer``: the Hyena-SE (K <= 16) or -MR mixer without its projections (featurizers, gating, filter:
  ``in_proj`` output (B, T, 3W) -> (B, T, W)) through the mixer's kernel path (filters shared by 16 channels: on
  tensor cores past 32 taps, else the direct kernels), with per-channel filters (``mixer_per_channel``: direct
  kernels), and through its PyTorch path; floor: forward reads 3W and writes W (8 bytes per token and channel),
  backward reads 3W and dy, writes 3W (14).
- ``phalanx_core``: the fused Phalanx core (W / 16 heads of 16, one gate group per head), the SWR peer.
- peers (``PEERS``, W / 128 heads of 128, one row per width and length): our Hyena-LI mixer core (featurizers, then
  the FFT convolution with its modal filter, ``hyena_phalanx.long_causal_conv``, in fp32), FLA's chunked GLA
  (``fla.ops.gla.chunk_gla``) and gated DeltaNet (``fla.ops.gated_delta_rule.chunk_gated_delta_rule``, q and k
  L2-normalised in the kernel), the xLSTM authors' mLSTM chunkwise kernel (``mlstm-kernels``' ``triton_xl_chunk``,
  as the mLSTM mixer runs it) and sliding-window attention (window 512) through compiled FlexAttention
  (``bench_layer.flex_swa``); the operators alone, without projections. A peer whose package does not import is
  recorded as "not installed", the mLSTM kernel under a Triton that miscompiles it as "off", one on the CPU as
  "needs CUDA", one that raises as its one-line error.

Times are medians of CUDA-event intervals around one call after warm-up (``time.perf_counter`` on CPU), which
include the host's time to launch the call's kernels; on the GPU each is also measured as the kernels' own time
(``*_kernel_ms``: the median of CUDA-graph replays, ``bench_swr.gpu_ms``), the operator's cost when the host runs
ahead, as it does inside a model. (The profiler, ``bench_e2e.kernel_time``, gave the same
times but took about 15 s per measurement on the H200: a run measured 2 of the 16 rows in 330 s.) An operator
that cannot be captured keeps its per-call times and records why (``*_kernel_error``). Floors use the copy
bandwidth measured in the same run; ``*_x_floor`` divides the call time by the floor, ``*_kernel_x_floor`` the
kernel time. Forward+backward returns gradients with ``torch.autograd.grad``. The JSON is rewritten after every
row (each shape's Hyena rows, then its peers), so a run cut short keeps what it measured and compares the shapes
it reached; each row records the seconds since the start (``elapsed_s``) and each peer its own seconds, compiling
and autotuning included (``<peer>_seconds``).

    python benchmarks/bench_hyena.py --json benchmarks/results/hyena_h200.json     # GPU machine
    BENCH_ARGS="--widths 4096" bash benchmarks/gpu_hyena_run.sh OUT_DIR             # GPU machine, one width a call
    python benchmarks/bench_hyena.py --device cpu --size tiny                       # smoke test (PyTorch paths)
    TRITON_INTERPRET=1 python benchmarks/bench_hyena.py --device cpu --size tiny    # also the kernels, interpreted
    python benchmarks/bench_hyena.py --parts peers --widths 2048 --lengths 4096     # one part, one shape
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

import phalanx_kernels
from modeling_phalanx import PhalanxConfig
from modeling_phalanx.hyena_phalanx import PhalanxHyenaMixer
from modeling_phalanx.mlstm_phalanx import MLSTM_KERNEL_TRITON_BELOW, mlstm_kernel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_e2e import time_steps  # noqa: E402
from bench_swr import gpu_ms  # noqa: E402

SIZES = {
    "full": {"widths": (2048, 4096), "lengths": (4096, 8192, 16384, 32768), "taps": (7, 128), "tokens": 32768},
    "tiny": {"widths": (32,), "lengths": (64,), "taps": (7, 24), "tokens": 128},
}


def median_ms(fn: Callable[[], object], device: str, reps: int) -> float:
    """Median milliseconds of ``fn`` over ``reps`` calls after up to three warm-up calls (CUDA events on the GPU)."""
    return statistics.median(time_steps(fn, reps, min(3, reps), device)) * 1e3


def copy_bandwidth(device: str) -> float:
    """Copy bandwidth in bytes/s (bytes read + written) over a 1 GiB buffer on the GPU, 4 MiB on the CPU."""
    numel = (256 if device == "cuda" else 1) * 1024 * 1024
    src = torch.randn(numel, device=device)
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src), device, 20)
    return 2 * src.numel() * src.element_size() / (ms * 1e-3)


def randn(*shape: int, device: str, dtype: torch.dtype = torch.float32, grad: bool = True) -> torch.Tensor:
    """Standard normal values drawn on the CPU (the CUDA generator refuses draws once a CUDA graph captured from it
    was freed: "Offset increment outside graph capture"), moved to ``device``, a leaf needing grad if ``grad``."""
    return torch.randn(*shape).to(device=device, dtype=dtype).requires_grad_(grad)


def mr_inputs(batch: int, seqlen: int, width: int, taps: int, featurizer_taps: int,
              seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The Hyena-MR walk's inputs for the Gluon experiments (``results/hyena_h200_s29/``, ``_s30/``), drawn by a
    seeded CUDA generator: proj (B, T, 3W) bf16, featurizer taps (KF, 3W) fp32 and an fp32 filter (W / 16, K) shared
    by 16 channels (cast it for a bf16 one)."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    proj = torch.randn(batch, seqlen, 3 * width, device="cuda", dtype=torch.bfloat16, generator=gen)
    feat_t = (torch.randn(3 * width, featurizer_taps, device="cuda", generator=gen) / featurizer_taps**0.5).t()
    return proj, feat_t.contiguous(), torch.randn(width // 16, taps, device="cuda", generator=gen) / taps**0.5


MR_WALK_SHAPES = ((8, 4096, 2048), (1, 32768, 2048), (8, 4096, 4096), (1, 32768, 4096))  # (B, T, W)


def time_mr_walks(variants: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], list[tuple[str, Callable]]],
                  quick: bool = False) -> None:
    """Print kernel ms (CUDA-graph replay) of the MR forward walks that ``variants(proj, feat_t, weight)`` names, at
    ``MR_WALK_SHAPES`` (the first only if ``quick``) with 128 taps shared by 16 channels and featurizers of 3, bf16
    rows, bf16 and fp32 filters, then a table next to the floor (q, k, v read and y written, 2 bytes each) at the
    copy bandwidth measured in the same run: the Gluon experiments' timing (``results/hyena_h200_s30/``, ``_s32/``)."""
    rows, bandwidth = [], copy_bandwidth("cuda")
    print(f"copy bandwidth {bandwidth / 1e12:.2f} TB/s", flush=True)
    for batch, seqlen, width in MR_WALK_SHAPES[:1] if quick else MR_WALK_SHAPES:
        proj, feat_t, w32 = mr_inputs(batch, seqlen, width, 128, 3)
        floor = 8 * batch * seqlen * width / bandwidth * 1e3
        for weight in (w32.bfloat16(), w32):
            for name, fn in variants(proj, feat_t, weight):
                ms = gpu_ms(fn)
                rows.append((f"{batch} x {seqlen} x {width}", str(weight.dtype)[6:], name, ms, ms / floor))
                print(f"time {rows[-1]}", flush=True)
        del proj
    print(f"\n| rows x width | filter | kernel | ms | x floor ({bandwidth / 1e12:.2f} TB/s) |\n|---|---|---|---:|---:|")
    for shape, dtype, name, ms, x in rows:
        print(f"| {shape} | {dtype} | {name} | {ms:.3f} | {x:.2f} |")


def timed(fwd: Callable[[], torch.Tensor], inputs: list[torch.Tensor], dy: torch.Tensor, device: str, reps: int,
          prefix: str) -> dict[str, float]:
    """Forward (no grad) and forward+backward medians of ``fwd``; gradients of ``inputs`` against ``dy``."""
    def forward() -> None:
        with torch.no_grad():
            fwd()

    def forward_backward() -> None:
        torch.autograd.grad(fwd(), inputs, dy)

    found = {f"{prefix}_fwd_ms": median_ms(forward, device, reps),
             f"{prefix}_fwd_bwd_ms": median_ms(forward_backward, device, reps)}
    if device == "cuda":  # the GPU work alone: the events above also hold the host's launch time
        for mode, step in (("fwd", forward), ("fwd_bwd", forward_backward)):
            try:
                found[f"{prefix}_{mode}_kernel_ms"] = gpu_ms(step)
            except Exception as err:  # an operator that cannot be captured keeps its per-call time
                found[f"{prefix}_{mode}_kernel_error"] = f"{type(err).__name__}: {err}".splitlines()[0][:300]
    return found


def hyena_mixer(variant: str, width: int, taps: int, device: str, dtype: torch.dtype) -> PhalanxHyenaMixer:
    """A Hyena-SE / -MR mixer with filters shared by 16 channels (as StripedHyena 2)."""
    config = PhalanxConfig(
        vocab_size=256, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=1,
        num_attention_heads=max(1, width // 128), layer_types=[variant], hyena_filter_groups=width // 16,
        **({"hyena_se_len": taps} if variant == "hyena_se" else {"hyena_mr_len": taps}),
    )
    mixer = PhalanxHyenaMixer(config, 0)
    mixer.init_filters()
    return mixer.to(device=device, dtype=dtype)


def bench_shape(width: int, seqlen: int, taps: int, tokens: int, device: str, dtype: torch.dtype, reps: int,
                bandwidth: float) -> dict:
    """One row: FIR alone, the SE (K <= 16) or MR mixer core on both paths, the Phalanx core, and floors."""
    batch = max(1, tokens // seqlen)
    row: dict = {"width": width, "seqlen": seqlen, "batch": batch, "taps": taps, "dtype": str(dtype)}
    scale = batch * seqlen * width / bandwidth * 1e3  # ms per byte per token-channel
    kernels = device == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"  # the interpreter runs them on the CPU
    x = randn(batch, seqlen, width, device=device, dtype=dtype)
    weight = randn(width, taps, device=device)
    dy = randn(*x.shape, device=device, dtype=dtype, grad=False)
    if kernels:
        from phalanx_kernels.fir_ops import causal_fir, hyena_core

        row.update(timed(lambda: causal_fir(x, weight)[0], [x, weight], dy, device, reps, "fir"))
    row.update(fir_floor_fwd_ms=4 * scale, fir_floor_fwd_bwd_ms=10 * scale)

    variant = "hyena_se" if taps <= 16 else "hyena_mr"
    mixer = hyena_mixer(variant, width, taps, device, dtype)
    proj = randn(batch, seqlen, 3 * width, device=device, dtype=dtype)
    params = [proj, mixer.featurizer, mixer.filter_taps]
    row["mixer"] = variant
    if kernels:
        row.update(timed(lambda: mixer._kernel_path(proj, None, None, False)[0], params, dy, device, reps, "mixer"))
        # A filter per channel (no sharing, so no tensor cores): the direct kernels.
        inputs = [proj, mixer.featurizer, randn(width, taps, device=device)]
        row.update(timed(lambda: hyena_core(*inputs), inputs, dy, device, reps, "mixer_per_channel"))
    row.update(timed(lambda: mixer._core(proj, None, None, False)[0], params, dy, device, reps, "mixer_torch"))
    row.update(mixer_floor_fwd_ms=8 * scale, mixer_floor_fwd_bwd_ms=22 * scale)

    heads = width // 16
    core_proj = randn(batch, seqlen, heads + 3 * width, device=device, dtype=dtype)
    kw = dict(num_heads=heads, head_dim=16, num_gate_groups=heads)
    row.update(timed(lambda: phalanx_kernels.phalanx_core(core_proj, **kw), [core_proj], dy, device, reps,
                     "phalanx_core"))
    for name, floor in (("fir", "fir"), ("mixer", "mixer"), ("mixer_per_channel", "mixer")):
        for mode in ("fwd", "fwd_bwd"):
            for kind in ("", "_kernel"):
                if f"{name}_{mode}{kind}_ms" in row:
                    row[f"{name}_{mode}{kind}_x_floor"] = row[f"{name}_{mode}{kind}_ms"] / row[f"{floor}_floor_{mode}_ms"]
    return row


PEERS = ("gla", "gated_deltanet", "mlstm", "swa512_flex", "hyena_li")  # Hyena-LI last: its fwd+bwd capture failed
# once on the H200 and left the CUDA context unable to capture the peers after it (hyena_h200_s20/call2)
PEER_HEAD_DIM = 128


def peer_case(name: str, batch: int, seqlen: int, heads: int, device: str, dtype: torch.dtype
              ) -> tuple[Callable[[], torch.Tensor], list[torch.Tensor]] | str:
    """Peer operator ``name`` as (forward, input leaves) on random inputs, or why it cannot run here."""
    shape = (batch, seqlen, heads, PEER_HEAD_DIM)  # FLA's layout; mLSTM and FlexAttention take (B, H, T, D)

    def leaf(values: torch.Tensor) -> torch.Tensor:
        return values.to(device).detach().requires_grad_()

    if name == "hyena_li":  # ours, on the model's training path (the featurizers, then the FFT convolution)
        mixer = hyena_mixer("hyena_li", heads * PEER_HEAD_DIM, 2, device, dtype)
        proj = randn(batch, seqlen, 3 * mixer.width, device=device, dtype=dtype)
        path = mixer._kernel_path if mixer.fir is not None and device == "cuda" else mixer._core
        params = [proj, mixer.featurizer, mixer.log_rates, mixer.residues, mixer.direct]
        return lambda: path(proj, None, None, False)[0], params
    try:
        if name == "gla":
            from fla.ops.gla import chunk_gla as op
        elif name == "gated_deltanet":
            from fla.ops.gated_delta_rule import chunk_gated_delta_rule as op
        elif name == "mlstm":
            op = mlstm_kernel("sigmoid", PEER_HEAD_DIM, PEER_HEAD_DIM)
            if op is None and importlib.util.find_spec("mlstm_kernels") is not None:
                below = ".".join(map(str, MLSTM_KERNEL_TRITON_BELOW))
                return f"off: wrong values when Triton >= {below} compiles it (docs/mlstm.md)"
            if op is None:
                return "not installed"
        else:
            from bench_layer import flex_swa
    except ImportError:
        return "not installed"
    if device != "cuda":
        return "needs CUDA"
    q, k, v = (leaf(torch.randn(*shape, dtype=dtype)) for _ in range(3))
    if name == "gla":
        g = leaf(F.logsigmoid(torch.randn(*shape)).div(16).to(dtype))  # per-channel log forget gate
        return lambda: op(q, k, v, g)[0], [q, k, v, g]
    if name == "gated_deltanet":
        g = leaf(F.logsigmoid(torch.randn(shape[:3]) + 4))  # per-head log decay, float32
        beta = leaf(torch.rand(shape[:3], dtype=dtype))
        return lambda: op(q, k, v, g, beta, use_qk_l2norm_in_kernel=True)[0], [q, k, v, g, beta]
    q, k, v = (leaf(t.transpose(1, 2)) for t in (q, k, v))
    if name == "mlstm":
        i_pre = leaf(torch.randn(batch, heads, seqlen) - 3)  # float32 gate pre-activations, as the mixer passes
        f_pre = leaf(torch.randn(batch, heads, seqlen) + 4)
        return lambda: op(q, k, v, i_pre, f_pre, chunk_size=128, autocast_kernel_dtype=dtype), [q, k, v, i_pre, f_pre]
    attn = flex_swa(seqlen)
    return lambda: attn(q, k, v), [q, k, v]


def bench_peers(width: int, seqlen: int, tokens: int, device: str, dtype: torch.dtype, reps: int,
                names: tuple[str, ...] = PEERS) -> dict:
    """One row of peer timings (``names``, of ``PEERS``) at width ``width`` = heads x 128."""
    batch = max(1, tokens // seqlen)
    heads = max(1, width // PEER_HEAD_DIM)
    row: dict = {"width": width, "seqlen": seqlen, "batch": batch, "heads": heads, "head_dim": PEER_HEAD_DIM}
    for name in names:
        began = time.perf_counter()
        try:
            case = peer_case(name, batch, seqlen, heads, device, dtype)
            if isinstance(case, str):  # why it cannot run here
                row[name] = case
            else:
                fwd, inputs = case
                with torch.no_grad():  # the output's shape and dtype; no autograd graph kept alive into the captures
                    out = fwd()
                row.update(timed(fwd, inputs, randn(*out.shape, device=device, dtype=out.dtype, grad=False), device,
                                 reps, name))
        except Exception as err:  # one peer failing (version, memory) must not lose the other measurements
            row[name] = f"{type(err).__name__}: {err}".splitlines()[0][:300]
        if device == "cuda":
            torch.cuda.empty_cache()
        row[f"{name}_seconds"] = round(time.perf_counter() - began, 1)  # compiling and autotuning included
    return row


def pair(r: dict, name: str, kind: str = "") -> str:
    """``fwd / fwd+bwd`` milliseconds of ``name`` (``kind`` "_kernel": GPU work only), "-" when not measured."""
    fwd, both = (r.get(f"{name}_{mode}{kind}_ms") for mode in ("fwd", "fwd_bwd"))
    return "-" if fwd is None and both is None else " / ".join("-" if t is None else f"{t:.3f}" for t in (fwd, both))


def format_table(rows: list[dict]) -> str:
    """Kernel-path times against the floors, the PyTorch path, and the Phalanx core ("-": not run on this device):
    per call (CUDA events, host launch included) and, on the GPU, the kernels' own time."""
    lines = ["| W | T x B | K | FIR fwd / fwd+bwd ms (call; kernels) | mixer fwd / fwd+bwd ms (call; kernels) | floor "
             "| x floor fwd (call; kernels) | per-channel filters (GPU: kernels) | PyTorch mixer (GPU: kernels) | Phalanx core "
             "(GPU: kernels) |", "|---:|---|---:|---|---|---|---:|---|---|---|"]
    for r in rows:
        ratio = "; ".join(f"{r[k]:.2f}" for k in ("mixer_fwd_x_floor", "mixer_fwd_kernel_x_floor") if k in r) or "-"
        floor = f"{r['mixer_floor_fwd_ms']:.3f} / {r['mixer_floor_fwd_bwd_ms']:.3f}"
        kern = "_kernel" if "mixer_torch_fwd_kernel_ms" in r else ""
        lines.append(
            f"| {r['width']} | {r['seqlen']} x {r['batch']} | {r['taps']} | {pair(r, 'fir')}; {pair(r, 'fir', '_kernel')} "
            f"| {pair(r, 'mixer')}; {pair(r, 'mixer', '_kernel')} | {floor} | {ratio} | "
            f"{pair(r, 'mixer_per_channel', kern)} | {pair(r, 'mixer_torch', kern)} | {pair(r, 'phalanx_core', kern)} |"
        )
    return "\n".join(lines)


def format_peer_table(rows: list[dict]) -> str:
    """Peer times (the kernels' own on the GPU, else per call), or why a peer did not run."""
    def cell(r: dict, name: str) -> str:
        if name + "_fwd_ms" not in r:
            return r[name]
        return pair(r, name, "_kernel" if name + "_fwd_kernel_ms" in r else "")

    names = [name for name in PEERS if any(name in r or name + "_fwd_ms" in r for r in rows)]
    lines = ["| W (heads x 128) | T x B | " + " | ".join(f"{name} fwd / fwd+bwd ms" for name in names) + " |",
             "|---:|---|" + "---|" * len(names)]
    for r in rows:
        peers = " | ".join(cell(r, name) for name in names)
        lines.append(f"| {r['width']} ({r['heads']} x {r['head_dim']}) | {r['seqlen']} x {r['batch']} | {peers} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> tuple[list[dict], list[dict]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--size", choices=tuple(SIZES), default="full")
    parser.add_argument("--reps", type=int, default=None, help="timed calls per measurement (50 GPU, 3 CPU)")
    parser.add_argument("--json", help="write the raw results here")
    parser.add_argument("--widths", type=int, nargs="+", help="these widths instead of the size's")
    parser.add_argument("--lengths", type=int, nargs="+", help="these lengths instead of the size's")
    parser.add_argument("--parts", nargs="+", choices=("hyena", "peers"), default=["hyena", "peers"],
                        help="the Hyena rows, the peers, or both (a short GPU call measures one part)")
    parser.add_argument("--peers", nargs="+", choices=PEERS, default=list(PEERS), help="these peers only")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda needs a CUDA GPU (use --device cpu --size tiny for a smoke run)")
    size = SIZES[args.size]
    reps = args.reps or (50 if args.device == "cuda" else 3)
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    bandwidth = copy_bandwidth(args.device)
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    rows: list[dict] = []
    peers: list[dict] = []
    began = time.perf_counter()

    def save() -> None:  # after every row, so a run cut short keeps what it measured
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"device": name, "torch": torch.__version__, "copy_bandwidth": bandwidth, "rows": rows,
                           "peers": peers}, f, indent=1)

    # Each shape's Hyena rows, then its peers: a run cut short compares what it has.
    for width in args.widths or size["widths"]:
        for seqlen in args.lengths or size["lengths"]:
            for taps in size["taps"] if "hyena" in args.parts else ():
                rows.append(bench_shape(width, seqlen, taps, size["tokens"], args.device, dtype, reps, bandwidth))
                rows[-1]["elapsed_s"] = round(time.perf_counter() - began, 1)  # where a run's time goes
                save()
            if "peers" in args.parts:
                peers.append(bench_peers(width, seqlen, size["tokens"], args.device, dtype, reps, tuple(args.peers)))
                peers[-1]["elapsed_s"] = round(time.perf_counter() - began, 1)
                save()
    print(f"{name}  torch {torch.__version__}  copy {bandwidth / 1e12:.3f} TB/s")
    print(format_table(rows))
    print(format_peer_table(peers))
    return rows, peers


if __name__ == "__main__":
    main()
