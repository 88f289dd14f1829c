#!/usr/bin/env bash
# GPU run for issue 21 (benchmarks/conversion_bench.py at full size; NOT RUN ON A GPU YET): a 125m-shaped Gemma3
# teacher (5 SWA-512 : 1 full, byte tokenizer) trained on the quality corpus with the quality bench's budget
# (900 steps x 8 x 4096), converted (every SWA layer with each warm start; the 2 and 5 layers with the least
# attention mass beyond the Phalanx window with `avg`), each student distilled with 5% of the teacher's tokens
# (4 held-out scores during stage 2), speeds measured, report written. Carry `.whl` (lm-eval wheels).
#
#   bash benchmarks/gpu_conversion_run.sh OUT_DIR 1   # corpus, teacher, convert, distil all-avg and all-vo
#   bash benchmarks/gpu_conversion_run.sh OUT_DIR 2   # distil the other students, speed, report
#
# With .oldloop carried, part 1 also times issue 17's old distillation loop against the Trainer path on this teacher
# right after the conversion (benchmarks/distill_loops.sh; in the part's results archive, distill_loops/).
#
# Two commands of at most 10 minutes each, on the same warm machine (the models stay in $WORK, default
# /tmp/conversion_bench; only the light results, without weights, go to OUT_DIR/results_partN.tgz after each part). Estimates
# from the quality bench (a 125M run of 900 x 8 x 4096 took 2.5-4 minutes there, scoring and recall included):
# part 1 about 3 min teacher + 1 min convert + 2 x 1.5 min distil; part 2 four students x 1.5 min + 2 min speed.
# Each part stops itself at ~9.5 minutes (timeout); every stage skips finished work, so running a part again
# continues where it stopped. Environment: WORK, CORPUS (/tmp/qb_corpus), MAX_MB (60, as the README's runs).
set -euo pipefail
if [ $# -ne 2 ] || { [ "$2" != 1 ] && [ "$2" != 2 ]; }; then
  echo "usage: $0 OUT_DIR 1|2" >&2
  exit 2
fi
OUT_DIR=$1
PART=$2
REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=${WORK:-/tmp/conversion_bench}
CORPUS=${CORPUS:-/tmp/qb_corpus}
mkdir -p "$OUT_DIR"
source "$REPO/benchmarks/gpu_env.sh"
BENCH=("$REPO/benchmarks/conversion_bench.py")
LEFT=$(( $(date +%s) + 570 ))
remaining() { echo $(( LEFT - $(date +%s) )); }
copy_results() {  # on any exit: the log and the light results (JSON, report, plots; no weights or optimizer states)
  # as one archive: the device tool returns at most 8 files from at most 2 folders down
  cp "$WORK.part$PART.log" "$OUT_DIR/" 2>/dev/null || true
  [ ! -d "$WORK" ] || tar -C "$WORK" --exclude='*.safetensors' --exclude='*.bin' --exclude='*.pt' --exclude=checkpoints \
    -czf "$OUT_DIR/results_part$PART.tgz" .
}
trap copy_results EXIT
# passkey and MQAR inside the 512-token window (256) and beyond it, within the 4096-token context
RECALL=(phalanx_passkey_256 phalanx_passkey_1024 phalanx_passkey_2048 phalanx_mqar_256 phalanx_mqar_1024 phalanx_mqar_2048)

# Issue 17: the old hand-written distillation loop against the Trainer path on this teacher, once, when about 4
# minutes are left (needs .oldloop, from `bash benchmarks/distill_loops.sh prepare`, carried): in part 1 right after
# the conversion (issue 17 comes first), else at the end of a part.
distill_loops() {
  if [ -d "$REPO/.oldloop" ] && [ ! -f "$WORK/distill_loops/distill_loops.json" ] && [ "$(remaining)" -gt 240 ]; then
    # a slice of the training files (both loops tokenize their data up front) and one held-out file
    mkdir -p /tmp/dl_data
    find "$CORPUS/train" -name '*.txt' | sort | head -400 | xargs cp -t /tmp/dl_data || true  # head ends find early
    EVAL_DATA=$(find "$CORPUS/heldout" -name '*.txt' -size +8k | sort | head -1) WORK=/tmp/distill_loops \
      timeout "$(remaining)" bash "$REPO/benchmarks/distill_loops.sh" run "$WORK/runs/teacher/model" /tmp/dl_data \
      "$WORK/distill_loops" 100 || true
  fi
}

{
  if [ "$PART" = 1 ]; then
    [ -f "$CORPUS/corpus.json" ] || python3 "$REPO/benchmarks/quality_bench.py" corpus "$CORPUS" --max-mb "${MAX_MB:-60}"
    timeout "$(remaining)" python3 "${BENCH[@]}" teacher "$CORPUS" "$WORK" --shape 125m --window 512 --steps 900 \
      --seq-len 4096 --batch-size 8 --precision bf16 --eval-mb 2 --recall-tasks "${RECALL[@]}" --recall-limit 16
    timeout "$(remaining)" python3 "${BENCH[@]}" convert "$WORK" --inits avg vo qkvo random --lowest-mass 2 5 --subset-inits avg
    distill_loops
    timeout "$(remaining)" python3 "${BENCH[@]}" distill "$WORK" --students all-avg all-vo --data-mb 8
  else
    timeout "$(remaining)" python3 "${BENCH[@]}" distill "$WORK" --data-mb 8
    timeout "$(remaining)" python3 "${BENCH[@]}" speed "$WORK" --train-steps 40 --decode-batch 1
    python3 "${BENCH[@]}" report "$WORK"
  fi
  distill_loops
} 2>&1 | tee -a "$WORK.part$PART.log"
