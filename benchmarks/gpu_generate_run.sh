#!/usr/bin/env bash
# Issue 16's generation benchmark on the H200 in one call, the points the second and third runs
# (benchmarks/results/generate_h200_run2/, run3/) left, most important first, each group in its own process (compiled
# graphs and static caches of one group never crowd the next) with its JSON rewritten after every point (every model
# decodes with SDPA: run 3's SWA hybrid, with FlexAttention, re-recorded CUDA graphs for each new shape):
#   1. the profile of 32 decoding steps through generate (static cache, compiled) for the anchor and the Phalanx
#      hybrid at 1 x 32K, the point whose target was missed: wall vs GPU kernel time per step, host operators
#      (profile_gpu.py generate; profile_generate.json, and .txt in logs.tgz);
#   2. the SWA-hybrid and the all-attention PhalanxConfig models, static cache compiled, at 1x4K, 32x4K and 1x32K
#      (the issue asks their default and static caches; the fast loop's fair peer is the Llama anchor's);
#   3. batch 16 at a 32K prompt for the Llama anchor and the Phalanx hybrid, static and fast;
#   4. the default cache of the groups above (no compile; cheap), as far as time allows.
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
budget=$(( $(left) * 30 / 100 ))  # first: the profile that explains the missed 1 x 32K target
if [ "$budget" -gt 60 ]; then
  timeout "$budget" python3 benchmarks/profile_gpu.py generate --out "$LOGS" --batch 1 --context 32768 --new-tokens 32 \
    >"$LOGS/profile_generate.log" 2>&1 && mv "$LOGS/profile_generate.json" "$OUT/"
  echo "profile_generate: exit $?"
fi
group configs 50 --models swa_hybrid phalanx_full --caches static --points 1x4096 32x4096 1x32768
# 16 x 6 GiB of the anchor's KV cache plus its prefill activations: run 3 ran out of memory with 34 GiB reserved but
# unallocated, so this group's allocator grows its segments instead of fragmenting
PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True \
  group b16_32k 75 --models transformer phalanx_hybrid --caches static fast --points 16x32768
group default 95 --models swa_hybrid phalanx_full transformer phalanx_hybrid --caches default \
  --points 1x4096 32x4096 1x32768 16x32768
for name in configs b16_32k default; do
  [ -f "$OUT/$name.json" ] && python3 benchmarks/bench_generate.py --from-json "$OUT/$name.json"
done
