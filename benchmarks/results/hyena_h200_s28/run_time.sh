#!/usr/bin/env bash
# Session 28's second device call (issue 20): the timing table of the session-26/27 experiment at 8 x 4096 x 2048
# without the two-tile (d2) variants, then d2 (its mbarrier expect fixed after it hung in call1) checked and timed
# in processes of its own, so that a hang spoils only its part. Logs under $OUT.
set -uo pipefail
: "${OUT:?OUT must name the folder for the logs (the device tool sets it)}"
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$HERE/../../gpu_env.sh"
S="$HERE/../hyena_h200_s26/exp_mr_gluon_shfl.py"
NOD2="0000,0010,0001,0011,1000,1010,1001,1011,1100,1110,1111,0000 s3,1000 s4,1100 s4,1111 s4,1000 t2,1100 t2"
NOD2="$NOD2,1100 t3,1111 t2,1100 o1,1110 o1,1111 o1,1100 o1 s3,1100 o1 s4,1100 o1 t2,1111 o1 t2,1100 o1 t3,0000 o1"
NOD2="$NOD2,0010 o1,0011 o1"
D2="1100 o1 d2,1101 o1 d2"
KEYS="$NOD2" PART=time TIME_SHAPES=8x4096 timeout 400 python3 "$S" 2>&1 | tee "$OUT/time.log"
KEYS="$D2" PART=check timeout 70 python3 "$S" >"$OUT/check_d2.log" 2>&1; tail -3 "$OUT/check_d2.log"
KEYS="$D2" PART=time TIME_SHAPES=8x4096 timeout 60 python3 "$S" 2>&1 | tee "$OUT/time_d2.log"
