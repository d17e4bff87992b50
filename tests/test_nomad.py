"""Real NOMAD searches on the tiny model, through `bbo run` and the nomad-compatible `bbo.nomad`."""
import json
import subprocess
import sys

import pytest

from conftest import SEARCH, make_experiment
from conftest import run_module as run
from core.nomadtext import read_cache, read_history


@pytest.fixture
def fast_experiment(tmp_path, assets):
    return make_experiment(tmp_path, assets, **SEARCH)


def index(experiment):
    return [json.loads(line) for line in (experiment / "evaluations.jsonl").read_text().splitlines()]


def test_bbo_run_then_bbo_nomad_reuses_every_run(searched, searched_copy):
    experiment, proc = searched  # `bbo run` of the session's search (conftest.SEARCH: budget 3)
    assert "best point:" in proc.stdout
    progress = [line for line in proc.stderr.splitlines() if line.startswith("[eval")]
    assert len(progress) == 3 and all("| best" in line for line in progress)
    first = index(experiment)
    assert [e["cached"] for e in first] == [False] * 3
    history = read_history(experiment / "nomad" / "history.txt", 4)
    assert len(history) == 3
    assert [h["outputs"][0] for h in history] == pytest.approx([e["objective"] for e in first])
    assert history[0]["x"] == [2, 1, 1, -4]  # X0 comes first
    assert len(read_cache(experiment / "nomad" / "cache.txt")) == 3

    # The same search as a parameter file, as `nomad param.txt` runs it: nothing is trained again.
    (searched_copy / "nomad").rename(searched_copy / "nomad.first")
    proc = run("bbo.nomad", str(searched_copy / "param.txt"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    second = index(searched_copy)[3:]
    assert len(second) == 3 and all(e["cached"] for e in second)
    assert [e["run_id"] for e in second] == [e["run_id"] for e in first]  # same seed, same trajectory


def test_bbo_run_resumes_with_nothing_left_to_do(searched_copy):
    again = run("bbo", "run", str(searched_copy))
    assert again.returncode == 0, again.stderr
    assert "budget already spent" in again.stderr
    assert len(index(searched_copy)) == 3


def test_bbo_run_overrides_reach_the_blackbox(fast_experiment):
    proc = run("bbo", "run", str(fast_experiment), "nomad.budget=2", "train.max_steps=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = [p for p in (fast_experiment / "runs").iterdir() if p.is_dir() and not p.name.startswith((".", "_"))]
    assert len(runs) == 2
    for run_dir in runs:
        assert json.loads((run_dir / "metrics.json").read_text())["steps"] == 2
    assert "MAX_BB_EVAL 3" in (fast_experiment / "param.txt").read_text()  # the file follows experiment.yaml


def test_bad_parameter_file_is_an_error_not_a_crash(fast_experiment, tmp_path):
    assert run("bbo", "paramfile", str(fast_experiment)).returncode == 0
    param = fast_experiment / "param.txt"
    param.write_text(param.read_text().replace("MAX_BB_EVAL 3", "MAX_BB_EVAL abc"))
    proc = run("bbo.nomad", str(param))
    assert proc.returncode == 2 and "MAX_BB_EVAL" in proc.stderr and len(proc.stderr.splitlines()) == 1
    proc = run("bbo.nomad", str(tmp_path / "missing.txt"))
    assert proc.returncode == 2 and "no parameter file" in proc.stderr


BOWL = """import sys
x = [float(v) for v in open(sys.argv[1]).read().split()]
with open(sys.argv[0] + ".asked", "a") as log:
    log.write(" ".join(f"{v:g}" for v in x) + "\\n")
print((x[0] - 2) ** 2 + (x[1] - 1) ** 2)
"""


def test_nomad_starts_again_until_the_budget_is_spent_on_an_integer_space(tmp_path):
    """On a 7 x 7 integer grid NOMAD's mesh bottoms out after ~17 evaluations; the budget is 30."""
    (tmp_path / "bowl.py").write_text(BOWL)
    (tmp_path / "param.txt").write_text(f"""DIMENSION 2
BB_INPUT_TYPE ( I I )
BB_OUTPUT_TYPE OBJ
X0 ( 0 0 )
LOWER_BOUND ( -3 -3 )
UPPER_BOUND ( 3 3 )
MAX_BB_EVAL 30
SEED 0
BB_EXE "${sys.executable} {tmp_path / 'bowl.py'}"
CACHE_FILE cache.txt
HISTORY_FILE history.txt
DISPLAY_DEGREE 0
""")
    proc = run("bbo.nomad", str(tmp_path / "param.txt"), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "start 2 from the best point so far" in proc.stderr
    asked = (tmp_path / "bowl.py.asked").read_text().splitlines()
    assert len(asked) == 30 and len(set(asked)) == 30  # the whole budget, no point twice
    assert len(read_cache(tmp_path / "cache.txt")) == 30
    assert len(read_history(tmp_path / "history.0.txt", 2)) == 30  # every start's history, in one file (SEED 0's)

    again = run("bbo.nomad", str(tmp_path / "param.txt"), "--resume", timeout=300)  # nothing left to spend
    assert again.returncode == 0 and len((tmp_path / "bowl.py.asked").read_text().splitlines()) == 30


def test_start_points_file_is_evaluated_first_wherever_nomad_is_started_from(tmp_path):
    """X0 names a file of points (nomad.start_points writes nomad/x0.txt): NOMAD evaluates them all first; the
    driver hands NOMAD the file's absolute path, as NOMAD reads it relative to its working folder."""
    (tmp_path / "bowl.py").write_text(BOWL)
    (tmp_path / "x0.txt").write_text("0 0\n-3 3\n3 -2\n")
    (tmp_path / "param.txt").write_text(f"""DIMENSION 2
BB_INPUT_TYPE ( I I )
BB_OUTPUT_TYPE OBJ
X0 x0.txt
LOWER_BOUND ( -3 -3 )
UPPER_BOUND ( 3 3 )
MAX_BB_EVAL 8
BB_EXE "${sys.executable} {tmp_path / 'bowl.py'}"
CACHE_FILE cache.txt
DISPLAY_DEGREE 0
""")
    proc = subprocess.run([sys.executable, "-m", "bbo.nomad", str(tmp_path / "param.txt")], capture_output=True,
                          text=True, timeout=300, cwd="/")
    assert proc.returncode == 0, proc.stderr[-3000:]
    asked = (tmp_path / "bowl.py.asked").read_text().splitlines()
    assert set(asked[:3]) == {"0 0", "-3 3", "3 -2"} and len(asked) == len(set(asked)) == 8

    (tmp_path / "x0.txt").unlink()
    proc = run("bbo.nomad", str(tmp_path / "param.txt"))
    assert proc.returncode == 2 and "X0 file x0.txt not found" in proc.stderr and len(proc.stderr.splitlines()) == 1


def test_a_new_start_draws_its_latin_hypercube_points_with_its_own_seed(tmp_path):
    """NOMAD's LH_SEARCH ignores SEED; the driver's restarts write the best point and seeded LH points instead."""
    from bbo.nomad import RESTART_X0, restart_lines

    (tmp_path / "cache.txt").write_text("( 1 0.5 ) BB_EVAL_OK ( 2 ) SURROGATE_EVAL_NOT_STARTED ( )\n")
    base = ["DIMENSION 2", "BB_INPUT_TYPE ( I R )", "BB_OUTPUT_TYPE OBJ", "LOWER_BOUND ( -3 0 )",
            "UPPER_BOUND ( 3 1 )", "MAX_BB_EVAL 30", "SEED 0", "CACHE_FILE cache.txt"]
    best = [1, 0.5]
    drawn = []
    for restart in (1, 2):
        lines = restart_lines(base, tmp_path, 1, restart, fresh=True)
        assert f"X0 {(tmp_path / RESTART_X0).resolve()}" in lines and f"SEED {restart}" in lines
        assert not any(line.startswith("LH_SEARCH") for line in lines)
        points = [line.split() for line in (tmp_path / RESTART_X0).read_text().splitlines()]
        assert [float(v) for v in points[0]] == [float(v) for v in best] and len(points) == 3
        assert all(-3 <= int(p[0]) <= 3 and 0 <= float(p[1]) <= 1 for p in points)
        drawn.append(points[1:])
    assert drawn[0] != drawn[1]  # another start, other points

    lines = restart_lines([line.replace("( -3 0 )", "( -inf 0 )") for line in base], tmp_path, 1, 1, fresh=True)
    assert "LH_SEARCH 2 0" in lines  # bounds the project cannot draw in: NOMAD's own LH points
