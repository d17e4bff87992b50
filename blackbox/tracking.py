"""Experiment trackers through the libraries' own integrations (train.report_to): one tracked run per evaluation.

    python -m bbo run experiments/demo "train.report_to=[tensorboard, mlflow]"
    tensorboard --logdir experiments/demo/tensorboard
    mlflow ui --backend-store-uri sqlite:///experiments/demo/mlflow.db   (the UI: pip install mlflow)

transformers' integrations (TensorBoardCallback, MLflowCallback, WandbCallback, ...) log the training;
this module only tells them where and under which name, and adds what they cannot see:
- `environment`: the tracked run is named by the run id and grouped by experiment (MLflow experiment,
  wandb project and group, trackio project); TensorBoard writes <experiment>/tensorboard/<run id>, MLflow
  <experiment>/mlflow.db unless MLFLOW_TRACKING_URI says otherwise.
- `Deferred`: the integrations close their run at the end of training, before train.py measures the
  validation loss; it holds their on_train_end back until that number is logged.
- `log_final`: after the whole evaluation (MMLU runs later, in another process), the hyperparameters and
  the final numbers (val_loss, objective, mmlu) go to TensorBoard (hparams) and MLflow (params, metrics).
A tracker that fails there is a warning, never a failed point: the run folder is the record.
"""
from __future__ import annotations

import fcntl
import logging
import math
import os
import sys
from pathlib import Path

from core.config import ExperimentConfig
from core.store import State, read_json, write_json

TRACKING_FILE = "tracking.json"  # in the run folder: which tracked runs belong to it (the MLflow run id)
HPARAMS = ("rank", "alpha", "dropout", "lr")
FINAL_METRICS = ("val_loss", "objective", "mmlu", "rouge1", "rouge2", "rougeL", "rougeLsum", "train_loss")


def mlflow_uri(experiment_dir: Path) -> str:
    """The MLflow store: the user's MLFLOW_TRACKING_URI, else a SQLite file in the experiment folder
    (mlflow 3 refuses a plain file store by default; SQLite works offline)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(experiment_dir).resolve() / 'mlflow.db'}"


def tensorboard_dir(experiment_dir: Path, rid: str) -> Path:
    return Path(experiment_dir) / "tensorboard" / rid


def environment(name: str, experiment_dir: Path, rid: str) -> dict:
    """What the integrations read from the environment when they set up; a user's own setting wins
    (except TensorBoard's folder: one per run id)."""
    env = {"MLFLOW_EXPERIMENT_NAME": os.environ.get("MLFLOW_EXPERIMENT_NAME") or name,
           "MLFLOW_TRACKING_URI": mlflow_uri(experiment_dir),
           "TENSORBOARD_LOGGING_DIR": str(tensorboard_dir(experiment_dir, rid)),
           "WANDB_PROJECT": os.environ.get("WANDB_PROJECT") or name,
           "WANDB_RUN_GROUP": os.environ.get("WANDB_RUN_GROUP") or name}
    return env


def prepare(config: ExperimentConfig) -> None:
    """Create the experiment's MLflow store before any training: parallel trainings must not all create
    the SQLite tables at once, and the artifacts belong in the experiment folder, not the working one."""
    if "mlflow" not in config.train.report_to or os.environ.get("MLFLOW_TRACKING_URI"):
        return  # a store of the user's: MLflowCallback creates the experiment there
    if (config.dir / "mlflow.db").exists():
        return
    with open(config.dir / ".mlflow.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        from mlflow import MlflowClient

        logging.getLogger("mlflow").setLevel(logging.WARNING)  # not its table-creation lines on our stderr

        client = MlflowClient(mlflow_uri(config.dir))
        if client.get_experiment_by_name(config.name) is None:
            client.create_experiment(config.name, artifact_location=(config.dir / "mlflow-artifacts").as_uri())


# ---------------------------------------------------------------- in the training script

def deferred(trainer, run_dir: Path):
    """Hold back the integrations' on_train_end (they close their run there) until `finish`; record the
    MLflow run id in the run folder when training begins. Returns the callback, added to the trainer."""
    from transformers import TrainerCallback
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    names = {cls: name for name, cls in INTEGRATION_TO_CALLBACK.items()}
    integrations = [(names[type(cb)], cb) for cb in trainer.callback_handler.callbacks if type(cb) in names]

    class Deferred(TrainerCallback):
        def __init__(self):
            self.ended = None  # (args, state, control) of the held-back on_train_end
            for _, cb in integrations:
                cb.on_train_end = self.hold

        def hold(self, args, state, control, **kwargs):
            self.ended = (args, state, control)

        def on_train_begin(self, args, state, control, **kwargs):  # after the integrations' own set-up
            if state.is_world_process_zero and any(name == "mlflow" for name, _ in integrations):
                import mlflow

                run = mlflow.active_run()
                if run is not None:
                    write_json(run_dir / TRACKING_FILE, {"mlflow": {"run_id": run.info.run_id,
                                                                    "tracking_uri": mlflow.get_tracking_uri()}})

        def finish(self, final: dict, hp: dict) -> None:
            """The final validation loss to each integration (TensorBoard's come from log_final, under
            final/), then their run ends."""
            if self.ended is None:
                return
            args, state, control = self.ended
            for name, cb in integrations:
                if state.is_world_process_zero:
                    if name != "tensorboard":
                        cb.on_log(args, state, control, logs=dict(final))
                    if name == "wandb":
                        import wandb

                        if wandb.run is not None:
                            wandb.run.config.update(dict(hp), allow_val_change=True)
                type(cb).on_train_end(cb, args, state, control)

    callback = Deferred()
    trainer.add_callback(callback)
    return callback


# ---------------------------------------------------------------- after the evaluation

def log_final(config: ExperimentConfig, run_dir: Path, hp: dict, metrics: dict | None, state: str) -> None:
    """The hyperparameters and final numbers of a finished evaluation to TensorBoard and MLflow;
    a tracker's failure is a warning on stderr."""
    trackers = config.train.report_to
    numbers = {k: float(metrics[k]) for k in FINAL_METRICS
               if isinstance((metrics or {}).get(k), (int, float)) and math.isfinite(metrics[k])}
    params = {k: hp[k] for k in HPARAMS} | {"run_id": run_dir.name}
    for name, log in (("tensorboard", _tensorboard_final), ("mlflow", _mlflow_final)):
        if name not in trackers:
            continue
        try:
            log(config, run_dir, params, numbers, state)
        except Exception as e:  # noqa: BLE001 - the run folder holds the result; a tracker is a view of it
            print(f"warning: {name}: could not log the final metrics of {run_dir.name}: "
                  f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", file=sys.stderr)


def _tensorboard_final(config, run_dir: Path, params: dict, numbers: dict, state: str) -> None:
    """hparams (TensorBoard's HPARAMS tab) and final/<metric> scalars, in the run's own folder."""
    if state == State.FAILED:
        return
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams

    step = int((read_json(run_dir / "metrics.json") or {}).get("steps") or 0)
    final = {f"final/{k}": v for k, v in numbers.items()}
    with SummaryWriter(log_dir=str(tensorboard_dir(config.dir, run_dir.name))) as writer:
        for summary in hparams(params | {"state": state}, final):  # experiment, session start, session end
            writer.file_writer.add_summary(summary)
        for tag, value in final.items():
            writer.add_scalar(tag, value, step)


def _mlflow_final(config, run_dir: Path, params: dict, numbers: dict, state: str) -> None:
    """Params and final metrics on the MLflow run the training started (tracking.json); a failed
    evaluation's run is marked FAILED."""
    record = (read_json(run_dir / TRACKING_FILE) or {}).get("mlflow")
    if not record:
        return  # training never got to start its run
    from mlflow import MlflowClient

    client = MlflowClient(record["tracking_uri"])
    run_id = record["run_id"]
    if state == State.FAILED:
        client.set_terminated(run_id, status="FAILED")
        return
    existing = client.get_run(run_id).data.params
    for key, value in params.items():
        if key not in existing:  # params are write-once
            client.log_param(run_id, key, value)
    for key, value in numbers.items():
        client.log_metric(run_id, key, value)
    client.set_tag(run_id, "bbo.state", state)
    client.set_tag(run_id, "bbo.experiment", config.name)
