"""Run folders: the truth about every evaluated point, and the one way files are written there.

    experiments/<name>/runs/<run id>/
        params.json        decoded hyperparameters, NOMAD point, fingerprint     RunStore.begin
        status.json        {"state": State, "reason", "error_kind", ...}; last  RunStore.begin / finish
        metrics.json       every measured number (objective, val_loss, mmlu...)  RunStore.finish
        provenance.json    package versions, git commit, host, command           blackbox/evaluate.py
        spec.json          what training needs, every path resolved              blackbox/evaluate.py
        train_result.json, adapter/, curve.json, error*.json                     blackbox/train.py
        mmlu.json                                                                eval/mmlu.py
        train.log, mmlu.log                                                      the child processes' output
    experiments/<name>/evaluations.jsonl   one line per answer the blackbox gave   RunStore.record

RunStore owns the folder's life (begin, finish, lock, record); every JSON file in it, whoever
writes it, goes through write_json (temp file + rename: a reader never sees half a file).
A run id is derived from the hyperparameters and the experiment's fixed settings,
so the same point asked twice, by NOMAD or by hand, maps to the same folder.
A lock per run id makes two processes asking for the same point train it once; a folder
left in state "running" by a dead process is detected (its lock is free) and redone.
"""
from __future__ import annotations

import enum
import fcntl
import hashlib
import json
import os
import shutil
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


class State(str, enum.Enum):
    """How a run stands: status.json's "state", stored as the plain string ("ok")."""

    RUNNING = "running"  # begun, not finished: a live run holds its lock; a dead one is redone
    OK = "ok"  # finished with every output the config asks for
    FAILED = "failed"  # finished without them: error_kind says how (core/failures.py)
    PRUNED = "pruned"  # stopped early as hopeless by the pruning rule (core/pruning.py); no adapter
    # Never written as status.json's "state": what readers call a folder no live process will finish.
    # INTERRUPTED: "running" (or no status yet) with its lock free, its process died (`bbo status`; the
    # "previous" of the attempt that redoes it). INCOMPLETE: no state recorded at all (results table, export).
    INTERRUPTED = "interrupted"
    INCOMPLETE = "incomplete"

    def __str__(self) -> str:
        return self.value


FINISHED = (State.OK, State.FAILED, State.PRUNED)  # what finish() may record


def run_id(hp: dict, fingerprint: dict, seed: int | None = None) -> str:
    """Readable prefix from validated numbers, then a hash of everything that matters.

    seed: a confirmation run's training seed, shown as -s<seed> (the hash has it already, in
    the fingerprint); None for the search's own runs.
    """
    blob = json.dumps({"hp": hp, "fixed": fingerprint}, sort_keys=True, default=str)
    digest = hashlib.sha256(blob.encode()).hexdigest()[:10]
    tag = f"-s{seed}" if seed is not None else ""
    return f"r{int(hp['rank'])}-a{hp['alpha']:g}-d{hp['dropout']:g}-lr{hp['lr']:.3g}{tag}-{digest}"


def write_json(path: Path, data) -> None:
    """Atomic: readers see the old file or the new one, never half of one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, sort_keys=False, default=str)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_json(path: Path):
    """The parsed file, or None if it is missing or not valid JSON (a crash can leave either)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


@contextmanager
def file_lock(path: Path):
    """Exclusive across processes while held; released by the kernel if the holder dies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class RunStore:
    def __init__(self, experiment_dir: str | Path):
        self.experiment_dir = Path(experiment_dir)
        self.root = self.experiment_dir / "runs"
        self.index_path = self.experiment_dir / "evaluations.jsonl"

    def run_dir(self, rid: str) -> Path:
        return self.root / rid

    @contextmanager
    def lock(self, rid: str):
        """Exclusive per run id, across processes; released by the kernel if the holder dies."""
        with file_lock(self.root / f".{rid}.lock"):
            yield

    @contextmanager
    def try_lock(self, rid: str):
        """Like lock, without waiting: yields False (and holds nothing) while another process holds it."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / f".{rid}.lock", "w") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def lock_held(self, rid: str) -> bool:
        """Whether a live process holds the run's lock now (a run in state "running" whose lock is free
        was left by a process that died). Never blocks; never creates the lock file."""
        try:
            f = open(self.root / f".{rid}.lock")
        except OSError:
            return False
        with f:
            try:
                fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(f, fcntl.LOCK_UN)
            return False

    def status(self, rid: str) -> dict | None:
        return read_json(self.run_dir(rid) / "status.json")

    def finished(self, rid: str) -> dict | None:
        """The stored outcome of a run that ended (ok or failed), or None.

        An "ok" or "pruned" run needs a readable metrics.json too; anything else (no status, state
        "running" while we hold the lock, garbage files) is an incomplete run.
        """
        status = self.status(rid)
        if not status or status.get("state") not in FINISHED:
            return None
        if status["state"] != State.FAILED and not isinstance(read_json(self.run_dir(rid) / "metrics.json"), dict):
            return None
        return status

    def begin(self, rid: str, params: dict, keep: list[str] | tuple[str, ...] = ()) -> Path:
        """Start (or restart) a run: call with the lock held. Moves aside any earlier attempt, less the
        entries named in keep (what an interrupted attempt finished: blackbox/work.py kept_phase_files),
        which move into the new attempt's folder."""
        run_dir = self.run_dir(rid)
        attempt = 1
        old = self.status(rid)
        aside = None
        if run_dir.exists():
            attempt = (old or {}).get("attempt", 0) + 1
            aside = self.root / "_incomplete" / f"{rid}.{attempt - 1}.{int(time.time())}"
            aside.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(run_dir), str(aside))
        run_dir.mkdir(parents=True)
        for name in keep if aside else ():
            shutil.move(str(aside / name), str(run_dir / name))
        write_json(run_dir / "params.json", params)
        previous = (old or {}).get("state")
        status = {"state": State.RUNNING.value, "attempt": attempt,
                  "previous": State.INTERRUPTED.value if previous == State.RUNNING else previous,
                  "started": time.time(), "host": socket.gethostname(), "pid": os.getpid()}
        if keep and aside:
            status["kept"] = list(keep)  # from the interrupted attempt: its phases are not run again
        write_json(run_dir / "status.json", status)
        return run_dir

    def finish(self, rid: str, state: State, *, metrics: dict | None = None,
               reason: str | None = None, error_kind: str | None = None, log_tail: str | None = None) -> dict:
        """Record the outcome: metrics first, status last, so "ok" always has its metrics."""
        if state not in FINISHED:
            raise ValueError(f"finish: state must be ok, failed or pruned, got {state}")
        run_dir = self.run_dir(rid)
        if metrics is not None:
            write_json(run_dir / "metrics.json", metrics)
        status = dict(self.status(rid) or {})
        status.update(state=State(state).value, finished=time.time(), reason=reason, error_kind=error_kind)
        if log_tail:
            status["log_tail"] = log_tail
        write_json(run_dir / "status.json", status)
        return status

    def metrics(self, rid: str) -> dict | None:
        return read_json(self.run_dir(rid) / "metrics.json")

    def record(self, entry: dict) -> int:
        """Append one answer to evaluations.jsonl under a lock; returns its 1-based order."""
        self.experiment_dir.mkdir(parents=True, exist_ok=True)
        with open(self.experiment_dir / ".evaluations.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            text = self.index_path.read_text() if self.index_path.exists() else ""
            n = len(_parse_lines(text)) + 1
            torn = text and not text.endswith("\n")  # a crash mid-write: keep the loss to that one line
            with open(self.index_path, "a") as f:
                f.write(("\n" if torn else "") + json.dumps(dict(entry, n=n), default=str) + "\n")
                f.flush()
                os.fsync(f.fileno())
        return n

    def evaluations(self) -> list[dict]:
        """Every answer so far, in order; a torn last line (crash mid-write) is skipped."""
        if not self.index_path.exists():
            return []
        return _parse_lines(self.index_path.read_text())

    def run_ids(self) -> list[str]:
        if not self.root.exists():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))


@dataclass
class BudgetUse:
    used: int  # finished runs that count against nomad.budget
    by_hand: int  # finished runs of points only ever asked by hand: not counted
    screened: int = 0  # finished runs of the low-fidelity start NOMAD never asked (bbo/screen.py): not counted


def budget_use(experiment_dir: str | Path, fingerprint: dict, count_failed: bool = False) -> BudgetUse:
    """How much of nomad.budget the experiment has used: one count for `bbo status` and the blackbox's
    refusal under a plain `nomad` (blackbox/blocks.py), the same that NOMAD's cache gives a resumed search.

    Counted: run folders finished ok or pruned (failed too with nomad.count_failed) of this fingerprint
    (ExperimentConfig.fingerprint(): runs of other settings belong to another problem) and of points a search
    asked (a point file, as NOMAD or its model step asks: an answer in evaluations.jsonl whose source is not
    "hand" or "screen"; a folder with no answer recorded counts too). Not counted: points only ever asked by hand (`python -m blackbox
    --rank ...`: NOMAD never saw them), points of the low-fidelity start that NOMAD never asked (bbo/screen.py),
    confirmation runs (`bbo confirm`), running or interrupted runs, and
    the points a stopped search answered without training (no folder). The finalists' MMLU adds no folder.
    """
    store = RunStore(experiment_dir)
    sources: dict[str, set] = {}
    for entry in store.evaluations():
        sources.setdefault(entry.get("run_id"), set()).add(entry.get("source"))
    states = {State.OK, State.PRUNED} | ({State.FAILED} if count_failed else set())
    use = BudgetUse(0, 0)
    for rid in store.run_ids():
        done = store.finished(rid)
        if not done or done["state"] not in states:
            continue
        params = read_json(store.run_dir(rid) / "params.json") or {}
        if params.get("confirms") or not isinstance(params.get("hp"), dict):
            continue
        if run_id(params["hp"], fingerprint) != rid:  # another problem's run (other settings, data, model)
            continue
        if sources.get(rid) == {"hand"}:
            use.by_hand += 1
        elif sources.get(rid) and sources[rid] <= {"hand", "screen"}:
            use.screened += 1
        else:
            use.used += 1
    return use


def _parse_lines(text: str) -> list[dict]:
    """The JSON lines of the index; a torn one is skipped."""
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out
