#!/usr/bin/env bash
# Session 32's device calls (issue 20):
#   bash run.sh diag    each MR backward walk on packed rows in its own process (diag_packed.py), then the GPU tests
#                       of the MR walks and the fused core (packed rows included)
#   bash run.sh stages  the packed backward walks with 1 and 3 pipeline stages, then compute-sanitizer on a small one
#   bash run.sh fixed   after the mend (the backward's masked-block filters restored): the packed walks, timed, and
#                       the MR GPU tests
#   bash run.sh adopted the warp-specialized walk as adopted (ab_adopted.py: check, then timing; QUICK=1 for a short
#                       lease), then the Gluon and MR GPU tests
# diag and stages need .oldfir/triton_fir.py (hyena_h200_s30/run.sh prepare; carry .oldfir).
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../../.." && pwd)
: "${OUT:?OUT must name the folder for the logs (the device tool sets it)}"
source "$HERE/../../gpu_env.sh"
record_machine "$OUT/env.txt"
case "${1:-}" in
  diag)
    for which in new old; do for filt in bf16 fp32; do for packing in none rows docs; do
      [ "$which" = old ] && [ "$packing" = none ] && continue
      CUDA_LAUNCH_BLOCKING=1 timeout 60 python3 "$HERE/diag_packed.py" $which $filt $packing "$REPO/.oldfir/triton_fir.py" \
        >"$OUT/diag_${which}_${filt}_${packing}.log" 2>&1
      echo "$which $filt $packing rc=$? $(grep -E 'ok,|Error' "$OUT/diag_${which}_${filt}_${packing}.log" | tail -n 1)"
    done; done; done
    timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_kernels_fir.py \
      -k "mr_walk_matches or fused_core_matches or realistic" 2>&1 | tee "$OUT/test_mr_gpu.log" | tail -n 15
    ;;
  stages)
    # the packed backward walks with 1 and 3 stages (timed where they run), then compute-sanitizer on the small shape
    for which in new old; do for filt in bf16 fp32; do for stages in 1 3; do
      [ "$which" = old ] && [ "$stages" = 1 ] && continue
      CUDA_LAUNCH_BLOCKING=1 timeout 60 python3 "$HERE/diag_packed.py" $which $filt docs "$REPO/.oldfir/triton_fir.py" \
        $stages >"$OUT/st_${which}_${filt}_${stages}.log" 2>&1
      echo "$which $filt docs stages=$stages rc=$? $(grep -E 'ok,|Error' "$OUT/st_${which}_${filt}_${stages}.log" | tail -n 1)"
    done; done; done
    CS=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -n 1)
    if [ -n "$CS" ]; then
      timeout 120 "$CS" --print-limit 4 python3 "$HERE/diag_packed.py" new fp32 docs "$REPO/.oldfir/triton_fir.py" 3 1 \
        >"$OUT/sanitizer.log" 2>&1
      echo "sanitizer rc=$?"; grep -E "Invalid|at |by thread|Address|ERROR SUMMARY" "$OUT/sanitizer.log" | head -n 20
    else echo "no compute-sanitizer"; fi
    ;;
  fixed)
    # after restoring the masked-block backward filters: the packed backward walks again (timed), then the GPU tests
    for filt in bf16 fp32; do for packing in rows docs; do
      CUDA_LAUNCH_BLOCKING=1 timeout 60 python3 "$HERE/diag_packed.py" new $filt $packing "$REPO/.oldfir/triton_fir.py" \
        >"$OUT/fixed_${filt}_${packing}.log" 2>&1
      echo "new $filt $packing rc=$? $(grep -E 'ok,|Error' "$OUT/fixed_${filt}_${packing}.log" | tail -n 1)"
    done; done
    timeout 330 python3 -m pytest -q -p no:cacheprovider tests/test_kernels_fir.py \
      -k "mr_walk_matches or fused_core or realistic or kernel_path" 2>&1 | tee "$OUT/test_mr_gpu.log" | tail -n 8
    ;;
  adopted)
    PART=check timeout 150 python3 "$HERE/ab_adopted.py" >"$OUT/adopted_check.log" 2>&1
    echo "check rc=$? equal=$(grep -c 'bitwise equal, against hyena_core bitwise equal' "$OUT/adopted_check.log")" \
      "differ=$(grep -c DIFFERS "$OUT/adopted_check.log")"; tail -n 2 "$OUT/adopted_check.log"
    PART=time timeout 200 python3 "$HERE/ab_adopted.py" >"$OUT/adopted_time.log" 2>&1
    echo "time rc=$?"; tail -n 26 "$OUT/adopted_time.log"
    timeout 220 python3 -m pytest -q -p no:cacheprovider tests/test_kernels_fir.py \
      -k "gluon or mr_walk_matches or model_kernel_path or falls_back or picks_the" 2>&1 \
      | tee "$OUT/test_gluon_gpu.log" | tail -n 6
    ;;
  *) echo "usage: bash $0 diag | stages | fixed | adopted" >&2; exit 2 ;;
esac
