#!/usr/bin/env bash
# Set up, then run everything CI runs: ruff, mypy, the wheel check and the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "== ruff"; .venv/bin/ruff check . && .venv/bin/ruff format --check .
echo "== mypy"; .venv/bin/mypy
echo "== wheel"; bash scripts/check_wheel.sh
echo "== pytest"; .venv/bin/python -m pytest
