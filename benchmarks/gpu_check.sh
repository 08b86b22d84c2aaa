#!/usr/bin/env bash
# The GPU check, one script (< 12 min on one GPU): the gpu-marked tests, then every benchmark that takes a device
# with --device cuda, each step's output kept under $OUT, and one table of the figures at the end.
#   bash benchmarks/gpu_check.sh              # from the repository root, with the project installed (make install
#                                             # TORCH_SPEC="torch==2.13.0 --index-url <your CUDA wheel index>")
# PYTHON (default .venv/bin/python) and OUT (default gpu_check) override where it runs and writes.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
OUT=${OUT:-gpu_check}
mkdir -p "$OUT"
: > "$OUT/summary.tsv"

"$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device visible to torch')" \
  || exit 1
"$PYTHON" -c "import torch; print('device:', torch.cuda.get_device_name(0), '| torch', torch.__version__)" \
  | tee "$OUT/device.txt"

step() {  # step NAME TIMEOUT_S COMMAND...: run it, keep its output, record exit code and seconds
  local name=$1 limit=$2; shift 2
  local start=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
  printf '%s\t%s\t%s\n' "$name" "$?" "$((SECONDS - start))" >> "$OUT/summary.tsv"
}

step gpu_tests 180 "$PYTHON" -m pytest -q -m gpu tests
step teacher_hessians_ani1x 60 "$PYTHON" benchmarks/teacher_hessians.py --teacher ani1x --device cuda \
  --n-structures 64 --batch-size 16 --repeat 2
step row_strategies 150 "$PYTHON" benchmarks/row_strategies.py --device cuda --students painn_small gemnet_dt \
  --batch 8 32 --rows 1 4 16 --rounds 5 --compile
step students 90 "$PYTHON" benchmarks/students.py --device cuda --repeat 3
step graph_building 30 "$PYTHON" benchmarks/graph_building.py --device cuda
step md_engines 60 "$PYTHON" benchmarks/md_engines.py --device cuda --md-steps 3
step shape_matched_teachers 120 "$PYTHON" benchmarks/shape_matched_teachers.py --device cuda --repeat 2 \
  --teachers off_small off_medium off_large mp_medium --md-steps 3

echo
echo "| step | exit | seconds | figures (last lines of its output; all of it in $OUT/<step>.txt) |"
echo "|---|---|---|---|"
while IFS=$'\t' read -r name code seconds; do
  figures=$(grep -E 'x |×|passed|failed|ratio|speed|structures/s' "$OUT/$name.txt" | tail -n 6 | tr '\n' ';' \
    | sed 's/|/\//g')
  echo "| $name | $code | $seconds | ${figures:-see $OUT/$name.txt} |"
done < "$OUT/summary.tsv"
