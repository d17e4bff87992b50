"""The base model's own numbers, without an adapter: what a constraint's `base` means (core/constraints.py),
and what the results table and the report compare every run to.

    <experiment>/baseline/<key>/     spec.json (as a run's), val_loss.json, mmlu.json, rouge.json, their logs,
                                     baseline.json (the numbers; written last, so a cut-off measure is redone)

The key hashes what the numbers depend on, as a run id does (core/identity.py): the model and the data
by content, the validation split, and the MMLU and ROUGE settings the search uses; not LoRA or training.
So a baseline is measured once (blackbox/baseline.py, under a lock) and found again by every search of
the same model and data; a changed MMLU limit is another key.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from core.store import read_json

BASELINE_DIR = "baseline"
RESULT_FILE = "baseline.json"


def baseline_key(config) -> str:
    """12 hex digits of the sha256 of the settings the base model's numbers depend on."""
    fp = config.fingerprint()
    keyed = {k: fp[k] for k in ("model", "data", "mmlu", "generation") if k in fp}
    keyed["measured"] = config.objective.base_metrics
    return hashlib.sha256(json.dumps(keyed, sort_keys=True, default=str).encode()).hexdigest()[:12]


def baseline_dir(config) -> Path:
    return config.dir / BASELINE_DIR / baseline_key(config)


def read_baseline(config) -> dict | None:
    """The stored numbers of the base model for this experiment's settings, or None (not measured yet)."""
    result = read_json(baseline_dir(config) / RESULT_FILE)
    if not isinstance(result, dict):
        return None
    if not all(isinstance(result.get(m), (int, float)) for m in config.objective.base_metrics):
        return None
    return result
