"""Where an evaluation's work runs (blackbox/work.py): the one seam between a point and the hardware.

    launch.executor: local    child processes on a GPU slot of this machine (launch.parallel slots)
    launch.executor: slurm    one Slurm job per point, submitted with submitit (slurm: section)

Both have the same interface: `release(run_dir)` before a run folder is begun again (a Slurm
job that a dead search left behind is cancelled, so a point is never trained twice), `run(config,
run_dir, gpus)` -> metrics or EvalFailure, and `stop_all()` when the blackbox is stopped (no job
and no process outlives the search). The blackbox waits for its jobs; NOMAD sees the same
answers as with the local executor. A job writes into the run folder on the shared filesystem;
slurm.json there keeps its id, node and state.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from blackbox.work import begin_stop, ended_by_search, kill_children, tail_of, work
from core.config import ExperimentConfig
from core.failures import EvalFailure, Interrupted, Kind
from core.procs import on_death_of
from core.store import read_json, write_json

SLURM_FILE = "slurm.json"
RESULT_GRACE_SECONDS = 30  # a shared filesystem may show a job's result file a little after the job ended
ENDED_WITHOUT_RESULT = {"CANCELLED", "TIMEOUT", "FAILED", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY", "BOOT_FAIL",
                        "DEADLINE"}  # states after which no result file is coming: a short grace only


class LocalExecutor:
    def release(self, run_dir: Path) -> None:
        pass  # a dead blackbox's children died with their process group

    def run(self, config: ExperimentConfig, run_dir: Path, gpus: list[str] | None, task=work,
            record: str = SLURM_FILE) -> dict:
        return task(config, run_dir, gpus)


class JobWork:
    """What a Slurm job runs: `work` in the run folder. Checkpointable: a preempted job is requeued by
    submitit and starts the evaluation again (a timed-out one is not: it is a failed point).
    task: work, or another module-level function of the same signature (work.finalist_work)."""

    def __init__(self, task=work):
        self.task = task

    def __call__(self, config: ExperimentConfig, run_dir: str) -> dict:
        # the driver's pid names a process of the submitting host, not of this node: here the search's stop
        # shows as this job's cancellation, which the blackbox that submitted it sees (SlurmExecutor.run)
        os.environ.pop("BBO_DRIVER_PID", None)
        try:
            metrics = self.task(config, Path(run_dir), job_gpus())
        except EvalFailure as e:  # returned, not raised: submitit would keep only its traceback text
            return {"failure": {"kind": e.kind.value, "message": str(e), "log_tail": e.log_tail},
                    "node": socket.gethostname()}
        return {"metrics": metrics, "node": socket.gethostname()}

    def checkpoint(self, *args, **kwargs):
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def job_gpus() -> list[str] | None:
    """The GPUs Slurm gave this job (its CUDA_VISIBLE_DEVICES), so that MMLU runs data-parallel over all of
    them as on a local slot; None when Slurm set none (a CPU job: the children see what the job sees)."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    return [entry.strip() for entry in value.split(",") if entry.strip()]


class SlurmExecutor:
    def __init__(self, config: ExperimentConfig):
        self.config = config

    def _submitit(self, run_dir: Path):
        import submitit

        slurm, launch = self.config.slurm, self.config.launch
        gpus = slurm.gpus_per_job
        if gpus is None:  # as launch.device says: auto = GPUs when the partition has any, as torch decides locally
            wants = launch.device == "cuda" or (launch.device == "auto" and partition_has_gpus(slurm.partition))
            gpus = launch.num_processes if wants else 0
        executor = submitit.SlurmExecutor(folder=self.config.dir / "slurm" / "%j", max_num_timeout=0)
        params = {"job_name": f"bbo-{self.config.name}", "time": slurm.time_minutes, "nodes": 1,
                  # submitit's warning signal before the time limit: 90 s, less for a short limit
                  "signal_delay_s": max(10, min(90, slurm.time_minutes * 6)),
                  "ntasks_per_node": 1, "comment": run_dir.name, "setup": list(slurm.setup),
                  "additional_parameters": slurm.sbatch_options()}
        params.update({k: v for k, v in {"partition": slurm.partition, "account": slurm.account, "qos": slurm.qos,
                                         "cpus_per_task": slurm.cpus_per_job,
                                         "mem": f"{int(slurm.mem_gb * 1024)}M" if slurm.mem_gb else None,
                                         "gpus_per_node": gpus or None}.items() if v is not None})
        executor.update_parameters(**params)
        return executor

    def release(self, run_dir: Path) -> None:
        """A job recorded in this run folder that is still queued or running belongs to a search that died:
        cancel it before the point is trained again."""
        record = read_json(run_dir / SLURM_FILE)
        job_id = record.get("job_id") if isinstance(record, dict) else None
        if job_id and job_state(job_id)[0]:
            scancel(job_id)
            deadline = time.time() + 120
            while job_state(job_id)[0] and time.time() < deadline:
                time.sleep(1)

    def run(self, config: ExperimentConfig, run_dir: Path, gpus, task=work, record: str = SLURM_FILE) -> dict:
        """record: the file of the job's id, node and state (another than slurm.json for a finalist's
        MMLU job, so the training job's record stays)."""
        try:
            job = self._submitit(run_dir).submit(JobWork(task), config, str(run_dir))
        except Exception as e:  # noqa: BLE001 - sbatch refused (a wrong partition, account, limit): say what it said
            said = [line for line in str(e).splitlines() if "error" in line.lower()] or str(e).splitlines() or [""]
            raise EvalFailure(Kind.SLURM, f"sbatch refused the job: {said[-1].strip()}") from None
        record_file = run_dir / record
        record = {"job_id": str(job.job_id), "state": "PENDING", "node": None, "submitted": time.time()}
        write_json(record_file, record)
        with _jobs_lock:
            _jobs.add(str(job.job_id))
        try:
            outcome, result, state, node = _wait(job, config.slurm.poll_seconds)
        finally:
            with _jobs_lock:
                _jobs.discard(str(job.job_id))
        if ended_by_search(0 if outcome == "success" and "metrics" in result else 1):
            raise Interrupted()  # the search was stopped or died and cancelled this job: nothing to say about the point
        if outcome == "success":
            node = result.get("node") or node
        state = (state or "UNKNOWN").split()[0]
        write_json(record_file, dict(record, state=state, node=node, ended=time.time()))
        if outcome == "success" and "metrics" in result:
            return result["metrics"]
        where = f" on {node}" if node else ""
        if outcome == "success" and state not in ENDED_WITHOUT_RESULT:  # the work itself failed: its own kind
            failure = result["failure"]
            raise EvalFailure(failure["kind"], failure["message"], failure.get("log_tail"))
        # Slurm ended it (cancelled, out of time, node failure): the Slurm state is the reason
        if outcome == "success":
            detail = result["failure"]["message"]
        else:  # submitit's error text (its last line), or nothing at all
            detail = str(result).strip().splitlines()[-1] if result else "no result"
        if state == "TIMEOUT" or "timed-out" in str(result):
            raise EvalFailure(Kind.TIMEOUT, f"Slurm job {job.job_id} reached slurm.time_minutes={self.config.slurm.time_minutes} "
                                         f"({state}{where}: {detail})", tail_of(job.paths.stderr) or str(result)[-2000:])
        raise EvalFailure(Kind.SLURM, f"Slurm job {job.job_id} {state}{where} ({detail})",
                          tail_of(job.paths.stderr) or str(result)[-2000:])


def _wait(job, poll: float) -> tuple[str, object, str, str | None]:
    """(outcome "success" | "error" | "gone", result, last Slurm state, node) once the job has ended.

    submitit learns states from sacct, which a cluster without accounting lacks; squeue and
    scontrol say whether the job is still there, and the result file says how it ended."""
    state, node, gone_since = "PENDING", None, None
    while True:
        if job.paths.result_pickle.exists():
            from submitit.core.utils import pickle_load

            outcome, result = pickle_load(job.paths.result_pickle)
            for _ in range(30):  # the function returned; the job's final state comes a moment later
                active, state_now, node_now = job_state(job.job_id)
                state, node = state_now or state, node_now or node
                if not active:
                    break
                time.sleep(1)
            return outcome, result, state, node
        active, state_now, node_now = job_state(job.job_id)
        state, node = state_now or state, node_now or node
        if active:
            gone_since = None
        elif gone_since is None:
            gone_since = time.time()
        elif time.time() - gone_since > (3 if (state or "").split()[0] in ENDED_WITHOUT_RESULT else RESULT_GRACE_SECONDS):
            return "gone", None, state, node
        time.sleep(poll if active else 1)


# ---------------------------------------------------------------- Slurm commands

ACTIVE = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_HOLD",
          "REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT"}


def job_state(job_id: str) -> tuple[bool, str | None, str | None]:
    """(still queued or running, state, node) from squeue, else scontrol, else sacct; (False, None, None)
    when Slurm no longer knows the job."""
    out = _slurm(["squeue", "-h", "-j", str(job_id), "-o", "%T|%N"])
    if out:
        state, _, node = out.splitlines()[0].partition("|")
        return state in ACTIVE, state, node or None
    out = _slurm(["scontrol", "show", "job", "-o", str(job_id)])
    if out:
        state = re.search(r"JobState=(\S+)", out)
        node = re.search(r"\bNodeList=(\S+)", out)
        state = state.group(1) if state else None
        return state in ACTIVE, state, node.group(1) if node and node.group(1) != "(null)" else None
    out = _slurm(["sacct", "-n", "-X", "-P", "-j", str(job_id), "-o", "State,NodeList"])
    if out:
        state, _, node = out.splitlines()[0].partition("|")
        state = state.split()[0] if state else None
        return state in ACTIVE, state, node or None
    return False, None, None


def partition_has_gpus(partition: str | None) -> bool:
    """Whether the nodes of the partition (default: all) offer GPUs as a generic resource (sinfo %G)."""
    out = _slurm(["sinfo", "-h", "-o", "%G"] + (["-p", partition] if partition else []))
    return "gpu" in out


def scancel(job_id: str) -> None:
    _slurm(["scancel", str(job_id)])


def _slurm(cmd: list[str]) -> str:
    """A Slurm command's output, or "" when it fails (an unknown job id, no accounting)."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return proc.stdout.strip() if proc.returncode == 0 else ""


# ---------------------------------------------------------------- the seam

_jobs: set[str] = set()  # Slurm jobs this blackbox is waiting for
_jobs_lock = threading.Lock()


def executor_for(config: ExperimentConfig):
    return SlurmExecutor(config) if config.launch.executor == "slurm" else LocalExecutor()


def stop_all() -> None:
    """The blackbox is stopped (SIGTERM/SIGINT, or its search died): cancel its Slurm jobs, kill its children."""
    begin_stop()  # the jobs cancelled here end as interrupted, not as failed points
    with _jobs_lock:
        jobs = list(_jobs)
    for job_id in jobs:
        scancel(job_id)
    kill_children()


def stop_with_search() -> None:
    """In a process that trains or measures for a search (the blackbox, the finalists, the baseline): a
    SIGTERM or SIGINT, or the search's driver gone (BBO_DRIVER_PID, even SIGKILLed), stops every child and
    Slurm job it started, then this process."""
    def stop(signum, frame):  # the user, NOMAD or bbo stopped us: take the children (or jobs) down too
        stop_all()
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if os.environ.get("BBO_DRIVER_PID"):
        on_death_of(int(os.environ["BBO_DRIVER_PID"]), orphaned)


def orphaned() -> None:
    """What a process of a search does when what it serves is gone: stop its children and jobs, exit at once."""
    stop_all()
    os._exit(1)
