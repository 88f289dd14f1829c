#!/usr/bin/env bash
# GPU run for issues 5 and 6: pretrain a small Phalanx hybrid with `phalanx train` (bf16, packed
# sequences) on the Shakespeare corpus minus the held-out works, then evaluate it on every shipped
# lm-eval task (benchmarks/gpu_eval.sh). Carry `.whl` (lm-eval wheels) and the corpus folder.
#
#   bash benchmarks/gpu_train_eval.sh CORPUS_DIR OUTDIR [MAX_STEPS]
#
# Environment: PRESET (small-phalanx), SEQ_LEN (2048), BATCH_SIZE (16), PRECISION (bf16), plus those of
# gpu_eval.sh. Writes OUTDIR/train_log.txt, OUTDIR/loss_curve.png and the files of
# gpu_eval.sh. The model itself stays on the GPU machine (/tmp/phalanx_small).
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 CORPUS_DIR OUTDIR [MAX_STEPS]" >&2
  exit 2
fi
CORPUS=$1
OUTDIR=$2
STEPS=${3:-1200}
REPO=$(cd "$(dirname "$0")/.." && pwd)
MODEL=${MODEL:-/tmp/phalanx_small}
mkdir -p "$OUTDIR"
source "$REPO/benchmarks/gpu_env.sh"

start=$(date +%s)
python3 -m phalanx_cli.main train --model-config "${PRESET:-small-phalanx}" --data "$CORPUS" --seq-len "${SEQ_LEN:-2048}" \
  --batch-size "${BATCH_SIZE:-16}" --max-steps "$STEPS" --lr 2e-3 --warmup 0.05 --precision "${PRECISION:-bf16}" --logging-steps 50 \
  --save-steps "$STEPS" --output "$MODEL" 2>&1 | tee "$OUTDIR/train_log.txt"
echo "train wall seconds: $(( $(date +%s) - start ))" | tee -a "$OUTDIR/train_log.txt"
for f in loss_curve.png; do [ ! -f "$MODEL/$f" ] || cp "$MODEL/$f" "$OUTDIR/"; done

MAX_LENGTH=${MAX_LENGTH:-8448} bash "$REPO/benchmarks/gpu_eval.sh" "$MODEL" "$OUTDIR"
