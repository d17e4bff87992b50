#!/usr/bin/env bash
# The test suite: set up .venv if needed, then run pytest offline (slow checks: ./test.sh -m slow; CI runs both).
#   ./test.sh [pytest arguments]
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
# With no arguments: everything but the slow checks, on BBO_TEST_WORKERS pytest-xdist workers (default 2),
# test by test, except the files marked xdist_group (a module fixture made once, the Slurm node): one worker each;
# then the 15 slowest tests.
if [ $# -eq 0 ]; then set -- -m "not slow" -n "${BBO_TEST_WORKERS:-2}" --dist loadgroup --durations=15; fi
exec .venv/bin/python -m pytest -q "$@"
