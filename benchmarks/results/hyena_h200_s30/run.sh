#!/usr/bin/env bash
# Session 30's prepared device calls (issue 20; no device was lent in session 30), two calls of under 10 minutes:
#   bash run.sh perm        the permuted-rows Gluon MR walk (ab_perm.py: check, then timing) and the Gluon GPU tests
#   NCU=1 bash run.sh ws    session 29's warp-specialized walk (its ab_ws.py: bitwise check under a timeout, in case
#                           an mbarrier hangs, then timing); with NCU=1, Nsight Compute on the unpermuted, permuted
#                           and 64-channel warp-specialized walks (ncu_perm.py)
#   bash run.sh prepare     here, not on the GPU machine: writes the MR walks before session 30's packed-row change
#                           (triton_fir.py at ff0734b) into .oldfir/ (git-ignored), for the next
#   bash run.sh packed      the Triton MR walks on packed rows against that earlier file (ab_packed.py); carry .oldfir
# Each Gluon variant compiles on first use (seconds each), hence the generous timeouts. Logs under $OUT.
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../../.." && pwd)
if [ "${1:-}" = prepare ]; then
  mkdir -p "$REPO/.oldfir" && git -C "$REPO" show ff0734b:kernels/triton_fir.py >"$REPO/.oldfir/triton_fir.py"
  echo "wrote $REPO/.oldfir/triton_fir.py (ff0734b)"; exit 0
fi
: "${OUT:?OUT must name the folder for the logs (the device tool sets it)}"
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
  packed)
    [ -f "$REPO/.oldfir/triton_fir.py" ] \
      || { echo "no .oldfir/triton_fir.py: run 'bash $0 prepare' here and carry .oldfir" >&2; exit 2; }
    timeout 500 python3 "$HERE/ab_packed.py" "$REPO/.oldfir/triton_fir.py" 2>&1 | tee "$OUT/packed.log" | tail -n 12
    ;;
  *) echo "usage: bash $0 prepare | perm | ws | packed (NCU=1 for Nsight Compute with ws)" >&2; exit 2 ;;
esac
