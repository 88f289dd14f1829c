#!/usr/bin/env bash
# Quality-bench runs on the GPU machine with the protocol of benchmarks/results/quality_125m_bpe/ (the same corpus,
# the committed BPE-8192 tokenizer, 900 steps x 8 x 4096 tokens, bf16, recall skipped), for the configurations
# named, each skipped when OUT_DIR already holds its result; stops starting runs when less than 4 minutes of
# DEADLINE (default 570 s) are left. Issue 20 item 4: 125m-multihybrid, 125m-stripedhyena, 125m-swax (one or two
# per call; a 125M run took 3-4 minutes with scoring on the H200). Copy OUT_DIR's JSON next to the committed ones
# and run `python benchmarks/quality_bench.py report benchmarks/results/quality_125m_bpe` for the joint table.
#
#   bash benchmarks/gpu_quality_run.sh OUT_DIR CONFIG [CONFIG ...]
set -uo pipefail
[ $# -ge 2 ] || { echo "usage: $0 OUT_DIR CONFIG [CONFIG ...]" >&2; exit 2; }
OUT=$1
shift
DEADLINE=${DEADLINE:-570}
START=$(date +%s)
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO" || exit 1
source benchmarks/gpu_env.sh
export TOKENIZERS_PARALLELISM=true
mkdir -p "$OUT"
CORPUS=${CORPUS:-/tmp/qb_corpus_full}  # the whole corpus, as the BPE runs (the conversion bench caps its own at 60 MB)
left() { echo $(( DEADLINE - ($(date +%s) - START) )); }
[ -f "$CORPUS/corpus.json" ] || python3 benchmarks/quality_bench.py corpus "$CORPUS" >"$OUT/corpus.log" 2>&1
for config in "$@"; do
  [ -f "$OUT/$config.tokens.json" ] && continue
  [ "$(left)" -gt 240 ] || { echo "$config: not started (time)"; continue; }
  timeout "$(left)" python3 benchmarks/quality_bench.py run "$CORPUS" "$OUT" --configs "$config" --steps 900 \
    --seq-len 4096 --batch-size 8 --precision bf16 --recall-tasks \
    --tokenizer benchmarks/results/quality_125m_bpe/tokenizer-bpe8192 >>"$OUT/run.log" 2>&1
  echo "$config: exit $?"
done
# the runs' logs and loss curves as one archive (the device tool returns at most 8 files from 2 folders down)
[ ! -d "$OUT/runs" ] || { tar -C "$OUT" --exclude='*.safetensors' --exclude='*.pt' --exclude='checkpoint-*' \
  -czf "$OUT/runs.tgz" runs && rm -rf "$OUT/runs"; }
