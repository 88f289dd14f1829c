#!/usr/bin/env bash
# Issue 16's whole generation matrix on the H200 in one run, spread over as many calls of this command as it takes on
# the same warm machine (each call ends inside DEADLINE seconds, default 570): every point goes to one JSON in $WORK
# (default /tmp/generate_run6, kept while the machine stays warm) and each call measures only what the earlier calls
# left (bench_generate.py --resume); what is done so far goes back in OUT_DIR after each call: matrix.json, the merged
# table, its plot and the logs (one archive; the device tool returns at most 8 files). Runs 1-5
# (benchmarks/results/generate_h200*/) measured the matrix piecemeal across sessions; this run measures all of it in
# one: the Llama anchor (Transformers' LlamaForCausalLM) and the all-attention, SWA-hybrid and Phalanx-hybrid
# PhalanxConfig models, each with the default cache, the static cache (generate's compiled step) and, for the anchor and
# the Phalanx hybrid, the project's loop (fast_generate), at 1 x 4K, 32 x 4K, 1 x 32K and 16 x 32K; every model
# decodes with SDPA. Groups, most important first, each in its own process (compiled graphs and static caches of one
# group never crowd the next):
#   1. the anchor and the Phalanx hybrid through generate's static step at 1 x 32K, 5 timed calls each (the 1.3x
#      target: runs 1, 2, 5 and 6 timed 1.25x, 1.08x, 1.23x and 1.33x). Run 6's first call also logged the CUDA-graph
#      trees (TORCH_LOGS=recompiles,cudagraphs: 381 MB of log, which cut both models' decode speed by 36-45%): no
#      recompiles, and both models record their step once per generate call, since each call makes a new static cache
#      (results/generate_h200_run6/logs/pair32k_traced_digest.txt); timed runs log neither;
#   2. the static step of every model at the other points (16 x 32K with expandable segments: the allocator grows its
#      segments instead of fragmenting);
#   3. the project's loop, anchor and Phalanx hybrid;
#   4. the default cache of every model (no compile).
#
#   bash benchmarks/gpu_generate_run.sh OUT_DIR      # again with a new OUT_DIR until the log says "matrix complete"
set -uo pipefail
OUT=${1:?usage: gpu_generate_run.sh OUT_DIR}
DEADLINE=${DEADLINE:-570}
START=$(date +%s)
REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=${WORK:-/tmp/generate_run6}
cd "$REPO" || exit 1
source benchmarks/gpu_env.sh
LOGS=$WORK/logs
mkdir -p "$LOGS" "$OUT"
JSON=$WORK/matrix.json
finish() {  # the merged table and plot of everything so far, then the light results back
  python3 benchmarks/bench_generate.py --from-json "$JSON" --plot "$WORK/matrix.png" >"$WORK/matrix.md" 2>&1
  cp "$JSON" "$WORK/matrix.md" "$WORK/matrix.png" "$OUT/" 2>/dev/null
  tar -C "$WORK" -czf "$OUT/logs.tgz" logs
  cat "$WORK/matrix.md"
}
trap finish EXIT
left() { echo $(( DEADLINE - ($(date +%s) - START) )); }
[ -f "$LOGS/env.txt" ] || { nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import torch, triton, transformers; print(torch.__version__, triton.__version__, transformers.__version__)"
} >"$LOGS/env.txt" 2>&1

group() {  # NAME bench_generate arguments...: the points of the group not yet in $JSON, inside the time left
  local name=$1
  shift
  local budget
  budget=$(left)
  [ "$budget" -gt 90 ] || { echo "$name: not started (time)"; return 1; }
  echo "== $(date -u +%FT%TZ) $name: $*" >>"$LOGS/$name.log"
  timeout "$budget" python3 benchmarks/bench_generate.py "$@" --deadline-s $(( budget - 75 )) --out "$JSON" --resume \
    >>"$LOGS/$name.log" 2>&1
  echo "$name: exit $?"
}
MODELS=(transformer phalanx_full swa_hybrid phalanx_hybrid)
group pair32k --models transformer phalanx_hybrid --caches static --points 1x32768 --repeats 5 &&
group static --models "${MODELS[@]}" --caches static --points 1x4096 32x4096 1x32768 &&
PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True \
  group static16 --models phalanx_hybrid swa_hybrid phalanx_full transformer --caches static --points 16x32768 &&
group fast --models transformer phalanx_hybrid --caches fast --points 1x4096 32x4096 1x32768 16x32768 &&
group default --models "${MODELS[@]}" --caches default --points 1x4096 32x4096 1x32768 16x32768
python3 - "$JSON" <<'EOF'
import json, os, sys
sys.path.insert(0, "benchmarks")
from bench_generate import DEFAULT_POINTS, GENERATE_MODELS, parse_point, point_key
points = json.load(open(sys.argv[1]))["points"] if os.path.exists(sys.argv[1]) else []
grid = [parse_point(p) for p in DEFAULT_POINTS]
want = {(m, c, b, n) for m in GENERATE_MODELS for c in ("default", "static") for b, n in grid}
want |= {(m, "fast", b, n) for m in ("transformer", "phalanx_hybrid") for b, n in grid}
missing = sorted(want - {point_key(p) for p in points})
print("matrix complete" if not missing else f"matrix: {len(missing)} of {len(want)} points left: {missing}")
EOF
