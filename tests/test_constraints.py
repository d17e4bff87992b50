"""objective.constraints (NOMAD's PB and EB outputs) and the base model as the baseline (bbo baseline).

The search test takes a copy of the session's finished search: constraints on val_loss and train_hours
leave the run ids as they are, so its three runs are answered from their folders, and only the
baseline (one validation pass of the base model) and the points NOMAD's new path asks are computed.
"""
import json
import math
import shutil

import pytest
import yaml

from bbo import paramfile
from bbo.results import load_runs
from bbo.summary import best, best_infeasible
from conftest import blackbox, run_module
from core.baseline import BASELINE_DIR, RESULT_FILE, read_baseline
from core.config import ConfigError, load_config
from core.constraints import Constraint, feasible
from core.nomadtext import CACHE_FILE, parse_params, read_cache
from core.store import State

PB_AND_EB = [{"metric": "val_loss", "at_most": "base - 0.01"},  # a real improvement over the base model (PB)
             {"metric": "train_hours", "at_most": 1.0, "barrier": "extreme"}]  # a cost cap every run meets (EB)


def with_constraints(experiment, constraints) -> None:
    raw = yaml.safe_load((experiment / "experiment.yaml").read_text())
    raw["objective"]["constraints"] = constraints
    (experiment / "experiment.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


@pytest.mark.parametrize("constraint, message", [
    ({"metric": "val_los", "at_most": 2.0}, "'val_los' is not one of"),
    ({"metric": "val_loss"}, "give one bound, at_least or at_most"),
    ({"metric": "val_loss", "at_most": 2.0, "at_least": 1.0}, "give one bound"),
    ({"metric": "mmlu", "at_least": "bass - 0.01"}, "neither a number nor base"),
    ({"metric": "train_hours", "at_most": "base"}, "the base model has no train_hours"),
    ({"metric": "val_loss", "at_most": 2.0, "barrier": "soft"}, "'soft' is not one of progressive, extreme"),
    ({"metric": "val_loss", "at_most": 2.0, "bound": 1}, "bound: unknown key"),
])
def test_a_wrong_constraint_is_a_one_line_error_naming_its_key(tiny_experiment, constraint, message):
    with pytest.raises(ConfigError, match=message) as e:
        load_config(tiny_experiment, [f"objective.constraints=[{json.dumps(constraint)}]"])
    assert str(e.value).startswith("objective.constraints[0]") and "\n" not in str(e.value)


def test_constraints_are_nomad_outputs_in_its_sign_convention(tiny_experiment):
    config = load_config(tiny_experiment, [f"objective.constraints={json.dumps(PB_AND_EB)}",
                                           "objective.extra_outputs=[train_loss]"])
    assert config.objective.outputs == ["objective", "c_val_loss", "c_train_hours", "train_loss"]
    entries = parse_params(paramfile.render(config))  # standard NOMAD keywords only
    assert entries["BB_OUTPUT_TYPE"] == ["OBJ PB EB EXTRA_O"] and "CONS_H" in entries["DISPLAY_STATS"][0]
    pb, eb = config.objective.constraints
    base = {"val_loss": 2.0}
    assert pb.bound(base) == pytest.approx(1.99) and pb.uses_base and not eb.uses_base
    assert pb.value({"val_loss": 1.5}, base) == pytest.approx(-0.49)  # <= 0: feasible
    assert pb.value({"val_loss": 1.995}, base) == pytest.approx(0.005)  # > 0: infeasible by 0.005
    assert eb.value({"train_seconds": 7200.0}, None) == pytest.approx(1.0)  # 2 hours: 1 hour over the cap
    at_least = Constraint(metric="mmlu", at_least="base - 0.01")
    assert at_least.value({"mmlu": 0.30}, {"mmlu": 0.25}) == pytest.approx(-0.06)  # 0.24 - 0.30
    assert at_least.value({"val_loss": 1.0}, {"mmlu": 0.25}) == math.inf  # never measured (a pruned run): infeasible
    assert feasible([-1.0, 0.0]) and not feasible([-1.0, 1e-9]) and not feasible([math.inf])
    # a constraint on MMLU makes the search measure MMLU, and the base model's too
    config = load_config(tiny_experiment, ["objective.constraints=[{metric: mmlu, at_least: base}]"])
    assert config.objective.needs_mmlu and config.objective.base_metrics == ["val_loss", "mmlu"]


@pytest.mark.slow  # over 40 s: CI runs it (.ci/run), ./test.sh -m slow by hand
def test_a_search_with_a_pb_and_an_eb_constraint_measures_the_base_once_and_keeps_to_feasible_points(searched_copy):
    experiment = searched_copy
    with_constraints(experiment, PB_AND_EB)
    proc = run_module("bbo", "run", str(experiment))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "BB_OUTPUT_TYPE OBJ PB EB EXTRA_O" in (experiment / "param.txt").read_text()

    # The base model: measured once, before NOMAD, into one folder keyed by content.
    config = load_config(experiment)
    base = read_baseline(config)
    assert base and math.isfinite(base["val_loss"]) and proc.stderr.count("baseline: measuring") == 1
    [folder] = [p for p in (experiment / BASELINE_DIR).iterdir() if p.is_dir()]
    stamp = (folder / RESULT_FILE).stat().st_mtime_ns
    again = run_module("bbo", "baseline", str(experiment))
    assert again.returncode == 0 and f"val_loss: {base['val_loss']:.6g}" in again.stdout
    by_hand = blackbox(experiment, "--rank", "4", "--alpha", "4", "--dropout", "0", "--lr", "1e-4")  # X0: stored
    assert by_hand.returncode == 0 and "measuring" not in by_hand.stderr + again.stderr
    assert (folder / RESULT_FILE).stat().st_mtime_ns == stamp
    # A plain `nomad param.txt` (no bbo run before it): the first blackbox measures the base model, then answers
    # OBJ PB EB EXTRA_O for the point from its run folder.
    shutil.rmtree(experiment / BASELINE_DIR)
    (experiment / "x0.txt").write_text(" ".join(str(x) for x in config.space.x0) + "\n")
    answered = blackbox(experiment, str(experiment / "x0.txt"))
    assert answered.returncode == 0 and answered.stderr.count("baseline: measuring") == 1, answered.stderr[-2000:]
    assert len(answered.stdout.split()) == 4 and read_baseline(config)["val_loss"] == base["val_loss"]

    # NOMAD read four numbers a point (PyNomad took PB and EB); the table has each constraint's value.
    cache = [c for c in read_cache(experiment / CACHE_FILE) if c["status"] == "BB_EVAL_OK"]
    assert cache and all(len(c["outputs"]) == 4 for c in cache)
    df = load_runs(experiment)
    answered = df[df["status"].eq(State.OK)]
    assert len(answered) >= 3 and answered[["c_val_loss", "c_train_hours", "feasible"]].notna().all().all()
    expected = answered["val_loss"] - (base["val_loss"] - 0.01)
    assert answered["c_val_loss"].tolist() == pytest.approx(expected.tolist())
    assert (answered["feasible"] == (answered["c_val_loss"] <= 0)).all()  # the EB cap holds everywhere
    assert (answered["objective_vs_base"] == answered["objective"] - base["val_loss"]).all()
    assert answered["feasible"].any() and not answered["feasible"].all(), answered[["val_loss", "c_val_loss"]]
    top = best(df)
    assert top["feasible"] and "base model (no adapter) vs best" in proc.stdout
    assert "runs feasible" in proc.stdout
    status = run_module("bbo", "status", str(experiment))
    assert status.returncode == 0 and f"best feasible so far: objective (min) {top['objective']:.6g}" in status.stdout
    n_ok = int(answered["feasible"].sum())
    assert f"feasible: {n_ok} of " in status.stdout and "base model (no adapter): objective (min)" in status.stdout

    # A bound that rules out the point with the best objective: the best reported is the best feasible one.
    values = sorted(answered["val_loss"])
    split = (values[0] + values[1]) / 2
    override = f"objective.constraints=[{{metric: val_loss, at_least: {split}}}]"
    df = load_runs(experiment, [override])
    chosen, other = best(df), best_infeasible(df)
    assert chosen["feasible"] and chosen["val_loss"] == values[1] and other["val_loss"] == values[0]
    shown = run_module("bbo", "results", str(experiment), override)
    assert shown.returncode == 0 and "best infeasible point" in shown.stdout
    report = run_module("bbo", "report", str(experiment), override)
    assert report.returncode == 0, report.stderr[-2000:]
    text = (experiment / "report" / "report.md").read_text()
    assert chosen["run_id"] in text.split("## Best point")[1].split("##")[0] and "best infeasible point" in text
    assert (experiment / "report" / "constraint_c_val_loss.png").is_file()
    with_constraints(experiment, [{"metric": "val_loss", "at_least": split}])
    out = experiment.parent / "best-adapter"
    exported = run_module("bbo", "export", str(experiment), "--best", str(out))
    assert exported.returncode == 0, exported.stderr[-2000:]
    assert chosen["run_id"] in exported.stdout + exported.stderr

    # No feasible point at all: the search says so, names the tightest constraint, and exits non-zero.
    with_constraints(experiment, [{"metric": "val_loss", "at_most": 0.5}, PB_AND_EB[1]])
    proc = run_module("bbo", "run", str(experiment))
    assert proc.returncode == 1
    assert "no feasible point" in proc.stderr and "c_val_loss: val_loss <= 0.5" in proc.stderr
    assert "best point: none feasible" in proc.stdout
