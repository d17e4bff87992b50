"""train.report_to: transformers' own tracker integrations, one tracked run per evaluation (offline)."""
import json
import subprocess
import sys

import pytest

from conftest import make_experiment
from conftest import blackbox
from core.config import ConfigError, load_config
from core.preflight import PreflightError, check_trackers
from core.store import run_id

pytestmark = pytest.mark.filterwarnings("ignore")

FAST = {"max_steps": 4, "logging_steps": 2}
VAL_ONLY = {"metric": "val_loss", "extra_outputs": ["val_loss"]}


@pytest.mark.slow  # over 40 s: CI runs it (.ci/run), ./test.sh -m slow by hand
def test_tensorboard_and_mlflow_get_one_run_per_evaluation(tmp_path, assets):
    experiment = make_experiment(tmp_path, assets, train=dict(FAST, report_to=["tensorboard", "mlflow"]),
                                 objective=VAL_ONLY)
    points = tmp_path / "points.txt"
    points.write_text("2 1 1 -3\n2 2 1 -3\n")  # rank 4, alpha 4 and 8, dropout 0, lr 1e-3
    proc = blackbox(experiment, str(points))
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted(p for p in (experiment / "runs").iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))
    assert len(runs) == 2
    metrics = {p.name: json.loads((p / "metrics.json").read_text()) for p in runs}

    # the run id does not depend on the trackers: the same folder names without them
    plain = load_config(experiment, ["train.report_to=none"])
    assert plain.train.report_to == [] and load_config(experiment).fingerprint() == plain.fingerprint()
    for run in runs:
        hp = json.loads((run / "params.json").read_text())["hp"]
        assert run.name == run_id(hp, plain.fingerprint())

    # TensorBoard: <exp>/tensorboard/<run id> with the training loss, the final val_loss and the hparams
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    for run in runs:
        events = EventAccumulator(str(experiment / "tensorboard" / run.name))
        events.Reload()
        scalars = events.Tags()["scalars"]
        assert "train/loss" in scalars and "final/val_loss" in scalars and "final/objective" in scalars
        assert events.Scalars("final/val_loss")[-1].value == pytest.approx(metrics[run.name]["val_loss"], rel=1e-6)
        start = plugin_data_pb2.HParamsPluginData.FromString(
            events.PluginTagToContent("hparams")["_hparams_/session_start_info"]).session_start_info
        hp = json.loads((run / "params.json").read_text())["hp"]
        assert start.hparams["rank"].number_value == hp["rank"] and start.hparams["run_id"].string_value == run.name
        progress = json.loads((run / "progress.json").read_text())  # what the bar and `bbo status` read
        assert progress["step"] == progress["max_steps"] == 4 and progress["eta_seconds"] == 0

    # MLflow: the experiment's SQLite store, one run per evaluation, named by the run id
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{experiment / 'mlflow.db'}")
    tracked = client.search_runs([client.get_experiment_by_name("demo").experiment_id])
    assert sorted(r.info.run_name for r in tracked) == [p.name for p in runs]
    for r in tracked:
        hp = json.loads((experiment / "runs" / r.info.run_name / "params.json").read_text())["hp"]
        assert {k: r.data.params[k] for k in ("rank", "alpha", "dropout", "lr")} == {k: str(v) for k, v in hp.items()}
        assert r.data.metrics["val_loss"] == pytest.approx(metrics[r.info.run_name]["val_loss"], rel=1e-6)
        assert r.data.metrics["objective"] == pytest.approx(metrics[r.info.run_name]["objective"], rel=1e-6)
        assert "loss" in r.data.metrics and r.info.status == "FINISHED"
    assert not (experiment.parent / "mlruns").exists()


def test_report_to_values_and_unknown_names(tmp_path, assets):
    experiment = make_experiment(tmp_path, assets, train=FAST, objective=VAL_ONLY)
    assert load_config(experiment).train.report_to == []
    assert load_config(experiment, ["train.report_to=tensorboard"]).train.report_to == ["tensorboard"]
    with pytest.raises(ConfigError, match="train.report_to: 'tensorbord' is not one of tensorboard"):
        load_config(experiment, ["train.report_to=[tensorbord]"])
    proc = subprocess.run([sys.executable, "-m", "bbo", "check", str(experiment), "train.report_to=[nope]"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "train.report_to" in proc.stderr


def test_missing_tracker_package_is_one_line_before_training(tmp_path, assets):
    experiment = make_experiment(tmp_path, assets, train=dict(FAST, report_to=["wandb"]), objective=VAL_ONLY)
    proc = blackbox(experiment, "--rank", "4", "--lr", "0.001")
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "pip install wandb" in proc.stderr
    assert not (experiment / "runs").exists() or not any((experiment / "runs").iterdir())


def test_wandb_needs_a_key_or_offline_mode(tmp_path, assets, monkeypatch):
    experiment = make_experiment(tmp_path, assets, train=dict(FAST, report_to=["wandb"]), objective=VAL_ONLY)
    config = load_config(experiment)
    package = tmp_path / "site" / "wandb"  # only its presence matters here: find_spec, nothing is imported
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc from `wandb login`
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    with pytest.raises(PreflightError, match="WANDB_API_KEY"):
        check_trackers(config)
    monkeypatch.setenv("WANDB_MODE", "offline")
    check_trackers(config)
