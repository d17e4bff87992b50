"""Learning curves and the pruning rule: stop a training that is already worse than most finished runs.

Every run measures its validation loss at the checkpoints of train.eval_every (fractions of the
run: 0.25 -> 0.25, 0.5, 0.75, then the end) and keeps them in <run dir>/curve.json:

    {"eval_every": 0.25, "points": [{"fraction": 0.25, "step": 3, "val_loss": 2.91, "train_loss": 3.1,
                                     "seconds": 12.4}, ..., {"fraction": 1.0, ...}]}

With pruning.enabled, the blackbox computes one threshold per checkpoint when it starts an
evaluation, from the curves of the finished (ok) runs with the same fixed settings: the
pruning.percentile of their validation losses there, where at least pruning.min_runs have one.
The training (blackbox/train.py) compares at each checkpoint from pruning.warmup on and stops
as pruned above the threshold. The thresholds travel in spec.json, so the rule is the same on a
GPU slot of this machine and in a Slurm job, and a run's folder says why it was stopped.
"""
from __future__ import annotations

import json
import math

from core.store import RunStore, State, read_json

CURVE_FILE = "curve.json"


def checkpoints(eval_every: float | None) -> list[float]:
    """The fractions of a run at which its validation loss is measured, the end (1.0) last."""
    if not eval_every:
        return [1.0]
    out, k = [], 1
    while k * eval_every < 1.0 - 1e-9:
        out.append(round(k * eval_every, 6))
        k += 1
    return out + [1.0]


def checkpoint_steps(eval_every: float | None, max_steps: int) -> dict[int, float]:
    """{optimizer step: fraction} of the checkpoints before the end (the end is measured anyway)."""
    steps = {}
    for fraction in checkpoints(eval_every)[:-1]:
        step = max(1, round(fraction * max_steps))
        if step < max_steps:
            steps.setdefault(step, fraction)
    return steps


def key(fraction: float) -> str:
    """A checkpoint's name in JSON (thresholds) and in the results table (val_loss@0.25)."""
    return f"{fraction:g}"


def read_curve(run_dir) -> list[dict]:
    """The points of a run's curve.json ([] when it has none)."""
    data = read_json(run_dir / CURVE_FILE)
    points = data.get("points") if isinstance(data, dict) else None
    return [p for p in points if isinstance(p, dict)] if isinstance(points, list) else []


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile with linear interpolation (numpy's default), without importing numpy."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def thresholds(curves: list[list[dict]], eval_every: float | None, warmup: float, q: float,
               min_runs: int) -> dict[str, float]:
    """{checkpoint key: the validation loss above which a run stops there}, from finished runs' curves."""
    out = {}
    for fraction in checkpoints(eval_every)[:-1]:
        if fraction < warmup - 1e-9:
            continue
        values = [p["val_loss"] for curve in curves for p in curve
                  if abs(p.get("fraction", -1) - fraction) < 1e-6 and _finite(p.get("val_loss"))]
        if len(values) >= min_runs:
            out[key(fraction)] = percentile(values, q)
    return out


def prune_reason(fraction: float, val_loss: float, rule: dict | None) -> str | None:
    """Why a run stops at this checkpoint, or None to go on. rule: spec.json's "pruning"."""
    if not rule:
        return None
    if rule.get("stop_at") is not None and abs(fraction - rule["stop_at"]) < 1e-6:
        return (f"low-fidelity start: the start design is screened at {fraction:.0%} of training "
                f"(nomad.screen_fraction; val_loss {val_loss:.6g} there)")
    threshold = rule["thresholds"].get(key(fraction))
    if threshold is None or not (val_loss > threshold or not _finite(val_loss)):
        return None
    return (f"val_loss {val_loss:.6g} at {fraction:.0%} of training is above the {rule['percentile']:g}th "
            f"percentile of {rule['runs']} finished runs there ({threshold:.6g})")


def rule_for(config, fingerprint: dict) -> dict | None:
    """What spec.json hands the training: None when pruning is off, else the thresholds of now."""
    pruning = config.pruning
    if not pruning.enabled:
        return None
    store = RunStore(config.dir)
    same = _canonical(fingerprint)
    curves = []
    for rid in store.run_ids():
        status = store.status(rid) or {}
        if status.get("state") != State.OK:
            continue
        params = read_json(store.run_dir(rid) / "params.json") or {}
        if params.get("confirms") or _canonical(params.get("fixed")) != same:
            continue  # another experiment setting, or a confirmation's other seed
        curves.append(read_curve(store.run_dir(rid)))
    return {"thresholds": thresholds(curves, config.train.eval_every, pruning.warmup, pruning.percentile,
                                     pruning.min_runs),
            "percentile": pruning.percentile, "warmup": pruning.warmup, "runs": len(curves)}


def screen_rule(fraction: float) -> dict:
    """What spec.json hands a training of the low-fidelity start (bbo/screen.py): stop at `fraction`, whatever
    the loss there (the run is recorded pruned: it never answers as a complete one)."""
    return {"thresholds": {}, "stop_at": fraction, "percentile": 0.0, "warmup": fraction, "runs": 0}


def _canonical(fingerprint) -> str:
    return json.dumps(fingerprint, sort_keys=True, default=str)


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
