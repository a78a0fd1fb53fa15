#!/usr/bin/env bash
# The whole GPU check as one device run: the command BENCHMARKS.md ("GPU check: how to run") pastes.
#
#   device run: command "bash benchmarks/gpu_run.sh", carry [".whl"], timeout_s 360
#
# 1. installs each carried wheel of .whl/ on its own (one that does not fit the machine, or that pip
#    refuses, is skipped and recorded in $OUT/wheels.json; the model sections need none of them);
# 2. runs benchmarks/gpu_check.py with a budget of BUDGET_S seconds (its watchdog ends it GRACE_S = 30 s
#    past the budget, and `timeout` is the backstop);
# 3. runs the CUDA parity tests of the speed-ups (tests/model/test_accel.py), at most TESTS_S seconds.
# Install (~10 s) + 210 + 30 + 60 s: under 5.5 minutes, so a machine start (1–2 min) and one rerun fit in
# the 15 device minutes. Everything, logs included, lands in $OUT (or in the folder given as $1).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-${1:?usage: gpu_run.sh OUT_DIR (or set OUT)}}
BUDGET_S=${BUDGET_S:-210}
TESTS_S=${TESTS_S:-60}
WHEELS=${WHEELS:-.whl}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 benchmarks/gpu_wheels.py install "$WHEELS" "${SITE:=/tmp/vidfeat-site}" > "$OUT/wheels.json" 2> "$OUT/wheels.log" \
    || echo "gpu_run: wheel install step failed (see wheels.log); going on without the wheels"
export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
# shellcheck disable=SC2086  # GPU_CHECK_ARGS is a list of arguments
timeout -k 10 $((BUDGET_S + 45)) python3 benchmarks/gpu_check.py "$OUT" --budget-s "$BUDGET_S" ${GPU_CHECK_ARGS:-} \
    2>&1 | tee "$OUT/gpu_check.log"
echo "gpu_run: gpu_check exit ${PIPESTATUS[0]}"
# shellcheck disable=SC2086
timeout -k 5 "$TESTS_S" python3 -m pytest -q -p no:cacheprovider ${TESTS:-tests/model/test_accel.py} 2>&1 | tee "$OUT/tests.log"
echo "gpu_run: tests exit ${PIPESTATUS[0]}"
