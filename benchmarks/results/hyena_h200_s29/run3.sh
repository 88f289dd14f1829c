#!/usr/bin/env bash
# Session 29's third device call (issue 20): the warp-specialized Gluon MR walk (32 and 64 channels a program)
# checked bitwise against the Triton walk (the checks in one process under a timeout, in case an mbarrier hangs),
# timed (ab_ws.py), then the GPU tests; with NCU=1, Nsight Compute on the 16- and 64-channel walks. Logs under $OUT.
set -uo pipefail
: "${OUT:?OUT must name the folder for the logs (the device tool sets it)}"
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$HERE/../../gpu_env.sh"
record_machine "$OUT/env.txt"
PART=check timeout 120 python3 "$HERE/ab_ws.py" >"$OUT/check.log" 2>&1
echo "check rc=$? equal=$(grep -c 'bitwise equal' "$OUT/check.log") differ=$(grep -c DIFFERS "$OUT/check.log")"
tail -n 4 "$OUT/check.log"
grep -q DIFFERS "$OUT/check.log" && exit 1
PART=time timeout 200 python3 "$HERE/ab_ws.py" >"$OUT/time.log" 2>&1
echo "time rc=$?"; tail -n 30 "$OUT/time.log"
timeout 150 python3 -m pytest -q -x -p no:cacheprovider tests/test_kernels_fir.py \
  -k "gluon or model_kernel_path or falls_back" 2>&1 | tee "$OUT/test_gluon_gpu.log" | tail -n 6
[ "${NCU:-0}" = 1 ] || exit 0
ncu_profile "$OUT" "$HERE/ncu_ws.py"
grep -E "Duration|Registers Per|Issue Slots Busy|L2 Cache Throughput|DRAM Throughput" "$OUT/ncu_details.txt" \
  | head -n 20
