"""launch.executor=slurm on a real Slurm (scripts/slurm-local.sh): one job per evaluation, same answers as
local, a cancelled job is a failed point, and a killed search leaves no job behind.

Started here when it is not running and this is root; skipped with the reason otherwise, except under
CI (CI=true), where Slurm must be there: .ci/run starts it.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from bbo.results import load_runs
from conftest import REPO, SEARCH, make_experiment
from conftest import run_module as run

pytestmark = [pytest.mark.slurm, pytest.mark.xdist_group("slurm")]  # one node: one worker (./test.sh)

FAST = SEARCH  # the session's search (conftest.searched) is the local answer to compare with
ON_SLURM = dict(launch={"executor": "slurm", "parallel": 2, "device": "cpu"},
                slurm={"poll_seconds": 1, "time_minutes": 10})


def _up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    proc = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    return proc.returncode == 0 and any(s in proc.stdout for s in ("idle", "mixed", "allocated"))


@pytest.fixture(scope="module", autouse=True)
def slurm():
    if _up():
        return
    reason = None
    if os.geteuid() != 0:
        reason = "Slurm is not running and starting it needs root: sudo bash scripts/slurm-local.sh start"
    else:
        proc = subprocess.run(["bash", str(REPO / "scripts" / "slurm-local.sh"), "start"], capture_output=True,
                              text=True)
        if proc.returncode != 0 or not _up():
            reason = f"scripts/slurm-local.sh start failed: {(proc.stderr or proc.stdout)[-500:]}"
    if reason and os.environ.get("CI"):
        pytest.fail(f"CI must run the Slurm tests: {reason}")
    if reason:
        pytest.skip(reason)


def our_jobs(name="bbo-demo") -> list[str]:
    """Jobs of that name still to run or running; not those completing (a previous test's can linger in CG)."""
    out = subprocess.run(["squeue", "-h", "-n", name, "-t", "PENDING,CONFIGURING,RUNNING,SUSPENDED", "-o", "%i"],
                         capture_output=True, text=True).stdout
    return out.split()


def finished_jobs() -> dict[str, str]:
    """Job id -> state of finished jobs: sacct with accounting, else sacct -c (jobcomp/filetxt, slurm-local.sh)."""
    for cmd in (["sacct", "-n", "-X", "-P", "-o", "JobID,State"], ["sacct", "-c", "-n", "-P", "-o", "JobID,State"]):
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode == 0 and proc.stdout.strip():
            return dict(line.split("|")[:2] for line in proc.stdout.split("\n") if "|" in line)
    return {}


def wait_for(predicate, seconds=120):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(1)
    return False


def test_a_search_on_slurm_runs_every_evaluation_as_a_job_with_the_local_answers(tmp_path, assets, searched):
    on_slurm = make_experiment(tmp_path / "slurm", assets, **FAST, **ON_SLURM)
    proc = run("bbo", "run", str(on_slurm))
    assert proc.returncode == 0, proc.stderr[-3000:]
    df = load_runs(on_slurm)
    assert len(df) == 3 and (df["status"] == "ok").all()
    jobs = df["slurm_job"].tolist()
    assert all(isinstance(j, str) and j.isdigit() for j in jobs) and len(set(jobs)) == 3
    assert set(df["slurm_state"]) == {"COMPLETED"} and df["slurm_node"].notna().all()
    assert wait_for(lambda: all(finished_jobs().get(j) == "COMPLETED" for j in jobs), 60), finished_jobs()
    assert run("bbo", "results", str(on_slurm), "--csv", str(tmp_path / "t.csv")).returncode == 0
    assert "slurm_job,slurm_node,slurm_state" in (tmp_path / "t.csv").read_text().splitlines()[0]

    local, _ = searched  # the same search (FAST is the session search's settings), run here
    here = load_runs(local).set_index("run_id")["objective"]
    there = df.set_index("run_id")["objective"]
    assert sorted(here.index) == sorted(there.index)  # the same points (the executor is not in the run id)
    assert here.loc[there.index].tolist() == pytest.approx(there.tolist(), rel=1e-6)


def test_a_cancelled_job_is_a_failed_point_with_the_slurm_state(tmp_path, assets):
    experiment = make_experiment(tmp_path, assets, name="cancelled", **FAST, **ON_SLURM)  # its jobs: bbo-cancelled
    proc = subprocess.Popen([sys.executable, "-m", "blackbox", "-e", str(experiment), "--rank", "8"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, BBO_FAULT="hang@1"))
    assert wait_for(lambda: len(our_jobs("bbo-cancelled")) == 1), "no job appeared in squeue"
    (job,) = our_jobs("bbo-cancelled")
    time.sleep(3)
    subprocess.run(["scancel", job], check=True)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 1 and out.strip() == "FAILED", err[-2000:]
    (run_dir,) = [p for p in (experiment / "runs").iterdir() if p.is_dir() and not p.name.startswith((".", "_"))]
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "failed" and status["error_kind"] == "slurm"
    assert f"Slurm job {job} CANCELLED" in status["reason"]
    assert json.loads((run_dir / "slurm.json").read_text())["state"] == "CANCELLED"


def test_killing_the_search_cancels_its_jobs_and_a_rerun_trains_the_point_again(tmp_path, assets, searched):
    experiment = make_experiment(tmp_path, assets, name="killed", **FAST, **ON_SLURM)  # its jobs: bbo-killed
    our = lambda: our_jobs("bbo-killed")  # noqa: E731 - not another test's jobs
    search = subprocess.Popen([sys.executable, "-m", "bbo", "run", str(experiment)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, env=dict(os.environ, BBO_FAULT="hang@1"))
    assert wait_for(lambda: len(our()) >= 1), "no job appeared in squeue"
    jobs = our()
    search.send_signal(signal.SIGTERM)
    search.wait(timeout=60)
    assert wait_for(lambda: not our(), 60), f"jobs left behind: {our()}"
    assert wait_for(lambda: all(finished_jobs().get(j, "").startswith("CANCELLED") for j in jobs), 120), (
        jobs, finished_jobs())

    proc = run("bbo", "run", str(experiment), "nomad.budget=1")  # resumes: X0 was cut off, it is trained again
    assert proc.returncode == 0, proc.stderr[-3000:]
    df = load_runs(experiment)
    assert df.loc[df["order"] == 1, "status"].item() == "ok" and df.loc[df["order"] == 1, "attempt"].item() == 2
    (rid,) = df.loc[df["order"] == 1, "run_id"]
    assert json.loads((experiment / "runs" / rid / "status.json").read_text())["previous"] == "interrupted"  # not failed
    local = load_runs(searched[0]).set_index("run_id")["objective"]  # the same point, never interrupted
    assert df.set_index("run_id").loc[rid, "objective"] == pytest.approx(local.loc[rid], rel=1e-6)
    assert not our()


@pytest.mark.slow
def test_a_job_past_its_time_limit_is_a_timeout(tmp_path, assets):
    experiment = make_experiment(tmp_path, assets, **FAST, **dict(ON_SLURM, slurm={"poll_seconds": 1,
                                                                                  "time_minutes": 1}))
    proc = run("blackbox", "-e", str(experiment), "--rank", "8", env={"BBO_FAULT": "hang@1"}, timeout=300)
    assert proc.returncode == 1 and proc.stdout.strip() == "FAILED", proc.stderr[-2000:]
    (run_dir,) = [p for p in (experiment / "runs").iterdir() if p.is_dir() and not p.name.startswith((".", "_"))]
    status = json.loads((run_dir / "status.json").read_text())
    assert status["error_kind"] == "timeout" and "reached slurm.time_minutes=1" in status["reason"]
    assert not our_jobs()


@pytest.mark.slow
def test_a_preempted_job_is_requeued_and_finishes(tmp_path, assets):
    experiment = make_experiment(tmp_path, assets, **dict(FAST, train={"max_steps": 30, "logging_steps": 10}),
                                 **dict(ON_SLURM, slurm={"poll_seconds": 1, "time_minutes": 30}))
    proc = subprocess.Popen([sys.executable, "-m", "blackbox", "-e", str(experiment), "--rank", "8"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    running = lambda: subprocess.run(["squeue", "-h", "-n", "bbo-demo", "-t", "R", "-o", "%i"],  # noqa: E731
                                     capture_output=True, text=True).stdout.split()
    assert wait_for(lambda: len(running()) == 1), "the job did not start"
    (job,) = running()
    time.sleep(3)
    subprocess.run(["scancel", "--signal=USR2", job], check=True)  # what Slurm sends a job it preempts
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0 and out.strip() != "FAILED", err[-2000:]
    (run_dir,) = [p for p in (experiment / "runs").iterdir() if p.is_dir() and not p.name.startswith((".", "_"))]
    assert (run_dir / "train.log").read_text().count("$ ") == 2  # trained twice: before and after the requeue
    assert json.loads((run_dir / "slurm.json").read_text())["state"] == "COMPLETED"


@pytest.mark.slow  # over 40 s: CI runs it (.ci/run), ./test.sh -m slow by hand
def test_pruning_on_slurm_stops_a_run_worse_than_the_median_in_its_job(tmp_path, assets):
    """The thresholds travel in the run's spec: a Slurm job prunes as a local training does."""
    experiment = make_experiment(tmp_path, assets, train={"max_steps": 8, "logging_steps": 2, "eval_every": 0.25},
                                 objective={"metric": "val_loss", "extra_outputs": ["val_loss"]},
                                 pruning={"enabled": True, "warmup": 0.5, "percentile": 50, "min_runs": 2},
                                 **ON_SLURM)
    point = ["--rank", "4", "--alpha", "8", "--dropout", "0", "--lr"]
    for lr in ("0.01", "0.02", "1e-05"):  # two good finished runs, then one that barely learns
        proc = run("blackbox", "--experiment", str(experiment), *point, lr)
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert "pruned at 50% of training" in proc.stderr
    df = load_runs(experiment).set_index("lr")
    assert list(df.loc[[0.01, 0.02], "status"]) == ["ok", "ok"] and df.loc[1e-05, "status"] == "pruned"
    assert df.loc[1e-05, "pruned_at"] == 0.5 and set(df["slurm_state"]) == {"COMPLETED"}
    (run_dir,) = (experiment / "runs").glob("r4-a8-d0-lr1e-05-*")
    assert not (run_dir / "adapter").exists()
