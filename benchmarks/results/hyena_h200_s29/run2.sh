#!/usr/bin/env bash
# Session 29's second device call (issue 20): the row-group featurizers (4 rows, 2 channels a thread) through the
# GPU tests, then timed against the Triton walk (ab_rows.py). Logs under $OUT.
set -uo pipefail
: "${OUT:?OUT must name the folder for the logs (the device tool sets it)}"
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$HERE/../../gpu_env.sh"
record_machine "$OUT/env.txt"
timeout 150 python3 -m pytest -q -x -p no:cacheprovider tests/test_kernels_fir.py \
  -k "gluon or model_kernel_path or falls_back" 2>&1 | tee "$OUT/test_gluon_gpu.log" | tail -n 8
timeout 150 python3 "$HERE/ab_rows.py" 2>&1 | tee "$OUT/ab_rows.log" | tail -n 12
[ "${NCU:-0}" = 1 ] || exit 0
ncu_profile "$OUT" "$HERE/../hyena_h200_s28/ncu_adopted.py"
grep -E "Duration|Registers Per|Issue Slots Busy|L2 Cache Throughput|DRAM Throughput|bank" "$OUT/ncu_details.txt" \
  | head -n 24
