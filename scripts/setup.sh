#!/usr/bin/env bash
# Create .venv (once) and install demiarch-flow with its development tools into it.
#
# A first install downloads and builds for a minute or two, so it says what it installs, lets
# pip show its own progress, and ends with how long each step took. Run again, it costs a
# fraction of a second: a stamp in .venv records the pyproject.toml and this script it last
# installed from (written only after pip succeeded), and while both are unchanged and the
# editable install still points at this folder, pip is not called at all. SETUP_FORCE=1
# reinstalls anyway. PYTHON picks the interpreter that creates .venv (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
STAMP=.venv/.demiarch-flow-setup
started=$SECONDS
took=""  # "step N s, " for each step done, for the closing line
say() { echo "== setup: $*"; }

# What the stamp records: the inputs of the install, and the interpreter it went into.
fingerprint() {
  .venv/bin/python - <<'EOF'
import hashlib, pathlib, sys
digest = hashlib.sha256(sys.version.encode())
for name in ("pyproject.toml", "scripts/setup.sh"):
    digest.update(pathlib.Path(name).read_bytes())
print(digest.hexdigest())
EOF
}

# The editable install resolves to this folder (not a clone that was moved or deleted).
installed_here() {
  .venv/bin/python - <<'EOF'
import importlib.util, pathlib, sys
spec = importlib.util.find_spec("demiarch_flow")
here = pathlib.Path("demiarch_flow").resolve()
sys.exit(0 if spec and spec.origin and pathlib.Path(spec.origin).resolve().parent == here else 1)
EOF
}

# The package's bytecode, written now: an editable install leaves it to the first import, and
# where PYTHONDONTWRITEBYTECODE is set (this machine's kind, many container images) it is never
# written, so every process compiled the package's 64 modules from source: 541 M instructions,
# a third of a cold `batch` (callgrind). A wheel's install compiles it the same way. Only what
# is stale is compiled (well under a second); an edit after this costs its module again.
bytecode() {
  .venv/bin/python -m compileall -q demiarch_flow >/dev/null
}

if [ "${SETUP_FORCE:-0}" != 1 ] && [ -x .venv/bin/python ] && [ -f "$STAMP" ] &&
  [ "$(cat "$STAMP")" = "$(fingerprint)" ] && installed_here; then
  bytecode
  say ".venv is up to date (pyproject.toml unchanged since its install; SETUP_FORCE=1 reinstalls)"
  exit 0
fi

if [ ! -x .venv/bin/python ]; then
  if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "setup: demiarch-flow needs Python 3.11 or later; '$PY' is $("$PY" --version 2>&1 || echo missing). Set PYTHON to another interpreter." >&2
    exit 1
  fi
  step=$SECONDS
  say "creating .venv with $("$PY" --version 2>&1) ($(command -v "$PY"))"
  "$PY" -m venv .venv
  took="venv $((SECONDS - step)) s, "
  step=$SECONDS
  say "upgrading pip in .venv"
  .venv/bin/python -m pip install --disable-pip-version-check --upgrade pip
  took="${took}pip upgrade $((SECONDS - step)) s, "
fi
rm -f "$STAMP"
step=$SECONDS
say "installing demiarch-flow (editable) and what pyproject.toml asks for into .venv:"
.venv/bin/python - <<'EOF'
import tomllib
with open("pyproject.toml", "rb") as file:
    project = tomllib.load(file)["project"]
print("   needs:", ", ".join(project["dependencies"]))
print("   dev extra:", ", ".join(project["optional-dependencies"]["dev"]))
EOF
.venv/bin/python -m pip install --disable-pip-version-check -e ".[dev]"
fingerprint >"$STAMP"
bytecode
say "done in $((SECONDS - started)) s (${took}install $((SECONDS - step)) s)"
