#!/usr/bin/env bash
# Issue 20 on the GPU machine, the steps named in STEPS (default "bench ncu e2e") in this order:
#   tests   every test of tests/test_kernels_fir.py (all 55 passed on the H200 in 132 s:
#           benchmarks/results/hyena_h200/test_kernels_fir_run2.log; run it after changing a kernel);
#   sweep   benchmarks/sweep_fir.py: launch configurations of the filter-gradient, FIR and direct Hyena-core kernels
#           (SWEEP_KERNELS, default all; each checked, then timed). The filter gradient's best on the H200,
#           block_t=128, is its default since benchmarks/results/hyena_h200_s14/ (then sweep_fir_dw.py);
#   bench   benchmarks/bench_hyena.py with its peers (BENCH_ARGS, e.g. "--widths 4096"; BENCH_S seconds, default 330),
#           each shape's Hyena rows then its peers, the raw JSON rewritten after every row. The whole matrix does not
#           fit one call: on the H200 width 2048 (8 rows, 4 peer rows) took about 450 s
#           (benchmarks/results/hyena_h200_s13/), so give each call one width;
#   ncu     Nsight Compute counters of the FIR and fused Hyena kernels (profile_gpu.py hyena-ops), when ncu is there;
#   e2e     benchmarks/bench_e2e.py: 1.3B training tokens/s of the multi-hybrid presets (stripedhyena, multihybrid,
#           swax) next to the Transformer, the SWA hybrid and the Phalanx hybrid at 4K and 8K (E2E_LENGTHS; E2E_S
#           seconds, default 170: both took 144 s in hyena_h200_s13/, and 170 s ended two rows into 8K in _s14/);
#   decode  benchmarks/bench_generate.py: decode tokens/s on the compiled path (static-cache `generate`, fullgraph,
#           and the fast loop) of the multi-hybrid presets next to the Llama anchor and the Phalanx hybrid at 1 x 4K,
#           32 x 4K and 1 x 32K (DECODE_S seconds, default 420; GEN_RESUME: an earlier call's JSON to continue).
# FLA autotunes GLA's kernels for about 290 s in a fresh process (benchmarks/results/hyena_h200_s20/), and Triton keeps
# the results in its cache folder (FLA asks it to): every call saves them to OUT_DIR/triton_autotune.tgz (one file:
# the device tool returns a limited number of files), and AUTOTUNE_FROM=<such an archive> (committed with a call's
# results) seeds a fresh machine's cache with them.
# mlstm-kernels' Triton kernel is off under Triton >= 3.3 (docs/mlstm.md), so its tests skip there. The peers need
# the wheels in .whl/ (fla-core for FLA's ops); without them they say "not installed".
#
#   STEPS="tests sweep bench" BENCH_ARGS="--widths 4096" bash benchmarks/gpu_hyena_run.sh OUT_DIR
set -uo pipefail
OUT=${1:?usage: gpu_hyena_run.sh OUT_DIR}
STEPS=" ${STEPS:-bench ncu e2e} "
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO" || exit 1
source benchmarks/gpu_env.sh
mkdir -p "$OUT"
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-/tmp/triton_cache}
if [ -n "${AUTOTUNE_FROM:-}" ]; then mkdir -p "$TRITON_CACHE_DIR" && tar -xzf "$AUTOTUNE_FROM" -C "$TRITON_CACHE_DIR"; fi
save_autotune() { (cd "$TRITON_CACHE_DIR" 2>/dev/null && find . -name '*.autotune.json' -print0 |
  tar -czf "$OUT/triton_autotune.tgz" --null -T -); }
trap save_autotune EXIT
{ nvidia-smi; timeout 30 python3 -c "import torch, triton; print(torch.__version__, triton.__version__)
import importlib.metadata as m
for name in ('fla-core', 'flash-linear-attention', 'mlstm_kernels'):
    try:
        print(name, m.version(name))
    except m.PackageNotFoundError:
        print(name, 'not installed')"; } >"$OUT/env.txt" 2>&1
step() { [[ "$STEPS" == *" $1 "* ]]; }
if step tests; then
  timeout 150 python3 -m pytest -q -p no:cacheprovider -rA tests/test_kernels_fir.py >"$OUT/test_kernels_fir.log" 2>&1
  echo "exit $?" >>"$OUT/test_kernels_fir.log"
fi
if step sweep; then
  timeout "${SWEEP_S:-300}" python3 benchmarks/sweep_fir.py --kernels ${SWEEP_KERNELS:-dw fir core} \
    --json "$OUT/sweep_fir.json" >"$OUT/sweep_fir.log" 2>&1
  echo "exit $?" >>"$OUT/sweep_fir.log"
fi
if step bench; then
  timeout "${BENCH_S:-330}" python3 benchmarks/bench_hyena.py ${BENCH_ARGS:-} --json "$OUT/bench_hyena.json" \
    >"$OUT/bench_hyena.log" 2>&1
  echo "exit $?" >>"$OUT/bench_hyena.log"
fi
if step ncu && command -v ncu >/dev/null; then  # why the kernels sit above their floors (the warm round only)
  timeout 50 ncu --clock-control none --profile-from-start off -k regex:'_fir|_hyena' \
    --section SpeedOfLight --section Occupancy --section MemoryWorkloadAnalysis --section WarpStateStats \
    --section LaunchStats python3 benchmarks/profile_gpu.py hyena-ops >"$OUT/ncu_hyena.txt" 2>&1
  echo "exit $?" >>"$OUT/ncu_hyena.txt"
fi
if step e2e; then
  timeout "${E2E_S:-170}" python3 benchmarks/bench_e2e.py --lengths ${E2E_LENGTHS:-4096 8192} --models transformer swa_hybrid \
    phalanx_hybrid stripedhyena multihybrid swax --out "$OUT/e2e.json" >"$OUT/e2e.log" 2>&1
  echo "exit $?" >>"$OUT/e2e.log"
fi
if step decode; then
  [ -z "${GEN_RESUME:-}" ] || cp "$GEN_RESUME" "$OUT/generate_presets.json"
  timeout "${DECODE_S:-420}" python3 benchmarks/bench_generate.py --models transformer phalanx_hybrid stripedhyena \
    multihybrid swax --caches static fast --points 1x4096 32x4096 1x32768 --deadline-s $(( ${DECODE_S:-420} - 120 )) \
    --resume --out "$OUT/generate_presets.json" >"$OUT/generate_presets.log" 2>&1
  echo "exit $?" >>"$OUT/generate_presets.log"
fi
