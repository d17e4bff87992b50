"""Learning curves and pruning on the tiny model: the curve of every run, a hopeless run stopped at the
right checkpoint and answered from its folder when asked again, and the rule itself."""
import json
import math
import subprocess
import sys

import pytest

from conftest import make_experiment
import conftest
from core import pruning

pytestmark = pytest.mark.filterwarnings("ignore")

GOOD = ["--rank", "4", "--alpha", "8", "--dropout", "0", "--lr"]


def blackbox(experiment, *args):
    proc = conftest.blackbox(experiment, *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def run_dir_of(experiment, prefix):
    (found,) = (experiment / "runs").glob(f"{prefix}-*")
    return found


def test_checkpoints_and_thresholds():
    assert pruning.checkpoints(0.25) == [0.25, 0.5, 0.75, 1.0]
    assert pruning.checkpoints(0.3) == [0.3, 0.6, 0.9, 1.0]
    assert pruning.checkpoints(None) == [1.0]
    assert pruning.checkpoint_steps(0.25, 8) == {2: 0.25, 4: 0.5, 6: 0.75}
    assert pruning.checkpoint_steps(0.25, 2) == {1: 0.25}  # steps 1, 1, 2: one checkpoint before the end
    curves = [[{"fraction": 0.25, "val_loss": v}, {"fraction": 0.5, "val_loss": v - 1}] for v in (3.0, 4.0, 8.0)]
    assert pruning.thresholds(curves, 0.25, warmup=0.5, q=50, min_runs=3) == {"0.5": 3.0}
    assert pruning.thresholds(curves, 0.25, warmup=0.25, q=50, min_runs=4) == {}  # too few finished runs
    assert pruning.percentile([1.0, 2.0, 3.0, 4.0], 25) == 1.75  # numpy's linear interpolation
    rule = {"thresholds": {"0.5": 3.0}, "percentile": 50, "runs": 3}
    assert pruning.prune_reason(0.5, 3.5, rule).startswith("val_loss 3.5 at 50% of training")
    assert pruning.prune_reason(0.5, 2.5, rule) is None
    assert pruning.prune_reason(0.25, 9.0, rule) is None  # no threshold there (warm-up)
    assert pruning.prune_reason(0.5, math.nan, rule)  # a NaN loss is hopeless too


@pytest.mark.slow  # about 30 s or more: CI runs it (.ci/run), ./test.sh -m slow by hand
def test_every_run_keeps_its_curve_and_measuring_it_changes_nothing(tmp_path, assets):
    changes = dict(train={"max_steps": 4, "logging_steps": 2},
                   objective={"metric": "val_loss", "extra_outputs": ["val_loss"]})
    with_curve = make_experiment(tmp_path / "a", assets, **changes)
    blackbox(with_curve, *GOOD, "0.01")
    run_dir = run_dir_of(with_curve, "r4-a8-d0-lr0.01")
    curve = json.loads((run_dir / "curve.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert [p["fraction"] for p in curve["points"]] == [0.25, 0.5, 0.75, 1.0]
    assert [p["step"] for p in curve["points"]] == [1, 2, 3, 4]
    assert curve["points"][-1]["val_loss"] == metrics["val_loss"] and metrics["trained_fraction"] == 1.0
    assert curve["points"][0]["val_loss"] > curve["points"][-1]["val_loss"]  # it learns

    changes["train"] = dict(changes["train"], eval_every=None)
    without = make_experiment(tmp_path / "b", assets, **changes)
    blackbox(without, *GOOD, "0.01")
    plain = json.loads((run_dir_of(without, "r4-a8-d0-lr0.01") / "metrics.json").read_text())
    assert plain["val_loss"] == pytest.approx(metrics["val_loss"], rel=1e-6)  # the checkpoints do not touch training
    assert run_dir_of(without, "r4-a8-d0-lr0.01").name == run_dir.name  # and not the run id
    assert not (run_dir_of(without, "r4-a8-d0-lr0.01") / "curve.json").exists() or json.loads(
        (run_dir_of(without, "r4-a8-d0-lr0.01") / "curve.json").read_text())["points"][0]["fraction"] == 1.0


@pytest.mark.slow  # over 40 s: CI runs it (.ci/run), ./test.sh -m slow by hand
def test_a_run_worse_than_the_median_is_pruned_at_its_checkpoint_and_never_trained_again(tmp_path, assets):
    experiment = make_experiment(tmp_path, assets, train={"max_steps": 8, "logging_steps": 2, "eval_every": 0.25},
                                 objective={"metric": "val_loss", "extra_outputs": ["val_loss", "train_loss"]},
                                 pruning={"enabled": True, "warmup": 0.5, "percentile": 50, "min_runs": 2})
    for lr in ("0.01", "0.02"):  # two good finished runs: the median at each checkpoint
        blackbox(experiment, *GOOD, lr)
    good = [json.loads((run_dir_of(experiment, f"r4-a8-d0-lr{lr}") / "curve.json").read_text())["points"]
            for lr in ("0.01", "0.02")]
    median_at_half = sum(c[1]["val_loss"] for c in good) / 2

    bad = blackbox(experiment, *GOOD, "1e-05")  # barely learns: far above the median from the start
    run_dir = run_dir_of(experiment, "r4-a8-d0-lr1e-05")
    status = json.loads((run_dir / "status.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    spec = json.loads((run_dir / "spec.json").read_text())
    curve = json.loads((run_dir / "curve.json").read_text())["points"]
    assert status["state"] == "pruned" and "percentile of 2 finished runs" in status["reason"]
    assert spec["pruning"]["thresholds"]["0.5"] == pytest.approx(median_at_half)
    assert "0.25" not in spec["pruning"]["thresholds"]  # the warm-up
    assert [p["fraction"] for p in curve] == [0.25, 0.5]  # stopped at the first checkpoint after the warm-up
    assert metrics["pruned_at"] == 0.5 and metrics["steps"] == 4 and metrics["trained_fraction"] == 0.5
    assert metrics["objective"] == metrics["val_loss"] == curve[-1]["val_loss"] > median_at_half
    assert not (run_dir / "adapter").exists()  # a pruned run keeps no adapter
    assert "pruned at 50% of training" in bad.stderr
    objective, val_loss, _ = (float(v) for v in bad.stdout.split())
    assert objective == pytest.approx(metrics["objective"])

    log_size = (run_dir / "train.log").stat().st_size
    again = blackbox(experiment, *GOOD, "1e-05")
    assert again.stdout == bad.stdout and "[cached]" in again.stderr
    assert (run_dir / "train.log").stat().st_size == log_size  # not trained again

    from bbo.results import load_curves, load_runs
    from bbo.report import pruning_savings
    df = load_runs(experiment)
    row = df[df["run_id"] == run_dir.name].iloc[0]
    assert row["status"] == "pruned" and row["pruned_at"] == 0.5 and row["val_loss@0.5"] == curve[-1]["val_loss"]
    assert len(load_curves(experiment)) == 4 + 4 + 2
    saved = pruning_savings(df)
    assert saved["pruned"] == 1 and saved["saved_hours"] == pytest.approx(row["train_seconds"] / 3600, rel=1e-6)

    retried = subprocess.run([sys.executable, "-m", "blackbox", "--experiment", str(experiment), *GOOD, "1e-05",
                              "--retry-pruned", "--set", "pruning.enabled=false"], capture_output=True, text=True,
                             timeout=600)
    assert retried.returncode == 0, retried.stderr[-2000:]
    assert json.loads((run_dir / "status.json").read_text())["state"] == "ok"
    assert len(json.loads((run_dir / "curve.json").read_text())["points"]) == 4
