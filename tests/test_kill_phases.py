"""A search killed at any phase of an evaluation, then run again, ends as if it had never been
interrupted: same run ids, same numbers, and no finished phase run twice (docs/failures.md).

The kill is real: core/faults.py's kill_search@<phase> SIGKILLs the search's driver (`bbo run`) when
the evaluation reaches the phase, and sends the process there the SIGTERM a teardown sends, before the
blackbox has seen its search die. Each killed search is X0 alone (nomad.budget 1, 3 training steps on
the tiny model); its reference is the same point in a search never interrupted, run once per session:
the shared `searched` (SEARCH's settings), or for the MMLU and ROUGE phases one that measures them.
"""
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from conftest import SEARCH, make_experiment, processes_mentioning, run_dirs, run_module, shared_search
from core.faults import KILL_PHASES

ONE_POINT = dict(SEARCH, nomad={"budget": 1, "seed": 0})  # X0 of the session's search: the same run id
# X0 with MMLU and ROUGE after training
WITH_EVALS = dict(ONE_POINT, objective={"metric": "val_loss", "extra_outputs": ["train_loss", "mmlu", "rougeL"],
                                        "generation": {"num_examples": 4, "max_new_tokens": 8}})
AFTER_TRAINING = ("mmlu", "rouge", "results")  # the training is finished and kept: only the rest runs again
MEASURED = ("objective", "val_loss", "train_loss", "mmlu", "rougeL")


@pytest.fixture(scope="session")
def searched_with_evals(tmp_path_factory, worker_id, assets):
    experiment, _ = shared_search(tmp_path_factory, worker_id, assets, "searched-with-evals", WITH_EVALS)
    return experiment


def measured(experiment) -> dict:
    """{run id: (state, the numbers)} of every run folder."""
    out = {}
    for run_dir in run_dirs(experiment):
        status = json.loads((run_dir / "status.json").read_text())
        metrics = json.loads((run_dir / "metrics.json").read_text()) if status["state"] == "ok" else {}
        out[run_dir.name] = (status["state"], *(metrics.get(name) for name in MEASURED))
    return out


def launches(log) -> int:
    """How many times a child was started into this log (work.py writes `$ <command>` first)."""
    return sum(line.startswith("$ ") for line in log.read_text().splitlines()) if log.exists() else 0


def teardown_done(experiment, timeout=30) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not processes_mentioning(str(experiment)):
            return True
        time.sleep(0.2)
    return False


# slow, run by CI (.ci/run): the phases after training (an MMLU/ROUGE search of their own, over 60 s each), and
# two of the phases inside a training (train, the first, stays in ./test.sh)
SLOW_PHASES = ("mmlu", "rouge", "checkpoint", "adapter_save", "load_data")


@pytest.mark.parametrize("phase", [pytest.param(p, marks=pytest.mark.slow) if p in SLOW_PHASES else p
                                   for p in KILL_PHASES])
def test_a_search_killed_at_a_phase_then_rerun_ends_like_an_uninterrupted_one(phase, tmp_path, assets, request):
    evals = phase in ("mmlu", "rouge")
    settings = WITH_EVALS if evals else ONE_POINT
    reference = request.getfixturevalue("searched_with_evals") if evals else request.getfixturevalue("searched")[0]
    experiment = make_experiment(tmp_path, assets, **settings)
    killed = run_module("bbo", "run", experiment, env={"BBO_FAULT": f"kill_search@{phase}"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert teardown_done(experiment), "a process of the killed search is still running"
    (run_dir,) = run_dirs(experiment)
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "running" and "error_kind" not in status  # interrupted: never a failed point
    assert (run_dir / "train_result.json").exists() == (phase in AFTER_TRAINING)

    rerun = run_module("bbo", "run", experiment)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert measured(experiment) == {run_dir.name: measured(reference)[run_dir.name]}
    status = json.loads((run_dir / "status.json").read_text())
    assert status["attempt"] == 2 and status["previous"] == "interrupted"
    assert launches(run_dir / "train.log") == 1  # after training: the kept training's log, not a second one
    assert ("train_result.json" in status.get("kept", [])) == (phase in AFTER_TRAINING)
    assert launches(run_dir / "mmlu.log") == evals  # once finished, MMLU is kept (rouge), not run again
    asides = list((experiment / "runs" / "_incomplete").iterdir())
    assert len(asides) == 1 and not (asides[0] / "train_result.json").exists()  # no finished training discarded


def test_a_confirmation_run_killed_in_training_is_interrupted_and_finished_by_the_rerun(searched_copy):
    experiment = searched_copy
    before = measured(experiment)
    args = ("bbo", "confirm", experiment, "--top", "1", "--seeds", "1")
    killed = run_module(*args, env={"BBO_FAULT": "kill_search@train"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert teardown_done(experiment)
    (confirm_dir,) = [d for d in run_dirs(experiment) if d.name not in before]
    assert json.loads((confirm_dir / "status.json").read_text())["state"] == "running"

    rerun = run_module(*args)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    status = json.loads((confirm_dir / "status.json").read_text())
    assert status["state"] == "ok" and status["attempt"] == 2 and status["previous"] == "interrupted"
    assert {rid: v for rid, v in measured(experiment).items() if rid in before} == before


# The soak's search: 5 points, each trained, then MMLU and ROUGE, so that a random moment can fall in any phase
SOAK = dict(WITH_EVALS, nomad={"budget": 5, "seed": 0})


@pytest.mark.slow
def test_soak_a_search_killed_at_ten_random_moments_ends_like_an_uninterrupted_one(tmp_path, tmp_path_factory,
                                                                                    worker_id, assets):
    seed = int(os.environ.get("BBO_SOAK_SEED") or random.randrange(1_000_000))
    print(f"soak seed {seed}: replay with BBO_SOAK_SEED={seed}")
    rng = random.Random(seed)
    reference, _ = shared_search(tmp_path_factory, worker_id, assets, "soak-reference", SOAK)
    experiment = make_experiment(tmp_path, assets, **SOAK)
    kills = 0
    while kills < 10:  # each run of the search is killed after 2-25 s (an evaluation takes about 35 s here)
        log = tmp_path / f"run{kills}.log"
        with open(log, "w") as out:
            driver = subprocess.Popen([sys.executable, "-m", "bbo", "run", str(experiment)], stdout=out, stderr=out)
        try:
            rc = driver.wait(timeout=rng.uniform(2.0, 25.0))
            assert rc == 0, f"seed {seed}, after {kills} kills: {log.read_text()[-3000:]}"
            break  # it finished before this kill: what was finished before is kept, so a search ends
        except subprocess.TimeoutExpired:
            driver.kill()
            driver.wait()
            kills += 1
        assert teardown_done(experiment), f"seed {seed}, kill {kills}: a process of the killed search is still running"

    print(f"soak seed {seed}: {kills} kills, then the rerun")
    rerun = run_module("bbo", "run", experiment)
    assert rerun.returncode == 0, f"seed {seed}: {rerun.stderr[-3000:]}"
    assert measured(experiment) == measured(reference), f"seed {seed}"
    for run_dir in run_dirs(experiment):
        assert launches(run_dir / "train.log") == 1, f"seed {seed}: {run_dir.name}"
        assert launches(run_dir / "mmlu.log") == 1, f"seed {seed}: {run_dir.name}"
    asides = experiment / "runs" / "_incomplete"
    for aside in asides.iterdir() if asides.exists() else []:
        assert not (aside / "train_result.json").exists(), f"seed {seed}: a finished training was set aside ({aside.name})"
