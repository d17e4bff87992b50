#!/usr/bin/env bash
# The demo: set up .venv if needed, generate the tiny model and data, run a real NOMAD search
# of 10 evaluations on experiments/demo (about 10 minutes on 2 CPU cores), then write its report.
#   ./demo.sh                     # extra key=value arguments override experiments/demo/experiment.yaml
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} TOKENIZERS_PARALLELISM=false
.venv/bin/python -m fixtures
.venv/bin/python -m bbo run experiments/demo "$@"
.venv/bin/python -m bbo report experiments/demo "$@"
