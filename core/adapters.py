"""Which run folders keep their LoRA adapter (train.keep_adapters): disk use bounded by the ranking.

    train.keep_adapters: all     # every adapter stays (the default)
    train.keep_adapters: best:3  # the 3 best ok runs of the search keep theirs
    train.keep_adapters: none    # each adapter goes once its metrics are measured

After every recorded evaluation (blackbox/evaluate.py) `prune` deletes the adapters outside the k
best ok runs by objective and leaves adapter_removed.json (why, when) in the run folder: a 7B
search of 100 points at rank 512 would otherwise keep ~100 GB of adapters nobody exports.
A confirmation run (bbo confirm) keeps its adapter while the point it confirms keeps its own; a
failed run's adapter (its MMLU failed after training) is of no use and goes too. Runs not finished
(running, or locked by another process) are never touched. What is computed does not change,
so the setting is not in the run id (ExperimentConfig.fingerprint).
"""
from __future__ import annotations

import fcntl
import math
import shutil
import time
from pathlib import Path

from core.store import RunStore, State, read_json, write_json

ADAPTER_DIR = "adapter"
REMOVED_FILE = "adapter_removed.json"


def ranked_ok_runs(store: RunStore, feasible=None) -> list[tuple[str, float]]:
    """(run id, objective) of the search's ok runs, best first; confirmation runs are not points of it.
    Ties go to the run that started first, as bbo.summary.best keeps the first in evaluation order.
    feasible: with constraints, a test of a run's metrics (core.constraints.feasibility): feasible runs first."""
    runs = []
    for rid in store.run_ids():
        status = store.finished(rid)
        params = read_json(store.run_dir(rid) / "params.json") or {}
        objective = (store.metrics(rid) or {}).get("objective")
        if (status and status["state"] == State.OK and not params.get("confirms")
                and isinstance(objective, (int, float)) and math.isfinite(objective)):
            infeasible = feasible is not None and not feasible(store.metrics(rid) or {})
            runs.append((infeasible, status.get("started") or 0.0, rid, float(objective)))
    return [(rid, objective) for _, _, rid, objective in sorted(runs, key=lambda r: (r[0], r[3], r[1]))]


def adapter_state(run_dir: Path) -> str | None:
    """kept (adapter/ is there), removed (adapter_removed.json), or None (the run never had one)."""
    if (run_dir / ADAPTER_DIR).is_dir():
        return "kept"
    if (run_dir / REMOVED_FILE).is_file():
        return "removed"
    return None


def prune(experiment_dir: str | Path, keep: int | None, setting: str, feasible=None) -> list[str]:
    """Delete the adapters outside the `keep` best ok runs (None: keep all; feasible ones first, see
    ranked_ok_runs); returns the run ids cleared. setting: train.keep_adapters as written, for the reason
    in adapter_removed.json."""
    if keep is None:
        return []
    store = RunStore(experiment_dir)
    store.root.mkdir(parents=True, exist_ok=True)
    removed = []
    with open(store.root / ".adapters.lock", "w") as lock:  # two blackboxes pruning at once: one after the other
        fcntl.flock(lock, fcntl.LOCK_EX)
        ranked = ranked_ok_runs(store, feasible)
        rank_of = {rid: i for i, (rid, _) in enumerate(ranked, 1)}
        for rid in store.run_ids():
            run_dir = store.run_dir(rid)
            status = store.finished(rid)
            if not (run_dir / ADAPTER_DIR).is_dir() or not status:
                continue
            point = (read_json(run_dir / "params.json") or {}).get("confirms") or rid
            if rank_of.get(point, math.inf) <= keep:
                continue
            reason = _reason(setting, keep, status, rid, point, rank_of, len(ranked))
            with store.try_lock(rid) as free:  # a run being retried or read right now is left alone
                if free and _remove(run_dir, reason):
                    removed.append(rid)
    return removed


def _reason(setting, keep, status, rid, point, rank_of, n_ok) -> str:
    if status["state"] != State.OK:
        return f"train.keep_adapters={setting}: the run is {status['state']}, its adapter of no use"
    if keep == 0:
        return "train.keep_adapters=none: each adapter is removed once its metrics are measured"
    if point != rid:
        return f"train.keep_adapters={setting}: a confirmation of {point}, which is not among the {keep} best"
    return f"train.keep_adapters={setting}: rank {rank_of[rid]} of {n_ok} ok runs by objective"


def _remove(run_dir: Path, reason: str) -> bool:
    """Move adapter/ aside first (one rename), record why, then delete: a crash leaves no half adapter/."""
    aside = run_dir / f".{ADAPTER_DIR}.removing"
    shutil.rmtree(aside, ignore_errors=True)  # left by a crash mid-way
    try:
        (run_dir / ADAPTER_DIR).rename(aside)
    except FileNotFoundError:
        return False
    write_json(run_dir / REMOVED_FILE, {"reason": reason, "time": time.time(),
                                        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    shutil.rmtree(aside, ignore_errors=True)
    return True
