"""NOMAD's own files as tables: an experiment's nomad/history.txt and cache.txt, or a bare param + history pair.

    from bbo.history import load_nomad_history, load_history_file
    nomad = load_nomad_history("experiments/demo")                    # NOMAD's view of the search
    original = load_history_file("history.0.txt", "param.txt")         # a run of another system

The files are read by core/nomadtext.py; the columns follow bbo/results.py (x_<name>,
the decoded hyperparameters, the outputs named as in the config).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from bbo.results import HP, frame_attrs, hp_columns, typed
from core.config import load_config
from core.nomadtext import CACHE_FILE, HISTORY_FILE, number, parse_params, read_cache, read_history, tokens
from core.store import State


def load_nomad_history(experiment_dir: str | Path, overrides: list[str] = ()) -> pd.DataFrame:
    """NOMAD's view of the search: nomad/history.txt in order (or nomad/cache.txt if there is no history).

    Columns: order, status (ok/failed), x_<name>, the decoded hyperparameters, the
    outputs named as in config.objective.outputs (plus the objective's metric, e.g.
    val_loss, when it is not an output of its own), in_cache, cache_status, source.
    overrides: the `key=value` pairs the search ran with, if they changed the space or outputs.
    """
    config = load_config(experiment_dir, overrides)
    space = config.space
    cache = read_cache(config.dir / CACHE_FILE)
    cache_status = {_key(row["x"]): row["status"] for row in cache}
    history = read_history(config.dir / HISTORY_FILE, space.dimension)
    if history:
        records = [(r["x"], r["outputs"], cache_status.get(_key(r["x"]))) for r in history]
        source = "history"
    else:
        records = [(r["x"], r["outputs"], r["status"]) for r in cache]
        source = "cache"
    df = _history_frame(records, space.names(), config.objective.outputs, space, source=source)
    metric = config.objective.metric
    if metric not in df:  # e.g. mmlu, when NOMAD saw only the objective -mmlu
        df.insert(df.columns.get_loc("objective") + 1, metric, config.objective.from_objective(df["objective"]))
    df.attrs.update(frame_attrs(config))
    return df


def load_history_file(history_path: str | Path, param_path: str | Path, space=None,
                      outputs: list[str] | None = None) -> pd.DataFrame:
    """A bare NOMAD param file + history file pair (no experiment.yaml), e.g. a run of the original system.

    The param file gives DIMENSION, BB_OUTPUT_TYPE and X0. Without `space` the
    coordinates are x1..xn; with a SearchSpace they are x_<name> plus the decoded
    hyperparameters. Outputs are objective, extra_1, ... unless `outputs` names
    them; the first output is always also in `objective` (what NOMAD minimised).
    """
    params = {k: tokens(v[-1]) for k, v in parse_params(Path(param_path).read_text(), str(param_path),
                                                          strict=False).items()}
    if "DIMENSION" not in params:
        raise ValueError(f"{param_path}: no DIMENSION line")
    dimension = int(params["DIMENSION"][0])
    types = params.get("BB_OUTPUT_TYPE") or ["OBJ"]
    if outputs is None:
        outputs = _output_names(types)
    elif len(outputs) != len(types):
        raise ValueError(f"outputs names {len(outputs)} columns but BB_OUTPUT_TYPE has {len(types)}")
    if space is not None and space.dimension != dimension:
        raise ValueError(f"space has {space.dimension} variables but {param_path} says DIMENSION {dimension}")
    names = space.names() if space is not None else [str(i + 1) for i in range(dimension)]
    records = [(r["x"], r["outputs"], None) for r in read_history(history_path, dimension)]
    df = _history_frame(records, names, list(outputs), space, prefix="x_" if space is not None else "x")
    if outputs[0] != "objective":
        df.insert(df.columns.get_loc(outputs[0]), "objective", df[outputs[0]])
    x0 = [_x0_number(v) for v in params.get("X0", [])]
    df.attrs.update({"experiment": Path(history_path).parent.name, "metric": outputs[0],
                     "x0": x0 if len(x0) == dimension and None not in x0 else None, "names": names,
                     "budget": int(params["MAX_BB_EVAL"][0]) if "MAX_BB_EVAL" in params else None})
    return df


def _history_frame(records, names, outputs, space, source=None, prefix="x_") -> pd.DataFrame:
    """records: (coordinates, outputs, cache status or None); source=None means no cache to consult."""
    xcols = [f"{prefix}{n}" for n in names]
    rows = []
    for i, (x, outs, cache_status) in enumerate(records, 1):
        numeric = [v if isinstance(v, (int, float)) else None for v in outs]
        ok = bool(numeric) and None not in numeric  # NOMAD writes FAILED in place of the outputs
        row = {"order": i, "status": str(State.OK if ok else State.FAILED), **dict(zip(xcols, x))}
        if space is not None:
            try:
                row.update(hp_columns(space.decode(x)))
            except (IndexError, TypeError, ValueError):
                pass  # a point outside this space: keep its coordinates, leave the hyperparameters empty
        row.update({name: (numeric[j] if j < len(numeric) else None) for j, name in enumerate(outputs)})
        if source is not None:
            row.update(in_cache=cache_status is not None or source == "cache", cache_status=cache_status,
                       source=source)
        rows.append(row)
    columns = ["order", "status"] + xcols + (HP if space is not None else []) + list(outputs)
    if source is not None:
        columns += ["in_cache", "cache_status", "source"]
    df = pd.DataFrame(rows, columns=columns)
    integer_x = set()
    if space is not None:
        integer_x = {f"{prefix}{v.name}" for v in space.searched if v.input_type == "I"}
    elif all(isinstance(v, int) for r in records for v in r[0]):
        integer_x = set(xcols)
    for col in df.columns:
        if col == "in_cache":
            df[col] = df[col].astype("boolean")
        elif col in ("status", "cache_status", "source"):
            df[col] = df[col].astype("str")
        else:
            df[col] = typed(df[col], col, integer_x)
    return df


def _output_names(types: list[str]) -> list[str]:
    names, counts = [], {}
    for t in types:
        base = {"OBJ": "objective", "EXTRA_O": "extra"}.get(t.upper(), "constraint")
        counts[base] = counts.get(base, 0) + 1
        if base == "objective":
            names.append("objective" if counts[base] == 1 else f"objective_{counts[base]}")
        else:
            names.append(f"{base}_{counts[base]}")
    return names


def _x0_number(text):
    """X0's coordinates as numbers, an integer-valued one as int ("1.0" too, unlike core.nomadtext.number)."""
    value = number(text)
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _key(x) -> tuple:
    """Coordinates compared across files that print numbers differently."""
    return tuple(float(f"{float(v):.9g}") if v is not None else None for v in x)
