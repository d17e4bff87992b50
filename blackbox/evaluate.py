"""Evaluate one point: reuse its finished run, or train and evaluate it (blackbox/work.py) where the
executor says (blackbox/executors.py: a GPU slot of this machine, or one Slurm job per point); record
the answer, its run folder's spec and provenance, and one progress line.

Heavy libraries (torch, transformers) are never imported here: they live in the
child processes (blackbox/train.py, eval/mmlu.py), so answering an already-evaluated
point costs a Python start. A NOMAD block's points, several at once over the GPU slots: blackbox/blocks.py.
A search whose first trainings all fail alike is stopped by the rule in core/failures.py; a plain `nomad`
past nomad.budget by blackbox/blocks.py.
"""
from __future__ import annotations

import importlib.metadata
import math
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

from blackbox import tracking
from blackbox.baseline import baseline
from blackbox.executors import executor_for
from blackbox.work import kept_phase_files, train_spec
from core import faults
from core.adapters import prune as prune_adapters
from core.config import ExperimentConfig
from core.constraints import feasibility
from core.failures import EvalFailure, Kind, read_stop, stop_if_failing
from core.pruning import rule_for as pruning_rule_for, screen_rule
from core.procs import REPO_ROOT, search_id
from core.store import RunStore, State, run_id, write_json

PACKAGES = ["torch", "transformers", "peft", "accelerate", "datasets", "lm_eval", "PyNomadBBO", "pandas"]

@dataclass
class Outcome:
    run_id: str
    state: State  # ok | failed | pruned (numbers for NOMAD: the last measured validation loss)
    cached: bool
    hp: dict
    metrics: dict = field(default_factory=dict)
    outputs: list[float] | None = None  # in BB_OUTPUT_TYPE order
    reason: str | None = None
    error_kind: str | None = None  # for a failed point: a core.failures.Kind (a stored run's: its plain string)

    def line(self) -> str:
        """The line NOMAD reads: numbers, or FAILED (NOMAD then marks only this point as failed)."""
        if self.state == State.FAILED or self.outputs is None:
            return "FAILED"
        return " ".join(f"{v:.10g}" for v in self.outputs)


# ---------------------------------------------------------------- one point

def evaluate(config: ExperimentConfig, hp: dict, point: list | None = None, *, source: str = "nomad",
             retry_failed: bool = False, gpus: list[str] | None = None, confirms: str | None = None,
             retry_pruned: bool = False, screen: float | None = None) -> Outcome:
    """The answer for one point: stored if this run id finished before, else trained now.

    confirms: the run id this evaluation re-trains with config's other train.seed (`bbo confirm`):
    its own run folder, -s<seed> in its id, marked in params.json and evaluations.jsonl.
    screen: a training of the low-fidelity start (bbo/screen.py): stopped at this fraction, recorded pruned.
    """
    store = RunStore(config.dir)
    fingerprint = config.fingerprint()
    rid = point_run_id(config, hp, fingerprint, confirms)
    search = search_id()
    try:  # a constraint bounded by the base model: measured once, before anything is trained
        base = baseline(config, gpus) if config.objective.uses_base else None
    except EvalFailure as e:  # nothing trained, nothing recorded: FAILED for NOMAD
        return Outcome(rid, State.FAILED, False, hp, reason=f"{e.kind}: {e}", error_kind=e.kind)
    with store.lock(rid):  # a second process asking for the same point waits here, then reuses
        done = store.finished(rid)
        if reusable(done, retry_failed, retry_pruned):
            outcome = _stored_outcome(config, store, rid, hp, done, base)
        elif stopped := stopped_outcome(config, rid, hp, search):  # train nothing more, record nothing
            return stopped
        else:
            outcome = _run(config, store, rid, hp, point, fingerprint, gpus, confirms, base, screen)
    entry = {"run_id": rid, "point": point, "hp": hp, "state": str(outcome.state),
             "objective": outcome.metrics.get("objective"), "cached": outcome.cached,
             "source": source, "reason": outcome.reason, "error_kind": outcome.error_kind,
             "search": search, "time": time.time()}
    if confirms:
        entry.update(confirms=confirms, seed=config.train.seed)
    n = store.record(entry)
    _progress(store, n, outcome)
    # recorded: the adapters outside the train.keep_adapters best can go (the metrics stay)
    prune_adapters(config.dir, config.train.adapters_kept, config.train.keep_adapters, feasibility(config.objective, base))
    if outcome.state == State.FAILED and not outcome.cached:  # the first trainings all failing alike stop the search
        stop_if_failing(config.dir, search, config.nomad.stop_after_failures)
    return outcome


def reusable(done: dict | None, retry_failed: bool, retry_pruned: bool) -> bool:
    """Whether a finished run answers again: an ok one always, a failed or pruned one unless retried."""
    if not done:
        return False
    return {State.OK: True, State.FAILED: not retry_failed, State.PRUNED: not retry_pruned}[State(done["state"])]


def point_run_id(config: ExperimentConfig, hp: dict, fingerprint: dict, confirms: str | None) -> str:
    return run_id(hp, fingerprint, seed=config.train.seed if confirms else None)


def stopped_outcome(config: ExperimentConfig, rid: str, hp: dict, search: str) -> Outcome | None:
    """The answer for a point of a search that was stopped (core/failures.py stop_if_failing, or a plain
    `nomad` at nomad.budget: blackbox/blocks.py), else None."""
    stop = read_stop(config.dir, search)
    return None if stop is None else stop_answer(rid, hp, stop)


def stop_answer(rid: str, hp: dict, stop: dict) -> Outcome:
    """FAILED for NOMAD, without training, for a point its stopped search asks (stop: the stop record)."""
    return Outcome(rid, State.FAILED, False, hp, reason=f"search stopped: {stop.get('message')}",
                   error_kind=Kind.STOPPED)


def _stored_outcome(config, store, rid, hp, status, base: dict | None = None) -> Outcome:
    if status["state"] == State.FAILED:
        return Outcome(rid, State.FAILED, True, hp, reason=status.get("reason"), error_kind=status.get("error_kind"))
    state = State(status["state"])
    metrics = store.metrics(rid)
    try:
        outputs = _outputs(config, metrics, state == State.PRUNED, base)
    except EvalFailure as e:  # a stored run that lacks an output this config asks for
        return Outcome(rid, State.FAILED, True, hp, metrics, reason=str(e), error_kind=e.kind)
    return Outcome(rid, state, True, hp, metrics, outputs, reason=status.get("reason"))


def _outputs(config: ExperimentConfig, metrics: dict, pruned: bool = False, base: dict | None = None) -> list[float]:
    """The numbers for NOMAD, in BB_OUTPUT_TYPE order. A pruned run measured only some: its objective is its
    last validation loss, an extra output it did not measure (MMLU) is nan, which NOMAD records and ignores,
    and a constraint on it is inf: infeasible (core/constraints.py). base: the base model's metrics."""
    constraints = dict(zip(config.objective.constraint_names, config.objective.constraints))
    values = []
    for name in config.objective.outputs:
        if name in constraints:
            value = constraints[name].value(metrics, base)
            if math.isinf(value) and not pruned:
                raise EvalFailure(Kind.METRICS, f"constraint {constraints[name].label}: the run has no "
                                                f"{constraints[name].metric}")
            values.append(value)
            continue
        value = metrics.get(name)
        if pruned and name != "objective" and value is None:
            value = math.nan
        elif not isinstance(value, (int, float)) or not math.isfinite(value):
            raise EvalFailure(Kind.METRICS, f"output {name} is missing or not finite ({value!r})")
        values.append(float(value))
    return values


def _run(config, store, rid, hp, point, fingerprint, gpus, confirms=None, base=None, screen=None) -> Outcome:
    params = {"run_id": rid, "hp": hp, "point": point, "experiment": config.name, "fixed": fingerprint}
    if confirms:
        params.update(confirms=confirms, seed=config.train.seed)
    executor = executor_for(config)
    executor.release(store.run_dir(rid))  # a job a dead search left running is not trained twice
    # a confirmation runs to its end; a point of the low-fidelity start stops at its fraction
    rule = None if confirms else screen_rule(screen) if screen else pruning_rule_for(config, fingerprint)
    spec = train_spec(config, rid, hp, rule)
    # an attempt its search's stop interrupted (state running, its lock free: we hold it) keeps what it finished
    interrupted = (store.status(rid) or {}).get("state") == State.RUNNING
    run_dir = store.begin(rid, params, keep=kept_phase_files(store.run_dir(rid), spec) if interrupted else ())
    write_json(run_dir / "provenance.json", _provenance(config))
    write_json(run_dir / "spec.json", spec)
    t0 = time.time()
    try:
        metrics = executor.run(config, run_dir, gpus)
        pruned = "pruned_at" in metrics
        metrics["objective"] = metrics["val_loss"] if pruned else _objective(config, metrics)
        metrics["wall_seconds"] = time.time() - t0
        outputs = _outputs(config, metrics, pruned, base)
    except EvalFailure as e:
        store.finish(rid, State.FAILED, reason=str(e), error_kind=e.kind, log_tail=e.log_tail)
        tracking.log_final(config, run_dir, hp, None, str(State.FAILED))
        return Outcome(rid, State.FAILED, False, hp, reason=f"{e.kind}: {e}", error_kind=e.kind)
    faults.kill_search_at(faults.parse_fault(run_dir), "results")  # the kill tests' hook: before the results write
    state = State.PRUNED if pruned else State.OK
    reason = metrics.get("pruned_reason")
    store.finish(rid, state, metrics=metrics, reason=reason)
    tracking.log_final(config, run_dir, hp, metrics, str(state))  # with MMLU, measured after training
    return Outcome(rid, state, False, hp, metrics, outputs, reason=reason)


def _objective(config, metrics) -> float:
    try:
        value = config.objective.to_objective(metrics)
    except (KeyError, TypeError, ValueError):
        raise EvalFailure(Kind.METRICS, f"objective metric {config.objective.metric} missing") from None
    if not math.isfinite(value):
        raise EvalFailure(Kind.METRICS, f"objective {config.objective.metric} is not finite ({value})")
    return value


# ---------------------------------------------------------------- what a run folder records

def _provenance(config: ExperimentConfig) -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    commit = _git("rev-parse", "HEAD") or None
    changes = _git("status", "--porcelain", "--untracked-files=no", "--", "bbo", "blackbox", "eval")
    return {"config": config.to_dict(), "versions": versions, "python": sys.version.split()[0],
            "git_commit": commit, "git_dirty": None if commit is None else bool(changes),
            "host": socket.gethostname(), "argv": sys.argv, "time": time.time(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}


def _git(*args: str) -> str:
    """The output of a git command in the project, or "" outside a git checkout."""
    try:
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


# ---------------------------------------------------------------- progress

def _progress(store: RunStore, n: int, outcome: Outcome) -> None:
    """One line per evaluation on stderr (stdout belongs to NOMAD): point, objective, best so far."""
    best = min((e["objective"] for e in store.evaluations() if e.get("state") == State.OK
                and not e.get("confirms") and isinstance(e.get("objective"), (int, float))), default=None)
    hp = outcome.hp
    what = f"r={hp['rank']} alpha={hp['alpha']:g} dropout={hp['dropout']:g} lr={hp['lr']:.3g}"
    if outcome.state == State.OK:
        result = f"objective {outcome.metrics['objective']:.6g}"
    elif outcome.state == State.PRUNED:
        result = (f"pruned at {outcome.metrics.get('pruned_at', 0):.0%} of training "
                  f"(objective {outcome.metrics['objective']:.6g})")
    else:
        result = f"FAILED ({outcome.reason})"
    tag = " [cached]" if outcome.cached else ""
    best_text = f"{best:.6g}" if best is not None else "-"
    print(f"[eval {n:3d}] {what} -> {result}{tag} | best {best_text}", file=sys.stderr, flush=True)
