#!/usr/bin/env bash
# Evaluate one model on every shipped lm-eval task on the GPU machine (issue 5, item 7).
#
#   bash benchmarks/gpu_eval.sh MODEL_DIR OUTDIR
#
# The GPU image has no lm-eval, datasets or evaluate: they come from the wheels in .whl/ (carry `.whl`,
# built for Python 3.12; see eval/README.md), installed offline into a target folder as
# /work/.library/device/README.md describes, together with the project itself (no dependencies).
# Writes OUTDIR/env.txt (machine and versions), OUTDIR/eval_log.txt, OUTDIR/eval_results.json and
# OUTDIR/eval_results_recall.png. Optional environment: BATCH (default 8), MAX_LENGTH (default: the
# model's max_position_embeddings, at most 16384), DTYPE (default bfloat16), LIMIT (documents per task),
# DEVICE (default cuda; cpu for a smoke test).
set -euo pipefail

if [ $# -ne 2 ]; then
  echo "usage: $0 MODEL_DIR OUTDIR" >&2
  exit 2
fi
MODEL_DIR=$1
OUTDIR=$2
REPO=$(cd "$(dirname "$0")/.." && pwd)

if [ ! -f "$MODEL_DIR/config.json" ]; then
  echo "error: no model folder at $MODEL_DIR (config.json missing)" >&2
  exit 1
fi
if ! ls "$REPO"/.whl/lm_eval-*.whl >/dev/null 2>&1; then
  echo "error: no lm-eval wheel in $REPO/.whl (carry the .whl folder)" >&2
  exit 1
fi
mkdir -p "$OUTDIR"

source "$REPO/benchmarks/gpu_env.sh"

python3 - "$MODEL_DIR" >"$OUTDIR/env.txt" <<'EOF'
import importlib.metadata as md, platform, subprocess, sys
import torch
print("date:", subprocess.run(["date", "-u", "+%Y-%m-%dT%H:%M:%SZ"], capture_output=True, text=True).stdout.strip())
print("model:", sys.argv[1])
print("python:", platform.python_version(), "| host:", platform.node())
print("gpu:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
for name in ("torch", "triton", "transformers", "lm_eval", "datasets", "evaluate", "pyarrow", "fsspec",
             "huggingface_hub", "phalanx-transformers"):
    try:
        print(f"{name}: {md.version(name)}")
    except md.PackageNotFoundError:
        print(f"{name}: not installed")
EOF
cat "$OUTDIR/env.txt"

args=(--tasks phalanx_bpb phalanx_passkey phalanx_mqar --device "${DEVICE:-cuda}" --batch-size "${BATCH:-8}"
      --dtype "${DTYPE:-bfloat16}" --output "$OUTDIR/eval_results.json")
if [ -n "${MAX_LENGTH:-}" ]; then args+=(--max-length "$MAX_LENGTH"); fi
if [ -n "${LIMIT:-}" ]; then args+=(--limit "$LIMIT"); fi
start=$(date +%s)
python3 -m phalanx_cli.main eval "$MODEL_DIR" "${args[@]}" 2>&1 | tee "$OUTDIR/eval_log.txt"
echo "wall seconds: $(( $(date +%s) - start ))" | tee -a "$OUTDIR/eval_log.txt"
