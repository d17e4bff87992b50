"""The low-fidelity start (nomad.screen_fraction, bbo/screen.py): the start design trained to a fraction, its
best in full, NOMAD from those; a partial run is never an answer, nothing is trained twice."""
import json

import pytest

from bbo.results import load_runs
from conftest import make_experiment, run_dirs, run_module
from core.config import ConfigError, load_config
from core.nomadtext import read_cache
from core.store import budget_use

pytestmark = pytest.mark.filterwarnings("ignore")

# 2 design points (X0 and a Latin-hypercube point), at once, to half of their 4 steps, the better in full; NOMAD's
# budget of 1 is that point, answered from its folder
SCREENED = {"train": {"max_steps": 4, "logging_steps": 1, "eval_every": 0.5},
            "objective": {"metric": "val_loss", "extra_outputs": ["train_loss"]},
            "nomad": {"budget": 1, "seed": 0, "start_points": 1, "screen_fraction": 0.5, "screen_keep": 1},
            "launch": {"parallel": 2}}


@pytest.mark.parametrize("changes, words", [
    ({"nomad.start_points": 0}, "set nomad.start_points too"),
    ({"nomad.screen_fraction": 0.3}, "0.3 is not a checkpoint of train.eval_every 0.5"),
    ({"train.eval_every": None}, "none: set train.eval_every"),
    ({"nomad.screen_keep": 3}, "more than the start design's 2 points"),
    ({"nomad.screen_fraction": 1.0}, "must be in [0, 1)"),
])
def test_wrong_screen_settings_are_one_line_errors(tmp_path, assets, changes, words):
    experiment = make_experiment(tmp_path, assets, **SCREENED)
    with pytest.raises(ConfigError, match=words.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        load_config(experiment, [f"{k}={'null' if v is None else v}" for k, v in changes.items()])


@pytest.mark.slow  # about 30 s or more: CI runs it (.ci/run), ./test.sh -m slow by hand
def test_a_screened_start_reports_no_partial_run_as_complete_and_trains_nothing_twice(tmp_path, assets):
    experiment = make_experiment(tmp_path, assets, **SCREENED)
    proc = run_module("bbo", "run", experiment)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "low-fidelity start: 2 points of the start design to 50% of their training" in proc.stdout
    assert "the problem changed" not in proc.stderr  # the start leaves nothing in nomad/ that reads as NOMAD's

    runs = {d.name: d for d in run_dirs(experiment)}
    states = {rid: json.loads((d / "status.json").read_text()) for rid, d in runs.items()}
    pruned = [rid for rid, s in states.items() if s["state"] == "pruned"]
    (full,) = [rid for rid, s in states.items() if s["state"] == "ok"]
    assert len(runs) == 2 and len(pruned) == 1
    for rid in pruned:  # stopped at the fraction, and says why; never an ok run
        metrics = json.loads((runs[rid] / "metrics.json").read_text())
        assert metrics["pruned_at"] == 0.5 and "low-fidelity start" in states[rid]["reason"]
        assert [p["fraction"] for p in json.loads((runs[rid] / "curve.json").read_text())["points"]] == [0.5]
    curve = json.loads((runs[full] / "curve.json").read_text())["points"]
    assert [p["fraction"] for p in curve] == [0.5, 1.0]  # trained again, to the end
    screened_at = {rid: [p for p in json.loads((runs[rid] / "curve.json").read_text())["points"]
                         if p["fraction"] == 0.5][0]["val_loss"] for rid in runs}
    assert screened_at[full] == min(screened_at.values())  # the best at the fraction went on

    # NOMAD started from the screened point and saw only its full answer
    table = load_runs(experiment).set_index("run_id")
    assert table.loc[full, "status"] == "ok" and (table.loc[pruned, "status"] == "pruned").all()
    (cached,) = read_cache(experiment / "nomad" / "cache.txt")
    assert cached["outputs"][0] == pytest.approx(table.loc[full, "objective"], rel=1e-9)
    assert json.loads((runs[full] / "params.json").read_text())["point"] == [float(x) for x in cached["x"]]
    x0_files = sorted((experiment / "nomad").glob("x0-screened-*.txt"))
    assert len(x0_files) == 1 and x0_files[0].name in (experiment / "param.txt").read_text()
    config = load_config(experiment)
    use = budget_use(experiment, config.fingerprint())
    assert (use.used, use.screened) == (1, 1)  # the screened-out point is not one of NOMAD's evaluations
    shown = run_module("bbo", "status", experiment)
    assert "budget: 1 of 1 used, 0 left; 1 more of the low-fidelity start, not counted" in shown.stdout

    # run again: the start is done, nothing of it trains again
    logs = {rid: (d / "train.log").stat().st_mtime_ns for rid, d in runs.items()}
    again = run_module("bbo", "run", experiment)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "points of the start design" not in again.stdout and "budget already spent" in again.stderr
    assert {rid: (runs[rid] / "train.log").stat().st_mtime_ns for rid in runs} == logs
