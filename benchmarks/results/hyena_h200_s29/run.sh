#!/usr/bin/env bash
# Session 29's device call (issue 20): the Gluon MR walk with 1, 2 and 4 warpgroups a program, checked bitwise
# against the Triton walk and timed (ab_warpgroups.py), the GPU tests, then, with NCU=1, Nsight Compute on the three
# (ncu_warpgroups.py). Logs under $OUT.
set -uo pipefail
: "${OUT:?OUT must name the folder for the logs (the device tool sets it)}"
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$HERE/../../gpu_env.sh"
record_machine "$OUT/env.txt"
timeout 240 python3 "$HERE/ab_warpgroups.py" >"$OUT/ab_warpgroups.log" 2>&1
echo "ab_warpgroups rc=$?"; grep -c "bitwise equal" "$OUT/ab_warpgroups.log"
grep -v "^check" "$OUT/ab_warpgroups.log" | tail -n 45
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_kernels_fir.py \
  -k "gluon or model_kernel_path or falls_back" 2>&1 | tee "$OUT/test_gluon_gpu.log" | tail -n 8
[ "${NCU:-0}" = 1 ] || exit 0
ncu_profile "$OUT" "$HERE/ncu_warpgroups.py"
grep -E "Duration|Registers Per|Achieved Occupancy|Issue Slots Busy|L2 Cache Throughput|DRAM Throughput" \
  "$OUT/ncu_details.txt" | head -n 30
