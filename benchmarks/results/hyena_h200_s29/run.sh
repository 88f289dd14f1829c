#!/usr/bin/env bash
# Session 29's device call (issue 20): the Gluon MR walk with 1, 2 and 4 warpgroups a program, checked bitwise
# against the Triton walk and timed (ab_warpgroups.py), the GPU tests, then, with NCU=1, Nsight Compute on the three
# (ncu_warpgroups.py). Logs under $OUT.
set -uo pipefail
: "${OUT:?OUT must name the folder for the logs (the device tool sets it)}"
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$HERE/../../gpu_env.sh"
{
  nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
} >"$OUT/env.txt" 2>&1
timeout 240 python3 "$HERE/ab_warpgroups.py" >"$OUT/ab_warpgroups.log" 2>&1
echo "ab_warpgroups rc=$?"; grep -c "bitwise equal" "$OUT/ab_warpgroups.log"; grep -v "^check" "$OUT/ab_warpgroups.log" | tail -n 45
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_kernels_fir.py \
  -k "gluon or model_kernel_path or falls_back" 2>&1 | tee "$OUT/test_gluon_gpu.log" | tail -n 8
[ "${NCU:-0}" = 1 ] || exit 0
timeout 150 ncu --clock-control none --profile-from-start off --set full -o "$OUT/mr" \
  python3 "$HERE/ncu_warpgroups.py" >"$OUT/ncu_run.log" 2>&1
ncu --import "$OUT/mr.ncu-rep" --page details >"$OUT/ncu_details.txt" 2>&1
ncu --import "$OUT/mr.ncu-rep" --page raw --csv >"$OUT/ncu_raw.csv" 2>&1
rm -f "$OUT/mr.ncu-rep"
grep -E "Duration|Registers Per|Achieved Occupancy|Issue Slots Busy|L2 Cache Throughput|DRAM Throughput|lts__t_requests" \
  "$OUT/ncu_details.txt" | head -n 30
