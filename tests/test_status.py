"""`python -m bbo status`: a search's state from its run folders, finished and while a training runs."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from conftest import make_experiment

pytestmark = pytest.mark.filterwarnings("ignore")


def status(experiment):
    return subprocess.run([sys.executable, "-m", "bbo", "status", str(experiment)], capture_output=True, text=True,
                          timeout=120)


def test_status_of_a_finished_search(searched_copy, tmp_path):
    experiment = searched_copy  # 3 ok points, and now a budget of 7
    config = experiment / "experiment.yaml"
    config.write_text(config.read_text().replace("budget: 3", "budget: 7"))
    points = tmp_path / "points.txt"
    points.write_text("2 1 1 -2\n")  # rank 4, lr 0.01: cannot load its model
    env = dict(os.environ, BBO_FAULT="load_model,match=-lr0.01-")
    proc = subprocess.run([sys.executable, "-m", "blackbox", "--experiment", str(experiment), str(points)],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 1 and proc.stdout.strip() == "FAILED", proc.stderr[-3000:]  # its only point failed
    objectives = {}
    for run in (experiment / "runs").iterdir():
        metrics = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").exists() else None
        if metrics:
            objectives[run.name] = metrics["objective"]
    assert len(objectives) == 3
    best = min(objectives, key=objectives.get)

    shown = status(experiment)
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    assert "4 run folders: 3 ok, 0 running, 1 failed, 0 pruned" in text
    assert f"{objectives[best]:.6g} at rank=4" in text and best in text
    assert "budget: 3 of 7 used, 4 left" in text
    assert re.search(r"search ETA: \S+ \(4 left x mean evaluation \S+ / 1 at a time\)", text)
    assert "running:" not in text

    missing = status(tmp_path / "nowhere")
    assert missing.returncode == 2 and missing.stderr.startswith("error: no experiment config")


def test_status_shows_a_live_training_and_then_its_death(tmp_path, assets):
    experiment = make_experiment(tmp_path, assets, train={"max_steps": 4, "logging_steps": 1},
                                 objective={"metric": "val_loss", "extra_outputs": []})
    env = dict(os.environ, BBO_FAULT="hang@2")  # step 1 logs its loss, step 2 hangs: a training in progress
    proc = subprocess.Popen([sys.executable, "-m", "blackbox", "--experiment", str(experiment), "--rank", "4",
                             "--lr", "0.001"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            start_new_session=True)
    try:
        deadline = time.time() + 180
        progress = None
        while time.time() < deadline:
            progress = next((json.loads(p.read_text()) for p in (experiment / "runs").glob("*/progress.json")), None) \
                if (experiment / "runs").exists() else None
            if progress and progress["step"] >= 1:
                break
            time.sleep(0.5)
        assert progress and progress["step"] == 1, progress

        shown = status(experiment)
        assert shown.returncode == 0, shown.stderr
        assert "1 run folders: 0 ok, 1 running, 0 failed, 0 pruned" in shown.stdout
        assert re.search(r"running: rank=4 alpha=\S+ dropout=\S+ lr=0.001: step 1/4, loss [\d.]+, ETA \S+",
                         shown.stdout), shown.stdout
        assert "search ETA: - (no finished evaluation" in shown.stdout
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the blackbox takes its training down with it
        proc.wait(timeout=60)

    shown = status(experiment)  # state "running" on disk, but no process holds the lock any more
    assert shown.returncode == 0
    assert "1 interrupted" in shown.stdout and "0 running" in shown.stdout and "trains them again" in shown.stdout
