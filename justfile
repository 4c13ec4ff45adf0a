# demiarch-flow tasks; `just --list` shows them. Install just with `pip install rust-just`.

# create .venv and install the package with its dev tools
setup:
    bash scripts/setup.sh

# everything CI runs: lint, types, the wheel check, the tests
test:
    bash scripts/test.sh

# ruff (lint + format check) and mypy
lint:
    .venv/bin/ruff check .
    .venv/bin/ruff format --check .
    .venv/bin/mypy

# the whole flow against the bundled simulator: no key, no network
demo: setup
    .venv/bin/demiarch-flow demo

# benchmarks against raw httpx on the same loopback simulator
bench: setup
    .venv/bin/python bench/run.py
