"""Evaluate points: reuse a finished run, or train (accelerate launch) and evaluate it.

Heavy libraries (torch, transformers) are never imported here: they live in the
child processes, so answering an already-evaluated point costs a Python start.
"""
from __future__ import annotations

import importlib.metadata
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from bbo.config import ExperimentConfig
from bbo.store import RunStore, read_json, run_id, write_json

REPO_ROOT = Path(__file__).resolve().parent.parent
TRAIN_SCRIPT = REPO_ROOT / "blackbox" / "train.py"
PACKAGES = ["torch", "transformers", "peft", "accelerate", "datasets", "lm_eval", "PyNomadBBO", "pandas"]

_children: set[subprocess.Popen] = set()  # live child process groups, killed on SIGTERM/SIGINT
_children_lock = threading.Lock()


class EvalFailure(Exception):
    """A point whose evaluation failed; `kind` says how (oom, diverged, timeout, crash, error, metrics)."""

    def __init__(self, kind: str, message: str, log_tail: str | None = None):
        super().__init__(message)
        self.kind, self.log_tail = kind, log_tail


@dataclass
class Outcome:
    run_id: str
    state: str  # ok | failed
    cached: bool
    hp: dict
    metrics: dict = field(default_factory=dict)
    outputs: list[float] | None = None  # in BB_OUTPUT_TYPE order
    reason: str | None = None

    def line(self) -> str:
        """The line NOMAD reads: numbers, or FAILED (NOMAD then marks only this point as failed)."""
        if self.state != "ok" or self.outputs is None:
            return "FAILED"
        return " ".join(f"{v:.10g}" for v in self.outputs)


# ---------------------------------------------------------------- one point

def evaluate(config: ExperimentConfig, hp: dict, point: list | None = None, *, source: str = "nomad",
             retry_failed: bool = False, gpus: list[int] | None = None) -> Outcome:
    """The answer for one point: stored if this run id finished before, else trained now."""
    store = RunStore(config.dir)
    fingerprint = config.fingerprint()
    rid = run_id(hp, fingerprint)
    with store.lock(rid):  # a second process asking for the same point waits here, then reuses
        done = store.finished(rid)
        if done and (done["state"] == "ok" or not retry_failed):
            outcome = _stored_outcome(config, store, rid, hp, done)
        else:
            outcome = _run(config, store, rid, hp, point, fingerprint, gpus)
    n = store.record({"run_id": rid, "point": point, "hp": hp, "state": outcome.state,
                      "objective": outcome.metrics.get("objective"), "cached": outcome.cached,
                      "source": source, "reason": outcome.reason, "time": time.time()})
    _progress(store, n, outcome)
    return outcome


def evaluate_block(config: ExperimentConfig, points: list[tuple[dict, list | None]], *, source: str = "nomad",
                   retry_failed: bool = False) -> list[Outcome]:
    """Several points at once, each on its own GPUs (launch.parallel slots of launch.num_processes GPUs)."""
    slots = _gpu_slots(config)
    width = max(1, min(len(points), len(slots)))

    def work(i):
        return evaluate(config, points[i][0], points[i][1], source=source, retry_failed=retry_failed,
                        gpus=slots[i % len(slots)])

    if width == 1:
        return [work(i) for i in range(len(points))]
    with ThreadPoolExecutor(max_workers=width) as pool:  # points beyond the slots wait for a free one
        return list(pool.map(work, range(len(points))))


def _stored_outcome(config, store, rid, hp, status) -> Outcome:
    if status["state"] != "ok":
        return Outcome(rid, "failed", True, hp, reason=status.get("reason"))
    metrics = store.metrics(rid)
    try:
        outputs = _outputs(config, metrics)
    except EvalFailure as e:  # a stored run that lacks an output this config asks for
        return Outcome(rid, "failed", True, hp, metrics, reason=str(e))
    return Outcome(rid, "ok", True, hp, metrics, outputs)


def _outputs(config: ExperimentConfig, metrics: dict) -> list[float]:
    values = []
    for name in config.objective.outputs:
        value = metrics.get(name)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise EvalFailure("metrics", f"output {name} is missing or not finite ({value!r})")
        values.append(float(value))
    return values


def _run(config, store, rid, hp, point, fingerprint, gpus) -> Outcome:
    run_dir = store.begin(rid, {"run_id": rid, "hp": hp, "point": point, "experiment": config.name,
                                "fixed": fingerprint})
    write_json(run_dir / "provenance.json", _provenance(config))
    write_json(run_dir / "spec.json", _spec(config, rid, hp))
    timeout = config.launch.timeout_minutes
    deadline = time.time() + timeout * 60 if timeout else None
    t0 = time.time()
    try:
        metrics = _train(config, run_dir, gpus, deadline)
        if config.objective.needs_mmlu:
            metrics.update(_mmlu(config, run_dir, gpus, deadline))
            metrics["eval_seconds"] = metrics.get("eval_seconds", 0.0) + metrics.get("mmlu_seconds", 0.0)
        metrics["objective"] = _objective(config, metrics)
        metrics["wall_seconds"] = time.time() - t0
        outputs = _outputs(config, metrics)
    except EvalFailure as e:
        store.finish(rid, "failed", reason=str(e), error_kind=e.kind, log_tail=e.log_tail)
        return Outcome(rid, "failed", False, hp, reason=f"{e.kind}: {e}")
    store.finish(rid, "ok", metrics=metrics)
    return Outcome(rid, "ok", False, hp, metrics, outputs)


def _objective(config, metrics) -> float:
    try:
        value = config.objective.to_objective(metrics)
    except (KeyError, TypeError, ValueError):
        raise EvalFailure("metrics", f"objective metric {config.objective.metric} missing") from None
    if not math.isfinite(value):
        raise EvalFailure("metrics", f"objective {config.objective.metric} is not finite ({value})")
    return value


# ---------------------------------------------------------------- child processes

def _spec(config: ExperimentConfig, rid: str, hp: dict) -> dict:
    """What train.py needs, with every path resolved: the run folder alone reproduces the run."""
    cfg = config.to_dict()
    cfg["model"]["path"] = config.resolve(config.model.path)
    for source in cfg["data"]["sources"]:
        source["path"] = config.resolve(source["path"])
    return {"run_id": rid, "hp": hp, "model": cfg["model"], "data": cfg["data"], "lora": cfg["lora"],
            "train": cfg["train"], "objective": cfg["objective"], "cache_dir": str(config.dir / "cache")}


def _launch_command(config: ExperimentConfig, run_dir: Path) -> list[str]:
    n = config.launch.num_processes
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(n), "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port())]
    if n > 1:
        cmd.append("--multi_gpu")  # on CPU too: N real processes with gloo (`--cpu` would run only one)
    return cmd + list(config.launch.accelerate_args) + [str(TRAIN_SCRIPT), str(run_dir)]


def _train(config, run_dir: Path, gpus, deadline) -> dict:
    rc = _run_logged(_launch_command(config, run_dir), run_dir / "train.log", gpus, deadline)
    error = read_json(run_dir / "error.json")
    if rc != 0 or error:
        tail = _tail(run_dir / "train.log")
        if error:
            raise EvalFailure(error.get("kind", "error"), error.get("message", "training failed"), tail)
        raise EvalFailure("crash", _describe_exit(rc, "training"), tail)
    result = read_json(run_dir / "train_result.json")
    if not isinstance(result, dict):
        raise EvalFailure("metrics", "training ended but train_result.json is missing or garbage",
                          _tail(run_dir / "train.log"))
    return result


def _mmlu(config, run_dir: Path, gpus, deadline) -> dict:
    mmlu = config.objective.mmlu
    on_gpu = bool(gpus)
    cmd = [sys.executable, "-m", "eval.mmlu", "--model", config.resolve(config.model.path),
           "--adapter", str(run_dir / "adapter"), "--task", mmlu.task, "--num-fewshot", str(mmlu.num_fewshot),
           "--batch-size", str(mmlu.batch_size), "--out", str(run_dir / "mmlu.json"),
           "--device", "cuda" if on_gpu else "cpu",
           "--dtype", ("bfloat16" if on_gpu else "float32") if config.model.dtype == "auto" else config.model.dtype]
    if mmlu.data_dir:
        cmd += ["--data-dir", config.resolve(mmlu.data_dir)]
    if mmlu.limit:
        cmd += ["--limit", str(mmlu.limit)]
    if config.model.trust_remote_code:
        cmd.append("--trust-remote-code")
    t0 = time.time()
    rc = _run_logged(cmd, run_dir / "mmlu.log", gpus[:1] if gpus else gpus, deadline)
    result = read_json(run_dir / "mmlu.json")
    if rc != 0 or not isinstance(result, dict) or not isinstance(result.get("mmlu"), (int, float)):
        raise EvalFailure("eval", _describe_exit(rc, "MMLU evaluation") if rc else "MMLU result missing",
                          _tail(run_dir / "mmlu.log"))
    result["mmlu_seconds"] = time.time() - t0
    return result


def _run_logged(cmd: list[str], log_path: Path, gpus, deadline) -> int:
    """Run a child in its own process group, log to a file, kill the whole group on timeout."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
               BBO_PARENT_PID=str(os.getpid()), TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    if gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, gpus))
    with open(log_path, "ab") as log:
        log.write(f"$ {' '.join(cmd)}\n".encode())
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(REPO_ROOT),
                                start_new_session=True)
        with _children_lock:
            _children.add(proc)
        try:
            remaining = None if deadline is None else max(0.0, deadline - time.time())
            return proc.wait(timeout=remaining)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            raise EvalFailure("timeout", "evaluation exceeded launch.timeout_minutes; process group killed",
                              _tail(log_path)) from None
        finally:
            with _children_lock:
                _children.discard(proc)


def _kill_group(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=5)
            return
        except subprocess.TimeoutExpired:
            continue


def kill_children() -> None:
    """Called on SIGTERM/SIGINT: no training keeps running after the blackbox is gone."""
    with _children_lock:
        procs = list(_children)
    for proc in procs:
        _kill_group(proc)


def _describe_exit(rc: int, what: str) -> str:
    if rc < 0:
        return f"{what} killed by signal {signal.Signals(-rc).name}"
    return f"{what} exited with code {rc}"


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gpu_slots(config: ExperimentConfig) -> list[list[int] | None]:
    """Split the visible GPUs into launch.parallel groups of launch.num_processes; None = CPU."""
    gpus = config.launch.gpus
    if gpus is None:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible is not None:
            gpus = [int(g) for g in visible.split(",") if g.strip().isdigit()]
        else:
            gpus = _count_gpus()
    n = config.launch.num_processes
    if not gpus:
        return [None] * config.launch.parallel
    slots = [gpus[i:i + n] for i in range(0, len(gpus), n) if len(gpus[i:i + n]) == n]
    return slots[: config.launch.parallel] or [gpus[:n]]


def _count_gpus() -> list[int]:
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return list(range(sum(1 for line in out.splitlines() if line.startswith("GPU "))))


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
    best = min((e["objective"] for e in store.evaluations() if e.get("state") == "ok"
                and isinstance(e.get("objective"), (int, float))), default=None)
    hp = outcome.hp
    what = f"r={hp['rank']} alpha={hp['alpha']:g} dropout={hp['dropout']:g} lr={hp['lr']:.3g}"
    if outcome.state == "ok":
        result = f"objective {outcome.metrics['objective']:.6g}"
    else:
        result = f"FAILED ({outcome.reason})"
    tag = " [cached]" if outcome.cached else ""
    best_text = f"{best:.6g}" if best is not None else "-"
    print(f"[eval {n:3d}] {what} -> {result}{tag} | best {best_text}", file=sys.stderr, flush=True)
