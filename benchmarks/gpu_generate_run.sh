#!/usr/bin/env bash
# Issue 16's generation benchmark on the H200 in one call: the points runs 2-4 (benchmarks/results/generate_h200_run2/,
# run3/, run4/) left, most important first, each group in its own process (compiled graphs and static caches of one
# group never crowd the next) with its JSON rewritten after every point (every model decodes with SDPA):
#   1. the Llama anchor and the Phalanx hybrid through generate's compiled static step at 1 x 32K, 5 timed calls each:
#      run 2 timed 1.08x there, run 4's profile of the same step (profile_generate.json) 1.38x;
#   2. the all-attention PhalanxConfig model's static cache at 32x4K and 1x32K (run 4 reached 1x4K);
#   3. batch 16 at a 32K prompt: the Phalanx hybrid's fast loop (the anchor's fast loop decoded 599 tokens/s in run 4,
#      its static path ran out of memory; run 3 measured the hybrid's static path), then the static caches of the SWA
#      hybrid and the all-attention model;
#   4. the default cache of the models run 4 did not reach (no compile; cheap), as far as time allows.
# Ends inside DEADLINE seconds (default 570).
#
#   bash benchmarks/gpu_generate_run.sh OUT_DIR
set -uo pipefail
OUT=${1:?usage: gpu_generate_run.sh OUT_DIR}
DEADLINE=${DEADLINE:-570}
START=$(date +%s)
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO" || exit 1
source benchmarks/gpu_env.sh
LOGS=$OUT/logs  # the logs and text tables go back as one archive (the device tool returns at most 8 files)
mkdir -p "$LOGS"
trap 'tar -C "$OUT" -czf "$OUT/logs.tgz" logs && rm -r "$LOGS"' EXIT
left() { echo $(( DEADLINE - ($(date +%s) - START) )); }
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import torch, triton, transformers; print(torch.__version__, triton.__version__, transformers.__version__)"
} >"$LOGS/env.txt" 2>&1

group() {  # NAME SHARE_OF_TIME_LEFT_PERCENT bench_generate arguments...
  local name=$1 share=$2
  shift 2
  local budget=$(( $(left) * share / 100 ))
  [ "$budget" -gt 60 ] || { echo "$name: skipped (time)"; return; }
  timeout "$budget" python3 benchmarks/bench_generate.py "$@" --deadline-s $(( budget - 60 )) \
    --out "$OUT/$name.json" >"$LOGS/$name.log" 2>&1
  echo "$name: exit $?"
}
group anchor32k 40 --models transformer phalanx_hybrid --caches static --points 1x32768 --repeats 5
group configs 45 --models phalanx_full --caches static --points 32x4096 1x32768
# 16 x 32K prompts: the allocator grows its segments instead of fragmenting (run 3's anchor ran out of memory with
# 34 GiB reserved but unallocated)
PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True \
  group b16_32k 40 --models phalanx_hybrid --caches fast --points 16x32768
PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True \
  group b16_others 60 --models swa_hybrid phalanx_full --caches static --points 16x32768
group default 95 --models phalanx_full transformer phalanx_hybrid swa_hybrid --caches default \
  --points 1x32768 1x4096 32x4096 16x32768
for name in anchor32k configs b16_32k b16_others default; do
  [ -f "$OUT/$name.json" ] && python3 benchmarks/bench_generate.py --from-json "$OUT/$name.json"
done
