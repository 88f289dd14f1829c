#!/usr/bin/env bash
# Build the public CUDA SWR kernel (PyPI spear-python) offline on the GPU machine, for bench_spear.py.
# Its sdist needs CUTLASS headers, which the nvidia-cutlass wheel carries; fetch both where pip works:
#
#   mkdir -p .spear && echo /.spear/ >> .git/info/exclude
#   CUTLASS_INCLUDE_PATH=/tmp python3 -m pip download --no-deps --no-build-isolation --no-binary :all: \
#       -d .spear spear-python==0.1.1      # the dummy path only lets pip read the sdist's metadata
#   python3 -m pip download --no-deps --only-binary=:all: -d .spear nvidia-cutlass==4.2.0.0
#
# then carry .spear and run: bash benchmarks/build_spear.sh   (installs into $SPEAR_SITE, default
# /tmp/spear_site, and prints the PYTHONPATH line to use).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
SPEAR_SITE=${SPEAR_SITE:-/tmp/spear_site}
CUTLASS_DIR=$(mktemp -d)
python3 -m zipfile -e "$REPO"/.spear/nvidia_cutlass-*.whl "$CUTLASS_DIR"
export CUTLASS_INCLUDE_PATH="$CUTLASS_DIR/cutlass_library/source/include"
[[ -f "$CUTLASS_INCLUDE_PATH/cutlass/cutlass.h" ]] || { echo "error: no cutlass/cutlass.h in the wheel" >&2; exit 1; }
MAX_JOBS=${MAX_JOBS:-$(nproc)} python3 -m pip install -q --no-index --no-deps --no-build-isolation \
  --target "$SPEAR_SITE" "$REPO"/.spear/spear_python-*.tar.gz
echo "export PYTHONPATH=$SPEAR_SITE\${PYTHONPATH:+:\$PYTHONPATH}"
