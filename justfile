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

# the paid-once property at SCALE times CI's examples, drawn at random (a longer hunt for faults)
property-hunt SCALE="20": setup
    DEMIARCH_FLOW_PROPERTY_SCALE={{SCALE}} .venv/bin/python -m pytest -q tests/property --hypothesis-show-statistics

# the whole flow against the bundled simulator: no key, no network
demo: setup
    .venv/bin/demiarch-flow demo

# every figure in the README's Performance section, against raw httpx (`--quick`, `--repeat N`),
# then what tracing costs per run, off and on (bench/trace.py)
bench *ARGS: setup
    .venv/bin/python bench/run.py {{ARGS}}
    .venv/bin/python bench/replay.py {{ARGS}}
    .venv/bin/python bench/trace.py {{ARGS}}

# simulate --replay: ten thousand recorded runs replayed (`--runs N`, `--repeat R`, `--quick`)
bench-replay *ARGS: setup
    .venv/bin/python bench/replay.py {{ARGS}}

# the same, plus the openai SDK and LiteLLM measured from a separate venv (.peers-venv)
bench-peers: setup
    test -x .peers-venv/bin/python || python3 -m venv .peers-venv
    .peers-venv/bin/pip install --quiet openai litellm httpx
    .venv/bin/python bench/run.py --peers .peers-venv/bin/python

# start-up: each command as a fresh process (10 cold runs), against issue 18's targets
bench-startup: setup
    .venv/bin/python bench/startup.py

# streaming: time to first token, CPU per chunk and memory against raw httpx (same simulator)
bench-stream: setup
    .venv/bin/python bench/stream.py

# instructions per call (valgrind's callgrind): raw httpx, a full run on the table and on python-statemachine (`--calls N`, `--top K`)
bench-instr *ARGS: setup
    .venv/bin/python bench/instructions.py {{ARGS}}

# workers on the queue: N runs through 2 workers x 50 against one `batch --concurrency 100` (PostgreSQL on 127.0.0.1)
bench-workers *ARGS: setup
    .venv/bin/python bench/workers.py {{ARGS}}
