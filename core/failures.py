"""Failure kinds with their fixes, and the stop file of a search whose first trainings all fail alike.

The blackbox writes the stop file (blackbox/evaluate.py); `bbo run` reads it, ends NOMAD and
prints the fix (bbo/__main__.py). See docs/failures.md.
"""
from __future__ import annotations

from pathlib import Path

from core.nomadtext import NOMAD_DIR
from core.store import read_json, write_json

# What to do about each failure kind, for the one message a stopped or all-failed search ends with.
FIXES = {
    "load_model": "the base model could not be loaded: check model.path (a local folder, or a hub id your "
                  "token may read: `hf auth login`), then rerun with --retry-failed",
    "load_tokenizer": "the tokenizer could not be loaded from model.path: check the folder holds the tokenizer "
                      "files, then rerun with --retry-failed",
    "load_data": "the data could not be loaded: check data.sources (paths, formats, hub access), then rerun "
                 "with --retry-failed",
    "oom": "out of GPU memory: see `python -m bbo plan <experiment>`; set train.gradient_checkpointing=true, "
           "lower train.per_device_batch_size (raise train.grad_accum to keep the effective batch), or "
           "model.quantization=4bit; then rerun with --retry-failed",
    "timeout": "evaluations ran past launch.timeout_minutes: raise it (see the time estimate of "
               "`python -m bbo plan <experiment>`) or shorten training, then rerun with --retry-failed",
    "diverged": "training diverged (NaN or huge loss): lower the learning rate range or train.max_grad_norm",
    "eval": "the MMLU evaluation failed: see mmlu.log in the run folders, then rerun with --retry-failed",
    "crash": "training crashed: see train.log in the run folders, then rerun with --retry-failed",
    "slurm": "Slurm ended the jobs (cancelled, node failure, preempted without requeue): see `scontrol show job` "
             "or `sacct -j`, the job logs in <experiment>/slurm/ and the slurm: section, then rerun with --retry-failed",
}


def fix_for(kind: str | None) -> str:
    return FIXES.get(kind or "", "see train.log in the run folders, then rerun with --retry-failed")


# ---------------------------------------------------------------- the stop file of a failing search

def stop_file(experiment_dir: str | Path) -> Path:
    """Written by the blackbox when a search's first trainings all fail alike; read by `bbo run`."""
    return Path(experiment_dir) / NOMAD_DIR / "stop.json"


def write_stop(experiment_dir: str | Path, record: dict) -> None:
    path = stop_file(experiment_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, record)


def read_stop(experiment_dir: str | Path, search: str) -> dict | None:
    """The stop record of this search, or None (a stop file of another search does not count)."""
    stop = read_json(stop_file(experiment_dir))
    return stop if isinstance(stop, dict) and stop.get("search") == search else None
