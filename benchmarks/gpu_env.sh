# Source me on the GPU machine: installs the carried wheels (.whl/, when present) and this project
# offline into $SITE (default /tmp/phalanx_site), again whenever they change, and puts $SITE on PYTHONPATH.
# The GPU image has torch, transformers, peft, accelerate, but no lm-eval, datasets or evaluate.
# SKIP_WHEELS=1 skips the wheels (a local smoke test in a virtualenv that has lm-eval already).
REPO=${REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
SITE=${SITE:-/tmp/phalanx_site}
# The marker records what was installed, so a warm machine reinstalls when the wheels or sources changed.
STAMP=$( (ls -l "$REPO"/.whl 2>/dev/null; find "$REPO"/modeling_phalanx "$REPO"/kernels "$REPO"/conversion "$REPO"/eval \
  "$REPO"/training "$REPO"/hub_cards "$REPO"/cli "$REPO"/pyproject.toml -type f -printf '%p %s %T@\n') | md5sum | cut -d' ' -f1)
if [ "$(cat "$SITE/.phalanx_installed" 2>/dev/null)" != "$STAMP" ]; then
  if [ -z "${SKIP_WHEELS:-}" ] && ls "$REPO"/.whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$REPO"/.whl/*.whl
  fi
  python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir --upgrade \
    --target "$SITE" "$REPO"
  echo "$STAMP" >"$SITE/.phalanx_installed"
fi
export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1

# record_machine FILE: the GPU, its driver and clock, torch and Triton, for a run's record.
record_machine() {
  { nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader
    python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } >"$1" 2>&1
}

# ncu_profile DIR SCRIPT: Nsight Compute's full set on the kernels SCRIPT launches between cudaProfilerStart and
# Stop (clocks not locked), kept as DIR/ncu_details.txt and DIR/ncu_raw.csv (the report itself is removed: large).
ncu_profile() {
  timeout 150 ncu --clock-control none --profile-from-start off --set full -o "$1/mr" python3 "$2" >"$1/ncu_run.log" 2>&1
  ncu --import "$1/mr.ncu-rep" --page details >"$1/ncu_details.txt" 2>&1
  ncu --import "$1/mr.ncu-rep" --page raw --csv >"$1/ncu_raw.csv" 2>&1
  rm -f "$1/mr.ncu-rep"
}
