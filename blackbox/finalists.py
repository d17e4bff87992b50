"""objective.finalists: after the search, the k best finished points on the full MMLU, no retraining.

    python -m blackbox.finalists experiments/X [key=value ...]   # what `bbo run` / `bbo finalists` start

During the search each run measures MMLU with mmlu.search_limit questions per subject (cheap);
afterwards the k best ok runs by objective are measured again with mmlu.limit (None = every
question) on their kept adapter, into runs/<id>/mmlu_full.json. The work goes through the executor
(blackbox/executors.py: a GPU slot here or a Slurm job), like an evaluation's GPU part.
Idempotent: a finalist whose mmlu_full.json has the current limit is answered from its folder.
train.keep_adapters must keep at least the finalists' adapters (checked by the config); a
finalist without its adapter gets a one-line error and the others are still measured.
Exit status: 0 when every finalist has its full MMLU, 1 when one could not, 2 for bad input.
"""
from __future__ import annotations

import signal
import sys

from core.adapters import ranked_ok_runs
from core.baseline import read_baseline
from core.constraints import feasibility
from core.config import ConfigError, load_config
from core.failures import Interrupted
from core.yamlvalues import env_overrides
from core.store import RunStore, read_json

FULL_FILE = "mmlu_full.json"
SLURM_RECORD = "slurm_mmlu_full.json"  # launch.executor=slurm: the finalist's MMLU job (slurm.json is training's)


def finalist_ids(store: RunStore, k: int, feasible=None) -> list[str]:
    """The k best ok runs of the search by objective (confirmation runs excluded), best first; with
    constraints (feasible: core.constraints.feasibility) the k best feasible ones."""
    ranked = ranked_ok_runs(store, feasible)
    if feasible is not None:
        ranked = [(rid, value) for rid, value in ranked if feasible(store.metrics(rid) or {})]
    return [rid for rid, _ in ranked[:k]]


def measured(run_dir, limit) -> dict | None:
    """The stored full MMLU of a finalist, if it was measured with this limit."""
    result = read_json(run_dir / FULL_FILE)
    if isinstance(result, dict) and isinstance(result.get("mmlu"), (int, float)) and result.get("mmlu_limit") == limit:
        return result
    return None


def run_finalists(config) -> int:
    from blackbox.executors import executor_for
    from blackbox.work import finalist_work
    from core.failures import EvalFailure
    from core.preflight import check_before_training

    store = RunStore(config.dir)
    limit = config.objective.mmlu.limit
    ids = finalist_ids(store, config.objective.finalists, feasibility(config.objective, read_baseline(config)))
    todo = [rid for rid in ids if measured(store.run_dir(rid), limit) is None]
    for rid in ids:
        if rid not in todo:
            print(f"finalist {rid}: mmlu {measured(store.run_dir(rid), limit)['mmlu']:.4f} (stored)", file=sys.stderr)
    if not todo:
        return 0
    slots, warnings = check_before_training(config)  # imports torch: only when something is measured
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    executor, failed = executor_for(config), 0
    for rid in todo:  # one after the other on the first slot: k is small
        with store.lock(rid):  # never measured twice at once, nor while the run is begun again
            run_dir = store.run_dir(rid)
            if measured(run_dir, limit) is not None:
                continue
            if not (run_dir / "adapter").is_dir():  # said here, not in a Slurm job submitted for nothing
                print(f"error: finalist {rid}: no adapter (removed by train.keep_adapters, or never kept): "
                      "its full MMLU cannot be measured", file=sys.stderr)
                failed += 1
                continue
            try:
                result = executor.run(config, run_dir, slots[0], task=finalist_work, record=SLURM_RECORD)
            except EvalFailure as e:
                print(f"error: finalist {rid}: {e}", file=sys.stderr)
                failed += 1
                continue
        print(f"finalist {rid}: mmlu {result['mmlu']:.4f} on the full benchmark", file=sys.stderr)
    return 1 if failed else 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0].startswith("-"):
        print("usage: python -m blackbox.finalists EXPERIMENT_DIR [key=value ...]", file=sys.stderr)
        return 2
    try:
        config = load_config(argv[0], env_overrides() + list(argv[1:]))
        if not config.objective.finalists:
            raise ConfigError("objective.finalists: is 0: no finalists to measure (set e.g. objective.finalists=3)")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from blackbox.executors import stop_with_search

    stop_with_search()  # a signal, or the search's driver gone: the child (or job) goes down too
    try:
        return run_finalists(config)
    except ConfigError as e:  # a check before the MMLU (GPUs, hub): nothing was measured
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Interrupted:  # the search was stopped while a finalist was measured: nothing is recorded for it
        print("interrupted: the finalists not yet measured are measured by the next run", file=sys.stderr)
        return 128 + signal.SIGTERM


if __name__ == "__main__":
    sys.exit(main())
