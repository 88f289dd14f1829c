"""Experiment (issue 20, session 25): the Hyena-MR forward walk with its projection rows loaded by TMA (Triton
tensor descriptors) instead of pointer loads through L1, whose tag requests bound the walk (hyena_h200_s24/). proj
(B, T, 3W) is described as (B, T / 4, 4, 3W): a box at (batch, row group, phase, channel) holds the rows 4s + phase
that the featurizers' phase tiles use, and rows outside a batch row are zero-filled by the copy engine. Variants:
a box per phase tile (6 an input), or one box of a tile's four phases and one of the two phases before (PH4), or
one box of q, k and v (QKV: proj as (B, T / 4, 4, 3, W), a 4-slot box with one zero slot); each strand its own box
(joined in registers) or one box of NS batch rows (BOX); y stored through pointers or by TMA (TMA_STORE); 1-3
stages; register cap 128 or none. Not adopted: Triton waits for each TMA copy before the next (36 waits a tile with
a box per phase tile: 1.48 ms), and the fewest waits (QKV + BOX, 2 a tile) still took 0.39 ms against 0.284 for
the pointer walk, the boxes' shared-memory reads and the permutes that split them costing more than the L1 tag
requests they save (README.md). Run from the repository root with the project installed:
``python benchmarks/results/hyena_h200_s25/exp_mr_tma.py`` (GPU: checks, then times), or
``TRITON_INTERPRET=1 python ... check`` (CPU: every variant's output equals the pointer walk's)."""
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # benchmarks/, for bench_swr
from phalanx_kernels import fir_ops  # noqa: E402
from phalanx_kernels.triton_fir import (  # noqa: E402
    _featurize_phases, _mr_push, _walk_from, _walk_program)


@triton.jit
def _strand_box(PD, s: tl.constexpr, t0, shift: tl.constexpr, phase: tl.constexpr, col, T, NS: tl.constexpr,
                SEGS: tl.constexpr):
    """Box of strand s at row group ``(t0 + segment start) / 4 + shift``, from ``phase``, its leading 1 dropped."""
    strand = tl.program_id(2) * NS + s
    seg = (strand % SEGS) * (T // SEGS)
    x = PD.load([strand // SEGS, (seg + t0) // 4 + shift, phase, col])
    return tl.reshape(x, x.shape[1:])


@triton.jit
def _tma_box(PD, t0, shift: tl.constexpr, phase: tl.constexpr, col, T, NS: tl.constexpr, SEGS: tl.constexpr,
             BOX: tl.constexpr):
    """(S, P, NS * BC) boxes of the program's strands side by side: rows ``t0 + 4 (s + shift) + phase + p``."""
    if BOX:
        x = PD.load([tl.program_id(2) * NS, t0 // 4 + shift, phase, col])  # (NS, S, P, BC)
        x = tl.reshape(tl.permute(x, (1, 2, 0, 3)), (x.shape[1], x.shape[2], NS * x.shape[3]))
    else:
        x = _strand_box(PD, 0, t0, shift, phase, col, T, NS, SEGS)
        if NS == 2:
            x1 = _strand_box(PD, 1, t0, shift, phase, col, T, NS, SEGS)
            x = tl.reshape(tl.permute(tl.join(x, x1), (0, 1, 3, 2)), (x.shape[0], x.shape[1], 2 * x.shape[2]))
        elif NS == 4:
            x1 = _strand_box(PD, 1, t0, shift, phase, col, T, NS, SEGS)
            x2 = _strand_box(PD, 2, t0, shift, phase, col, T, NS, SEGS)
            x3 = _strand_box(PD, 3, t0, shift, phase, col, T, NS, SEGS)
            x = tl.reshape(tl.permute(tl.join(tl.join(x, x2), tl.join(x1, x3)), (0, 1, 3, 4, 2)),
                           (x.shape[0], x.shape[1], 4 * x.shape[2]))
    return x


@triton.jit
def _qkv_strand(PQ, s: tl.constexpr, t0, shift: tl.constexpr, phase: tl.constexpr, col, T, NS: tl.constexpr,
                SEGS: tl.constexpr):
    strand = tl.program_id(2) * NS + s
    seg = (strand % SEGS) * (T // SEGS)
    x = PQ.load([strand // SEGS, (seg + t0) // 4 + shift, phase, 0, col])
    return tl.reshape(x, x.shape[1:])


@triton.jit
def _qkv_box(PQ, t0, shift: tl.constexpr, phase: tl.constexpr, T, NS: tl.constexpr, SEGS: tl.constexpr,
             BC: tl.constexpr, BOX: tl.constexpr):
    """(S, P, 4, NS * BC): rows ``t0 + 4 (s + shift) + phase + p`` of q, k, v (and a zero slot), strands side by
    side."""
    col = tl.program_id(1) * BC
    if BOX:
        x = PQ.load([tl.program_id(2) * NS, t0 // 4 + shift, phase, 0, col])  # (NS, S, P, 4, BC)
        x = tl.reshape(tl.permute(x, (1, 2, 3, 0, 4)), (x.shape[1], x.shape[2], 4, NS * BC))
    else:
        tl.static_assert(NS <= 2)
        x = _qkv_strand(PQ, 0, t0, shift, phase, col, T, NS, SEGS)
        if NS == 2:
            x1 = _qkv_strand(PQ, 1, t0, shift, phase, col, T, NS, SEGS)
            x = tl.reshape(tl.permute(tl.join(x, x1), (0, 1, 2, 4, 3)), (x.shape[0], x.shape[1], 4, 2 * BC))
    return x


@triton.jit
def _tma_rows(PD, t0, shift: tl.constexpr, phase: tl.constexpr, col, T, NS: tl.constexpr, SEGS: tl.constexpr,
              BOX: tl.constexpr):
    """(S, NS * BC) rows ``t0 + 4 (s + shift) + phase`` of the program's strands (boxes of one phase)."""
    x = _tma_box(PD, t0, shift, phase, col, T, NS, SEGS, BOX)
    return tl.reshape(x, (x.shape[0], x.shape[2]))


@triton.jit
def _featurize_tma(PD, PD4, PD2, P, FT, t0, srow, lower, end, cols, mask_c, base, T, OFF: tl.constexpr,
                   W: tl.constexpr, KF: tl.constexpr, NS: tl.constexpr, SEGS: tl.constexpr, BC: tl.constexpr,
                   BOX: tl.constexpr, PH4: tl.constexpr):
    col = OFF + tl.program_id(1) * BC
    if PH4:  # one box of the tile's rows (S, 4, N), one of the two rows before each row group (S, 2, N)
        x0, x1, x2, x3 = _phases_of(_tma_box(PD4, t0, 0, 0, col, T, NS, SEGS, BOX))
        u2, u1 = tl.split(tl.permute(_tma_box(PD2, t0, -1, 2, col, T, NS, SEGS, BOX), (0, 2, 1)))
    else:
        x0 = _tma_rows(PD, t0, 0, 0, col, T, NS, SEGS, BOX)
        x1 = _tma_rows(PD, t0, 0, 1, col, T, NS, SEGS, BOX)
        x2 = _tma_rows(PD, t0, 0, 2, col, T, NS, SEGS, BOX)
        x3 = _tma_rows(PD, t0, 0, 3, col, T, NS, SEGS, BOX)
        u1 = x3
        u2 = x3
        if KF > 1:
            u1 = _tma_rows(PD, t0, -1, 3, col, T, NS, SEGS, BOX)
        if KF > 2:
            u2 = _tma_rows(PD, t0, -1, 2, col, T, NS, SEGS, BOX)
    return _featurize_phases(P, FT, srow, x0, x1, x2, x3, u1, u2, lower, lower, lower, lower, end, cols, mask_c,
                             base, OFF, W, KF, False)


@triton.jit
def _phases_of(xs):
    """The four phase tiles (S, N) of a (S, 4, N) box."""
    xa, xb = tl.split(tl.permute(tl.reshape(xs, (xs.shape[0], 2, 2, xs.shape[2])), (0, 3, 1, 2)))
    x0, x2 = tl.split(xa)
    x1, x3 = tl.split(xb)
    return x0, x1, x2, x3


@triton.jit
def _qkv_of(x):
    """q, k, v (S, P, N) of a (S, P, 4, N) box of the three inputs (and a zero slot)."""
    qv, kz = tl.split(tl.permute(tl.reshape(x, (x.shape[0], x.shape[1], 2, 2, x.shape[3])), (0, 1, 4, 2, 3)))
    q, v = tl.split(qv)
    k, _ = tl.split(kz)
    return q, k, v


@triton.jit
def _featurize_box(xs, us, P, FT, srow, lower, end, cols, mask_c, base, OFF: tl.constexpr, W: tl.constexpr,
                   KF: tl.constexpr):
    x0, x1, x2, x3 = _phases_of(xs)
    u2, u1 = tl.split(tl.permute(us, (0, 2, 1)))
    return _featurize_phases(P, FT, srow, x0, x1, x2, x3, u1, u2, lower, lower, lower, lower, end, cols, mask_c,
                             base, OFF, W, KF, False)


@triton.jit
def _store_strand(YD, s: tl.constexpr, t0, y, T, NS: tl.constexpr, SEGS: tl.constexpr, BT: tl.constexpr,
                  BC: tl.constexpr):
    strand = tl.program_id(2) * NS + s
    YD.store([strand // SEGS, (strand % SEGS) * (T // SEGS) + t0, tl.program_id(1) * BC], tl.reshape(y, (1, BT, BC)))


@triton.jit
def _hyena_mr_tma_kernel(
    PD, PD4, PD2, PQ, PQU, YD, P, FT, HG, Y, SEQ, CU, T, NBATCH,
    W: tl.constexpr, KF: tl.constexpr, K: tl.constexpr, D: tl.constexpr, NB: tl.constexpr,
    L: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr, NS: tl.constexpr, SEGS: tl.constexpr,
    BOX: tl.constexpr, TMA_STORE: tl.constexpr, PH4: tl.constexpr,
    QKV: tl.constexpr,
):
    tl.static_assert(KF <= 3)
    dt = Y.dtype.element_ty
    lo, hi, cols, mask_c, base, ybase, first, end, group, h0, l0, h1, l1, h2, l2 = _walk_program(
        HG, T, NBATCH, W, K, D, L, BT, BC, NS, SEGS, dt)
    offs = tl.arange(0, BT)
    lower = first[None, :]
    c1 = tl.zeros((BT, NS * BC), dtype=tl.float32)
    c2 = tl.zeros((BT, NS * BC), dtype=tl.float32)
    for t0 in range(_walk_from(lo, (NB - 1) * BT, SEGS), hi, BT):
        srow = t0 + tl.arange(0, BT // 4) * 4
        if QKV:  # one box of the tile's rows of q, k, v, one of the two rows before each row group
            qs, ks, vs = _qkv_of(_qkv_box(PQ, t0, 0, 0, T, NS, SEGS, BC, BOX))
            qu, ku, vu = _qkv_of(_qkv_box(PQU, t0, -1, 2, T, NS, SEGS, BC, BOX))
            z = (_featurize_box(ks, ku, P, FT, srow, lower, end, cols, mask_c, base, W, W, KF)
                 * _featurize_box(vs, vu, P, FT, srow, lower, end, cols, mask_c, base, 2 * W, W, KF)).to(dt)
        else:
            z = (_featurize_tma(PD, PD4, PD2, P, FT, t0, srow, lower, end, cols, mask_c, base, T, W, W, KF, NS,
                                SEGS, BC, BOX, PH4)
                 * _featurize_tma(PD, PD4, PD2, P, FT, t0, srow, lower, end, cols, mask_c, base, T, 2 * W, W, KF, NS,
                                  SEGS, BC, BOX, PH4)).to(dt)
        acc, c1, c2 = _mr_push(HG, group, h0, l0, h1, l1, h2, l2, z, c1, c2, t0, SEQ, CU, T, K, NB, False, BT)
        if t0 >= lo:
            if QKV:
                q = _featurize_box(qs, qu, P, FT, srow, lower, end, cols, mask_c, base, 0, W, KF)
            else:
                q = _featurize_tma(PD, PD4, PD2, P, FT, t0, srow, lower, end, cols, mask_c, base, T, 0, W, KF, NS,
                                   SEGS, BC, BOX, PH4)
            y = (q * acc).to(dt)
            if TMA_STORE:
                if NS == 1:
                    _store_strand(YD, 0, t0, y, T, NS, SEGS, BT, BC)
                elif NS == 2:
                    y0, y1 = tl.split(tl.permute(tl.reshape(y, (BT, 2, BC)), (0, 2, 1)))
                    _store_strand(YD, 0, t0, y0, T, NS, SEGS, BT, BC)
                    _store_strand(YD, 1, t0, y1, T, NS, SEGS, BT, BC)
                else:
                    ya, yb = tl.split(tl.permute(tl.reshape(y, (BT, 2, 2, BC)), (0, 3, 1, 2)))  # [t, c, i], k = 0, 1
                    y0, y2 = tl.split(ya)
                    y1, y3 = tl.split(yb)
                    _store_strand(YD, 0, t0, y0, T, NS, SEGS, BT, BC)
                    _store_strand(YD, 1, t0, y1, T, NS, SEGS, BT, BC)
                    _store_strand(YD, 2, t0, y2, T, NS, SEGS, BT, BC)
                    _store_strand(YD, 3, t0, y3, T, NS, SEGS, BT, BC)
            else:
                rows = t0 + offs
                out = rows.to(tl.int64)[:, None] * W + (ybase + cols)[None, :]
                tl.store(Y + out, y, mask=(rows < hi)[:, None] & mask_c[None, :])


def launch(proj, feat_t, weight, *, strands=2, box=False, tma_store=False, stages=1, maxnreg=128, rows=2048,
           ph4=False, qkv=False):
    """y of the TMA walk (rows not packed, T a multiple of 4, featurizers of <= 3 taps)."""
    B, T, F = proj.shape
    W = F // 3
    groups, taps = weight.shape
    bt = fir_ops.MR_BLOCK_T
    bc = fir_ops.math.gcd(W // groups, 64)
    segs = fir_ops._segments(strands, B, T)
    ns = min(strands, triton.next_power_of_2(B * segs))
    if box and segs > 1:
        raise ValueError("BOX takes strands of whole batch rows")
    y = proj.new_empty(B, T, W)
    shape, strides, nb = [B, T // 4, 4, F], [T * F, 4 * F, F, 1], ns if box else 1
    pd = TensorDescriptor(proj, shape, strides, [nb, bt // 4, 1, bc])
    pd4 = TensorDescriptor(proj, shape, strides, [nb, bt // 4, 4, bc])
    pd2 = TensorDescriptor(proj, shape, strides, [nb, bt // 4, 2, bc])
    shape5, strides5 = [B, T // 4, 4, 3, W], [T * F, 4 * F, F, W, 1]  # q, k, v as a dimension (box 4: one zero slot)
    pq = TensorDescriptor(proj, shape5, strides5, [nb, bt // 4, 4, 4, bc])
    pqu = TensorDescriptor(proj, shape5, strides5, [nb, bt // 4, 2, 4, bc])
    yd = TensorDescriptor(y, [B, T, W], [T * W, W, 1], [1, bt, bc])
    seq, cu = fir_ops._seq_index(None, B * T, proj.device)
    _hyena_mr_tma_kernel[(triton.cdiv(T // segs, rows), W // bc, triton.cdiv(B * segs, ns))](
        pd, pd4, pd2, pq, pqu, yd, proj, feat_t, fir_ops._walk_filter(weight, proj.dtype), y, seq, cu, T, B, W=W, KF=feat_t.shape[0],
        K=taps, D=W // groups, NB=triton.cdiv(taps - 1, bt) + 1, L=rows, BT=bt, BC=bc, NS=ns, SEGS=segs, BOX=box,
        TMA_STORE=tma_store, PH4=ph4, QKV=qkv, num_warps=4, num_stages=stages, maxnreg=maxnreg)
    return y


def check(device, dtype, cases):
    """Largest difference from the pointer walk (same arithmetic: the results should agree exactly)."""
    torch.manual_seed(0)
    for (B, T, C, K), kw in cases:
        proj = torch.randn(B, T, 3 * C, device=device, dtype=dtype)
        feat_t = (torch.randn(3 * C, 3, device=device) / 3**0.5).t().contiguous()
        w = torch.randn(C // 16, K, device=device) / K**0.5
        cap = None if device == "cpu" else 128
        ref = fir_ops._launch_mr_core(proj, feat_t, w, None, strands=kw["strands"], rows_per_program=128, maxnreg=cap)
        got = launch(proj, feat_t, w, rows=128, maxnreg=cap, **kw)
        print(f"check B={B} T={T} C={C} K={K} {kw}: max diff {(ref.float() - got.float()).abs().max().item():.3e}",
              flush=True)


VARIANTS = [dict(strands=ns, box=box, tma_store=True, ph4=True, qkv=qkv, stages=stg, maxnreg=cap)
            for ns, box, qkv, stg, cap in [
                (2, True, False, 2, 128), (2, True, True, 1, 128), (2, True, True, 2, 128), (2, True, True, 3, 128),
                (2, True, True, 2, None), (2, False, True, 2, 128), (1, False, True, 2, 128), (1, False, True, 2, None),
                (4, True, True, 2, None), (4, True, True, 1, None), (2, False, True, 1, 128)]]


if __name__ == "__main__":
    if sys.argv[1:] == ["check"]:
        dev = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.bfloat16 if dev == "cuda" else torch.float16
        check(dev, dtype, [((2, 384, 32, 128), dict(strands=2)), ((1, 512, 32, 100), dict(strands=2, tma_store=True)),
                           ((3, 256, 16, 65), dict(strands=4, tma_store=True, ph4=True)),
                           ((4, 256, 32, 128), dict(strands=2, box=True, tma_store=True, ph4=True)),
                           ((2, 260, 16, 128), dict(strands=1, tma_store=True, ph4=True)),
                           ((1, 1024, 16, 128), dict(strands=4, ph4=True)),
                           ((3, 256, 32, 128), dict(strands=2, qkv=True, tma_store=True)),
                           ((4, 260, 16, 100), dict(strands=2, qkv=True, box=True)),
                           ((1, 512, 16, 128), dict(strands=2, qkv=True)),
                           ((5, 256, 16, 128), dict(strands=4, qkv=True, box=True, tma_store=True))])
        sys.exit()
    from bench_swr import gpu_ms
    check("cuda", torch.bfloat16, [((8, 1024, 256, 128), {k: v for k, v in kw.items() if k in ("strands", "box",
                                   "tma_store", "ph4", "qkv")}) for kw in VARIANTS[:2] + VARIANTS[5:7] + VARIANTS[8:9]]
          + [((1, 4096, 256, 128), dict(strands=2, qkv=True, tma_store=True))])
    B, T, C, K = 8, 4096, 2048, 128
    proj = torch.randn(B, T, 3 * C, device="cuda", dtype=torch.bfloat16)
    feat_t = (torch.randn(3 * C, 3, device="cuda") / 3**0.5).t().contiguous()
    floor = 4 * proj.numel() / 3 * 2 / 4.3e12 * 1e3
    print(f"floor (4.3 TB/s) {floor:.3f} ms")
    print("| filter | variant | ms | x floor |")
    print("|---|---|---:|---:|")
    w = torch.randn(C // 16, K, device="cuda") / K**0.5
    for wt in (w.bfloat16(), w):
        name = "bf16" if wt.dtype == torch.bfloat16 else "fp32"
        ms = gpu_ms(lambda: fir_ops._launch_mr_core(proj, feat_t, wt, None))
        print(f"| {name} | pointer walk (default) | {ms:.3f} | {ms / floor:.2f} |", flush=True)
        for kw in VARIANTS if wt.dtype == torch.bfloat16 else VARIANTS[1:3] + VARIANTS[5:7]:
            label = " ".join(f"{k} {v}" for k, v in kw.items())
            try:
                ms = gpu_ms(lambda: launch(proj, feat_t, wt, **kw))
            except Exception as e:  # noqa: BLE001 - a variant that does not compile is reported, not fatal
                print(f"| {name} | {label} | failed: {type(e).__name__}: {str(e)[:80]} | |", flush=True)
                continue
            print(f"| {name} | {label} | {ms:.3f} | {ms / floor:.2f} |", flush=True)
