"""A NOMAD block: its points evaluated at once, each on a GPU slot of its own (blackbox/evaluate.py
evaluates one), answered in the block's order.

launch.parallel slots of launch.num_processes GPUs (core/preflight.py); a point takes a free slot
and gives it back, so two points never share one, and points beyond the slots wait for a free one.
"""
from __future__ import annotations

import queue
import sys
from concurrent.futures import ThreadPoolExecutor

from blackbox import tracking
from blackbox.evaluate import Outcome, evaluate, point_run_id, reusable, stopped_outcome
from core.config import ExperimentConfig
from core.preflight import check_before_training
from core.procs import search_id
from core.store import RunStore


def evaluate_block(config: ExperimentConfig, points: list[tuple[dict, list | None]], *, source: str = "nomad",
                   retry_failed: bool = False, confirms: list[str] | None = None,
                   retry_pruned: bool = False) -> list[Outcome]:
    """Several points at once, each on its own GPUs (launch.parallel slots of launch.num_processes GPUs).

    The checks before training (hub access, GPUs; core/preflight.py) run only when some point
    must be trained: an already-evaluated point is answered without importing torch.
    confirms: per point, the run id it re-trains with another seed (see evaluate), or None.
    """
    store = RunStore(config.dir)
    fingerprint = config.fingerprint()
    search = search_id()
    confirms = confirms or [None] * len(points)
    rids = [point_run_id(config, hp, fingerprint, of) for (hp, _), of in zip(points, confirms)]
    stopped = [stopped_outcome(config, rid, hp, search) for rid, (hp, _) in zip(rids, points)]
    if all(stopped):  # a stopped search's NOMAD is being ended (or, under a plain `nomad`, goes on):
        return stopped  # answer at once, without the checks
    to_train = [rid for rid in rids if not reusable(store.finished(rid), retry_failed, retry_pruned)]
    slots = [None]
    if to_train:
        slots, warnings = check_before_training(config)
        for warning in warnings:
            print(f"warning: {warning}", file=sys.stderr)
        try:
            tracking.prepare(config)
        except Exception as e:  # noqa: BLE001 - trackers observe; the integration says more when training starts
            print(f"warning: could not create the MLflow store: {type(e).__name__}: {e}", file=sys.stderr)
    width = max(1, min(len(points), len(slots)))
    free = queue.Queue()  # a point takes a free slot and gives it back: never two points on one slot
    for slot in slots[:width]:
        free.put(slot)

    def work(i):
        slot = free.get()
        try:
            return evaluate(config, points[i][0], points[i][1], source=source, retry_failed=retry_failed, gpus=slot,
                            confirms=confirms[i], retry_pruned=retry_pruned)
        finally:
            free.put(slot)

    if width == 1:
        return [work(i) for i in range(len(points))]
    with ThreadPoolExecutor(max_workers=width) as pool:  # points beyond the slots wait for a free one
        return list(pool.map(work, range(len(points))))
