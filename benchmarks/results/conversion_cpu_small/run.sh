#!/usr/bin/env bash
# The conversion bench at CPU size (2 cores, about an hour in all): a 6.4M-parameter Gemma3 teacher (small shape, 5
# SWA-128 : 1 full, byte tokenizer) on an 8 MB quality corpus, converted at the 32-token and 128-token Phalanx windows,
# distilled with several recipes. Not issue 21's size: it compares recipes cheaply before a GPU run. OUT defaults to
# /tmp/cpuexp/out; the results committed beside this script are its light files.
set -euxo pipefail
cd "$(dirname "$0")/../../.."
PY=${PY:-.venv/bin/python}
B=benchmarks/conversion_bench.py
CORPUS=${CORPUS:-/tmp/cpuexp/corpus}
OUT=${OUT:-/tmp/cpuexp/out}
export OMP_NUM_THREADS=2
[ -f "$CORPUS/corpus.json" ] || $PY benchmarks/quality_bench.py corpus "$CORPUS" --max-mb 8
$PY $B teacher "$CORPUS" "$OUT" --shape small --window 128 --steps 240 --seq-len 256 --batch-size 8 --eval-mb 0.2 \
  --recall-tasks --precision fp32
$PY $B convert "$OUT" --inits avg --lowest-mass 2 --subset-inits avg
$PY $B convert "$OUT" --inits avg --lowest-mass 2 --subset-inits avg --block-len 64 --window-blocks 2 --name-suffix w128 \
  --window-probe
$PY $B distill "$OUT" --data-mb 1 --students all-avg low2-avg
$PY $B distill "$OUT" --data-mb 1 --students all-avg low2-avg all-avg-w128 --tag demo_b2 --batch-size 2 \
  --stage1-share 0.3 --stage1-lr 3e-3 --stage2-lr 1e-3 --stage2-other-lr 1e-4
$PY $B distill "$OUT" --data-mb 1 --students all-avg low2-avg --tag s2only_b2 --batch-size 2 --stage1-share 0 \
  --stage2-lr 1e-3 --stage2-other-lr 1e-4
$PY $B report "$OUT"
# stage 2 alone with a higher mixer learning rate, then with a higher learning rate for the other weights
$PY $B distill "$OUT" --data-mb 1 --students all-avg low2-avg --tag s2lr3_b2 --batch-size 2 --stage1-share 0 \
  --stage2-lr 3e-3 --stage2-other-lr 1e-4
$PY $B distill "$OUT" --data-mb 1 --students all-avg low2-avg --tag s2oth3_b2 --batch-size 2 --stage1-share 0 \
  --stage2-lr 1e-3 --stage2-other-lr 3e-4
# stage 2 alone at batch 1 (twice the steps), and at the 128-token window
$PY $B distill "$OUT" --data-mb 1 --students all-avg low2-avg --tag s2only_b1 --batch-size 1 --stage1-share 0 \
  --stage2-lr 1e-3 --stage2-other-lr 1e-4
$PY $B distill "$OUT" --data-mb 1 --students all-avg-w128 low2-avg-w128 --tag s2only_b2 --batch-size 2 --stage1-share 0 \
  --stage2-lr 1e-3 --stage2-other-lr 1e-4
$PY $B report "$OUT"
# session 10: cross-entropy added to the KL (weight 0.5), and shorter sequences at batch 1 (more, smaller steps for the
# same tokens: 128 tokens, 192 steps; 64 tokens, 384 steps), alone and together
$PY $B distill "$OUT" --data-mb 1 --students low2-avg all-avg --tag s2ce05_b1 --batch-size 1 --stage1-share 0 \
  --stage2-lr 1e-3 --stage2-other-lr 1e-4 --ce-weight 0.5
$PY $B distill "$OUT" --data-mb 1 --students low2-avg all-avg --tag s2s128_b1 --batch-size 1 --seq-len 128 \
  --stage1-share 0 --stage2-lr 1e-3 --stage2-other-lr 1e-4
$PY $B distill "$OUT" --data-mb 1 --students low2-avg all-avg --tag s2s128ce_b1 --batch-size 1 --seq-len 128 \
  --stage1-share 0 --stage2-lr 1e-3 --stage2-other-lr 1e-4 --ce-weight 0.5
$PY $B distill "$OUT" --data-mb 1 --students low2-avg all-avg --tag s2s64_b1 --batch-size 1 --seq-len 64 \
  --stage1-share 0 --stage2-lr 1e-3 --stage2-other-lr 1e-4
$PY $B report "$OUT"
# both changes at 64 tokens for the two-layer student; 32-token sequences (768 steps) for the all-layer one
$PY $B distill "$OUT" --data-mb 1 --students low2-avg --tag s2s64ce_b1 --batch-size 1 --seq-len 64 --stage1-share 0 \
  --stage2-lr 1e-3 --stage2-other-lr 1e-4 --ce-weight 0.5
$PY $B distill "$OUT" --data-mb 1 --students all-avg --tag s2s32_b1 --batch-size 1 --seq-len 32 --stage1-share 0 \
  --stage2-lr 1e-3 --stage2-other-lr 1e-4
$PY $B report "$OUT"
