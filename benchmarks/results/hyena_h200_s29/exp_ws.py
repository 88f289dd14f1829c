"""Issue 20, prepared in session 29 for the next device call (none was lent after call 2): a warp-specialized Gluon
Hyena-MR forward for bf16 filters with programs of 32 or 64 channels, one warpgroup partition for each 16 channels
(its own filter group, z, q and y), the stages of q, k, v rows shared and tied to the warpgroups only by mbarriers.

Why: call 1 showed that 32- and 64-channel programs whose warps share CTA barriers are slower than 16-channel ones
(0.231 / 0.334 ms against 0.209), while Nsight Compute on the 16-channel walk (calls 2 and session 28's call 4) puts
the L2's tag lookups at 81-82% of their peak with 32-byte rows, and halving the walk's instructions (call 2) did not
move its time. Wider rows with warpgroups that do not wait for one another test both at once. Builds for sm_90
under Triton 3.6 and 3.9 (offline: 213,244 / 106,740 bytes of shared memory for 64 / 32 channels, 128 registers,
no spills); not yet run. ``../hyena_h200_s30/run.sh ws`` checks it bitwise against the Triton walk (under a timeout,
in case an mbarrier phase is wrong), times it (``ab_ws.py``) and profiles it (``../hyena_h200_s30/ncu_perm.py``).

Warpgroup 0 refills a stage for iteration i + 1 once all warpgroups have arrived on its ``empty`` mbarrier after
iteration i - 1 (a fresh mbarrier passes a wait on parity 1, so the first refill does not wait).
"""
import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, mbarrier, tma, warpgroup_mma_wait

from phalanx_kernels.gluon_fir import (BLOCK_T, MAXNREG, MIN_ROWS, _cta_barrier, _featurize, _issue, _push, _tap,
                                       _tile, _tma_store, _toeplitz, descriptors)


@gluon.jit
def _mr_partition(PD, BD, YD, FT, HG, lo, start, n, col, b, rows, bnds, z_all, q_all, y_all, ready, empty,
                  W: gl.constexpr, KF: gl.constexpr, K: gl.constexpr, D: gl.constexpr, BT: gl.constexpr,
                  BC: gl.constexpr, wg: gl.constexpr):
    """Warpgroup wg of ``_hyena_mr_ws_kernel``: the walk of channels [col + 16 wg, + 16) with their filter over the
    stages that all warpgroups share, its own z, q and y in shared memory; warpgroup 0 also refills the stages,
    each once every warpgroup has released it (``empty``). Only mbarriers tie the warpgroups together, so each runs
    at its own pace within a stage of the others."""
    RT: gl.constexpr = 2 * BT
    acc_l: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, 16, 16])
    a_l: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=acc_l, k_width=2)
    rl: gl.constexpr = gl.BlockedLayout([1, 1, 1, 2], [1, 4, 1, 8], [4, 1, 1, 1], [3, 2, 1, 0])
    c0 = col + 16 * wg
    h0 = _toeplitz(HG, c0 // D, 0, K, BT, a_l).to(gl.bfloat16)
    h1 = _toeplitz(HG, c0 // D, 1, K, BT, a_l).to(gl.bfloat16)
    h2 = _toeplitz(HG, c0 // D, 2, K, BT, a_l).to(gl.bfloat16)
    qf0 = _tap(FT, 0, 0, c0, W, KF, 16, rl)
    qf1 = _tap(FT, 0, 1, c0, W, KF, 16, rl)
    qf2 = _tap(FT, 0, 2, c0, W, KF, 16, rl)
    kf0 = _tap(FT, 1, 0, c0, W, KF, 16, rl)
    kf1 = _tap(FT, 1, 1, c0, W, KF, 16, rl)
    kf2 = _tap(FT, 1, 2, c0, W, KF, 16, rl)
    vf0 = _tap(FT, 2, 0, c0, W, KF, 16, rl)
    vf1 = _tap(FT, 2, 1, c0, W, KF, 16, rl)
    vf2 = _tap(FT, 2, 2, c0, W, KF, 16, rl)
    z_s = z_all.index(wg)
    q_s = q_all.index(wg)
    y_s = y_all.index(wg)
    c1 = gl.zeros([BT, 16], gl.float32, acc_l)
    c2 = gl.zeros([BT, 16], gl.float32, acc_l)
    for i in range(n):
        t0 = start + i * RT
        stage = i % 2
        if wg == 0:  # refill the other stage for iteration i + 1 once iteration i - 1 has left it everywhere
            mbarrier.wait(empty.index(1 - stage), ((i + 1) // 2 + 1) & 1)
            _issue(PD, BD, rows, bnds, ready.index(1 - stage), 1 - stage, b, t0 + RT, col, KF, RT, BC, i + 1 < n,
                   W)
        mbarrier.wait(ready.index(stage), (i // 2) & 1)
        for h in gl.static_range(2):
            k0, k1, k2, k3 = _featurize(rows, bnds, stage, kf0, kf1, kf2, 1, h, KF, RT, BC, 16 * wg, rl)
            v0, v1, v2, v3 = _featurize(rows, bnds, stage, vf0, vf1, vf2, 2, h, KF, RT, BC, 16 * wg, rl)
            z_s.reshape([RT // 16, 4, 4, 16]).slice(4 * h, 4).store(_tile(k0 * v0, k1 * v1, k2 * v2, k3 * v3)
                                                                    .to(gl.bfloat16))
        out = t0 >= lo
        if out:
            for h in gl.static_range(2):
                q0, q1, q2, q3 = _featurize(rows, bnds, stage, qf0, qf1, qf2, 0, h, KF, RT, BC, 16 * wg, rl)
                q_s.slice(4 * h, 4).store(_tile(q0, q1, q2, q3))
            tma.store_wait(0)
        fence_async_shared()  # this warpgroup's reads of the stage and writes of z come before the async proxy's
        mbarrier.arrive(empty.index(stage), count=1)
        _cta_barrier()  # the warpgroup's own barrier inside a partition
        zeros = gl.zeros([BT, 16], gl.float32, acc_l)
        acc, c1, c2 = _push(h0, h1, h2, z_s, z_s.slice(0, BT), c1, c2, zeros, False)
        acc_b, c1, c2 = _push(h0, h1, h2, z_s, z_s.slice(BT, BT), c1, c2, zeros, False)
        acc, acc_b, c1, c2 = warpgroup_mma_wait(0, deps=(acc, acc_b, c1, c2))
        if out:
            y_rows = y_s.reshape([RT, 16])
            q_rows = q_s.reshape([RT, 16])
            y_rows.slice(0, BT).store((q_rows.slice(0, BT).load(acc_l) * acc).to(gl.bfloat16))
            y_rows.slice(BT, BT).store((q_rows.slice(BT, BT).load(acc_l) * acc_b).to(gl.bfloat16))
            fence_async_shared()
            _cta_barrier()
            _tma_store(YD, [b, t0, c0], y_s)
    tma.store_wait(0)


@gluon.jit
def _hyena_mr_ws_kernel(PD, BD, YD, FT, HG, T, W: gl.constexpr, KF: gl.constexpr, K: gl.constexpr,
                        D: gl.constexpr, L: gl.constexpr, BT: gl.constexpr, BC: gl.constexpr,
                        num_warps: gl.constexpr):
    """``_hyena_mr_gluon_kernel``'s walk for a bf16 filter with programs of BC = 32 or 64 channels, one warpgroup
    (a warp-specialized partition) for each 16 (``_mr_partition``), so that one TMA row brings 64 or 128 bytes
    where a 16-channel program's brings 32 (each an L2 request). YD's boxes are one warpgroup's 16 channels."""
    G: gl.constexpr = BC // 16
    gl.static_assert((BT == 64) & ((G == 2) | (G == 4)) & (num_warps == 4))
    gl.static_assert(K <= 2 * BT + 1)
    gl.static_assert(KF <= 3)  # MAX_FEATURIZER_TAPS
    RT: gl.constexpr = 2 * BT
    gl.static_assert(L % RT == 0)
    lo = gl.program_id(0) * L
    col = gl.program_id(1) * BC
    b = gl.program_id(2)
    start = gl.maximum(lo - 2 * BT, 0)
    n = gl.cdiv(gl.minimum(lo + L, T) - start, RT)
    rows = gl.allocate_shared_memory(gl.bfloat16, [2, 1, 4, RT, BC], PD.layout)
    bnds = gl.allocate_shared_memory(gl.bfloat16, [2, 1, 4, RT // 16, 2, BC], BD.layout)
    z_all = gl.allocate_shared_memory(gl.bfloat16, [G, RT, 16], gl.NVMMASharedLayout.get_default_for([RT, 16],
                                                                                                     gl.bfloat16))
    q_all = gl.allocate_shared_memory(gl.float32, [G, RT // 16, 4, 4, 16], gl.SwizzledSharedLayout(1, 1, 1,
                                                                                                   [3, 2, 1, 0]))
    y_all = gl.allocate_shared_memory(gl.bfloat16, [G, 1, RT, 16], YD.layout)
    ready = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    for s in gl.static_range(2):
        mbarrier.init(ready.index(s), count=1)
        mbarrier.init(empty.index(s), count=G)
    _issue(PD, BD, rows, bnds, ready.index(0), 0, b, start, col, KF, RT, BC, True, W)
    if G == 2:
        gl.warp_specialize([
            (_mr_partition, (PD, BD, YD, FT, HG, lo, start, n, col, b, rows, bnds, z_all, q_all, y_all, ready, empty,
                             W, KF, K, D, BT, BC, 0)),
            (_mr_partition, (PD, BD, YD, FT, HG, lo, start, n, col, b, rows, bnds, z_all, q_all, y_all, ready, empty,
                             W, KF, K, D, BT, BC, 1)),
        ], [4], [128])  # MAXNREG
    else:
        gl.warp_specialize([
            (_mr_partition, (PD, BD, YD, FT, HG, lo, start, n, col, b, rows, bnds, z_all, q_all, y_all, ready, empty,
                             W, KF, K, D, BT, BC, 0)),
            (_mr_partition, (PD, BD, YD, FT, HG, lo, start, n, col, b, rows, bnds, z_all, q_all, y_all, ready, empty,
                             W, KF, K, D, BT, BC, 1)),
            (_mr_partition, (PD, BD, YD, FT, HG, lo, start, n, col, b, rows, bnds, z_all, q_all, y_all, ready, empty,
                             W, KF, K, D, BT, BC, 2)),
            (_mr_partition, (PD, BD, YD, FT, HG, lo, start, n, col, b, rows, bnds, z_all, q_all, y_all, ready, empty,
                             W, KF, K, D, BT, BC, 3)),
        ], [4, 4, 4], [128, 128, 128])  # MAXNREG


def launch_ws(proj: torch.Tensor, feat_t: torch.Tensor, weight: torch.Tensor, rows_per_program: int = 4096,
              warpgroups: int = 4) -> torch.Tensor:
    """``gluon_fir.launch_mr_forward`` for a bf16 filter with ``warpgroups`` (2 or 4) 16-channel warpgroups a
    program."""
    batch, seqlen, features = proj.shape
    width = features // 3
    groups, taps = weight.shape
    if weight.dtype != torch.bfloat16 or warpgroups not in (2, 4) or width % (16 * warpgroups):
        raise ValueError(f"a bf16 filter and 2 or 4 warpgroups that divide the {width} channels, got {weight.dtype}, "
                         f"{warpgroups}")
    if rows_per_program % (2 * BLOCK_T) or seqlen < MIN_ROWS:
        raise ValueError(f"rows_per_program a multiple of {2 * BLOCK_T} and at least {MIN_ROWS} rows, got "
                         f"{rows_per_program}, {seqlen}")
    y = proj.new_empty(batch, seqlen, width)
    _hyena_mr_ws_kernel[(triton.cdiv(seqlen, rows_per_program), width // (16 * warpgroups), batch)](
        *descriptors(proj, y, 2 * BLOCK_T, 16 * warpgroups), feat_t.float().contiguous(), weight.contiguous(), seqlen,
        W=width, KF=feat_t.shape[0], K=taps, D=width // groups, L=rows_per_program, BT=BLOCK_T, BC=16 * warpgroups,
        num_warps=4, maxnreg=MAXNREG,
    )
    return y
