"""Crash and resume, and concurrency: nothing lost, nothing trained twice, nothing corrupted."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import SEARCH, make_experiment, processes_mentioning


def ok_runs(experiment):
    out = {}
    for run_dir in (experiment / "runs").iterdir():
        status_path = run_dir / "status.json"
        if run_dir.is_dir() and status_path.exists():
            status = json.loads(status_path.read_text())
            assert status["state"] in ("ok", "failed"), f"{run_dir.name} left {status['state']}"
            if status["state"] == "ok":
                out[run_dir.name] = json.loads((run_dir / "metrics.json").read_text())["objective"]
    return out


@pytest.mark.slow  # over 40 s: CI runs it (.ci/run), ./test.sh -m slow by hand
def test_sigkill_of_the_driver_then_rerun_ends_like_an_uninterrupted_search(tmp_path, assets, searched):
    reference, _ = searched  # the same search (SEARCH's settings), never interrupted
    crashed = make_experiment(tmp_path / "crashed", assets, **SEARCH)
    command = [sys.executable, "-m", "bbo", "run"]

    driver = subprocess.Popen(command + [str(crashed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    index = crashed / "evaluations.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline:  # wait until one point is done and the next is training
        done = len(index.read_text().splitlines()) if index.exists() else 0
        running = [p for p in (crashed / "runs").glob("*/status.json")
                   if json.loads(p.read_text()).get("state") == "running"] if done else []
        if done >= 1 and running:
            break
        time.sleep(0.2)
    else:
        pytest.fail("the search never got to a second training")
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    time.sleep(4)
    assert processes_mentioning(str(crashed)) == []  # NOMAD, blackbox and training all went down

    rerun = subprocess.run(command + [str(crashed)], capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert ok_runs(crashed) == ok_runs(reference)  # same points, same objectives, none left running
    assert "best point:" in rerun.stdout
    assert list((crashed / "runs" / "_incomplete").iterdir())  # the interrupted attempt, kept aside


def test_two_processes_asking_for_the_same_point_train_it_once(tiny_experiment):
    command = [sys.executable, "-m", "blackbox", "--experiment", str(tiny_experiment), "--rank", "8", "--lr", "2e-3"]
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert results[0][0] == results[1][0]
    assert sum("[cached]" in err for _, err in results) == 1
    (run_dir,) = [p for p in (tiny_experiment / "runs").iterdir() if p.is_dir()]
    assert (run_dir / "train.log").read_text().count("$ ") == 1  # one training launched
    entries = [json.loads(line) for line in (tiny_experiment / "evaluations.jsonl").read_text().splitlines()]
    assert sorted(e["cached"] for e in entries) == [False, True] and [e["n"] for e in entries] == [1, 2]


def test_a_block_of_points_is_evaluated_in_parallel(tmp_path, assets):
    experiment = make_experiment(tmp_path, assets, train={"max_steps": 8}, launch={"parallel": 2},
                                 objective={"metric": "val_loss", "extra_outputs": []})
    points = tmp_path / "points.txt"
    points.write_text("2 1 1 -3\n3 1 1 -2\n")
    proc = subprocess.run([sys.executable, "-m", "blackbox", "--experiment", str(experiment), str(points)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(proc.stdout.split()) == 2
    statuses = [json.loads(p.read_text()) for p in (experiment / "runs").glob("*/status.json")]
    assert len(statuses) == 2 and all(s["state"] == "ok" for s in statuses)
    first, second = sorted(statuses, key=lambda s: s["started"])
    assert second["started"] < first["finished"]  # the two trainings overlapped
    entries = [json.loads(line) for line in (experiment / "evaluations.jsonl").read_text().splitlines()]
    assert sorted(e["n"] for e in entries) == [1, 2]


def test_store_survives_torn_files_left_by_a_crash(tmp_path):
    """A crash mid-write leaves a torn index line or garbage JSON: both read as missing, never as results."""
    from core.store import RunStore, write_json

    store = RunStore(tmp_path)
    assert store.record({"run_id": "a"}) == 1
    with open(store.index_path, "a") as f:
        f.write('{"run_id": "b", "n"')  # torn: the writer died here
    assert [e["run_id"] for e in store.evaluations()] == ["a"]
    assert store.record({"run_id": "c"}) == 2
    assert [e["run_id"] for e in store.evaluations()] == ["a", "c"]

    with store.lock("r1"):
        run_dir = store.begin("r1", {"hp": {}})
    write_json(run_dir / "status.json", dict(store.status("r1"), state="ok"))
    (run_dir / "metrics.json").write_text('{"objective": 1.2')  # half-written metrics
    assert store.finished("r1") is None  # an incomplete run, to be redone
    with store.lock("r1"):
        store.begin("r1", {"hp": {}})
    assert store.status("r1")["attempt"] == 2 and any((tmp_path / "runs" / "_incomplete").iterdir())
