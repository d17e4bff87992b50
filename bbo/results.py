"""Results as pandas tables: one row per evaluated point, for notebooks, the CLI and the report.

    from bbo.results import load_runs, compare, best
    df = load_runs("experiments/demo")          # run folders + evaluations.jsonl
    both = compare(["experiments/a", "experiments/b"])
    nomad = load_nomad_history("experiments/demo")  # NOMAD's own history/cache files

The run folders are the truth (bbo/store.py); evaluations.jsonl gives the order in
which points were answered and which answers came from the cache. `objective` is
what NOMAD minimises: the validation loss as is, or -mmlu for an MMLU objective.
Columns are flat (one value per cell) so CSV and Parquet hold the same table:

    run_id, order (1-based, first answer; <NA> for a run never recorded), status (ok | failed |
    pruned | running | incomplete), reason, error_kind (oom, diverged, timeout, crash, ...),
    cached (the first answer came from a finished run), n_answers, cached_hits, source (nomad | hand),
    x_<name> (NOMAD coordinates), rank, alpha, alpha_over_rank, dropout, lr,
    objective, val_loss, mmlu, mmlu_<subject>..., train_loss, train_seconds, eval_seconds,
    wall_seconds, tokens_per_second, started, finished (UTC), attempt, device, num_processes,
    then any other number of metrics.json (steps, val_tokens, mmlu_stderr, ...), sorted.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from bbo.config import ExperimentConfig, load_config
from bbo.nomadfiles import read_cache, read_history
from bbo.paramfile import CACHE_FILE, HISTORY_FILE
from bbo.store import RunStore, read_json

HP = ["rank", "alpha", "alpha_over_rank", "dropout", "lr"]
METRIC_COLUMNS = ["objective", "val_loss", "mmlu"]  # then mmlu_<subject>..., then the rest
TAIL_METRICS = ["train_loss", "train_seconds", "eval_seconds", "wall_seconds", "tokens_per_second"]
STATUS_COLUMNS = ["run_id", "order", "status", "reason", "error_kind", "cached", "n_answers", "cached_hits", "source"]
TIME_COLUMNS = ["started", "finished"]
RUN_EXTRAS = ["attempt", "device", "num_processes"]
# Metrics that are not numbers per run, or are spread into their own columns.
SKIP_METRICS = {"mmlu_subjects", "device", "dtype", "precision", "lm_eval_version"}
INT_COLUMNS = {"order", "n_answers", "cached_hits", "rank", "alpha", "attempt", "num_processes"}
STR_COLUMNS = {"run_id", "status", "reason", "error_kind", "source", "device", "experiment"}


# ---------------------------------------------------------------- run folders

def load_runs(experiment_dir: str | Path, overrides: list[str] = ()) -> pd.DataFrame:
    """One row per evaluated point of an experiment, in the order NOMAD (or a user) first asked for it.

    overrides: the `key=value` pairs the search ran with, if they changed the space.
    """
    config = load_config(experiment_dir, overrides)
    store = RunStore(config.dir)
    names = config.space.names()

    # First answer per run id gives the order; later answers only count as hits.
    answers: dict[str, dict] = {}
    for entry in store.evaluations():
        rid = entry.get("run_id")
        if not rid:
            continue
        if rid not in answers:
            answers[rid] = {"order": len(answers) + 1, "first": entry, "last": entry, "n": 0, "hits": 0}
        info = answers[rid]
        info["last"] = entry
        info["n"] += 1
        info["hits"] += bool(entry.get("cached"))

    rids = list(answers) + [r for r in store.run_ids() if r not in answers]
    rows = [_run_row(config, store, rid, answers.get(rid), names) for rid in rids]
    df = _typed_frame(rows, _base_columns(names), config)
    unanswered = df["order"].isna()
    if unanswered.any():  # runs never recorded (a crash before record): after the others, by start time
        df = pd.concat([df[~unanswered], df[unanswered].sort_values("started", kind="stable")], ignore_index=True)
    df.attrs.update(_attrs(config))
    return df


def _run_row(config: ExperimentConfig, store: RunStore, rid: str, info: dict | None, names: list[str]) -> dict:
    run_dir = store.run_dir(rid)
    params = read_json(run_dir / "params.json") or {}
    status = read_json(run_dir / "status.json") or {}
    metrics = read_json(run_dir / "metrics.json")
    metrics = metrics if isinstance(metrics, dict) else {}
    first = info["first"] if info else {}
    last = info["last"] if info else {}

    hp = params.get("hp") or first.get("hp") or {}
    point = params.get("point") or first.get("point")
    if point is None and hp:
        point = config.space.encode(hp)  # a hand-given point the space can represent

    state = status.get("state") or last.get("state") or "incomplete"
    if state == "failed" and status.get("error_kind") == "pruned":
        state = "pruned"
    row = {
        "run_id": rid,
        "order": info["order"] if info else None,
        "status": state,
        "reason": status.get("reason") if status else last.get("reason"),
        "error_kind": status.get("error_kind"),
        "cached": bool(first.get("cached")) if info else None,
        "n_answers": info["n"] if info else 0,
        "cached_hits": info["hits"] if info else 0,
        "source": first.get("source"),
        "started": status.get("started"),
        "finished": status.get("finished"),
        "attempt": status.get("attempt"),
        "device": metrics.get("device"),
        "num_processes": metrics.get("world_size") or (params.get("fixed") or {}).get(
            "num_processes", config.launch.num_processes),
    }
    for name, x in zip(names, point or [None] * len(names)):
        row[f"x_{name}"] = x
    row.update(_hp_columns(hp))
    if "objective" not in metrics and state == "ok" and isinstance(first.get("objective"), (int, float)):
        metrics = dict(metrics, objective=first["objective"])  # run folder lost its metrics: the answer has it
    row.update(_metric_columns(metrics))
    return row


def _hp_columns(hp: dict) -> dict:
    rank, alpha = hp.get("rank"), hp.get("alpha")
    return {"rank": rank, "alpha": alpha,
            "alpha_over_rank": alpha / rank if rank and alpha is not None else None,
            "dropout": hp.get("dropout"), "lr": hp.get("lr")}


def _metric_columns(metrics: dict) -> dict:
    """Every number in metrics.json, with the MMLU subjects spread into mmlu_<subject> columns."""
    out = {}
    for key, value in metrics.items():
        if key in SKIP_METRICS:
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = float(value)
    for subject, acc in sorted((metrics.get("mmlu_subjects") or {}).items()):
        if isinstance(acc, (int, float)):
            out[f"mmlu_{subject}"] = float(acc)
    return out


def _base_columns(names: list[str]) -> list[str]:
    return (STATUS_COLUMNS + [f"x_{n}" for n in names] + HP + METRIC_COLUMNS + TAIL_METRICS
            + TIME_COLUMNS + RUN_EXTRAS)


def _typed_frame(rows: list[dict], base: list[str], config: ExperimentConfig | None) -> pd.DataFrame:
    """Fixed columns first, then MMLU subjects, then any other metric; one dtype per column."""
    seen = []
    for row in rows:
        seen += [k for k in row if k not in base and k not in seen]
    subjects = sorted(k for k in seen if k.startswith("mmlu_") and k not in ("mmlu_stderr", "mmlu_n", "mmlu_seconds"))
    others = sorted(k for k in seen if k not in subjects)
    at = base.index("mmlu") + 1
    columns = base[:at] + subjects + base[at:] + others
    df = pd.DataFrame(rows, columns=columns)
    integer_x = set()
    if config is not None:
        integer_x = {f"x_{v.name}" for v in config.space.searched if v.input_type == "I"}
    for col in df.columns:
        df[col] = _typed(df[col], col, integer_x)
    return df


def _typed(s: pd.Series, col: str, integer_x: set) -> pd.Series:
    if col in TIME_COLUMNS:
        return pd.to_datetime(pd.to_numeric(s, errors="coerce"), unit="s", utc=True).astype("datetime64[ns, UTC]")
    if col == "cached":
        return s.astype("boolean")
    if col in STR_COLUMNS:
        return s.astype("str")
    if col in INT_COLUMNS or col in integer_x:
        return pd.to_numeric(s, errors="coerce").round().astype("Int64")
    return pd.to_numeric(s, errors="coerce").astype("float64")


def _attrs(config: ExperimentConfig) -> dict:
    return {"experiment": config.name, "metric": config.objective.metric, "x0": list(config.space.x0),
            "names": config.space.names(), "budget": config.nomad.budget}


def compare(dirs: list[str | Path]) -> pd.DataFrame:
    """Several experiments stacked, with an `experiment` column first (the config's name, or the
    folder when two experiments share a name)."""
    frames, used = [], set()
    for d in dirs:
        df = load_runs(d)
        label = df.attrs.get("experiment") or Path(d).name
        label = str(d) if label in used else label
        used.add(label)
        df.insert(0, "experiment", label)
        frames.append(df)
    out = pd.concat([f for f in frames if len(f)] or frames[:1], ignore_index=True)
    out["experiment"] = out["experiment"].astype("str")
    return out


# ---------------------------------------------------------------- NOMAD's own files

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
    if metric not in df:
        sign = -1.0 if metric == "mmlu" else 1.0  # the objective is -mmlu for an MMLU search
        df.insert(df.columns.get_loc("objective") + 1, metric, sign * df["objective"])
    df.attrs.update(_attrs(config))
    return df


def load_history_file(history_path: str | Path, param_path: str | Path, space=None,
                      outputs: list[str] | None = None) -> pd.DataFrame:
    """A bare NOMAD param file + history file pair (no experiment.yaml), e.g. a run of the original system.

    The param file gives DIMENSION, BB_OUTPUT_TYPE and X0. Without `space` the
    coordinates are x1..xn; with a SearchSpace they are x_<name> plus the decoded
    hyperparameters. Outputs are objective, extra_1, ... unless `outputs` names
    them; the first output is always also in `objective` (what NOMAD minimised).
    """
    params = _read_param_file(param_path)
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
    x0 = [_number(v) for v in params.get("X0", [])]
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
        row = {"order": i, "status": "ok" if ok else "failed", **dict(zip(xcols, x))}
        if space is not None:
            try:
                row.update(_hp_columns(space.decode(x)))
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
            df[col] = _typed(df[col], col, integer_x)
    return df


def _read_param_file(path) -> dict[str, list[str]]:
    """Keyword -> value tokens (parentheses dropped), tolerant of keywords this project does not write."""
    out = {}
    for raw in Path(path).read_text().splitlines():
        line = raw.split("#", 1)[0].replace("(", " ").replace(")", " ").split()
        if line:
            out[line[0].upper()] = line[1:]
    if "DIMENSION" not in out:
        raise ValueError(f"{path}: no DIMENSION line")
    return out


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


def _number(text):
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return int(value) if value.is_integer() else value


def _key(x) -> tuple:
    """Coordinates compared across files that print numbers differently."""
    return tuple(float(f"{float(v):.9g}") if v is not None else None for v in x)


# ---------------------------------------------------------------- summaries

def ranked(df: pd.DataFrame) -> pd.DataFrame:
    """ok rows by objective (best first), then everything else in evaluation order."""
    if df.empty:
        return df
    ok = df["status"].eq("ok") & df["objective"].notna()
    rest = df[~ok]
    if "order" in rest:
        rest = rest.sort_values("order", kind="stable", na_position="last")
    return pd.concat([df[ok].sort_values("objective", kind="stable"), rest], ignore_index=True)


def best(df: pd.DataFrame) -> pd.Series | None:
    """The ok row with the lowest objective (what NOMAD minimised), or None."""
    ok = df[df["status"].eq("ok") & df["objective"].notna()] if len(df) else df
    if ok.empty:
        return None
    return ok.loc[ok["objective"].idxmin()]


def x0_row(df: pd.DataFrame, x0: list | None = None) -> pd.Series | None:
    """The row evaluated at NOMAD's starting point X0 (from df.attrs unless given), or None."""
    x0 = x0 if x0 is not None else df.attrs.get("x0")
    names = df.attrs.get("names")
    if not x0 or not names or df.empty:
        return None
    cols = [f"x_{n}" if f"x_{n}" in df else f"x{n}" for n in names]
    if not all(c in df for c in cols):
        return None
    match = pd.Series(True, index=df.index)
    for col, value in zip(cols, x0):
        match &= np.isclose(pd.to_numeric(df[col], errors="coerce").astype("float64").to_numpy(na_value=np.nan),
                            float(value), rtol=1e-9, atol=1e-12)
    hits = df[match]
    if hits.empty:
        return None
    ok = hits[hits["status"].eq("ok")]
    return (ok if len(ok) else hits).iloc[0]


def objective_label(metric: str | None) -> str:
    """Header of the objective column: what NOMAD minimised, in words."""
    if metric == "mmlu":
        return "objective (min) = -mmlu"
    return "objective (min)"


TABLE_COLUMNS = ["experiment", "order", "status", "rank", "alpha", "alpha_over_rank", "dropout", "lr",
                 "objective", "val_loss", "mmlu", "train_loss", "wall_seconds", "cached", "cached_hits",
                 "run_id", "reason"]
OPTIONAL_COLUMNS = {"val_loss", "mmlu", "train_loss", "wall_seconds", "cached", "cached_hits", "run_id", "reason"}


def _coordinate_columns(df: pd.DataFrame) -> list[str]:
    """x_<name> columns (experiments) or x1..xn (bare NOMAD history files)."""
    return [c for c in df.columns if _is_coordinate(c)]


def _is_coordinate(name: str) -> bool:
    return name.startswith("x_") or (name.startswith("x") and name[1:].isdigit())


def table_text(df: pd.DataFrame, top: int | None = None) -> str:
    """A readable table: chosen columns, rounded, best first, failures last."""
    if df.empty:
        return "no evaluations yet"
    rows = ranked(df)
    if top is not None:
        rows = rows.head(top)
    cols = [c for c in TABLE_COLUMNS if c in rows and not (c in OPTIONAL_COLUMNS and rows[c].isna().all())]
    if "rank" not in rows or rows["rank"].isna().all():  # no decoded hyperparameters: show the coordinates
        cols = [c for c in cols if c not in HP]
        at = cols.index("status") + 1 if "status" in cols else 0
        cols[at:at] = _coordinate_columns(rows)
    elif _coordinate_columns(rows):  # NOMAD's coordinates in one compact column
        cols.insert(cols.index("status") + 1 if "status" in cols else 0, "point")
    cols += [c for c in rows.columns if c.startswith("extra_")]
    out = rows.assign(point=_point_text(rows))[cols].copy() if "point" in cols else rows[cols].copy()
    if "reason" in out:
        out["reason"] = out["reason"].map(lambda r: "" if not isinstance(r, str) else r if len(r) <= 40
                                          else r[:37] + "...")
    if "run_id" in out:
        out["run_id"] = out["run_id"].map(lambda r: r if isinstance(r, str) else "")
    if "wall_seconds" in out:
        out["wall_seconds"] = out["wall_seconds"] / 60
        out = out.rename(columns={"wall_seconds": "wall_min"})
    formats = {"objective": "{:.4f}", "val_loss": "{:.4f}", "mmlu": "{:.4f}", "train_loss": "{:.4f}",
               "alpha_over_rank": "{:g}", "dropout": "{:g}", "lr": "{:.3g}", "wall_min": "{:.1f}"}
    formats.update({c: "{:.4g}" for c in out.columns if c.startswith("extra_")})
    for col, fmt in formats.items():
        if col in out:
            out[col] = out[col].map(lambda v, f=fmt: "" if _missing(v) else f.format(v))
    for col in out.columns:
        if col not in formats:
            out[col] = out[col].map(lambda v: "" if _missing(v) else str(v))
    out = out.rename(columns={"objective": objective_label(df.attrs.get("metric"))})
    return out.to_string(index=False)


def _point_text(df: pd.DataFrame) -> pd.Series:
    coords = _coordinate_columns(df)
    return df[coords].apply(lambda r: " ".join("" if _missing(v) else f"{v:g}" if isinstance(v, float) else str(v)
                                               for v in r).strip(), axis=1)


def _missing(v) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)) or v is pd.NaT


def describe_point(row: pd.Series) -> str:
    """rank 8, alpha 16 (2 x rank), dropout 0.05, lr 0.0001: the hyperparameters of one row, in words."""
    if "rank" in row and not _missing(row["rank"]):
        text = f"rank {row['rank']}, alpha {row['alpha']} ({row['alpha_over_rank']:g} x rank), " \
               f"dropout {row['dropout']:g}, lr {row['lr']:.3g}"
    else:
        text = ""
    coords = [c for c in row.index if _is_coordinate(c)]
    if coords and not all(_missing(row[c]) for c in coords):
        point = " ".join(f"{row[c]:g}" if isinstance(row[c], float) else str(row[c])
                         for c in coords if not _missing(row[c]))
        text = f"{text} [NOMAD point ({point})]" if text else f"NOMAD point ({point})"
    return text


def summary_text(df: pd.DataFrame, config: ExperimentConfig | None = None) -> str:
    """What `bbo run` prints at the end: the table, the best point, X0 versus best."""
    if config is not None:  # a frame that lost its attrs (concat, filtering) still finds X0
        df = df.copy(deep=False)
        df.attrs.update({k: v for k, v in _attrs(config).items() if k not in df.attrs})
    lines = [table_text(df)]
    top = best(df)
    if top is None:
        lines.append("best point: none (no evaluation succeeded)")
        return "\n".join(lines)
    label = objective_label(df.attrs.get("metric"))
    lines.append(f"best point: {describe_point(top)} -> {label} {top['objective']:.6g}")
    start = x0_row(df)
    if start is None:
        lines.append("X0: not evaluated")
    elif start["status"] != "ok" or _missing(start["objective"]):
        lines.append(f"X0: {describe_point(start)} -> {start['status']}")
    else:
        lines.append(f"X0: {describe_point(start)} -> {label} {start['objective']:.6g}")
        diff = top["objective"] - start["objective"]
        rel = diff / abs(start["objective"]) * 100 if start["objective"] else float("nan")
        lines.append(f"X0 vs best: {start['objective']:.6g} -> {top['objective']:.6g} "
                     f"(difference {diff:+.4g}, {rel:+.2f}%)")
    return "\n".join(lines)
