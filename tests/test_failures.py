"""Failed evaluations are reported, not fatal: each fault takes the real code path (BBO_FAULT)."""
import json
import os
import subprocess
import sys
import time

import pytest

from conftest import make_experiment, processes_mentioning


def blackbox(experiment, *args, fault=None, timeout=300):
    env = dict(os.environ)
    if fault:
        env["BBO_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "blackbox", "--experiment", str(experiment), *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


def only_run(experiment):
    (run_dir,) = [p for p in (experiment / "runs").iterdir() if p.is_dir() and not p.name.startswith(("_", "."))]
    return run_dir


@pytest.fixture
def experiment(tmp_path, assets):
    return make_experiment(tmp_path, assets, train={"max_steps": 12, "logging_steps": 1},
                           objective={"metric": "val_loss", "extra_outputs": ["train_loss"]})


@pytest.mark.parametrize("fault, kind, words", [
    ("oom@2", "oom", "out of memory"),
    ("error@2", "error", "injected fault: training error"),
    ("nan@2", "diverged", "train loss nan at step"),
    ("eval_error", "eval_loss", "injected fault: evaluation error"),
    ("garbage_metrics", "metrics", "train_result.json is missing or garbage"),
    ("crash@2", "crash", "training"),
])
def test_fault_becomes_a_failed_point(experiment, fault, kind, words):
    proc = blackbox(experiment, "--rank", "4", "--lr", "1e-3", fault=fault)
    assert proc.returncode == 1
    assert proc.stdout.strip() == "FAILED"  # what NOMAD reads: a failed evaluation
    status = json.loads((only_run(experiment) / "status.json").read_text())
    assert status["state"] == "failed" and status["error_kind"] == kind
    assert words.lower() in status["reason"].lower()
    assert status["log_tail"]  # the end of the training log comes with the failure
    assert not (only_run(experiment) / "metrics.json").exists()
    log = (only_run(experiment) / "train.log").read_text()
    if "@" in fault:  # a fault at a step: training ran up to it (a run that never started cannot pass)
        assert "'loss'" in log
    else:  # a fault after training: it trained all its steps first
        assert "'train_runtime'" in log
    if kind == "diverged":  # stopped at once, not after the remaining steps
        step = int(status["reason"].rsplit("step", 1)[1])
        assert step <= 3
    entry = json.loads((experiment / "evaluations.jsonl").read_text().splitlines()[-1])
    assert entry["state"] == "failed" and entry["objective"] is None


def test_failed_point_is_answered_from_its_folder_until_retried(experiment):
    assert blackbox(experiment, "--rank", "4", "--lr", "1e-3", fault="oom@1").returncode == 1
    again = blackbox(experiment, "--rank", "4", "--lr", "1e-3")
    assert again.returncode == 1 and "[cached]" in again.stderr
    retried = blackbox(experiment, "--rank", "4", "--lr", "1e-3", "--retry-failed")
    assert retried.returncode == 0, retried.stderr[-2000:]
    assert json.loads((only_run(experiment) / "status.json").read_text())["attempt"] == 2


def test_timeout_kills_the_whole_process_group(tmp_path, assets):
    experiment = make_experiment(tmp_path, assets, train={"max_steps": 12},
                                 launch={"timeout_minutes": 0.4},
                                 objective={"metric": "val_loss", "extra_outputs": []})
    started = time.time()
    proc = blackbox(experiment, "--rank", "4", "--lr", "1e-3", fault="hang@1")
    assert proc.returncode == 1 and time.time() - started < 120
    run_dir = only_run(experiment)
    status = json.loads((run_dir / "status.json").read_text())
    assert status["error_kind"] == "timeout"
    time.sleep(1)
    assert processes_mentioning(str(run_dir)) == []  # no orphan training process


@pytest.mark.slow  # about 30 s or more: CI runs it (.ci/run), ./test.sh -m slow by hand
def test_killed_blackbox_leaves_an_incomplete_run_that_is_redone(experiment):
    env = dict(os.environ, BBO_FAULT="hang@2")  # step 1 logs its loss, step 2 hangs
    proc = subprocess.Popen([sys.executable, "-m", "blackbox", "--experiment", str(experiment), "--rank", "4",
                             "--lr", "1e-3"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    deadline = time.time() + 120
    while time.time() < deadline and "'loss'" not in _read(experiment, "train.log"):
        time.sleep(0.5)
    proc.kill()  # SIGKILL mid-training
    proc.wait()
    run_dir = only_run(experiment)
    time.sleep(3)
    assert processes_mentioning(str(run_dir)) == []  # the training noticed and stopped
    assert json.loads((run_dir / "status.json").read_text())["state"] == "running"
    assert not (run_dir / "metrics.json").exists()  # never a false result
    done = blackbox(experiment, "--rank", "4", "--lr", "1e-3")
    assert done.returncode == 0 and "[cached]" not in done.stderr
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "ok" and status["attempt"] == 2 and status["previous"] == "interrupted"
    assert list((experiment / "runs" / "_incomplete").iterdir())  # the dead attempt is kept aside


def test_a_training_ended_because_its_search_died_is_interrupted_not_failed(experiment):
    """The search's driver dies (SIGKILL) while a point trains: the blackbox's watcher thread kills the
    training, and the thread that waited for it must not take that ending for a failure of the point."""
    driver = subprocess.Popen(["sleep", "600"])  # stands in for `bbo run`: BBO_DRIVER_PID is watched
    env = dict(os.environ, BBO_FAULT="hang@2", BBO_DRIVER_PID=str(driver.pid))
    proc = subprocess.Popen([sys.executable, "-m", "blackbox", "--experiment", str(experiment), "--rank", "4",
                             "--lr", "1e-3"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and "'loss'" not in _read(experiment, "train.log"):
        time.sleep(0.5)
    driver.kill()
    driver.wait()
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "FAILED" not in out
    run_dir = only_run(experiment)
    assert json.loads((run_dir / "status.json").read_text())["state"] == "running"  # the next run redoes it
    assert not (experiment / "evaluations.jsonl").exists()  # no answer recorded, failed or not
    assert processes_mentioning(str(run_dir)) == []


def _read(experiment, name):
    runs = experiment / "runs"
    if not runs.exists():
        return ""
    return "".join(p.read_text(errors="replace") for p in runs.glob(f"*/{name}"))


@pytest.mark.slow  # over 40 s: CI runs it (.ci/run), ./test.sh -m slow by hand
def test_nomad_goes_on_after_failed_points(tmp_path, assets):
    experiment = make_experiment(tmp_path, assets, train={"max_steps": 3},
                                 objective={"metric": "val_loss", "extra_outputs": []},
                                 space={"lr": {"log10": [-5, -1.5], "x0": 1.0e-4}},
                                 nomad={"budget": 4, "seed": 0})
    env = dict(os.environ, BBO_FAULT="error@1,match=-lr1e-05-")  # every point with lr 1e-5 fails
    proc = subprocess.run([sys.executable, "-m", "bbo", "run", str(experiment)], capture_output=True, text=True,
                          timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    entries = [json.loads(line) for line in (experiment / "evaluations.jsonl").read_text().splitlines()]
    states = [e["state"] for e in entries]
    assert len(entries) == 4 and "failed" in states and "ok" in states
    history = (experiment / "nomad" / "history.txt").read_text()
    assert "FAILED" in history and len(history.splitlines()) == 4
