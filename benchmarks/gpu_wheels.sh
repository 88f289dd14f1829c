#!/usr/bin/env bash
# Download the wheels the GPU machine lacks into .whl/ (git-ignored; carry it with `carry: [".whl"]`), for its
# Python 3.12 on x86_64; benchmarks/gpu_env.sh installs them there offline. Pinned: the versions the committed
# GPU results were measured with.
#   lm-eval and what it needs beyond the GPU image (datasets, evaluate, ...): quality/conversion benches, recall tasks
#   kernels 0.15.1 (+ kernels-data, tomlkit): the Hub kernel path (bench_hub_kernel.py)
#   fla-core, mlstm-kernels: the operator peers and the mLSTM kernel path (gpu_hyena_run.sh)
#
#   bash benchmarks/gpu_wheels.sh [DIR]      # default DIR: .whl in the repository root
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
DIR=${1:-$REPO/.whl}
WHEELS=(
  lm_eval==0.4.13 datasets==5.2.0 evaluate==0.4.6 dill==0.4.1 multiprocess==0.70.19 pytz==2026.6
  chardet==6.0.0.post1 dataproperty==1.1.1 defusedxml==0.7.1 mbstrdecoder==1.1.5 more_itertools==11.2.1
  nltk==3.10.4 pathvalidate==3.3.1 pytablewriter==1.2.1 tabledata==1.3.5 tcolorpy==0.1.7 typepy==1.3.5
  kernels==0.15.1 kernels-data==0.16.2 tomlkit==0.15.2
  fla-core==0.6.0 mlstm-kernels==2.0.6
)
mkdir -p "$DIR"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$DIR" "${WHEELS[@]}"
# Published as source only (pure Python): built into wheels here.
python3 -m pip wheel -q --no-deps -w "$DIR" rouge_score==0.1.2 sqlitedict==2.1.0 word2number==1.1
ls "$DIR"
