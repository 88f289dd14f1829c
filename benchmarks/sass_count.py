"""Compile the SWR kernels for an H100 (sm_90a) without a GPU and count what the machine code does.

Prints, per kernel and launch configuration, the registers per thread, spill bytes and the SASS
instruction mix (warp shuffles, loads, FMAs, ...): the numbers behind the predictions in KERNELS.md.
Needs only Triton with its bundled ptxas/nvdisasm (the GPU machine's Triton 3.6 to match its code;
``pip install triton==3.6.0`` into a scratch virtualenv works on a CPU machine).

    python benchmarks/sass_count.py                        # shape-A defaults: SWR and fused core
    python benchmarks/sass_count.py --hb 4 --vec 8 --fused # another configuration
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import tempfile
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from phalanx_kernels.triton_swr import _swr_bwd_kernel, _swr_fwd_kernel

BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
ALIGNED = {"T"}  # integer arguments Triton specializes as multiples of 16 at shape A


def compile_kernel(fn, types: dict[str, str], consts: dict, num_warps: int):
    """Compile ``fn`` for sm_90a with pointers (and ``ALIGNED`` ints) marked 16-byte aligned, as at launch."""
    sig, cst, attrs = {}, {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in types:
            sig[name] = types[name]
            if types[name].startswith("*") or name in ALIGNED:
                attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            sig[name], cst[(i,)] = "constexpr", consts[name]
    src = ASTSource(fn=fn, signature=sig, constexprs=cst, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})


def sass_stats(kernel) -> tuple[str, str, collections.Counter]:
    """(registers, spill-store bytes, opcode counts) of a compiled kernel, from ptxas -v and nvdisasm."""
    with tempfile.TemporaryDirectory() as tmp:
        ptx, cubin = os.path.join(tmp, "k.ptx"), os.path.join(tmp, "k.cubin")
        Path(ptx).write_text(kernel.asm["ptx"])
        log = subprocess.run([BIN / "ptxas", "-v", "--gpu-name=sm_90a", ptx, "-o", cubin],
                             capture_output=True, text=True).stderr
        if not os.path.exists(cubin):
            raise SystemExit(f"ptxas failed (use the Triton version whose ptxas reads its PTX):\n{log}")
        sass = subprocess.run([BIN / "nvdisasm", "-c", cubin], capture_output=True, text=True).stdout
    regs = re.findall(r"Used (\d+) registers", log)
    spill = re.findall(r"(\d+) bytes spill stores", log)
    ops = collections.Counter(
        m.group(1) for m in (re.match(r"\s+/\*[0-9a-f]{4,6}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)", line)
                             for line in sass.splitlines()) if m)
    return regs[0] if regs else "?", spill[0] if spill else "?", ops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heads", type=int, default=64)
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--block-len", type=int, default=16)
    parser.add_argument("--hb", type=int, help="heads per program (default: the library's launch_config)")
    parser.add_argument("--vec", type=int, help="channels per thread (default: derived from HB)")
    parser.add_argument("--warps", type=int, default=1)
    parser.add_argument("--fused", action="store_true", help="only the fused core (default: both kernels)")
    args = parser.parse_args()
    h, d, bl = args.heads, args.dim, args.block_len
    from phalanx_kernels.triton_ops import kernel_meta, launch_config

    for fused in ([True] if args.fused else [False, True]):
        cfg = launch_config(h, d, bl, fused)
        for direction, fn in (("fwd", _swr_fwd_kernel), ("bwd", _swr_bwd_kernel)):
            c = dict(cfg[direction])
            if args.hb:
                c.update(HB=args.hb, num_warps=args.warps, VEC=args.vec)
            meta = kernel_meta((h, h, d), bl, 2, fused, c)
            num_warps = meta.pop("num_warps")
            row = h + 3 * h * d if fused else h * d
            consts = dict(meta, VARLEN=False, HAS_PHASE=False, CU=None, PHASE=None, X_ROW=row,
                          G_ROW=row if fused else h, HF=None, FINAL=False, Y_ROW=h * d, DY_ROW=h * d,
                          DX_ROW=row, DG_ROW=0 if fused else h, DC=None)
            types = dict(X="*bf16", G="*bf16" if fused else "*fp32", Y="*bf16", DY="*bf16", DX="*bf16",
                         T="i32", CAP="fp32")
            if fused:
                consts["DG"] = None
            else:
                types["DG"] = "*fp32"
            regs, spill, ops = sass_stats(compile_kernel(fn, types, consts, num_warps))
            top = " ".join(f"{op}={n}" for op, n in ops.most_common(10))
            print(f"{'core' if fused else 'swr '} {direction} HB={meta['HB']} VEC={meta['VEC']} warps={num_warps}: "
                  f"regs={regs} spill={spill} sass={sum(ops.values())} SHFL={ops['SHFL']} LDG={ops['LDG']} | {top}")

if __name__ == "__main__":
    main()
