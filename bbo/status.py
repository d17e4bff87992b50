"""`python -m bbo status experiments/X`: where a search stands, from its run folders, also while it runs.

    python -m bbo status experiments/demo [key=value ...]     # the same overrides as `bbo run`

Counts (ok, running, failed, pruned, interrupted), the best point so far, each running evaluation's
progress (its progress.json: step/max, loss, ETA), the budget used (core.store.budget_use, the count the
blackbox stops a plain `nomad` at; more than the budget comes with why) and left, and an ETA for the search:
evaluations left x mean evaluation time / launch.parallel. A run folder in state "running" is running
while a process holds its lock (core/store.py); with the lock free its process died ("interrupted":
the next search trains it again). Reads files only (the model and data files hashed as for run ids):
cheap enough to run in a loop (`watch -n 10 ...`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from core.baseline import read_baseline
from core.config import ExperimentConfig
from core.constraints import feasibility
from core.objective import objective_label
from core.progress import describe, duration, read_progress
from core.store import RunStore, State, budget_use, read_json

SHOWN = (State.OK, State.RUNNING, State.FAILED, State.PRUNED)  # counted even when 0; INTERRUPTED only when some


@dataclass
class Run:
    run_id: str
    state: str  # ok | failed | pruned | running | interrupted
    hp: dict
    objective: float | None = None
    seconds: float | None = None  # started -> finished, for a finished run
    progress: dict | None = None  # progress.json of a running one
    confirms: str | None = None
    feasible: bool | None = None  # with objective.constraints (core/constraints.py)


@dataclass
class SearchStatus:
    name: str
    dir: Path
    runs: list[Run] = field(default_factory=list)
    budget: int = 0
    parallel: int = 1
    count_failed: bool = False
    metric: str = "val_loss"
    used: int = 0  # evaluations that count against nomad.budget (core.store.budget_use says which)
    by_hand: int = 0  # finished runs only ever asked by hand: not counted
    screened: int = 0  # finished runs of the low-fidelity start NOMAD never asked: not counted
    constrained: bool = False  # objective.constraints: the best is the best feasible run
    base_objective: float | None = None  # the base model's objective (no adapter), when measured

    def of(self, state: str) -> list[Run]:
        return [r for r in self.runs if r.state == state and not r.confirms]

    @property
    def best(self) -> Run | None:
        ok = [r for r in self.of(State.OK) if r.objective is not None and (r.feasible or not self.constrained)]
        return min(ok, key=lambda r: r.objective) if ok else None

    @property
    def left(self) -> int:
        return max(0, self.budget - self.used)

    @property
    def mean_seconds(self) -> float | None:
        times = [r.seconds for r in self.runs if r.seconds is not None and not r.confirms]
        return sum(times) / len(times) if times else None

    @property
    def eta_seconds(self) -> float | None:
        mean = self.mean_seconds
        return None if mean is None else self.left * mean / self.parallel


def search_status(config: ExperimentConfig) -> SearchStatus:
    """The state of every run folder of the experiment."""
    store = RunStore(config.dir)
    status = SearchStatus(config.name, config.dir, budget=config.nomad.budget, parallel=config.launch.parallel,
                          count_failed=config.nomad.count_failed, metric=config.objective.metric,
                          constrained=bool(config.objective.constraints))
    base = read_baseline(config)
    if base:
        status.base_objective = config.objective.to_objective(base)
    feasible = feasibility(config.objective, base)
    for rid in store.run_ids():
        status.runs.append(_run(store, rid, feasible))
    use = budget_use(config.dir, config.fingerprint(), config.nomad.count_failed)
    status.used, status.by_hand, status.screened = use.used, use.by_hand, use.screened
    return status


def _run(store: RunStore, rid: str, feasible=None) -> Run:
    run_dir = store.run_dir(rid)
    params = read_json(run_dir / "params.json") or {}
    info = store.status(rid) or {}
    state = info.get("state")
    if state not in (State.OK, State.FAILED, State.PRUNED):
        state = State.RUNNING if store.lock_held(rid) else State.INTERRUPTED  # lock free: its process died
    run = Run(rid, str(state), params.get("hp") or {}, confirms=params.get("confirms"))
    if state in (State.OK, State.PRUNED):
        metrics = store.metrics(rid) or {}
        if isinstance(metrics.get("objective"), (int, float)):
            run.objective = float(metrics["objective"])
        if feasible is not None:
            run.feasible = feasible(metrics)
    if isinstance(info.get("started"), (int, float)) and isinstance(info.get("finished"), (int, float)):
        run.seconds = info["finished"] - info["started"]
    if state == State.RUNNING:
        run.progress = read_progress(run_dir)
    return run


def point_text(hp: dict) -> str:
    if not hp:
        return "?"
    return f"rank={hp.get('rank')} alpha={hp.get('alpha', 0):g} dropout={hp.get('dropout', 0):g} lr={hp.get('lr', 0):.3g}"


def budget_text(status: SearchStatus) -> str:
    """The budget line; more used than the budget comes with the reasons it can have."""
    text = f"budget: {status.used} of {status.budget} used, {status.left} left"
    if status.count_failed:
        text += " (failed ones count: nomad.count_failed)"
    beyond = status.used - status.budget
    if beyond > 0:
        text += (f" ({beyond} beyond it: trained by a search that spent a budget of its own "
                 "(`python -m bbo.nomad --no-resume`, `BBO_EXTEND=1 nomad param.txt`, or a rerun from before "
                 "reruns resumed), or nomad.budget was lowered since)")
    if status.by_hand:
        text += f"; {status.by_hand} more evaluated by hand, not counted"
    if status.screened:
        text += f"; {status.screened} more of the low-fidelity start, not counted"
    return text


def status_text(status: SearchStatus) -> str:
    counts = {state: len(status.of(state)) for state in (*SHOWN, State.INTERRUPTED)}
    lines = [f"{status.name}: {sum(counts.values())} run folders: " + ", ".join(
        f"{n} {state}" for state, n in counts.items() if n or state in SHOWN)]
    confirmations = [r for r in status.runs if r.confirms]
    if confirmations:
        lines.append(f"confirmation runs (other seeds): {len(confirmations)}")
    best = status.best
    what = "best feasible so far" if status.constrained else "best so far"
    if best:
        lines.append(f"{what}: {objective_label(status.metric)} {best.objective:.6g} at {point_text(best.hp)} "
                     f"({best.run_id})")
    else:
        lines.append(f"{what}: - (no evaluation has succeeded{' feasibly' if status.constrained else ''} yet)")
    if status.constrained:
        judged = [r for r in status.of(State.OK) + status.of(State.PRUNED) if r.feasible is not None]
        lines.append(f"feasible: {sum(bool(r.feasible) for r in judged)} of {len(judged)} runs" if judged or not
                     status.of(State.OK) else "feasible: unknown until the base model is measured (bbo baseline)")
    if status.base_objective is not None:
        vs = f" (best - base: {best.objective - status.base_objective:+.4g})" if best else ""
        lines.append(f"base model (no adapter): {objective_label(status.metric)} {status.base_objective:.6g}{vs}")
    for run in status.runs:
        if run.state == State.RUNNING:
            progress = describe(run.progress) if run.progress else "starting (no training step yet)"
            lines.append(f"running: {point_text(run.hp)}: {progress} ({run.run_id})")
    mean = status.mean_seconds
    lines.append(budget_text(status))
    if status.left == 0:
        lines.append("search ETA: budget spent")
    elif mean is None:
        lines.append("search ETA: - (no finished evaluation to time yet)")
    else:
        lines.append(f"search ETA: {duration(status.eta_seconds)} ({status.left} left x mean evaluation "
                     f"{duration(mean)} / {status.parallel} at a time)")
    interrupted = status.of(State.INTERRUPTED)
    if interrupted:
        lines.append(f"interrupted: {len(interrupted)} run(s) whose process died mid-way; the next "
                     f"`python -m bbo run {status.dir}` trains them again")
    return "\n".join(lines)
