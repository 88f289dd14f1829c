#!/usr/bin/env bash
# Issue 20 (items 1-2) for Hyena-SE / -MR on the GPU machine in one call, most important first:
#   1. tests/test_kernels_fir.py on CUDA: the gpu-marked float64 checks (bf16 / fp32, width 2048, 16K tokens,
#      7 and 128 taps; a model with the kernels against its PyTorch path) and the CPU suite's tests, now on CUDA;
#   2. benchmarks/bench_hyena.py (raw JSON and table).
# First run (2026-12-01, H200): only the tests, up to the compile test (fixed since); see docs/hyena.md.
#
#   bash benchmarks/gpu_hyena_run.sh OUT_DIR
set -uo pipefail
OUT=${1:?usage: gpu_hyena_run.sh OUT_DIR}
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO" || exit 1
source benchmarks/gpu_env.sh
mkdir -p "$OUT"
{ nvidia-smi; python3 -c "import torch, triton; print(torch.__version__, triton.__version__)"; } >"$OUT/env.txt" 2>&1
timeout 300 python3 -m pytest -q -p no:cacheprovider -rA tests/test_kernels_fir.py >"$OUT/test_kernels_fir.log" 2>&1
echo "exit $?" >>"$OUT/test_kernels_fir.log"
timeout 270 python3 benchmarks/bench_hyena.py --json "$OUT/bench_hyena.json" >"$OUT/bench_hyena.log" 2>&1
echo "exit $?" >>"$OUT/bench_hyena.log"
