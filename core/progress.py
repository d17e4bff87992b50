"""A training's progress, as its run folder shows it: <run dir>/progress.json.

blackbox/train.py writes it from a TrainerCallback every few seconds; the blackbox's progress bar
(blackbox/work.py, on a terminal) and `python -m bbo status` read it. One file, one format:

    {"step": 12, "max_steps": 40, "loss": 2.31, "elapsed": 30.2, "eta_seconds": 70.5, "updated": 1.7e9}
"""
from __future__ import annotations

import time
from pathlib import Path

from core.store import read_json

PROGRESS_FILE = "progress.json"


def progress_record(step: int, max_steps: int, loss: float | None, elapsed: float) -> dict:
    """The record for a training at `step` of `max_steps`, `elapsed` seconds after its first step;
    the ETA assumes the steps to come take as long as those so far."""
    eta = elapsed / step * (max_steps - step) if step > 0 and max_steps >= step else None
    return {"step": step, "max_steps": max_steps, "loss": loss, "elapsed": elapsed, "eta_seconds": eta,
            "updated": time.time()}


def read_progress(run_dir: Path) -> dict | None:
    """The run's last progress record, or None (not started training, or not a dict)."""
    record = read_json(Path(run_dir) / PROGRESS_FILE)
    return record if isinstance(record, dict) and isinstance(record.get("step"), int) else None


def duration(seconds: float | None) -> str:
    """1h02m, 3m05s, 42s; "-" when unknown."""
    if seconds is None:
        return "-"
    seconds = int(round(max(0.0, seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def describe(record: dict) -> str:
    """One line: "step 12/40, loss 2.31, ETA 1m10s (updated 3s ago)"."""
    loss = record.get("loss")
    loss_text = f"{loss:.4g}" if isinstance(loss, (int, float)) else "-"
    age = time.time() - record.get("updated", time.time())
    return (f"step {record['step']}/{record.get('max_steps', '?')}, loss {loss_text}, "
            f"ETA {duration(record.get('eta_seconds'))} (updated {duration(age)} ago)")
