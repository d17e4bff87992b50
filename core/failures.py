"""Failures, one owner: the kinds and their fixes, the exception a failed evaluation raises, which of
several processes' errors is reported, an OOM in a log, and the stop rule of a search whose first
trainings all fail alike (with its stop file), also used to stop a plain `nomad` at nomad.budget.

Training writes its kind in error*.json (blackbox/train.py), the work raises EvalFailure
(blackbox/work.py, blackbox/executors.py), the blackbox records it as status.json's error_kind and
writes the stop file (blackbox/evaluate.py); `bbo run` reads the stop file, ends NOMAD and prints
the fix. See docs/failures.md.
"""
from __future__ import annotations

import enum
import time
from pathlib import Path

from core.nomadtext import NOMAD_DIR, point_line
from core.store import RunStore, State, read_json, write_json


class Kind(str, enum.Enum):
    """How an evaluation failed: status.json's and evaluations.jsonl's "error_kind", stored as the plain string."""

    LOAD_TOKENIZER = "load_tokenizer"  # training could not load the tokenizer
    LOAD_DATA = "load_data"  # ... nor the data
    LOAD_MODEL = "load_model"  # ... nor the base model (with LoRA on it)
    ERROR = "error"  # training raised
    OOM = "oom"  # out of GPU memory, in training or an evaluation
    DIVERGED = "diverged"  # train loss NaN, inf or above train.diverge_loss
    EVAL_LOSS = "eval_loss"  # the validation pass after training raised (train.log)
    EVAL_MMLU = "eval_mmlu"  # the MMLU child failed (mmlu.log; a finalist's: mmlu_full.log)
    EVAL_ROUGE = "eval_rouge"  # the ROUGE child failed (rouge.log)
    METRICS = "metrics"  # no readable train_result.json, or an output missing or not finite
    CRASH = "crash"  # training killed by a signal or exited without saying why
    TIMEOUT = "timeout"  # past launch.timeout_minutes (or slurm.time_minutes)
    SLURM = "slurm"  # Slurm ended the job or refused it
    ADAPTER = "adapter"  # a finalist's adapter is gone: its full MMLU cannot be measured
    BASELINE = "baseline"  # the base model (a constraint's `base`) could not be measured: no point is answered
    STOPPED = "stopped"  # not evaluated: its search was stopped (the stop rule below); never recorded
    BUDGET = "budget"  # a stop record's kind: a plain `nomad` asked for trainings past nomad.budget (below)
    EVAL = "eval"  # legacy: an evaluation failed, in runs stored before eval_loss/eval_mmlu/eval_rouge

    def __str__(self) -> str:
        return self.value


_RETRY = "then rerun with --retry-failed"
EXTEND_ENV = "BBO_EXTEND"  # "1": a plain `nomad` trains past nomad.budget (python -m blackbox --extend)

# What to do about each kind, for the one message a stopped or all-failed search ends with.
FIXES = {
    Kind.LOAD_TOKENIZER: "the tokenizer could not be loaded from model.path: check the folder holds the tokenizer "
                         f"files, {_RETRY}",
    Kind.LOAD_DATA: f"the data could not be loaded: check data.sources (paths, formats, hub access), {_RETRY}",
    Kind.LOAD_MODEL: "the base model could not be loaded: check model.path (a local folder, or a hub id your "
                     f"token may read: `hf auth login`), {_RETRY}",
    Kind.ERROR: "training raised an error (the reason names it): see train.log in the run folders and fix its cause "
                f"(data at run time, library versions), {_RETRY}",
    Kind.OOM: "out of GPU memory: see `python -m bbo plan <experiment>`; set train.gradient_checkpointing=true, "
              "lower train.per_device_batch_size (raise train.grad_accum to keep the effective batch), or "
              f"model.quantization=4bit; {_RETRY}",
    Kind.DIVERGED: "training diverged (NaN or huge loss): lower the learning rate range or train.max_grad_norm",
    Kind.EVAL_LOSS: f"the validation loss after training failed: see train.log in the run folders, {_RETRY}",
    Kind.EVAL_MMLU: "the MMLU evaluation failed: see mmlu.log (a finalist's: mmlu_full.log) in the run folders and "
                    f"check objective.mmlu (task, data_dir), {_RETRY}",
    Kind.EVAL_ROUGE: "the ROUGE evaluation failed: see rouge.log in the run folders and check objective.generation, "
                     f"{_RETRY}",
    Kind.METRICS: "an evaluation ended without the numbers the objective needs (train_result.json missing or "
                  "garbage, or an output missing or not finite): see train.log in the run folders and check "
                  f"objective.metric, objective.constraints and objective.extra_outputs, {_RETRY}",
    Kind.CRASH: f"training crashed: see train.log in the run folders, {_RETRY}",
    Kind.TIMEOUT: "evaluations ran past launch.timeout_minutes: raise it (see the time estimate of "
                  f"`python -m bbo plan <experiment>`) or shorten training, {_RETRY}",
    Kind.SLURM: "Slurm ended the jobs (cancelled, node failure, preempted without requeue): see `scontrol show job` "
                "or `sacct -j`, the job logs in <experiment>/slurm/ and the slurm: section, " + _RETRY,
    Kind.ADAPTER: "the run's adapter is gone (removed by train.keep_adapters, or never kept): keep the finalists' "
                  "adapters with train.keep_adapters=all or best:k (k >= objective.finalists); a removed adapter "
                  "comes back only by training its point again",
    Kind.BASELINE: "the base model without an adapter could not be measured, and a constraint's bound names base: "
                   "see the logs in <experiment>/baseline/<key>/ and `python -m bbo baseline <experiment>`, or bound "
                   f"the constraint by a number; {_RETRY}",
    Kind.STOPPED: "the search was stopped because its first trainings all failed alike: nomad/stop.json names "
                  f"their kind and its fix; apply it, {_RETRY}",
    Kind.BUDGET: "to train more, raise nomad.budget (nomad.budget=N in experiment.yaml, or "
                  "BBO_OVERRIDES='[\"nomad.budget=N\"]') and rerun: `python -m bbo run <experiment>` and "
                  "`python -m bbo.nomad param.txt` resume to it; or train past it on purpose: "
                  f"{EXTEND_ENV}=1 nomad param.txt",
    Kind.EVAL: "an evaluation after training failed (validation loss, MMLU or ROUGE; a run stored before these "
               f"were told apart): see train.log, mmlu.log and rouge.log in the run folders, {_RETRY}",
}
GENERIC_FIX = f"see train.log in the run folders, {_RETRY}"


def kind_of(text: str | None) -> Kind | None:
    """The Kind a stored error_kind names, or None (missing, or not a kind this code knows)."""
    try:
        return Kind(text)
    except ValueError:
        return None


def fix_for(kind: Kind | str | None) -> str:
    """The fix for a kind, also for the plain strings of stored runs; a generic one for an unknown kind."""
    known = kind_of(kind)
    return FIXES[known] if known else GENERIC_FIX


class EvalFailure(Exception):
    """A point whose evaluation failed; `kind` (a Kind) says how."""

    def __init__(self, kind: Kind | str, message: str, log_tail: str | None = None):
        super().__init__(message)
        self.kind, self.log_tail = Kind(kind), log_tail


class Interrupted(BaseException):
    """The evaluation was ended because its search was stopped, killed or cancelled: the child that just
    ended was ended by that, which says nothing about the point. A BaseException (like KeyboardInterrupt),
    so that no handler records it as a failure: the run folder stays `running`, and the next run of the
    search sets it aside and evaluates the point again."""


# ---------------------------------------------------------------- which error is reported

# Most telling first: when several processes fail, the first found here is reported (an OOM on rank 2
# makes the other ranks fail too, with less telling errors); a kind not listed comes after them all.
PRIORITY = [Kind.OOM, Kind.DIVERGED, Kind.LOAD_MODEL, Kind.LOAD_TOKENIZER, Kind.LOAD_DATA, Kind.EVAL_LOSS, Kind.ERROR]


def reported_error(errors: list[dict]) -> dict:
    """Of several processes' error records ({"kind", "message", "rank", "time"}: error*.json), the one to
    report: the most telling kind; among equals the first to fail (the others failed because it did)."""
    def rank(error: dict) -> tuple[int, float]:
        kind = kind_of(error.get("kind"))
        return (PRIORITY.index(kind) if kind in PRIORITY else len(PRIORITY), error.get("time", 0.0))

    return min(errors, key=rank)


OOM_TEXTS = ("CUDA out of memory", "OutOfMemoryError", "CUDA error: out of memory")


def shows_oom(log_tail: str) -> bool:
    """Whether a log's tail shows an out-of-memory error (a process that died without an error record)."""
    return any(text in log_tail for text in OOM_TEXTS)


# ---------------------------------------------------------------- the stop rule and its file

def stop_file(experiment_dir: str | Path) -> Path:
    """Written by the blackbox when a search's first trainings all fail alike; read by `bbo run`."""
    return Path(experiment_dir) / NOMAD_DIR / "stop.json"


def write_stop(experiment_dir: str | Path, record: dict) -> None:
    path = stop_file(experiment_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, record)


def read_stop(experiment_dir: str | Path, search: str) -> dict | None:
    """The stop record of this search, or None (a stop file of another search does not count)."""
    stop = read_json(stop_file(experiment_dir))
    return stop if isinstance(stop, dict) and stop.get("search") == search else None


def stop_if_failing(experiment_dir: str | Path, search: str, n: int) -> dict | None:
    """The stop rule (nomad.stop_after_failures = n; 0: never): when the first n trainings of a search
    (answers from earlier runs do not count) all failed with the same kind, the cause is not the points.
    Writes the stop file (the driver stops NOMAD, the search trains nothing more) and returns its record."""
    if n <= 0:
        return None
    trained = [e for e in RunStore(experiment_dir).evaluations() if e.get("search") == search and not e.get("cached")]
    first = trained[:n]
    kinds = {e.get("error_kind") for e in first}
    if len(first) < n or any(e.get("state") != State.FAILED for e in first) or len(kinds) != 1:
        return None
    kind = kinds.pop()
    record = {"search": search, "kind": kind, "time": time.time(),
              "message": f"the first {n} evaluations all failed with {kind} ({first[-1].get('reason')})",
              "fix": fix_for(kind)}
    write_stop(experiment_dir, record)
    return record


# ---------------------------------------------------------------- the budget of a plain `nomad`

def budget_stop(search: str, budget: int, used: int) -> dict:
    """The stop record of a search run by a plain `nomad` (no driver counts the budget for it) that asks for
    a training past nomad.budget: the blackbox writes it like the fail-fast one, so that the search's further
    new points are answered at once, untrained (blackbox/blocks.py)."""
    return {"search": search, "kind": Kind.BUDGET.value, "time": time.time(),
            "message": f"nomad.budget={budget} is used ({used} evaluations count against it)",
            "fix": fix_for(Kind.BUDGET)}


def refused_file(experiment_dir: str | Path) -> Path:
    """The points refused for the budget, one per line: NOMAD's cache holds them as failed, but nothing was
    run; the next `bbo.nomad` (and so `bbo run`) removes them from the cache, so NOMAD asks them again."""
    return Path(experiment_dir) / NOMAD_DIR / "refused.txt"


def note_refused(experiment_dir: str | Path, points: list[list]) -> None:
    path = refused_file(experiment_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.writelines(point_line(p) + "\n" for p in points)
