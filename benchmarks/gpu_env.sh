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
