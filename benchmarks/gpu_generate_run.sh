#!/usr/bin/env bash
# One GPU call for issue 16 (and issue 20 item 1's tests), most important first:
#   1. every kernel test file on CUDA (SWR Triton including the zero-state-at-position path, FIR / Hyena, the
#      public-kernel checks, mLSTM with mlstm-kernels) and every gpu-marked test (compiled static generate and
#      the CUDA-graph loop against eager tokens);
#   2. benchmarks/bench_generate.py: the Llama anchor and the Phalanx hybrid, static cache compiled and the
#      project's fast loop, at 1x4K, 32x4K and 1x32K (the default cache was measured in the first run:
#      benchmarks/results/generate_h200.json), JSON rewritten after every point.
# Carry `.whl` (mlstm-kernels, fla-core). Ends inside DEADLINE seconds (default 570).
#
#   bash benchmarks/gpu_generate_run.sh OUT_DIR
set -uo pipefail
OUT=${1:?usage: gpu_generate_run.sh OUT_DIR}
DEADLINE=${DEADLINE:-570}
START=$(date +%s)
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO" || exit 1
source benchmarks/gpu_env.sh
mkdir -p "$OUT"
left() { echo $(( DEADLINE - ($(date +%s) - START) )); }
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import torch, triton, transformers; print(torch.__version__, triton.__version__, transformers.__version__)"
} >"$OUT/env.txt" 2>&1

{ timeout 200 python3 -m pytest -q -p no:cacheprovider -rfE tests/test_kernels_triton.py tests/test_kernels_fir.py \
    tests/test_kernels_gpu.py
  echo "exit $?"
  timeout 60 python3 -m pytest -q -p no:cacheprovider -rfE tests/test_mlstm.py -k kernel
  echo "exit $?"
  timeout 150 python3 -m pytest -q -p no:cacheprovider -rfE -m gpu tests/test_generation_equivalence.py \
    tests/test_fast_generate.py
  echo "exit $?"
} >"$OUT/pytest_gpu.log" 2>&1
grep -E "passed|failed|^exit" "$OUT/pytest_gpu.log"

timeout $(( $(left) - 10 )) python3 benchmarks/bench_generate.py --models transformer phalanx_hybrid \
  --caches static fast --points 1x4096 32x4096 1x32768 --deadline-s $(( $(left) - 120 )) \
  --out "$OUT/generate.json" --plot "$OUT/generate.png" >"$OUT/generate.log" 2>&1
echo "exit $?" >>"$OUT/generate.log"
tail -12 "$OUT/generate.log"
