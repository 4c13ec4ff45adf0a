#!/usr/bin/env bash
# Set up, then run everything CI runs: ruff, mypy, the wheel check and the test suite. The steps
# before pytest are timed on one line before it starts (CI is held to ten minutes in all); pytest
# times itself, and its summary stays the last line, where CI reads the count of tests.
set -euo pipefail
cd "$(dirname "$0")/.."
took=""
step() { local name=$1 start=$SECONDS; shift; echo "== $name"; "$@"; took="$took $name $((SECONDS - start)) s,"; }
step setup bash scripts/setup.sh
step ruff bash -c '.venv/bin/ruff check . && .venv/bin/ruff format --check .'
step mypy .venv/bin/mypy
step wheel bash scripts/check_wheel.sh
echo "== took${took%,}"
# One worker per CPU (pytest-xdist), whole test files each, in collection order (pyproject.toml);
# PYTEST_XDIST_AUTO_NUM_WORKERS=N overrides the count. The 15 slowest tests are listed, so that
# what eats the ten minutes is seen in every CI log.
echo "== pytest"; .venv/bin/python -m pytest -n auto --durations=15
