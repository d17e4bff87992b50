#!/bin/sh
# NOMAD's BB_EXE for experiment 'smollm2-135m' (written by `python -m bbo paramfile`):
# evaluates the points of the file "$1" and prints one output line per point.
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
python=${BBO_PYTHON:-python3}
if [ -z "$BBO_PYTHON" ] && [ -x "$root/.venv/bin/python" ]; then python="$root/.venv/bin/python"; fi
PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" exec "$python" -m blackbox --experiment "$here" "$@"
