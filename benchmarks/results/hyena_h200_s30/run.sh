#!/usr/bin/env bash
# Session 30's prepared device calls (issue 20; no device was lent in session 30), two calls of under 10 minutes:
#   bash run.sh perm        the permuted-rows Gluon MR walk (ab_perm.py: check, then timing) and the Gluon GPU tests
#   NCU=1 bash run.sh ws    session 29's warp-specialized walk (its ab_ws.py: bitwise check under a timeout, in case
#                           an mbarrier hangs, then timing); with NCU=1, Nsight Compute on the unpermuted, permuted
#                           and 64-channel warp-specialized walks (ncu_perm.py)
# Each Gluon variant compiles on first use (seconds each), hence the generous timeouts. Logs under $OUT.
set -uo pipefail
: "${OUT:?OUT must name the folder for the logs (the device tool sets it)}"
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
S29="$HERE/../hyena_h200_s29"
source "$HERE/../../gpu_env.sh"
record_machine "$OUT/env.txt"
case "${1:-}" in
  perm)
    PART=check timeout 150 python3 "$HERE/ab_perm.py" >"$OUT/perm_check.log" 2>&1
    echo "perm check rc=$?"; tail -n 12 "$OUT/perm_check.log"
    PART=time timeout 200 python3 "$HERE/ab_perm.py" >"$OUT/perm_time.log" 2>&1
    echo "perm time rc=$?"; tail -n 26 "$OUT/perm_time.log"
    timeout 220 python3 -m pytest -q -p no:cacheprovider tests/test_kernels_fir.py \
      -k "gluon or model_kernel_path or falls_back" 2>&1 | tee "$OUT/test_gluon_gpu.log" | tail -n 6
    ;;
  ws)
    PART=check timeout 150 python3 "$S29/ab_ws.py" >"$OUT/ws_check.log" 2>&1
    rc=$?
    echo "ws check rc=$rc equal=$(grep -c 'bitwise equal' "$OUT/ws_check.log")" \
      "differ=$(grep -c DIFFERS "$OUT/ws_check.log")"
    tail -n 3 "$OUT/ws_check.log"
    if [ "$rc" = 0 ] && ! grep -q DIFFERS "$OUT/ws_check.log"; then
      PART=time timeout 200 python3 "$S29/ab_ws.py" >"$OUT/ws_time.log" 2>&1
      echo "ws time rc=$?"; tail -n 30 "$OUT/ws_time.log"
    fi
    [ "${NCU:-0}" = 1 ] || exit 0
    ncu_profile "$OUT" "$HERE/ncu_perm.py"
    grep -E "Duration|Registers Per|Issue Slots Busy|L2 Cache Throughput|DRAM Throughput|L1/TEX Cache Throughput" \
      "$OUT/ncu_details.txt" | head -n 24
    ;;
  *) echo "usage: bash $0 perm | ws (NCU=1 for Nsight Compute)" >&2; exit 2 ;;
esac
