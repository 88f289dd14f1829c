#!/usr/bin/env bash
# Short multi-GPU run on a machine with >= 2 GPUs: the same `phalanx train` command on 1 GPU, under
# `accelerate launch --multi_gpu` (DDP) and under `accelerate launch --use_fsdp` (FSDP2, full shard) on
# 2 GPUs, same per-GPU batch; steady-state tokens/s of each.
#
#   bash benchmarks/ddp_run.sh            # env: PRESET SEQ_LEN BATCH STEPS DATA OUT
#
# Steady state = tokens and seconds between the first logged step after warm-up and the last one, read
# from trainer_state.json (the Trainer's train_tokens_per_second also counts start-up). Writes
# $OUT/ddp_run.log (versions, every run's output) and $OUT/ddp_run.json; prints a table last.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
SITE=${SITE:-/tmp/phalanx_site}

PRESET=${PRESET:-125m-phalanx}
SEQ_LEN=${SEQ_LEN:-2048}
BATCH=${BATCH:-8}
STEPS=${STEPS:-60}
OUT=${OUT:-benchmarks/results}
if [[ -z "${DATA:-}" ]]; then
  DATA=$([[ -d shared/data/shakespeare ]] && echo shared/data/shakespeare || echo data/shakespeare)
fi
RUNS=$(mktemp -d)
LOG="$OUT/ddp_run.log"
mkdir -p "$OUT"
python3 -c "import accelerate" 2>/dev/null || { echo "error: accelerate is not installed (the Trainer needs it)" >&2; exit 1; }
# The project itself, offline and without dependencies (import names differ from folder names).
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir --upgrade \
  --target "$SITE" "$REPO"
export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH} HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
# Run from outside the repository root: its kernels/ folder must not shadow Transformers' `kernels` probe.
PHALANX=(-m phalanx_cli.main train --model-config "$PRESET" --data "$REPO/$DATA" --seq-len "$SEQ_LEN"
         --batch-size "$BATCH" --max-steps "$STEPS" --logging-steps 10 --save-steps 1000000 --precision bf16)

{
  echo "# ddp_run $(date -u +%FT%TZ) preset=$PRESET seq_len=$SEQ_LEN batch/gpu=$BATCH steps=$STEPS data=$DATA"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, transformers, accelerate; print('torch', torch.__version__, 'transformers', transformers.__version__, 'accelerate', accelerate.__version__)"
} | tee "$LOG"

# A failing run is logged and left out of the table; the others still report.
run() {
  local name=$1; shift
  (cd "$RUNS" && "$@" --output "$RUNS/$name") 2>&1 | tee -a "$LOG" || echo "# $name FAILED (exit ${PIPESTATUS[0]})" | tee -a "$LOG"
}
LAUNCH=(--num_processes 2 --num_machines 1 --mixed_precision bf16 --dynamo_backend no)
CUDA_VISIBLE_DEVICES=0 run gpu1 python3 "${PHALANX[@]}"
run ddp2 accelerate launch --multi_gpu "${LAUNCH[@]}" "${PHALANX[@]}"
run fsdp2 accelerate launch --use_fsdp --fsdp_version 2 --fsdp_auto_wrap_policy TRANSFORMER_BASED_WRAP \
  --fsdp_transformer_layer_cls_to_wrap PhalanxDecoderLayer --fsdp_state_dict_type FULL_STATE_DICT \
  --fsdp_reshard_after_forward true "${LAUNCH[@]}" "${PHALANX[@]}"

python3 - "$RUNS" "$OUT/ddp_run.json" <<'EOF' | tee -a "$LOG"
import json, sys
from pathlib import Path

runs, out = Path(sys.argv[1]), Path(sys.argv[2])
result = {}
for name in ("gpu1", "ddp2", "fsdp2"):
    state = runs / name / "trainer_state.json"
    if not state.exists():
        continue
    logs = [e for e in json.loads(state.read_text())["log_history"] if "loss" in e]
    first, last = logs[0], logs[-1]
    tps = (last["num_input_tokens_seen"] - first["num_input_tokens_seen"]) / (last["train_runtime"] - first["train_runtime"])
    result[name] = {"steady_tokens_per_second": tps, "final_loss": last["loss"], "steps": last["step"],
                    "from_step": first["step"], "tokens": last["num_input_tokens_seen"]}
for name in ("ddp2", "fsdp2"):
    if name not in result or "gpu1" not in result:
        continue
    result[name]["scaling_efficiency"] = result[name]["steady_tokens_per_second"] / (2 * result["gpu1"]["steady_tokens_per_second"])
out.write_text(json.dumps(result, indent=2))
print(f"{'run':<6} {'tokens/s':>12} {'final loss':>11} {'2-GPU efficiency':>17}")
for name in result:
    r = result[name]
    print(f"{name:<6} {r['steady_tokens_per_second']:>12.0f} {r['final_loss']:>11.4f} {r.get('scaling_efficiency', 1.0):>17.2f}")
EOF
