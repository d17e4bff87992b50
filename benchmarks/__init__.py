"""Benchmarks of the project: search efficiency, training throughput, per-evaluation overhead (docs/benchmarks.md).

Run from the repository root as `python -m benchmarks.<name>`; importing this package first makes
every benchmark offline and single-threaded unless the caller says otherwise.
"""
import os
from pathlib import Path

for _key, _value in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
                     "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(_key, _value)

REPO = Path(__file__).resolve().parent.parent
