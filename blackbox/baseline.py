"""The base model without an adapter, measured once with the experiment's own metrics.

    python -m blackbox.baseline experiments/X [key=value ...]    # what `bbo baseline` and `bbo run` start

Validation loss, and MMLU (with the search's limit) and ROUGE when the search uses them, measured by the
same children as a run's (blackbox/work.py baseline_work), where the executor says (a GPU slot here, or
a Slurm job). Stored in the experiment folder under a content key (core/baseline.py): a second ask, from
this or any other search of the same model and data, reads it. A constraint `at_least: base - 0.01`
(core/constraints.py) needs it before the first point can be answered: the blackbox measures it then, if
`bbo run` has not (a plain `nomad param.txt`). Exit status: 0 measured or stored, 1 the measure failed,
2 bad input.
"""
from __future__ import annotations

import json
import signal
import sys

from core.baseline import RESULT_FILE, baseline_dir, read_baseline
from core.config import ConfigError, load_config
from core.failures import EvalFailure, Interrupted, Kind
from core.store import file_lock, write_json
from core.yamlvalues import env_overrides

SLURM_RECORD = "slurm.json"


def baseline(config, gpus: list[str] | None = None) -> dict:
    """The base model's metrics: stored, or measured now, once (other processes asking wait, then read).
    Raises EvalFailure (Kind.BASELINE, with the failed child's kind in the message)."""
    stored = read_baseline(config)
    if stored:
        return stored
    folder = baseline_dir(config)
    with file_lock(folder.parent / f".{folder.name}.lock"):
        stored = read_baseline(config)
        if stored:
            return stored
        return _measure(config, folder, gpus)


def _measure(config, folder, gpus) -> dict:
    from blackbox.work import train_spec
    from blackbox.executors import executor_for
    from blackbox.work import baseline_work
    from core.preflight import check_before_training

    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "spec.json", train_spec(config, f"baseline-{folder.name}", {}))
    if gpus is None:
        slots, warnings = check_before_training(config)  # imports torch: only when something is measured
        for warning in warnings:
            print(f"warning: {warning}", file=sys.stderr)
        gpus = slots[0]
    print(f"baseline: measuring the base model without an adapter ({', '.join(config.objective.base_metrics)}) "
          f"in {folder}", file=sys.stderr, flush=True)
    try:
        metrics = executor_for(config).run(config, folder, gpus, task=baseline_work, record=SLURM_RECORD)
    except EvalFailure as e:
        raise EvalFailure(Kind.BASELINE, f"the base model could not be measured ({e.kind}: {e})", e.log_tail) from None
    result = {m: metrics[m] for m in config.objective.base_metrics} | {
        k: v for k, v in metrics.items() if k.startswith("mmlu_") or k in ("val_tokens", "mmlu_n", "mmlu_stderr")}
    write_json(folder / RESULT_FILE, result)  # last: a cut-off measure leaves none, and is done again
    return result


def describe(result: dict, config) -> str:
    return "  ".join(f"{m}={result[m]:.6g}" for m in config.objective.base_metrics)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0].startswith("-"):
        print("usage: python -m blackbox.baseline EXPERIMENT_DIR [key=value ...]", file=sys.stderr)
        return 2
    try:
        config = load_config(argv[0], env_overrides() + list(argv[1:]))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from blackbox.executors import stop_with_search

    stop_with_search()  # a signal, or the search's driver gone: the child (or job) goes down too
    stored = read_baseline(config)
    try:
        result = baseline(config)
    except ConfigError as e:  # a check before measuring (GPUs, hub): nothing was measured
        print(f"error: {e}", file=sys.stderr)
        return 2
    except EvalFailure as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Interrupted:
        print("interrupted: the baseline is measured by the next run", file=sys.stderr)
        return 128 + signal.SIGTERM
    print(f"baseline: {describe(result, config)}{' (stored)' if stored else ''} [{baseline_dir(config)}]",
          file=sys.stderr)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
