#!/usr/bin/env bash
# CPU check that `phalanx train` gives the same model on one process and on two processes (gloo), under
# `accelerate launch` and under `torchrun`, for the same global batch (1 x 4 rows = 2 x 2 rows).
# FSDP is not checked here: accelerate only shards on accelerators (with ACCELERATE_USE_CPU it silently
# falls back to DDP); benchmarks/ddp_run.sh runs it on GPUs.
#
#   bash benchmarks/ddp_cpu_check.sh [OUT_DIR]      # default OUT_DIR: benchmarks/results
#
# Needs the project installed (make install). Writes OUT_DIR/ddp_cpu_check.log; prints the max abs
# weight difference of each multi-process run against the single-process one last.
# On a machine without GPUs, DDP needs `--multi_gpu` (it selects accelerate's torch.distributed launcher;
# without it `accelerate launch` starts ONE process) together with ACCELERATE_USE_CPU=true (gloo on CPU).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-$REPO/benchmarks/results}
PY=${PY:-$REPO/.venv/bin/python}
ACCELERATE=${ACCELERATE:-$REPO/.venv/bin/accelerate}
RUNS=$(mktemp -d)
LOG="$OUT/ddp_cpu_check.log"
mkdir -p "$OUT"
TRAIN=(-m phalanx_cli.main train --model-config tiny-phalanx --seq-len 32 --max-steps 6 --logging-steps 1
       --lr 3e-3 --warmup 1 --precision fp32 --seed 0 --save-steps 1000)
LAUNCH=(--multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no)
CORES=$(nproc --all)
export ACCELERATE_USE_CPU=true OMP_NUM_THREADS=1
cd "$RUNS"  # outside the repository: its kernels/ folder must not shadow Transformers' `kernels` probe

{
  echo "# ddp_cpu_check $(date -u +%FT%TZ) on $CORES CPU cores"
  "$PY" -c "import torch, transformers, accelerate; print('torch', torch.__version__, 'transformers', transformers.__version__, 'accelerate', accelerate.__version__)"
  "$PY" "${TRAIN[@]}" --batch-size 4 --output "$RUNS/single"
  "$ACCELERATE" launch "${LAUNCH[@]}" "${TRAIN[@]}" --batch-size 2 --output "$RUNS/ddp"
  "$PY" -m torch.distributed.run --standalone --nproc_per_node 2 "${TRAIN[@]}" --batch-size 2 --output "$RUNS/torchrun"
  "$PY" - "$RUNS" <<'EOF'
import json, sys
from pathlib import Path
from safetensors.torch import load_file

runs = Path(sys.argv[1])
ref = load_file(runs / "single" / "model.safetensors")
print(f"{'run':<8} {'max |dw| vs single':>20} {'losses per step'}")
for name in ("single", "ddp", "torchrun"):
    weights = load_file(runs / name / "model.safetensors")
    diff = max((weights[k] - ref[k]).abs().max().item() for k in ref)
    losses = [round(e["loss"], 5) for e in json.loads((runs / name / "trainer_state.json").read_text())["log_history"] if "loss" in e]
    print(f"{name:<8} {diff:>20.3e} {losses}")
EOF
} 2>&1 | grep -v -e "it/s\]" -e "Writing model shards" -e "pin_memory" -e "super().__init__(loader)" | tee "$LOG"
