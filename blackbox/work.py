"""The part of an evaluation that needs the GPUs: train (accelerate launch blackbox/train.py), then MMLU
and ROUGE when the objective names them.

`work` runs it in the point's run folder and returns the metrics, or raises EvalFailure with
the kind of failure (core/failures.py). The executor (blackbox/executors.py) decides where: in child processes on
a GPU slot of this machine, or inside a Slurm job. Every child runs in its own process group,
logs to the run folder, and is killed with its whole group on timeout or when the blackbox stops.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from core.config import ExperimentConfig
from core.data import chat_template_text
from core.objective import ROUGE_METRICS, VALIDATION_SPLIT
from core.failures import EvalFailure, Interrupted, Kind, kind_of, reported_error, shows_oom
from core.procs import REPO_ROOT, checkout_env, search_alive
from core.progress import PROGRESS_FILE, read_progress
from core.store import read_json, write_json

TRAIN_SCRIPT = REPO_ROOT / "blackbox" / "train.py"

_children: set[subprocess.Popen] = set()  # live child process groups, killed on SIGTERM/SIGINT
_children_lock = threading.Lock()
_stopping = threading.Event()  # set before the children are killed: a child that ends now was ended by us
STOP_GRACE_SECONDS = 2.0  # a failed child waits this long for its search's stop to show (ended_by_search)


def work(config: ExperimentConfig, run_dir: Path, gpus: list[str] | None) -> dict:
    """Train, then MMLU and ROUGE when the objective needs them; gpus: the CUDA_VISIBLE_DEVICES of this evaluation
    (None: leave it as it is, e.g. what Slurm gave the job). Raises EvalFailure."""
    for stale in [*run_dir.glob("error*.json"), run_dir / PROGRESS_FILE]:
        stale.unlink(missing_ok=True)  # a requeued Slurm job starts again in the same folder
    timeout = config.launch.timeout_minutes
    deadline = time.time() + timeout * 60 if timeout else None
    # a phase whose result is complete in the folder is not run again: one an interrupted attempt finished
    # (kept_phase_files), or a requeued Slurm job's
    metrics = completed(run_dir / "train_result.json", DONE_KEY["train"]) or _train(config, run_dir, gpus, deadline)
    if config.objective.needs_mmlu and "pruned_at" not in metrics:  # a pruned run is not worth its MMLU
        # the search's cheap MMLU when search_limit is set; finalists get mmlu.limit after
        metrics.update(_mmlu(config, run_dir, gpus, deadline, config.objective.mmlu.search_questions))
        metrics["eval_seconds"] = metrics.get("eval_seconds", 0.0) + metrics.get("mmlu_seconds", 0.0)
    if config.objective.needs_rouge and "pruned_at" not in metrics:  # nor its generations
        metrics.update(_rouge(run_dir, gpus, deadline))
        metrics["eval_seconds"] = metrics.get("eval_seconds", 0.0) + metrics["rouge_seconds"]
    return metrics


# What each phase leaves in the run folder (its result file first), and the key its result has once complete:
# train.py writes train_result.json last, whole; _mmlu and _rouge add their *_seconds key after the child
# wrote its file, so a result without it is of a child that was cut off.
PHASE_FILES = {"train": ("train_result.json", "adapter", "curve.json", "train.log"),
               "mmlu": ("mmlu.json", "mmlu.log"), "rouge": ("rouge.json", "generations.jsonl", "rouge.log")}
DONE_KEY = {"train": "train_seconds", "mmlu": "mmlu_seconds", "rouge": "rouge_seconds"}


def train_spec(config: ExperimentConfig, rid: str, hp: dict, pruning: dict | None = None) -> dict:
    """What train.py needs, with every path resolved: the run folder alone reproduces the run.
    pruning: the rule this run is held to (core/pruning.py rule_for), or None."""
    cfg = config.to_dict()
    cfg["model"]["path"] = config.resolve(config.model.path)
    for source in cfg["data"]["sources"]:
        source["path"] = config.resolve(source["path"])
    cfg["data"]["chat_template"] = chat_template_text(config.data.chat_template, config.dir)  # the text itself
    if cfg["objective"]["generation"]["data"] != VALIDATION_SPLIT:  # ROUGE's held-out pairs from a file
        cfg["objective"]["generation"]["data"] = config.resolve(cfg["objective"]["generation"]["data"])
    return {"run_id": rid, "hp": hp, "model": cfg["model"], "data": cfg["data"], "lora": cfg["lora"],
            "train": cfg["train"], "objective": cfg["objective"], "cache_dir": str(config.dir / "cache"),
            "pruning": pruning, "experiment": {"name": config.name, "dir": str(config.dir)},
            "launch": {"ddp_timeout_minutes": config.launch.ddp_timeout_minutes}}


def completed(result_file: Path, done_key: str, **expected) -> dict | None:
    """A phase's result file when it is complete (done_key, its DONE_KEY, and expected values such as the MMLU
    limit), else None."""
    result = read_json(result_file)
    if not isinstance(result, dict) or done_key not in result:
        return None
    return result if all(result.get(k) == v for k, v in expected.items()) else None


def kept_phase_files(run_dir: Path, spec: dict) -> list[str]:
    """The files of the phases an interrupted attempt of the same spec finished: the next attempt keeps them
    and runs only what is missing (a finished training is never trained again; MMLU or ROUGE then runs)."""
    if read_json(run_dir / "spec.json") != json.loads(json.dumps(spec, default=str)):
        return []  # another spec (other settings, another pruning rule): everything again
    train = completed(run_dir / "train_result.json", DONE_KEY["train"])
    if train is None or ("pruned_at" not in train and not (run_dir / "adapter").is_dir()):
        return []
    phases = ["train"] + [p for p in ("mmlu", "rouge") if completed(run_dir / PHASE_FILES[p][0], DONE_KEY[p])]
    return [name for phase in phases for name in PHASE_FILES[phase] if (run_dir / name).exists()]


def accelerate_command(num_processes: int) -> list[str]:
    """`accelerate launch` for num_processes processes on one machine, each on its own GPU (or CPU), with a
    rendezvous that cannot race another evaluation's for a port (blackbox/launch.py: torchrun standalone)."""
    cmd = [sys.executable, "-m", "blackbox.launch", "--num_processes", str(num_processes),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    if num_processes > 1:
        cmd.append("--multi_gpu")  # on CPU too: N real processes with gloo (`--cpu` would run only one)
    return cmd


def launch_command(config: ExperimentConfig, run_dir: Path) -> tuple[list[str], dict[str, str]]:
    """(command, environment it adds) of a run's training. Several processes: `accelerate launch` (accelerate_command).
    One process, with no launch.accelerate_args: the training script itself, with the environment that
    `accelerate launch --num_processes 1 --mixed_precision no --dynamo_backend no` gives it (its simple
    launcher), without the launcher's own Python process and imports (3-4 s of every evaluation)."""
    if config.launch.num_processes == 1 and not config.launch.accelerate_args:
        return [sys.executable, str(TRAIN_SCRIPT), str(run_dir)], SINGLE_PROCESS_ENV | {
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS") or "1"}  # the launcher's default
    return (accelerate_command(config.launch.num_processes) + list(config.launch.accelerate_args)
            + [str(TRAIN_SCRIPT), str(run_dir)]), {}


# What accelerate's simple launcher (accelerate.utils.launch.prepare_simple_launcher_cmd_env, accelerate 1.x) sets
# for one process on the options accelerate_command passes; the Accelerator in Trainer reads them.
SINGLE_PROCESS_ENV = {"ACCELERATE_USE_CPU": "False", "ACCELERATE_MIXED_PRECISION": "no",
                      "ACCELERATE_DYNAMO_BACKEND": "NO", "ACCELERATE_DYNAMO_MODE": "default",
                      "ACCELERATE_DYNAMO_USE_FULLGRAPH": "False", "ACCELERATE_DYNAMO_USE_DYNAMIC": "False",
                      "ACCELERATE_DYNAMO_USE_REGIONAL_COMPILATION": "False"}


def _train(config, run_dir: Path, gpus, deadline) -> dict:
    cmd, env = launch_command(config, run_dir)
    with progress_bar(run_dir):
        rc = _run_logged(cmd, run_dir / "train.log", gpus, deadline, env)
    errors = [e for e in (read_json(p) for p in sorted(run_dir.glob("error*.json"))) if isinstance(e, dict)]
    if rc != 0 or errors:
        tail = tail_of(run_dir / "train.log")
        if errors:  # the most telling kind; among equals the first to fail
            error = reported_error(errors)
            where = f" (rank {error['rank']})" if error.get("rank") else ""
            kind = kind_of(error.get("kind")) or Kind.ERROR
            raise EvalFailure(kind, error.get("message", "training failed") + where, tail)
        if shows_oom(tail_of(run_dir / "train.log", 400)):  # e.g. OOM while loading
            raise EvalFailure(Kind.OOM, _describe_exit(rc, "training") + " after running out of GPU memory", tail)
        raise EvalFailure(Kind.CRASH, _describe_exit(rc, "training"), tail)
    result = read_json(run_dir / "train_result.json")
    if not isinstance(result, dict):
        raise EvalFailure(Kind.METRICS, "training ended but train_result.json is missing or garbage",
                          tail_of(run_dir / "train.log"))
    return result


@contextmanager
def progress_bar(run_dir: Path, every_seconds: float = 0.5):
    """While the training child runs: a live bar of its progress.json on stderr (steps, loss, ETA),
    only when stderr is a terminal (a log file or NOMAD's pipe gets the one line per evaluation)."""
    if not sys.stderr.isatty():
        yield
        return
    stop = threading.Event()
    thread = threading.Thread(target=_render_progress, args=(run_dir, stop, every_seconds), daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


def _render_progress(run_dir: Path, stop: threading.Event, every_seconds: float) -> None:
    from tqdm import tqdm

    bar = None
    while True:
        stopping = stop.wait(every_seconds)
        record = read_progress(run_dir)
        if record is not None:
            if bar is None:
                bar = tqdm(total=record.get("max_steps") or None, desc=run_dir.name[:28], unit="step",
                           leave=False, dynamic_ncols=True)
            bar.n = record["step"]
            loss = record.get("loss")
            bar.set_postfix_str(f"loss {loss:.4g}" if isinstance(loss, (int, float)) else "", refresh=False)
            bar.refresh()
        if stopping:
            break
    if bar is not None:
        bar.close()


def finalist_work(config: ExperimentConfig, run_dir: Path, gpus: list[str] | None) -> dict:
    """objective.finalists: MMLU of a finished run's kept adapter with mmlu.limit (None = every question),
    into mmlu_full.json; no training. Raises EvalFailure (Kind.ADAPTER when the adapter is gone)."""
    if not (run_dir / "adapter").is_dir():
        raise EvalFailure(Kind.ADAPTER, f"run {run_dir.name} has no adapter (removed, or never kept): "
                                     "its full MMLU cannot be measured")
    timeout = config.launch.timeout_minutes
    deadline = time.time() + timeout * 60 if timeout else None
    return _mmlu(config, run_dir, gpus, deadline, config.objective.mmlu.limit, name="mmlu_full")


def baseline_work(config: ExperimentConfig, folder: Path, gpus: list[str] | None) -> dict:
    """The base model without an adapter, measured like a run (core/baseline.py's folder, its spec.json
    written): validation loss, then MMLU and ROUGE when the search uses them. Raises EvalFailure."""
    timeout = config.launch.timeout_minutes
    deadline = time.time() + timeout * 60 if timeout else None
    cmd = [sys.executable, "-m", "eval.loss", str(folder), "--base", "--out", str(folder / "val_loss.json")]
    (folder / "val_loss.json").unlink(missing_ok=True)
    rc = _run_logged(cmd, folder / "val_loss.log", gpus[:1] if gpus else gpus, deadline)
    metrics = read_json(folder / "val_loss.json")
    if rc != 0 or not isinstance(metrics, dict) or not isinstance(metrics.get("val_loss"), (int, float)):
        kind = Kind.OOM if shows_oom(tail_of(folder / "val_loss.log", 400)) else Kind.EVAL_LOSS
        raise EvalFailure(kind, _describe_exit(rc, "the base model's validation loss") if rc else
                          "the base model's validation loss is missing", tail_of(folder / "val_loss.log"))
    if config.objective.needs_mmlu:
        metrics.update(_mmlu(config, folder, gpus, deadline, config.objective.mmlu.search_questions, base=True))
    if config.objective.needs_rouge:
        metrics.update(_rouge(folder, gpus, deadline, base=True))
    return metrics


def mmlu_command(config: ExperimentConfig, run_dir: Path, gpus: list[str] | None, limit: int | None,
                 name: str = "mmlu", base: bool = False) -> tuple[list[str], list[str] | None]:
    """(command, the GPUs it runs on) of lm-eval for a run's adapter (base: for the base model alone).

    Data-parallel over the evaluation's GPUs (one process per GPU, lm-eval shards the questions and
    only the main process writes <name>.json) when it has several. A 4-bit base runs in one process
    on the first GPU: lm-eval treats a model it did not load itself as rank 0 of 1, so every process
    would score every question on its own and write the same file."""
    mmlu = config.objective.mmlu
    if config.model.quantization and gpus:
        gpus = gpus[:1]
    processes = len(gpus) if gpus else 1
    launcher = accelerate_command(processes) + ["-m"] if processes > 1 else [sys.executable, "-m"]
    cmd = launcher + [
        "eval.mmlu", "--model", config.resolve(config.model.path),
        *([] if base else ["--adapter", str(run_dir / "adapter")]), "--task", mmlu.task, "--num-fewshot", str(mmlu.num_fewshot), "--batch-size", str(mmlu.batch_size),
        "--out", str(run_dir / f"{name}.json"), "--device", "auto", "--dtype", config.model.dtype]
    if config.model.quantization:
        cmd += ["--quantization", config.model.quantization]
    if mmlu.data_dir:
        cmd += ["--data-dir", config.resolve(mmlu.data_dir)]
    if limit:
        cmd += ["--limit", str(limit)]
    if config.model.trust_remote_code:
        cmd.append("--trust-remote-code")
    return cmd, gpus


def _mmlu(config, run_dir: Path, gpus, deadline, limit: int | None, name: str = "mmlu", base: bool = False) -> dict:
    """lm-eval in a child (mmlu_command). Device and dtype are resolved by torch in the child (`auto`).
    <name>.json records the limit (questions per subject, None = all) it was measured with as mmlu_limit."""
    done = completed(run_dir / f"{name}.json", DONE_KEY["mmlu"], mmlu_limit=limit)
    if done:
        return done
    cmd, gpus = mmlu_command(config, run_dir, gpus, limit, name, base)
    processes = len(gpus) if gpus else 1
    t0 = time.time()
    (run_dir / f"{name}.json").unlink(missing_ok=True)  # a result is never one of an earlier attempt
    rc = _run_logged(cmd, run_dir / f"{name}.log", gpus, deadline)
    result = read_json(run_dir / f"{name}.json")
    if rc != 0 or not isinstance(result, dict) or not isinstance(result.get("mmlu"), (int, float)):
        kind = Kind.OOM if shows_oom(tail_of(run_dir / f"{name}.log", 400)) else Kind.EVAL_MMLU
        raise EvalFailure(kind, _describe_exit(rc, "MMLU evaluation") if rc else "MMLU result missing",
                          tail_of(run_dir / f"{name}.log"))
    result["mmlu_seconds"] = time.time() - t0
    result["mmlu_processes"] = processes
    result["mmlu_limit"] = limit
    write_json(run_dir / f"{name}.json", result)
    return result


def _rouge(run_dir: Path, gpus, deadline, base: bool = False) -> dict:
    """Greedy generation + ROUGE in a child (python -m eval.rouge <run dir>: model, adapter, held-out pairs
    and objective.generation from spec.json), one process on the evaluation's first GPU."""
    done = completed(run_dir / "rouge.json", DONE_KEY["rouge"])
    if done:
        return done
    cmd = [sys.executable, "-m", "eval.rouge", str(run_dir), "--out", str(run_dir / "rouge.json"),
           "--generations", str(run_dir / "generations.jsonl")] + ["--base"] * base
    t0 = time.time()
    rc = _run_logged(cmd, run_dir / "rouge.log", gpus[:1] if gpus else gpus, deadline)
    result = read_json(run_dir / "rouge.json")
    if rc != 0 or not isinstance(result, dict) or not all(isinstance(result.get(m), (int, float)) for m in ROUGE_METRICS):
        kind = Kind.OOM if shows_oom(tail_of(run_dir / "rouge.log", 400)) else Kind.EVAL_ROUGE
        raise EvalFailure(kind, _describe_exit(rc, "ROUGE evaluation") if rc else "ROUGE result missing",
                          tail_of(run_dir / "rouge.log"))
    result["rouge_seconds"] = time.time() - t0
    write_json(run_dir / "rouge.json", result)  # complete now (completed(): a resumed attempt keeps it)
    return result


def _run_logged(cmd: list[str], log_path: Path, gpus, deadline, extra_env: dict | None = None) -> int:
    """Run a child in its own process group, log to a file, kill the whole group on timeout."""
    env = checkout_env(BBO_PARENT_PID=str(os.getpid()), TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1",
                       **(extra_env or {}))
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
            rc = proc.wait(timeout=remaining)
            if ended_by_search(rc):  # not a failure of the point: the next run of the search finishes it
                raise Interrupted()
            return rc
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            raise EvalFailure(Kind.TIMEOUT, "evaluation exceeded launch.timeout_minutes; process group killed",
                              tail_of(log_path)) from None
        except BaseException:  # e.g. submitit's preemption signal in a Slurm job: take the training down too
            _kill_group(proc)
            raise
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


def ended_by_search(rc: int) -> bool:
    """Whether a child (or a Slurm job) that ended with rc was ended by its search being stopped, killed or
    cancelled (the blackbox's stop, or the search's driver gone), rather than by itself. The teardown's signal
    can reach a child before the blackbox sees its search die: a child that failed waits STOP_GRACE_SECONDS
    for that before it counts as a failure of the point."""
    if _stopping.is_set():
        return True
    if rc == 0:
        return False
    deadline = time.time() + STOP_GRACE_SECONDS
    while True:
        if _stopping.is_set() or not search_alive():
            return True
        if time.time() >= deadline:
            return False
        time.sleep(0.1)


def begin_stop() -> None:
    """From now on a child or a job that ends was ended by the blackbox's stop (Interrupted), not by itself."""
    _stopping.set()


def kill_children() -> None:
    """Called on SIGTERM/SIGINT: no training keeps running after the blackbox is gone."""
    begin_stop()
    with _children_lock:
        procs = list(_children)
    for proc in procs:
        _kill_group(proc)


def _describe_exit(rc: int, what: str) -> str:
    if rc < 0:
        return f"{what} killed by signal {signal.Signals(-rc).name}"
    return f"{what} exited with code {rc}"


def tail_of(path: Path, lines: int = 30) -> str:
    """The last lines of a log, for a failed point's status ("" when there is no log)."""
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
