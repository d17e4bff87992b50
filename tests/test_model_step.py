"""The model-guided step (nomad.model_step, bbo/model_step.py): a Gaussian process's best point before each NOMAD
iteration, on NOMAD's mesh, never a point evaluated before; a model that fails leaves the iteration to NOMAD.

The loop runs real NOMAD (PyNomad) on a cheap function here; the search with training is the slow test at the end."""
import json
import math

import pytest

from bbo.model_step import HOT_RESTART_FILE, propose
from bbo.nomad import guided_search
from conftest import make_experiment, run_dirs, run_module
from core.config import ConfigError, load_config
from core.nomadtext import param_line, point_file, read_cache, read_hot_restart

BOX = ([0, 1, -5.0], [5, 8, -2.0], ["I", "I", "R"])  # as the demo's space encodes: choice, multiplier, log10 lr


def valley(x) -> float:
    return (x[0] - 3) ** 2 + 0.5 * (x[1] - 6) ** 2 + 4 * (x[2] + 3.3) ** 2


def rows_of(points) -> list[dict]:
    return [{"x": list(p), "status": "BB_EVAL_OK", "outputs": [valley(p)]} for p in points]


def test_the_step_proposes_new_points_inside_the_bounds_and_on_the_mesh():
    design = [[0, 1, -5.0], [5, 8, -2.0], [2, 4, -4.0], [4, 2, -2.5], [1, 7, -3.0], [3, 5, -4.5]]
    incumbent, mesh = [2, 4, -4.0], [1, 2, 0.125]
    points = propose(rows_of(design), BOX, 0, incumbent, mesh, 3, seed=1)
    assert 1 <= len(points) <= 3 and len({tuple(p) for p in points}) == len(points)
    for point in points:
        assert point not in design
        for x, low, high, kind, centre, size in zip(point, *BOX, incumbent, mesh):
            assert low <= x <= high
            steps = (x - centre) / size
            assert abs(steps - round(steps)) < 1e-9  # centre + k * mesh: NOMAD's mesh around its incumbent
            if kind == "I":
                assert isinstance(x, int)


def test_the_step_never_proposes_a_point_the_cache_holds():
    box = ([0, 0], [2, 2], ["I", "I"])
    every = [[a, b] for a in range(3) for b in range(3)]  # the whole space evaluated: nothing new to propose
    rows = [{"x": p, "status": "BB_EVAL_OK", "outputs": [(p[0] - 1) ** 2 + p[1]]} for p in every]
    assert propose(rows, box, 0, [1, 0], [1, 1], 4, seed=0) == []
    # too few finished points for a model: no step (a failed point is not one)
    failed = [{"x": [0, 0], "status": "BB_EVAL_FAILED", "outputs": []}]
    assert propose(rows[:3] + failed, box, 0, [1, 0], [1, 1], 1, seed=0) == []


def search(tmp_path, budget: int = 24):
    """guided_search with real NOMAD on `valley`: every evaluation, by NOMAD or the step, is recorded."""
    import PyNomad

    (tmp_path / "x0.txt").write_text(point_file([[1, 2, -4.5], [4, 7, -2.5], [2, 5, -3.5], [0, 8, -2.2],
                                                 [5, 1, -4.9]]))
    lines = [param_line("DIMENSION", 3), param_line("BB_INPUT_TYPE", BOX[2]), param_line("BB_OUTPUT_TYPE", "OBJ"),
             param_line("X0", tmp_path / "x0.txt"), param_line("LOWER_BOUND", BOX[0]),
             param_line("UPPER_BOUND", BOX[1]), param_line("MAX_BB_EVAL", budget), param_line("SEED", 3),
             param_line("CACHE_FILE", "cache.txt"), param_line("DISPLAY_DEGREE", 0),
             param_line("PROBLEM_DIR", f"{tmp_path}/")]
    evaluated = {"nomad": [], "model": []}

    def one(point):
        x = [point.get_coord(i) for i in range(3)]
        evaluated["nomad"].append(x)
        point.setBBO(str(valley(x)).encode())
        return True

    def start(more):
        PyNomad.optimize(one, [], [], [], more)
        return 0

    def model_points(points):
        evaluated["model"] += points
        return [repr(valley(p)) for p in points]

    said = []
    rc = guided_search(lines, tmp_path, 0, start, model_points, echo=said.append)
    return rc, evaluated, said


def test_a_guided_search_spends_its_budget_once_per_point_and_moves_nomad_to_better_points(tmp_path):
    rc, evaluated, said = search(tmp_path)
    assert rc == 0
    every = evaluated["nomad"] + evaluated["model"]
    keys = [tuple(round(v, 9) for v in x) for x in every]
    assert len(keys) == len(set(keys)) == 24  # the budget, and no point evaluated twice (by NOMAD or by the step)
    assert len(evaluated["model"]) >= 2
    cache = read_cache(tmp_path / "cache.txt")
    assert len(cache) == 24 and {tuple(round(v, 9) for v in c["x"]) for c in cache} == set(keys)
    for point in evaluated["model"]:  # each is in NOMAD's cache with its value: NOMAD never asks it
        (row,) = [c for c in cache if [round(v, 9) for v in c["x"]] == [round(v, 9) for v in point]]
        assert row["outputs"][0] == pytest.approx(valley(point))
    state = read_hot_restart(tmp_path / HOT_RESTART_FILE)
    best = min(cache, key=lambda c: c["outputs"][0])
    assert state["incumbent"] == best["x"]  # NOMAD's state follows the best point, whoever found it
    assert best["outputs"][0] <= 1.0  # near the valley's floor (0) in 24 evaluations


def test_a_crash_of_the_model_falls_back_to_nomads_poll(tmp_path, monkeypatch):
    monkeypatch.setenv("BBO_FAULT", "model_step")
    rc, evaluated, said = search(tmp_path, budget=16)
    assert rc == 0 and evaluated["model"] == []
    assert len({tuple(x) for x in evaluated["nomad"]}) == len(evaluated["nomad"]) == 16  # NOMAD spent the budget
    skipped = [line for line in said if line.startswith("model step skipped")]
    assert skipped and "FloatingPointError: injected fault" in skipped[0] and "NOMAD's own iteration" in skipped[0]


def test_model_step_is_true_or_false(tmp_path, assets):
    experiment = make_experiment(tmp_path, assets, nomad={"model_step": "often"})
    with pytest.raises(ConfigError, match="nomad.model_step: expected true or false, got 'often'"):
        load_config(experiment)


@pytest.mark.slow
def test_a_search_with_the_model_step_trains_its_points_once_and_records_them(tmp_path, assets):
    experiment = make_experiment(tmp_path, assets, train={"max_steps": 3, "logging_steps": 1},
                                 objective={"metric": "val_loss", "extra_outputs": ["train_loss"]},
                                 nomad={"budget": 11, "seed": 0, "start_points": 4, "model_step": True},
                                 launch={"parallel": 2})
    proc = run_module("bbo", "run", experiment)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = run_dirs(experiment)
    answers = [json.loads(line) for line in (experiment / "evaluations.jsonl").read_text().splitlines()]
    sources = {a["run_id"]: a["source"] for a in answers}
    assert len(answers) == len(sources) == len(runs)  # one answer per run: nothing answered or trained twice
    assert 11 <= len(runs) <= 12 and "model" in sources.values()  # the budget (NOMAD's last block may pass it)
    assert all(json.loads((d / "status.json").read_text())["state"] == "ok" for d in runs)
    cache = read_cache(experiment / "nomad" / "cache.txt")
    assert len(cache) == len(runs) == len({tuple(c["x"]) for c in cache})  # NOMAD knows the step's points
    for d in runs:  # its point in NOMAD's cache with its objective
        params = json.loads((d / "params.json").read_text())
        (row,) = [c for c in cache if [float(v) for v in c["x"]] == params["point"]]
        metrics = json.loads((d / "metrics.json").read_text())
        assert math.isclose(row["outputs"][0], metrics["objective"], rel_tol=1e-9)
    provenance = json.loads((runs[0] / "provenance.json").read_text())
    assert provenance["config"]["nomad"]["model_step"] is True
    history = (experiment / "nomad" / "history.txt").read_text().splitlines()
    assert len(history) == len(runs)
    again = run_module("bbo", "run", experiment)  # spent: nothing trains again
    assert again.returncode == 0 and "budget already spent" in again.stderr
    assert len(run_dirs(experiment)) == len(runs)
