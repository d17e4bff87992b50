"""A NOMAD block: its points evaluated at once, each on a GPU slot of its own (blackbox/evaluate.py
evaluates one), answered in the block's order.

launch.parallel slots of launch.num_processes GPUs (core/preflight.py); a point takes a free slot
and gives it back, so two points never share one, and points beyond the slots wait for a free one.

Under a plain `nomad` (no BBO_SEARCH_ID: no driver counts the budget in MAX_BB_EVAL, and each run of it
spends MAX_BB_EVAL anew) a block trains no new point past nomad.budget (past_budget): the search is
stopped the way fail-fast stops one, with one line naming the budget and how to raise it.
"""
from __future__ import annotations

import os
import queue
import sys
from concurrent.futures import ThreadPoolExecutor

from blackbox import tracking
from blackbox.evaluate import Outcome, evaluate, point_run_id, reusable, stop_answer
from core.config import ExperimentConfig
from core.failures import Kind, budget_stop, note_refused, read_stop, write_stop
from core.preflight import check_before_training
from core.procs import search_id
from core.store import RunStore, budget_use


def evaluate_block(config: ExperimentConfig, points: list[tuple[dict, list | None]], *, source: str = "nomad",
                   retry_failed: bool = False, confirms: list[str] | None = None,
                   retry_pruned: bool = False, extend: bool = False, screen: float | None = None) -> list[Outcome]:
    """Several points at once, each on its own GPUs (launch.parallel slots of launch.num_processes GPUs).

    The checks before training (hub access, GPUs; core/preflight.py) run only when some point
    must be trained: an already-evaluated point is answered without importing torch.
    confirms: per point, the run id it re-trains with another seed (see evaluate), or None.
    extend: train past nomad.budget under a plain `nomad` (past_budget).
    screen: train to this fraction of the run and stop, pruned (the low-fidelity start, bbo/screen.py).
    """
    store = RunStore(config.dir)
    fingerprint = config.fingerprint()
    search = search_id()
    confirms = confirms or [None] * len(points)
    rids = [point_run_id(config, hp, fingerprint, of) for (hp, _), of in zip(points, confirms)]
    new = [i for i, rid in enumerate(rids) if not reusable(store.finished(rid), retry_failed, retry_pruned)]
    stop = read_stop(config.dir, search)
    over = len(new) if stop else past_budget(config, fingerprint, len(new), source, extend)
    if over and stop is None:  # the first new point past the budget: the search stops here, like fail-fast
        stop = budget_stop(search, config.nomad.budget,
                           budget_use(config.dir, fingerprint, config.nomad.count_failed).used)
        print(f"budget: {stop['message']}; this search's new points are answered FAILED without training; "
              f"{stop['fix']}", file=sys.stderr, flush=True)
    refused = new[len(new) - over:]  # a stopped search trains nothing new: answered at once, recorded nowhere
    answers = {i: stop_answer(rids[i], points[i][0], stop) for i in refused}
    if refused and stop["kind"] == Kind.BUDGET:
        note_refused(config.dir, [points[i][1] for i in refused if points[i][1] is not None])
    rest = [i for i in range(len(points)) if i not in answers]
    slots = [None]
    if any(i in new for i in rest):
        slots, warnings = check_before_training(config)
        for warning in warnings:
            print(f"warning: {warning}", file=sys.stderr)
        try:
            tracking.prepare(config)
        except Exception as e:  # noqa: BLE001 - trackers observe; the integration says more when training starts
            print(f"warning: could not create the MLflow store: {type(e).__name__}: {e}", file=sys.stderr)
    width = max(1, min(len(rest), len(slots)))
    free = queue.Queue()  # a point takes a free slot and gives it back: never two points on one slot
    for slot in slots[:width]:
        free.put(slot)

    def work(i):
        slot = free.get()
        try:
            return evaluate(config, points[i][0], points[i][1], source=source, retry_failed=retry_failed, gpus=slot,
                            confirms=confirms[i], retry_pruned=retry_pruned, screen=screen)
        finally:
            free.put(slot)

    if width == 1:
        answers.update((i, work(i)) for i in rest)
    else:
        with ThreadPoolExecutor(max_workers=width) as pool:  # points beyond the slots wait for a free one
            answers.update(zip(rest, pool.map(work, rest)))
    if over and read_stop(config.dir, search) is None:  # after this block's own trainings, which were within it
        write_stop(config.dir, stop)
    return [answers[i] for i in range(len(points))]


def past_budget(config: ExperimentConfig, fingerprint: dict, new: int, source: str, extend: bool = False) -> int:
    """How many of a block's new points (to be trained) a plain `nomad` may not train: those past nomad.budget,
    as core.store.budget_use counts it (what `bbo status` shows as used).

    0 under our drivers (`bbo run`, `python -m bbo.nomad`: BBO_SEARCH_ID is set and MAX_BB_EVAL, resumed,
    already counts the budget), for points asked by hand or confirmed (they do not count), and with extend.
    """
    if source != "nomad" or extend or os.environ.get("BBO_SEARCH_ID"):
        return 0
    left = max(0, config.nomad.budget - budget_use(config.dir, fingerprint, config.nomad.count_failed).used)
    return max(0, new - left)
