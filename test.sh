#!/usr/bin/env bash
# The test suite: set up .venv if needed, then run pytest offline (slow checks: ./test.sh -m slow).
#   ./test.sh [pytest arguments]
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
# With no arguments: everything but the slow checks, on BBO_TEST_WORKERS pytest-xdist workers (default 2),
# a test file per worker (--dist loadfile: a module's fixtures are made once, the Slurm tests share one node).
if [ $# -eq 0 ]; then set -- -m "not slow" -n "${BBO_TEST_WORKERS:-2}" --dist loadfile; fi
exec .venv/bin/python -m pytest -q "$@"
