#!/usr/bin/env bash
# CPU (gloo) check that sharded training equals single-process training at the same global batch
# (4 rows of 32 tokens a step: one process x 2 rows x 2 accumulated micro-batches = two processes x 2 rows).
#
# 1. `phalanx train` (tiny-phalanx, fp32, gradient checkpointing): one process with --grad-accum 2, two
#    processes under `accelerate launch --multi_gpu` (DDP) and under `torchrun`.
# 2. FSDP2: accelerate shards only on accelerators (on the CPU its FSDP run is DDP), so FSDP2 is checked on the
#    model directly, built as accelerate builds it for benchmarks/ddp_run.sh: each decoder layer in a
#    `checkpoint_wrapper` (--fsdp_activation_checkpointing) and its own `fully_shard` unit, then the root
#    (TRANSFORMER_BASED_WRAP), full shard; against torch DDP and one process with 2 accumulated micro-batches
#    (Transformers' gradient checkpointing), all with the same rows, AdamW and gradient clipping.
# Pass: every run's per-step losses within 1e-5 relative and its final weights within 1e-5 absolute of the
# single-process run (fp32; only the reduction order differs).
#
#   bash benchmarks/ddp_cpu_check.sh [OUT_DIR]      # default OUT_DIR: benchmarks/results
#
# Needs the project installed (make install). Writes OUT_DIR/ddp_cpu_check.log; prints each run's max
# weight difference and losses last, then PASS or FAIL (exit status 1 on FAIL).
# On a machine without GPUs, DDP needs `--multi_gpu` (it selects accelerate's torch.distributed launcher;
# without it `accelerate launch` starts ONE process); launched processes without CUDA form one gloo group.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-$REPO/benchmarks/results}
PY=${PY:-$REPO/.venv/bin/python}
RUNS=$(mktemp -d)
LOG="$OUT/ddp_cpu_check.log"
mkdir -p "$OUT"
STEPS=6
TEXT="$REPO/data/shakespeare/julius_caesar_gut.txt"
TRAIN=(-m phalanx_cli.main train --model-config tiny-phalanx --data "$TEXT" --seq-len 32 --max-steps "$STEPS"
       --logging-steps 1 --lr 3e-3 --warmup 1 --precision fp32 --seed 0 --save-steps 1000 --batch-size 2
       --gradient-checkpointing)
LAUNCH=(--multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no)
TORCHRUN=("$PY" -m torch.distributed.run --standalone --nproc_per_node)
CORES=$(nproc --all)
export OMP_NUM_THREADS=1
unset ACCELERATE_USE_CPU
cd "$RUNS"  # outside the repository: its kernels/ folder must not shadow Transformers' `kernels` probe

cat >"$RUNS/fsdp_check.py" <<'EOF'
"""One run of the FSDP2 check: MODE single (1 process, 2 micro-batches of 2 rows), ddp or fsdp (2 processes x 2
rows). Rows 4k..4k+3 of the packed text are step k's global batch; process r takes rows 2r and 2r+1."""
import json, sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel
from transformers import AutoModelForCausalLM

from phalanx_training.data import DataSource, PackedCollator, build_packed_dataset
from phalanx_training.presets import get_preset
from phalanx_training.tokenizer import load_byte_tokenizer

mode, text, out, steps = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
GLOBAL, MICRO = 4, 2
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
accum = GLOBAL // (MICRO * world)
tokenizer = load_byte_tokenizer()
torch.manual_seed(0)
model = AutoModelForCausalLM.from_config(get_preset("tiny-phalanx", vocab_size=len(tokenizer)))
model.train()
if mode == "fsdp":  # accelerate's fsdp2_apply_ac, then fully_shard on every PhalanxDecoderLayer and the root
    for i, layer in enumerate(model.model.layers):
        model.model.layers[i] = checkpoint_wrapper(layer, preserve_rng_state=False)
        fully_shard(layer)
    fully_shard(model)
else:  # Transformers 5.23 renamed gradient_checkpointing_enable (the old name warns)
    getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
if mode == "ddp":
    model = DistributedDataParallel(model)
optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)
rows = build_packed_dataset(DataSource((text,)), tokenizer, 32)
collate = PackedCollator()
losses = []
for step in range(steps):
    mine = [rows[step * GLOBAL + rank * MICRO * accum + i] for i in range(MICRO * accum)]
    total = torch.zeros(())
    for k in range(accum):
        loss = model(**collate(mine[k * MICRO:(k + 1) * MICRO])).loss / accum
        loss.backward()
        total += loss.detach()
    dist.all_reduce(total)
    losses.append(total.item() / world)
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad()
module = model.module if mode == "ddp" else model
weights = {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone() for k, v in module.state_dict().items()}
if rank == 0:
    out.mkdir(parents=True, exist_ok=True)
    torch.save(weights, out / "weights.pt")
    (out / "losses.json").write_text(json.dumps(losses))
dist.destroy_process_group()
EOF

{
  echo "# ddp_cpu_check $(date -u +%FT%TZ) on $CORES CPU cores, $STEPS steps of 4 rows x 32 tokens"
  "$PY" -c "import torch, transformers, accelerate; print('torch', torch.__version__, 'transformers', transformers.__version__, 'accelerate', accelerate.__version__)"
  "$PY" "${TRAIN[@]}" --grad-accum 2 --output "$RUNS/single"
  "$PY" -m accelerate.commands.launch "${LAUNCH[@]}" "${TRAIN[@]}" --output "$RUNS/ddp"
  "${TORCHRUN[@]}" 2 "${TRAIN[@]}" --output "$RUNS/torchrun"
  "${TORCHRUN[@]}" 1 "$RUNS/fsdp_check.py" single "$TEXT" "$RUNS/fsdp_check.single" "$STEPS"
  "${TORCHRUN[@]}" 2 "$RUNS/fsdp_check.py" ddp "$TEXT" "$RUNS/fsdp_check.ddp" "$STEPS"
  "${TORCHRUN[@]}" 2 "$RUNS/fsdp_check.py" fsdp "$TEXT" "$RUNS/fsdp_check.fsdp" "$STEPS"
  "$PY" - "$RUNS" <<'EOF'
import json, sys
from pathlib import Path

import torch
from safetensors.torch import load_file

runs = Path(sys.argv[1])
LOSS_RTOL, WEIGHT_ATOL = 1e-5, 1e-5


def trainer_run(name):
    losses = [e["loss"] for e in json.loads((runs / name / "trainer_state.json").read_text())["log_history"] if "loss" in e]
    return load_file(runs / name / "model.safetensors"), losses


def model_run(name):
    return torch.load(runs / name / "weights.pt"), json.loads((runs / name / "losses.json").read_text())


ok = True
print(f"{'run':<18} {'max |dw| vs single':>19} {'max rel dloss':>14}  losses per step")
for label, load, names in (("phalanx train", trainer_run, ("single", "ddp", "torchrun")),
                           ("fully_shard", model_run, ("fsdp_check.single", "fsdp_check.ddp", "fsdp_check.fsdp"))):
    ref_weights, ref_losses = load(names[0])
    for name in names:
        weights, losses = load(name)
        dw = max((weights[k] - ref_weights[k]).abs().max().item() for k in ref_weights)
        dl = max(abs(a - b) / abs(b) for a, b in zip(losses, ref_losses, strict=True))
        ok &= dw <= WEIGHT_ATOL and dl <= LOSS_RTOL
        print(f"{name:<18} {dw:>19.3e} {dl:>14.3e}  {[round(l, 5) for l in losses]}")
print(f"{'PASS' if ok else 'FAIL'}: every run within {LOSS_RTOL:g} relative loss and {WEIGHT_ATOL:g} absolute weight "
      "difference of its single-process run")
sys.exit(0 if ok else 1)
EOF
} 2>&1 | grep -v -e "it/s\]" -e "examples/s\]" -e "Writing model shards" -e "pin_memory" -e "super().__init__(loader)" | tee "$LOG"
