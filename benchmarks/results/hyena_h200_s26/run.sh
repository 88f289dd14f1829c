#!/usr/bin/env bash
# One device call per part of the Hyena-MR experiment in this folder (issue 20), everything written under $OUT:
#   bash benchmarks/results/hyena_h200_s26/run.sh check  # every variant against the Triton walk (~140 kernel builds)
#   bash benchmarks/results/hyena_h200_s26/run.sh time   # the timing table (TIME_SHAPES=8x4096: one shape of two)
#   bash benchmarks/results/hyena_h200_s26/run.sh ncu    # Nsight Compute: the adopted walk and five variants, with
#                                                        # the details page and the raw metrics as text
set -euo pipefail
PART=${1:?usage: run.sh check|time|ncu}
: "${OUT:?OUT must name the folder for the logs (the device tool sets it)}"
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$HERE/../../gpu_env.sh"
{  # the machine and versions, for the record (a failure here must not stop the run)
  nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader || true
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" || true
} >"$OUT/env.txt" 2>&1
case $PART in
  check)  # two processes, so that a variant faulting the GPU in one spoils only its own group
    PART=check KEYS=-o1 timeout 320 python3 "$HERE/exp_mr_gluon_shfl.py" 2>&1 | tee "$OUT/check.log" || true
    PART=check KEYS=o1 timeout 230 python3 "$HERE/exp_mr_gluon_shfl.py" 2>&1 | tee "$OUT/check_o1.log"
    ;;
  time)  # KEYS (see the script) narrows the variants, for example to leave out one that failed its check
    PART=time timeout 560 python3 "$HERE/exp_mr_gluon_shfl.py" 2>&1 | tee "$OUT/time.log"
    ;;
  ncu)
    PART=ncu timeout 420 ncu --clock-control none --profile-from-start off --set full -o "$OUT/mr" \
      python3 "$HERE/exp_mr_gluon_shfl.py" 2>&1 | tee "$OUT/ncu_run.log"
    ncu --import "$OUT/mr.ncu-rep" --page details >"$OUT/ncu_details.txt"
    ncu --import "$OUT/mr.ncu-rep" --page raw --csv >"$OUT/ncu_raw.csv"
    ;;
  *)
    echo "run.sh: unknown part '$PART' (check, time or ncu)" >&2
    exit 2
    ;;
esac
