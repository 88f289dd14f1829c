#!/usr/bin/env bash
# Quality bench (issue 15) on the GPU machine: several configurations trained and scored at once on one GPU
# (`run --shared-gpu`), then each one's training speed measured alone (`speed`), then the report.
#
#   bash benchmarks/gpu_quality_batch.sh RESULTS CONFIG [CONFIG ...]
#
# Environment: CORPUS (/tmp/qb_corpus, built when missing from at most MAX_MB=60 MB of training text),
# STEPS (900), SEQ_LEN (4096), BATCH_SIZE (8), RECALL_LIMIT (16), RUN_SECONDS (500: the shared runs are
# stopped after this, so that what finished still comes back), SPEED_STEPS (100; 0 skips the speed runs).
# Carry `.whl` (lm-eval wheels). Each run's console output is RESULTS/runs/<config>.log.
set -uo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 RESULTS CONFIG [CONFIG ...]" >&2
  exit 2
fi
RESULTS=$1
shift
REPO=$(cd "$(dirname "$0")/.." && pwd)
CORPUS=${CORPUS:-/tmp/qb_corpus}
SHAPE=(--seq-len "${SEQ_LEN:-4096}" --batch-size "${BATCH_SIZE:-8}" --precision bf16)
source "$REPO/benchmarks/gpu_env.sh"
start=$(date +%s)
elapsed() { echo "[$(( $(date +%s) - start )) s] $*"; }

mkdir -p "$RESULTS/runs"
[ -f "$CORPUS/corpus.json" ] || python3 "$REPO/benchmarks/quality_bench.py" corpus "$CORPUS" --max-mb "${MAX_MB:-60}" \
  >"$RESULTS/corpus.log" 2>&1 || { cat "$RESULTS/corpus.log"; exit 1; }
elapsed "corpus ready"
pids=()
for config in "$@"; do
  timeout "${RUN_SECONDS:-500}" python3 "$REPO/benchmarks/quality_bench.py" run "$CORPUS" "$RESULTS" --configs "$config" \
    --steps "${STEPS:-900}" "${SHAPE[@]}" --recall-limit "${RECALL_LIMIT:-16}" --shared-gpu >"$RESULTS/runs/$config.log" 2>&1 &
  pids+=($!)
done
status=0
for i in "${!pids[@]}"; do
  wait "${pids[$i]}" || { status=1; elapsed "run ${*:$((i + 1)):1} failed or timed out:"; tail -3 "$RESULTS/runs/${*:$((i + 1)):1}.log"; }
done
elapsed "shared runs done"
if [ "${SPEED_STEPS:-100}" -gt 0 ]; then
  python3 "$REPO/benchmarks/quality_bench.py" speed "$CORPUS" "$RESULTS" --configs "$@" --steps "${SPEED_STEPS:-100}" \
    "${SHAPE[@]}" || status=1
  elapsed "speed runs done"
fi
python3 "$REPO/benchmarks/quality_bench.py" report "$RESULTS" | head -20 || status=1
exit $status
