#!/usr/bin/env bash
# Build the wheel, install it (non-editable) in a throwaway venv, and validate the bundled
# default workflow from there: proves the schema and workflows ship inside the package.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
.venv/bin/python -m pip wheel --quiet --disable-pip-version-check --no-deps -w "$tmp/dist" .
python3 -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install --quiet --disable-pip-version-check "$tmp"/dist/*.whl
cd "$tmp"
bundled="$("$tmp/venv/bin/python" -c 'from demiarch_flow._resources import default_workflow_path as p; print(p())')"
case "$bundled" in
  "$tmp/venv/"*) ;;
  *) echo "bundled workflow found outside the wheel: $bundled" >&2; exit 1 ;;
esac
"$tmp/venv/bin/demiarch-flow" validate "$bundled"
# The migrations ship too: create a database from the installed wheel, and read its revision.
"$tmp/venv/bin/demiarch-flow" db upgrade --db "sqlite:///$tmp/wheel.db"
"$tmp/venv/bin/demiarch-flow" db current --db "sqlite:///$tmp/wheel.db" --json | grep -q '"is_head": true'
