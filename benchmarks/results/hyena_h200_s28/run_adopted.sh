#!/usr/bin/env bash
# Session 28's third device call (issue 20): the adopted Gluon walk (two tiles an iteration with a bf16 filter, one
# with an fp32 filter; shuffled featurizers, one copy of q, k, v a stage) through the GPU tests, then hyena_core
# against the Triton walk (ab_gluon.py), then, with NCU=1, Nsight Compute on it (ncu_adopted.py). Logs under $OUT.
set -uo pipefail
: "${OUT:?OUT must name the folder for the logs (the device tool sets it)}"
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$HERE/../../gpu_env.sh"
{
  nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
} >"$OUT/env.txt" 2>&1
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_kernels_fir.py \
  -k "gluon or model_kernel_path or falls_back" 2>&1 | tee "$OUT/test_gluon_gpu.log" | tail -n 15
timeout 120 python3 "$HERE/../hyena_h200_s25/ab_gluon.py" 2>&1 | tee "$OUT/ab_gluon.log"
[ "${NCU:-0}" = 1 ] || exit 0  # Nsight Compute only when asked (NCU=1): a minute or two more
timeout 150 ncu --clock-control none --profile-from-start off --set full -o "$OUT/mr" \
  python3 "$HERE/ncu_adopted.py" >"$OUT/ncu_run.log" 2>&1
ncu --import "$OUT/mr.ncu-rep" --page details >"$OUT/ncu_details.txt" 2>&1
ncu --import "$OUT/mr.ncu-rep" --page raw --csv >"$OUT/ncu_raw.csv" 2>&1
grep -E "Duration|Registers Per|Achieved Occupancy|Issue Slots Busy|L2 Cache Throughput|DRAM Throughput" \
  "$OUT/ncu_details.txt" | head -n 20
