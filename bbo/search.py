"""A NOMAD search as one call: what `python -m bbo run` does, for a notebook, a script and the tests.

    from bbo.search import run_search
    result = run_search("experiments/demo", ["nomad.budget=20"])   # resumable: run it again to continue
    result.best        # the best ok row (pandas Series; None when nothing succeeded)
    result.table       # one row per evaluated point (bbo.results.load_runs)
    result.failures    # {failure kind: count} of this search's failed evaluations
    result.error       # None, or the one line (with its fix) that made the search end in error

The checks before training (core/preflight.py) raise ConfigError; everything after them is in the
result. NOMAD runs in a child process (bbo.nomad: a bad NOMAD parameter crashes its process, not
this one), in its own process group, which dies with this process; its display goes to `echo`.
Ctrl-C (KeyboardInterrupt) stops the whole group and is raised again: finished evaluations are kept.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd

from core.config import ExperimentConfig, load_config


def _print(line: str) -> None:
    print(line, end="" if line.endswith("\n") else "\n", flush=True)


def _print_err(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@dataclass
class SearchResult:
    """What a search ended with; `exit_code` is what `bbo run` exits with (0: at least one success)."""

    config: ExperimentConfig
    search_id: str
    table: pd.DataFrame
    best: pd.Series | None
    failures: dict[str, int] = field(default_factory=dict)
    error: str | None = None
    exit_code: int = 0
    finished: bool = True  # NOMAD ran to its end (not stopped by failing points, not crashed)
    finalists_measured: bool = False  # objective.finalists ran after the search
    confirmed: bool = False  # confirm.top ran after the search

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


def run_search(experiment: str | Path, overrides: list[str] | tuple[str, ...] = (), *, retry_failed: bool = False,
               retry_pruned: bool = False, echo: Callable[[str], None] = _print,
               warn: Callable[[str], None] = _print_err) -> SearchResult:
    """Check everything, then run NOMAD to the experiment's budget (resuming), then the finalists' MMLU
    and the confirmation runs the experiment asks for. Raises ConfigError before anything trains."""
    from bbo import paramfile
    from core.nomadtext import CACHE_FILE, NOMAD_DIR, drop_failed
    from core.preflight import GPU_SLOTS_ENV, check_before_training
    from core.adapters import prune as prune_adapters
    from core.baseline import read_baseline
    from core.constraints import feasibility
    from core.procs import checkout_env, die_with_parent

    overrides = list(overrides)
    config = load_config(experiment, overrides)
    slots, warnings = check_before_training(config)  # nothing trains before these pass
    if any(slots):  # on GPUs: the plan's memory verdict and timeout check, estimated (not a stop)
        from bbo.plan import plan_warnings

        warnings += plan_warnings(config)
    for warning in warnings:
        warn(f"warning: {warning}")
    paramfile.write(load_config(experiment))  # the generated file follows experiment.yaml
    nomad_dir = config.dir / NOMAD_DIR  # NOMAD writes its temporary point files in its working folder
    nomad_dir.mkdir(exist_ok=True)
    if retry_failed:
        dropped = drop_failed(config.dir / CACHE_FILE)
        warn(f"retrying failed points: {dropped} removed from NOMAD's cache; their run folders are trained again")
    if retry_pruned:
        _drop_pruned(config, overrides, warn)
    search = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    # The overrides travel in the environment: NOMAD's child and every blackbox it starts read them.
    env = checkout_env(BBO_OVERRIDES=json.dumps(overrides), BBO_DRIVER_PID=str(os.getpid()),
                       BBO_SEARCH_ID=search, BBO_RETRY_FAILED="1" if retry_failed else "0",
                       BBO_RETRY_PRUNED="1" if retry_pruned else "0",
                       **{GPU_SLOTS_ENV: json.dumps(slots)})  # checked above: the blackboxes need not import torch
    if config.objective.uses_base:  # a constraint bounded by the base model: measured once, before NOMAD
        rc = measure_baseline(config, overrides, env)
        if rc != 0:
            from core.failures import Kind, fix_for

            result = _result(config, overrides, search, exit_code=1 if rc == 1 else rc, finished=False)
            result.error = f"the base model could not be measured (exit {rc}); nothing was trained; fix: {fix_for(Kind.BASELINE)}"
            return result
    if config.nomad.screen_fraction:  # the low-fidelity start: the start design screened, NOMAD from its best
        from bbo.screen import screen_start
        from core.failures import read_stop

        rc = screen_start(config, env, echo)
        if rc != 0:
            stop = read_stop(config.dir, search)
            result = _result(config, overrides, search, exit_code=1 if rc == 1 else rc, finished=False)
            result.error = (f"search stopped: {stop['message']}\nfix: {stop['fix']}" if stop else
                            f"the low-fidelity start ended with exit code {rc}; the runs it finished are kept; "
                            f"run the same command to continue")
            return result
        paramfile.write(load_config(experiment))  # param.txt's X0: the screened points (when experiment.yaml says so)
    echo(f"NOMAD search: {config.name}, budget {config.nomad.budget}, {config.space.dimension} variables "
         f"({' '.join(config.space.names())}); {config.launch.parallel} at a time on {_where(config, slots)}; "
         f"runs in {config.dir / 'runs'}")
    cmd = [sys.executable, "-m", "bbo.nomad", "--experiment", str(config.dir), "--resume"]
    # NOMAD (and the blackboxes it starts) in a process group of its own, so that stopping the search
    # stops all of it; it dies with us too.
    proc = subprocess.Popen(cmd, env=env, cwd=str(nomad_dir), preexec_fn=die_with_parent, start_new_session=True,
                            stdout=subprocess.PIPE, text=True, bufsize=1)
    stopped = _stop_when_failing(proc, config.dir, search)
    try:
        for line in proc.stdout:  # NOMAD's display, less a line that misleads here
            if "increase the buffer size" not in line:
                echo(line)
        rc = proc.wait()
    except KeyboardInterrupt:
        _signal_group(proc, signal.SIGINT)
        proc.wait()
        raise
    # each evaluation applied train.keep_adapters already; a rerun with a stricter setting applies it too
    prune_adapters(config.dir, config.train.adapters_kept, config.train.keep_adapters,
                   feasibility(config.objective, read_baseline(config)))
    result = _result(config, overrides, search)
    from core.failures import read_stop

    stop = stopped[0] if stopped else read_stop(config.dir, search)  # NOMAD may finish before the watcher looks
    if stop:  # the blackbox wrote the stop file: its first trainings all failed the same way
        result.error = (f"search stopped: {stop['message']}\nfix: {stop['fix']}\nnothing more was trained; after the "
                        f"fix: python -m bbo run {experiment} --retry-failed")
        result.exit_code, result.finished = 1, False
    elif rc < 0:
        result.error = (f"NOMAD died with signal {signal.Signals(-rc).name}; finished evaluations are kept in "
                        f"{config.dir / 'runs'}; run the same command to continue")
        result.exit_code, result.finished = 1, False
    elif rc != 0:
        result.error, result.exit_code, result.finished = f"NOMAD exited with code {rc}", rc, False
    else:
        result.error = no_success_error(config, search) or no_feasible_error(result.table)
        result.exit_code = 1 if result.error else 0
    if result.ok and config.objective.finalists:  # the k best on the full MMLU (their kept adapters)
        result.exit_code = measure_finalists(config, overrides, env)
        result.finalists_measured = True
    if result.ok and config.confirm.top:  # the finalists again with other seeds: is the winner real?
        from bbo.confirm import run_confirm

        result.exit_code = run_confirm(config, overrides, config.confirm.top, config.confirm.seeds, env)
        result.confirmed = True
    if result.finalists_measured or result.confirmed:  # their numbers are columns of the table
        result = _result(config, overrides, search, error=result.error, exit_code=result.exit_code,
                         finalists_measured=result.finalists_measured, confirmed=result.confirmed)
    return result


def measure_baseline(config: ExperimentConfig, overrides: list[str], env: dict) -> int:
    """`python -m blackbox.baseline` (through the executor; stored once per content key); its exit code."""
    cmd = [sys.executable, "-m", "blackbox.baseline", str(config.dir)]
    return subprocess.run(cmd, env=dict(env, BBO_OVERRIDES=json.dumps(list(overrides))),
                          stdout=subprocess.DEVNULL).returncode


def no_feasible_error(table: pd.DataFrame) -> str | None:
    """With constraints: the error line of a search whose ok runs all break one, naming the tightest."""
    from bbo.summary import best, tightest_constraint

    if "feasible" not in table or not table["feasible"].notna().any() or best(table) is not None:
        return None
    return (f"no feasible point: every run breaks a constraint (the tightest: {tightest_constraint(table)}); "
            "loosen it, widen the space, or raise nomad.budget")


def measure_finalists(config: ExperimentConfig, overrides: list[str], env: dict) -> int:
    """objective.finalists: `python -m blackbox.finalists` (through the executor, no retraining); its exit code."""
    cmd = [sys.executable, "-m", "blackbox.finalists", str(config.dir)]
    return subprocess.run(cmd, env=dict(env, BBO_OVERRIDES=json.dumps(list(overrides)))).returncode


def no_success_error(config: ExperimentConfig, search: str) -> str | None:
    """The error line (kind and fix) of a search in which no evaluation succeeded, else None."""
    from core.failures import fix_for
    from core.store import RunStore, State

    every = RunStore(config.dir).evaluations()
    answers = [e for e in every if e.get("search") == search]
    if any(e.get("state") == State.OK for e in answers):
        return None
    if not answers:  # NOMAD asked nothing: the budget is spent, or its cache answered everything
        if any(e.get("state") == State.OK for e in every):
            return None
        failed = [e for e in every if e.get("state") == State.FAILED]
        if not failed:
            return "this search evaluated nothing and no evaluation has succeeded yet"
        answers = failed
        intro = f"no evaluation has succeeded yet; NOMAD answered this search from its cache of {len(failed)} failed"
    else:
        intro = f"no evaluation of this search succeeded ({len(answers)} failed"
        cached = sum(1 for e in answers if e.get("cached"))
        if cached:
            intro += f"; {cached} answered from earlier failed runs"
    kind, n = Counter(e.get("error_kind") or "unknown" for e in answers).most_common(1)[0]
    return f"{intro}, {n} with {kind}); fix: {fix_for(kind)}"


def _result(config: ExperimentConfig, overrides: list[str], search: str, **fields) -> SearchResult:
    from bbo.results import load_runs
    from bbo.summary import best
    from core.store import RunStore, State

    table = load_runs(config.dir, overrides)
    failed = [e for e in RunStore(config.dir).evaluations()
              if e.get("search") == search and e.get("state") == State.FAILED]
    failures = dict(Counter(e.get("error_kind") or "unknown" for e in failed))
    return SearchResult(config, search, table, best(table), failures, **fields)


def _drop_pruned(config: ExperimentConfig, overrides: list[str], warn) -> None:
    from bbo.results import load_runs
    from core.nomadtext import CACHE_FILE, drop_points
    from core.store import State

    runs = load_runs(config.dir, overrides)
    pruned = runs[runs["status"].eq(State.PRUNED)]
    xcols = [f"x_{name}" for name in config.space.names()]
    dropped = drop_points(config.dir / CACHE_FILE, pruned[xcols].astype(float).values.tolist())
    warn(f"retrying pruned points: {dropped} removed from NOMAD's cache; they are trained again under the "
         f"pruning rule of now")


def _where(config: ExperimentConfig, slots) -> str:
    if config.launch.executor == "slurm":
        return f"Slurm (one job per evaluation, partition {config.slurm.partition or 'default'})"
    return ", ".join("+".join(s) if s else "CPU" for s in slots) if slots[0] is not None else "CPU"


def _stop_when_failing(proc, experiment_dir, search: str) -> list[dict]:
    """Watch for the stop file of this search and end NOMAD's process group when it appears.

    NOMAD runs in C++ and holds Python's GIL, so it cannot watch for itself. Returns a list that
    holds the stop record once the search was stopped.
    """
    from core.failures import read_stop

    stopped = []

    def watch():
        while proc.poll() is None:
            stop = read_stop(experiment_dir, search)
            if stop is not None:
                stopped.append(stop)
                _signal_group(proc, signal.SIGTERM)
                return
            time.sleep(0.5)

    threading.Thread(target=watch, daemon=True).start()
    return stopped


def _signal_group(proc, sig) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
