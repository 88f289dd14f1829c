#!/usr/bin/env bash
# Multi-GPU run on the N GPUs of one host (N = the GPUs torch sees). For each preset (default `1.3b-phalanx` and
# `1.3b-transformer` at 8K context), the same `phalanx train` command
#   warmup: the gpu1 command, not reported (the Triton kernels compile in the first process);
#   gpu1: one GPU, gradient accumulation N;
#   ddp:  `accelerate launch --multi_gpu --num_processes N`;
#   fsdp: `accelerate launch --use_fsdp --fsdp_version 2`, full shard (reshard after forward), one unit per decoder
#         layer (TRANSFORMER_BASED_WRAP on PhalanxDecoderLayer);
# all bf16 with activation checkpointing of every decoder layer (FSDP's own under FSDP: Transformers' would
# all-gather each layer's weights once more in backward) and the same global batch (BATCH rows per GPU x N).
# Reported per run: steady-state tokens/s, per-GPU efficiency against gpu1, the loss at the last step (its
# relative difference to gpu1's, flagged above 2%) and the peak memory of every rank (PHALANX_LOG_PEAK_MEMORY=1),
# and per strategy the Phalanx/Transformer tokens/s ratio. Then a small
# Gemma3-shaped teacher (random weights) is converted and distilled on one GPU and under DDP on the N GPUs.
#
#   bash benchmarks/ddp_run.sh            # env: PRESETS SEQ_LEN BATCH STEPS LOGGING CKPT DATA OUT DISTILL_STEPS
#   DRY_RUN=1 bash benchmarks/ddp_run.sh  # the same commands on one GPU (N=1)
#   CPU=1 bash benchmarks/ddp_run.sh      # smoke test of this script: tiny presets, N=2 gloo processes, fp32
#
# Steady state = tokens and seconds between the first and the last logged step, read from trainer_state.json
# (the Trainer's train_tokens_per_second also counts start-up). Appends to $OUT/ddp_run.log (versions, every
# run's output) and writes $OUT/ddp_run.json (one record per run; runs this call did not make are kept from an
# earlier call with the same N and SEQ_LEN, so PRESETS=... and DISTILL_STEPS=0 split the work over calls);
# prints a table last.
set -euo pipefail
# NVLink multicast off: on the lent hosts a program that uses it can put the shared GPUs out of service for a day
# or more. Exported, so every process this script starts inherits it.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
cd "$(dirname "$0")/.."
REPO=$PWD
CPU=${CPU:-0}
DRY_RUN=${DRY_RUN:-0}
if [[ -z "${DATA:-}" ]]; then
  DATA=$([[ -d shared/data/shakespeare ]] && echo shared/data/shakespeare || echo data/shakespeare)
fi

if [[ $CPU == 1 ]]; then
  # On the CPU accelerate never shards: its FSDP run is DDP (benchmarks/ddp_cpu_check.sh checks FSDP2 itself).
  PY=${PY:-$([[ -x .venv/bin/python ]] && echo "$REPO/.venv/bin/python" || echo python3)}
  N=${NPROC:-2}
  PRESETS=${PRESETS:-tiny-phalanx tiny-transformer}
  SEQ_LEN=${SEQ_LEN:-64} BATCH=${BATCH:-2} STEPS=${STEPS:-6} LOGGING=${LOGGING:-2} DISTILL_STEPS=${DISTILL_STEPS:-2}
  PRECISION=fp32 MIXED=no DEVICE_ARGS=(--device cpu)
  OUT=${OUT:-benchmarks/results/ddp_run_cpu_smoke}
  export OMP_NUM_THREADS=1
  unset ACCELERATE_USE_CPU  # launched processes without CUDA form one gloo group by themselves (training/options.py)
else
  PY=${PY:-python3}
  N=$("$PY" -c "import torch; print(torch.cuda.device_count())")
  if (( N < 1 )); then
    echo "error: ddp_run.sh found no CUDA GPU (CPU=1 runs its smoke test on the CPU)" >&2
    exit 1
  elif [[ $DRY_RUN == 1 ]]; then
    N=1
  elif (( N < 2 )); then
    echo "error: ddp_run.sh needs at least 2 GPUs, found $N (DRY_RUN=1 runs the same commands on one GPU)" >&2
    exit 1
  fi
  source benchmarks/gpu_env.sh  # the project, installed offline into $SITE
  PRESETS=${PRESETS:-1.3b-phalanx 1.3b-transformer}
  SEQ_LEN=${SEQ_LEN:-8192} BATCH=${BATCH:-2} STEPS=${STEPS:-30} LOGGING=${LOGGING:-5} DISTILL_STEPS=${DISTILL_STEPS:-20}
  PRECISION=bf16 MIXED=bf16 DEVICE_ARGS=()
  OUT=${OUT:-benchmarks/results/ddp_run_1.3b$([[ $DRY_RUN == 1 ]] && echo _dry_run)}
fi
CKPT=${CKPT:-1}
(( STEPS % LOGGING == 0 && STEPS / LOGGING >= 2 )) || { echo "error: STEPS must be a multiple of LOGGING, at least 2 x LOGGING" >&2; exit 1; }
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 PHALANX_LOG_PEAK_MEMORY=1
RUNS=$(mktemp -d)
LOG="$OUT/ddp_run.log"
mkdir -p "$OUT"
"$PY" -c "import accelerate" 2>/dev/null || { echo "error: accelerate is not installed (the Trainer needs it)" >&2; exit 1; }

{
  echo "# ddp_run $(date -u +%FT%TZ) N=$N cpu=$CPU dry_run=$DRY_RUN presets=[$PRESETS] seq_len=$SEQ_LEN batch/gpu=$BATCH" \
       "steps=$STEPS logging=$LOGGING gradient_checkpointing=$CKPT data=$DATA"
  [[ $CPU == 1 ]] && echo "# $(nproc --all) CPU cores" || nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  "$PY" -c "import torch, transformers, accelerate; print('torch', torch.__version__, 'transformers', transformers.__version__, 'accelerate', accelerate.__version__)"
  env | grep -E '^(NCCL_NVLS_ENABLE|TORCH_SYMM_MEM_DISABLE_MULTICAST|NVSHMEM_DISABLE_NVLS)=' | sort
} | tee -a "$LOG"

# Each run's output goes to $RUNS/<name>.out and the log; a failing run is logged and left out of the table. Its
# weights are deleted when it ends (only trainer_state.json and metrics.json are read): 1.3B models in fp32 filled
# the one-GPU machine's disk after four runs (benchmarks/results/ddp_run_1.3b_dry_run/).
run() {
  local name=$1; shift
  echo "## $name: $*" | tee -a "$LOG"
  (cd "$RUNS" && "$@") 2>&1 | tee "$RUNS/$name.out" | tee -a "$LOG" >/dev/null \
    || echo "# $name FAILED (exit ${PIPESTATUS[0]})" | tee -a "$LOG"
  find "$RUNS/$name" -name '*.safetensors' -delete 2>/dev/null || true
}
LAUNCH=("$PY" -m accelerate.commands.launch --num_processes "$N" --num_machines 1 --mixed_precision "$MIXED" --dynamo_backend no)
FSDP=(--use_fsdp --fsdp_version 2 --fsdp_auto_wrap_policy TRANSFORMER_BASED_WRAP --fsdp_transformer_layer_cls_to_wrap
      PhalanxDecoderLayer --fsdp_reshard_after_forward true --fsdp_state_dict_type FULL_STATE_DICT)
# accelerate refuses --multi_gpu with one process: with N=1 (DRY_RUN) the ddp run is a plain one-process launch.
MULTI=()
(( N > 1 )) && MULTI=(--multi_gpu)
ONE=("$PY")
[[ $CPU == 1 ]] || ONE=(env CUDA_VISIBLE_DEVICES=0 "$PY")

# Run from outside the repository root ($RUNS): its kernels/ folder must not shadow Transformers' `kernels` probe.
for preset in $PRESETS; do
  TRAIN=(-m phalanx_cli.main train --model-config "$preset" --data "$REPO/$DATA" --seq-len "$SEQ_LEN" --batch-size "$BATCH"
         --max-steps "$STEPS" --logging-steps "$LOGGING" --save-steps 1000000 --precision "$PRECISION" --seed 0)
  CKPT_ARGS=()
  [[ $CKPT == 1 ]] && CKPT_ARGS=(--gradient-checkpointing)
  # Warm-up, not reported: the first process compiles the Triton kernels (cached on disk for the runs after it). In
  # the one-GPU dry run a compile at step 9 put the one-GPU run at 28% of the same command under accelerate.
  [[ $CPU == 1 ]] || run "$preset.warmup" "${ONE[@]}" "${TRAIN[@]}" "${CKPT_ARGS[@]}" --grad-accum "$N" --output "$RUNS/$preset.warmup"
  run "$preset.gpu1" "${ONE[@]}" "${TRAIN[@]}" "${CKPT_ARGS[@]}" --grad-accum "$N" --output "$RUNS/$preset.gpu1"
  run "$preset.ddp" "${LAUNCH[@]}" "${MULTI[@]}" "${TRAIN[@]}" "${CKPT_ARGS[@]}" --output "$RUNS/$preset.ddp"
  run "$preset.fsdp" "${LAUNCH[@]}" "${FSDP[@]}" --fsdp_activation_checkpointing "$([[ $CKPT == 1 ]] && echo true || echo false)" \
    "${TRAIN[@]}" --output "$RUNS/$preset.fsdp"
done

# Distillation: a Gemma3-shaped teacher (sliding-window layers, random weights: this measures the path, not quality)
# converted by `phalanx convert`, then `phalanx distill` on one GPU (grad accumulation N) and under DDP on N.
if (( DISTILL_STEPS > 0 )); then
  "$PY" - "$RUNS/teacher" "$CPU" <<'EOF' 2>&1 | tee -a "$LOG"
import sys
import torch
from transformers import AutoModelForCausalLM, Gemma3TextConfig
from phalanx_training.tokenizer import load_byte_tokenizer

folder, cpu = sys.argv[1], sys.argv[2] == "1"
tokenizer = load_byte_tokenizer()
# CPU: three sliding-window layers and one global (a Gemma3 without global layers converts into a student that
# does not load: its rope_parameters keep only the `full_attention` entry).
shape = (dict(hidden_size=64, intermediate_size=176, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
              head_dim=16, sliding_window=32, layer_types=["sliding_attention"] * 3 + ["full_attention"]) if cpu else
         dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=4,
              head_dim=64, sliding_window=512))
config = Gemma3TextConfig(vocab_size=len(tokenizer), max_position_embeddings=32768, tie_word_embeddings=True,
                          query_pre_attn_scalar=shape["head_dim"], pad_token_id=tokenizer.pad_token_id,
                          bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **shape)
torch.manual_seed(0)
model = AutoModelForCausalLM.from_config(config)
model.save_pretrained(folder)
tokenizer.save_pretrained(folder)
print(f"teacher: Gemma3 {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, layer types {config.layer_types}")
EOF
  (cd "$RUNS" && "$PY" -m phalanx_cli.main convert "$RUNS/teacher" "$RUNS/student") 2>&1 | tee -a "$LOG"
  DSEQ=$(( SEQ_LEN < 2048 ? SEQ_LEN : 2048 ))
  DISTILL=(-m phalanx_cli.main distill "$RUNS/teacher" "$RUNS/student" --data "$REPO/$DATA" --seq-len "$DSEQ"
           --batch-size "$BATCH" --stage1-steps "$DISTILL_STEPS" --stage2-steps "$DISTILL_STEPS" --logging-steps 1
           --save-every 1000000 --eval-max-bytes 4096 --precision "$PRECISION" --seed 0 "${DEVICE_ARGS[@]}")
  run distill.gpu1 "${ONE[@]}" "${DISTILL[@]}" --grad-accum "$N" --out "$RUNS/distill.gpu1"
  run distill.ddp "${LAUNCH[@]}" "${MULTI[@]}" "${DISTILL[@]}" --out "$RUNS/distill.ddp"
fi

"$PY" - "$RUNS" "$OUT/ddp_run.json" "$N" "$BATCH" "$SEQ_LEN" "$PRESETS" <<'EOF' | tee -a "$LOG"
import json, re, sys
from pathlib import Path

runs, out, n, batch, seq_len, presets = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6].split()
GIB = 2**30
TOLERANCE = 0.02  # relative difference of the last-step loss that bf16 noise stays under


def peak_memory(name: str) -> list[dict]:
    """The `peak_memory` lines of a run, sorted by rank (distill: the larger of its two stages per rank); a progress
    bar on stderr may share their line."""
    lines = [json.loads(m) for m in re.findall(r"peak_memory (\{[^}]*\})", (runs / f"{name}.out").read_text())]
    by_rank = {}
    for r in lines:
        key = "max_memory_allocated" if "max_memory_allocated" in r else "max_rss"
        if r["rank"] not in by_rank or r[key] > by_rank[r["rank"]][key]:
            by_rank[r["rank"]] = r
    return [by_rank[k] for k in sorted(by_rank)]


def peak_gib(records: list[dict]) -> list[float]:
    return [round(r.get("max_memory_allocated", r.get("max_rss", 0)) / GIB, 3) for r in records]


records = []
for preset in presets:
    for strategy, gpus, accum in (("gpu1", 1, n), ("ddp", n, 1), ("fsdp", n, 1)):
        name = f"{preset}.{strategy}"
        state = runs / name / "trainer_state.json"
        if not state.exists():
            continue
        logs = [e for e in json.loads(state.read_text())["log_history"] if "loss" in e]
        first, last = logs[0], logs[-1]
        tps = (last["num_input_tokens_seen"] - first["num_input_tokens_seen"]) / (last["train_runtime"] - first["train_runtime"])
        memory = peak_memory(name)
        records.append({"run": name, "preset": preset, "strategy": strategy, "gpus": gpus, "per_gpu_batch": batch,
                        "grad_accum": accum, "global_batch_rows": batch * gpus * accum, "seq_len": seq_len,
                        "steady_tokens_per_second": tps, "from_step": first["step"], "steps": last["step"],
                        "tokens": last["num_input_tokens_seen"], "last_loss": last["loss"], "losses": [e["loss"] for e in logs],
                        "peak_memory_gib_per_rank": peak_gib(memory), "peak_memory": memory})
distills = []
for strategy, gpus in (("gpu1", 1), ("ddp", n)):
    metrics = runs / f"distill.{strategy}" / "metrics.json"
    if metrics.exists():
        m = json.loads(metrics.read_text())
        distills.append({"run": f"distill.{strategy}", "gpus": gpus, "processes": m["processes"],
                         **{k: v for k, v in m.items() if k.startswith(("tokens", "bpb", "final_losses"))},
                         "peak_memory_gib_per_rank": peak_gib(peak_memory(f"distill.{strategy}")),
                         "peak_memory": peak_memory(f"distill.{strategy}")})
# Runs this call did not make are kept from an earlier call with the same N and context (presets run separately).
if out.exists():
    earlier = json.loads(out.read_text())
    if earlier["summary"]["gpus"] == n:
        made = {r["run"] for r in records + distills}
        kept = [r for r in earlier["runs"] if r["run"] not in made and r["seq_len"] == seq_len]
        kept_distill = [d for d in earlier["distill"] if d["run"] not in made]
        records, distills = kept + records, kept_distill + distills
        if kept or kept_distill:
            print("kept from an earlier call: " + ", ".join(r["run"] for r in kept + kept_distill))
by_run = {r["run"]: r for r in records}
for r in records:
    one = by_run.get(f"{r['preset']}.gpu1")
    if one is not None:
        r["per_gpu_efficiency"] = r["steady_tokens_per_second"] / (r["gpus"] * one["steady_tokens_per_second"])
        r["last_loss_rel_diff_vs_gpu1"] = abs(r["last_loss"] - one["last_loss"]) / abs(one["last_loss"])
diffs = [r["last_loss_rel_diff_vs_gpu1"] for r in records if "last_loss_rel_diff_vs_gpu1" in r]
speedups = {}
for strategy in ("gpu1", "ddp", "fsdp"):
    hybrid = [r for r in records if r["strategy"] == strategy and "phalanx" in r["preset"]]
    transformer = [r for r in records if r["strategy"] == strategy and "transformer" in r["preset"]]
    if hybrid and transformer:
        speedups[strategy] = hybrid[0]["steady_tokens_per_second"] / transformer[0]["steady_tokens_per_second"]
summary = {"gpus": n, "max_last_loss_rel_diff": max(diffs, default=None), "loss_tolerance": TOLERANCE,
           "phalanx_over_transformer_tokens_per_second": speedups}
out.write_text(json.dumps({"summary": summary, "runs": records, "distill": distills}, indent=2) + "\n")

print(f"\n{'run':<26} {'GPUs':>4} {'tokens/s':>11} {'per-GPU eff':>11} {'last loss':>10} {'rel diff':>9}  peak memory per rank (GiB)")
for r in records:
    print(f"{r['run']:<26} {r['gpus']:>4} {r['steady_tokens_per_second']:>11.0f} {r.get('per_gpu_efficiency', float('nan')):>11.3f} "
          f"{r['last_loss']:>10.4f} {r.get('last_loss_rel_diff_vs_gpu1', float('nan')):>9.2e}  {r['peak_memory_gib_per_rank']}")
for d in distills:
    print(f"{d['run']:<26} {d['gpus']:>4} stage 1/2 tokens/s {d.get('tokens_per_second_stage1', float('nan')):.0f} / "
          f"{d.get('tokens_per_second_stage2', float('nan')):.0f} (with start-up); final stage-2 loss "
          f"{d.get('final_losses_stage2', {}).get('loss', float('nan')):.4f}; bits/byte after stage 2 "
          f"{d.get('bpb_after_stage2', float('nan')):.3f}; peak memory {d['peak_memory_gib_per_rank']}")
if speedups:
    print("Phalanx / Transformer tokens/s: " + ", ".join(f"{k} {v:.3f}" for k, v in speedups.items()))
if diffs:
    worst = max(diffs)
    print(f"max relative difference of the last-step loss vs one GPU: {worst:.2e}"
          + (f"  ** FLAG: above {TOLERANCE:.0%} **" if worst > TOLERANCE else f" (within {TOLERANCE:.0%})"))
EOF
