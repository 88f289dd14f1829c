#!/usr/bin/env bash
# Issue 17: the old hand-written distillation loop (last present in 313ad0f^, removed by 313ad0f) against the new
# Trainer-based `phalanx distill`, timed in the same run on the same teacher, so the new path's tokens/s can be put
# next to the old loop's. Each version converts the teacher with its own `phalanx convert` (default init, every SWA
# layer) and distills the student with identical flags; precision is each version's default (the old loop: bf16
# autocast and bf16 weights on CUDA; the new one: --precision auto = bf16 on a GPU that supports it).
#
#   bash benchmarks/distill_loops.sh prepare                                 # here: git archive 313ad0f^ -> .oldloop/
#   bash benchmarks/distill_loops.sh run TEACHER_DIR DATA_DIR OUT_DIR [STEPS] # GPU machine (carry .oldloop)
#   bash benchmarks/distill_loops.sh summarize OUT_DIR                       # the table again, from OUT_DIR alone
#   DEVICE=cpu SEQ_LEN=128 BATCH=2 bash benchmarks/distill_loops.sh run ...  # CPU smoke test (in a venv with the project)
#
# `prepare` writes the old project tree into .oldloop/ (ignored by git; carry it to the GPU machine). `run` installs
# it into $OLD_SITE (default /tmp/oldloop_site; skipped when already installed from the same tree) and runs the old
# CLI with PYTHONPATH=$OLD_SITE:$PYTHONPATH, so its packages shadow the current ones; the new CLI is the current
# project (on the GPU machine benchmarks/gpu_env.sh is sourced for it when DEVICE=cuda; on CPU the caller's python3
# must import it already). STEPS (default 100) is the step count of each stage. Work folders (converted students,
# distill outputs with weights) go to $WORK (default /tmp/distill_loops); OUT_DIR gets each loop's log (its first
# lines name the loop's revision and environment; the distill command's start and end clocks are traced in it) and
# metrics.json, then distill_loops.json and distill_loops.md, which `summarize` writes from those files alone (a run
# whose call ended before its summary is summarised wherever its files come back). End-to-end tokens/s is (stage 1 + stage 2
# tokens) / the distill command's wall clock, which includes loading and the four held-out bits/byte scores; the new
# loop also reports the Trainer's own tokens/s for each stage; and for both loops each stage's tokens over its progress
# bar's elapsed time (training steps only, whole seconds) give a like-for-like loop rate. Environment: DEVICE (cuda),
# SEQ_LEN (2048), BATCH (8), EVAL_DATA (the shipped held-out tempest_gut.txt), EVAL_MAX_BYTES (20000), WORK, OLD_SITE,
# OLD_REV (313ad0f^).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
OLD_REV=${OLD_REV:-313ad0f^}
OLD_TREE=$REPO/.oldloop
usage() {
  echo "usage: $0 prepare | run TEACHER_DIR DATA_DIR OUT_DIR [STEPS] | summarize OUT_DIR" >&2
  exit 2
}
[ $# -ge 1 ] || usage

if [ "$1" = prepare ]; then
  [ $# -eq 1 ] || usage
  grep -qxF '/.oldloop/' "$REPO/.gitignore" || echo '/.oldloop/' >>"$REPO/.gitignore"
  rm -rf "$OLD_TREE"  # only ever the archive written here
  mkdir -p "$OLD_TREE"
  git -C "$REPO" archive "$OLD_REV" | tar -C "$OLD_TREE" -xf -
  git -C "$REPO" rev-parse "$OLD_REV" >"$OLD_TREE/.oldloop_rev"
  echo "wrote $OLD_REV ($(cat "$OLD_TREE/.oldloop_rev")) into $OLD_TREE"
  exit 0
fi

summarize() {  # OUT_DIR: distill_loops.json and .md from the two logs and metrics files in OUT_DIR
  for f in old.log new.log metrics_old.json metrics_new.json; do
    [ -f "$1/$f" ] || { echo "summarize: $1/$f is missing" >&2; exit 1; }
  done
  python3 - "$1" <<'EOF'
import json, re, sys
from pathlib import Path
out = Path(sys.argv[1])
report, env = {"loops": {}}, {}
for loop in ("old", "new"):
    log = (out / f"{loop}.log").read_text()
    m = json.loads((out / f"metrics_{loop}.json").read_text())
    # the loop's header lines (revision, environment), the traced clocks of the distill command, and each stage's
    # progress bar as both loops draw it: the last "stage N: 100%|...| n/n [elapsed<" (1 s resolution)
    rev = re.search(r"^== \w+ loop: revision (\S+)", log, re.M)
    env = dict(re.findall(r"^environment: (\w+)=(.*)$", log, re.M)) or env
    start, end = (float(re.search(rf"^\+ {k}=([\d.]+)$", log, re.M).group(1)) for k in ("start", "end"))
    bars = re.findall(r"stage (\d): 100%\|[^|]*\| \d+/\d+ \[([\d:]+)<", log)
    bar_s = {st: sum(float(x) * 60 ** i for i, x in enumerate(reversed(el.split(":")))) for st, el in bars}
    tokens = m["tokens_stage1"] + m["tokens_stage2"]
    report["loops"][loop] = {
        "revision": rev.group(1) if rev else "unknown", "wall_seconds": round(end - start, 2),
        "tokens_stage1": m["tokens_stage1"], "tokens_stage2": m["tokens_stage2"],
        "tokens_per_second_end_to_end": round(tokens / (end - start), 1),
        **{k: m.get(k) for k in ("tokens_per_second_stage1", "tokens_per_second_stage2")},
        **{f"tokens_per_second_bar_stage{st}": round(m[f"tokens_stage{st}"] / t, 1) if t else None
           for st, t in bar_s.items()},
        **{k: m[k] for k in ("bpb_teacher", "bpb_student_initial", "bpb_after_stage1", "bpb_after_stage2")}}
    stage1 = m["options"]["stage1"]
    report.update(steps_per_stage=stage1["steps"], seq_len=stage1["seq_len"], batch_size=stage1["batch_size"],
                  device=m["options"]["device"])
report["environment"] = env or None
(out / "distill_loops.json").write_text(json.dumps(report, indent=2) + "\n")
fmt = lambda v, f: "-" if v is None else format(v, f)
rows = ["| loop | wall s | tokens | end-to-end tok/s | Trainer tok/s s1 / s2 | progress-bar tok/s s1 / s2 | bpb teacher "
        "| initial | stage 1 | stage 2 |", "|---|---|---|---|---|---|---|---|---|---|"]
for loop, r in report["loops"].items():
    rows.append(f"| {loop} ({r['revision'][:7]}) | {r['wall_seconds']:.1f} | {r['tokens_stage1'] + r['tokens_stage2']} | "
                f"{r['tokens_per_second_end_to_end']:.0f} | {fmt(r['tokens_per_second_stage1'], '.0f')} / "
                f"{fmt(r['tokens_per_second_stage2'], '.0f')} | {fmt(r.get('tokens_per_second_bar_stage1'), '.0f')} / "
                f"{fmt(r.get('tokens_per_second_bar_stage2'), '.0f')} | {r['bpb_teacher']:.3f} | {r['bpb_student_initial']:.3f} | "
                f"{r['bpb_after_stage1']:.3f} | {r['bpb_after_stage2']:.3f} |")
where = ", ".join(f"{k} {v}" for k, v in env.items()) if env else "environment not recorded in the logs"
head = (f"{report['steps_per_stage']} + {report['steps_per_stage']} steps x {report['batch_size']} x "
        f"{report['seq_len']} on {report['device']}; {where}\n\n")
(out / "distill_loops.md").write_text(head + "\n".join(rows) + "\n")
print(head + "\n".join(rows))
EOF
}
if [ "$1" = summarize ]; then
  [ $# -eq 2 ] || usage
  summarize "$2"
  exit 0
fi
[ "$1" = run ] && { [ $# -eq 4 ] || [ $# -eq 5 ]; } || usage
TEACHER=$(cd "$2" && pwd)
DATA=$(cd "$3" && pwd)
OUT_DIR=$4
STEPS=${5:-100}
DEVICE=${DEVICE:-cuda}
SEQ_LEN=${SEQ_LEN:-2048}
BATCH=${BATCH:-8}
EVAL_DATA=$(realpath "${EVAL_DATA:-$REPO/eval/tasks/data/tempest_gut.txt}")
EVAL_MAX_BYTES=${EVAL_MAX_BYTES:-20000}
WORK=${WORK:-/tmp/distill_loops}
OLD_SITE=${OLD_SITE:-/tmp/oldloop_site}
[ -f "$OLD_TREE/pyproject.toml" ] || { echo "no old tree in $OLD_TREE: run '$0 prepare' first (and carry .oldloop)" >&2; exit 1; }
mkdir -p "$OUT_DIR" "$WORK"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
if [ "$DEVICE" = cuda ]; then source "$REPO/benchmarks/gpu_env.sh"; fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1

# The old tree, installed once per tree (the stamp is the archived revision plus the file listing).
STAMP=$( (cat "$OLD_TREE/.oldloop_rev" 2>/dev/null; find "$OLD_TREE" -type f -printf '%P %s\n' | sort) | md5sum | cut -d' ' -f1)
if [ "$(cat "$OLD_SITE/.oldloop_installed" 2>/dev/null)" != "$STAMP" ]; then
  python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir --upgrade \
    --target "$OLD_SITE" "$OLD_TREE"
  echo "$STAMP" >"$OLD_SITE/.oldloop_installed"
fi
OLD_PATH=$OLD_SITE${PYTHONPATH:+:$PYTHONPATH}
NEW_PATH=${PYTHONPATH:-}

for loop in old new; do
  if [ $loop = old ]; then path=$OLD_PATH; else path=$NEW_PATH; fi
  log=$OUT_DIR/$loop.log
  student=$WORK/$loop/student
  dout=$WORK/$loop/distill
  case "$TEACHER/ $DATA/ $EVAL_DATA/" in *"$WORK/$loop/"*) echo "inputs lie inside $WORK/$loop; set WORK" >&2; exit 1;; esac
  rm -rf "$WORK/$loop"  # this script's own work folder from an earlier run (never an input: checked above)
  mkdir -p "$WORK/$loop"
  {  # run outside the repo root: `python3 -m` puts the working folder first on sys.path, and the root's
     # modeling_phalanx/ would shadow the old tree's
    cd "$WORK/$loop"
    if [ $loop = old ]; then rev=$(cat "$OLD_TREE/.oldloop_rev"); else rev=$(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo unknown); fi
    echo "== $loop loop: revision $rev"
    PYTHONPATH=$path python3 -c 'import phalanx_conversion.distill as d, modeling_phalanx as m, torch, transformers
print("files:", d.__file__, m.__file__)
print("environment: torch=" + torch.__version__)
print("environment: transformers=" + transformers.__version__)
print("environment: gpu=" + (torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"))'
    PYTHONPATH=$path python3 -m phalanx_cli.main convert "$TEACHER" "$student"
    set -x
    start=$(date +%s.%N)
    PYTHONPATH=$path python3 -m phalanx_cli.main distill "$TEACHER" "$student" --out "$dout" --data "$DATA" \
      --eval-data "$EVAL_DATA" --stage1-steps "$STEPS" --stage2-steps "$STEPS" --batch-size "$BATCH" \
      --seq-len "$SEQ_LEN" --eval-max-bytes "$EVAL_MAX_BYTES" --save-every $((STEPS + 1)) --device "$DEVICE"
    end=$(date +%s.%N)
    { set +x; } 2>/dev/null
  } 2>&1 | tee "$log"
  cp "$dout/metrics.json" "$OUT_DIR/metrics_$loop.json"
done

summarize "$OUT_DIR"
