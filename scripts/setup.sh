#!/usr/bin/env bash
# Create .venv (once) with everything in requirements.txt; re-installs only when requirements.txt or
# pyproject.toml (the packages of the editable install) changes.
#   bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
stamp=.venv/.requirements.sha256
want=$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x .venv/bin/python ]; then
  exit 0
fi
echo "setting up .venv (torch first, then requirements.txt) ..." >&2
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
# torch first: pinned so that a CPU machine takes its local CPU build instead of GBs of CUDA packages
.venv/bin/python -m pip install -q "$(grep -E '^torch==' requirements.txt)"
.venv/bin/python -m pip install -q -r requirements.txt
.venv/bin/python -m pip install -q --no-deps --no-build-isolation -e .   # bbo, blackbox, eval importable from any folder
echo "$want" > "$stamp"
