"""The results table: one row per evaluated point, from the run folders, for notebooks, the CLI and the report.

    from bbo.results import load_runs, compare
    df = load_runs("experiments/demo")          # run folders + evaluations.jsonl
    both = compare(["experiments/a", "experiments/b"])

NOMAD's own files as tables: bbo/history.py. Ranking and text (best, table_text): bbo/summary.py.
The run folders are the truth (core/store.py); evaluations.jsonl gives the order in
which points were answered and which answers came from the cache. `objective` is
what NOMAD minimises: the validation loss as is, or -mmlu for an MMLU objective.
Columns are flat (one value per cell) so CSV and Parquet hold the same table:

    run_id, order (1-based, first answer; <NA> for a run never recorded), status (a core.store.State:
    ok | failed | pruned | running; or incomplete: no status.json), reason, error_kind (oom, diverged, timeout, crash, ...),
    cached (the first answer came from a finished run), n_answers, cached_hits, source (nomad | model | hand | ...),
    x_<name> (NOMAD coordinates), rank, alpha, alpha_over_rank, dropout, lr,
    objective, objective_vs_base (the objective minus the base model's, once `bbo baseline` measured it),
    val_loss, mmlu (with mmlu.search_limit when set: mmlu_limit), mmlu_<subject>...,
    mmlu_full (objective.finalists: MMLU with mmlu.limit, from mmlu_full.json), train_loss, train_seconds, eval_seconds,
    wall_seconds, tokens_per_second, started, finished (UTC), attempt, device, num_processes,
    slurm_job, slurm_node, slurm_state (launch.executor=slurm), adapter (kept | removed by
    train.keep_adapters | None: a failed or pruned run never had one), seed, seeds_n, seeds_mean, seeds_std
    (bbo confirm), then any other number of metrics.json (steps, val_tokens, mmlu_stderr, trained_fraction,
    pruned_at, ...) and the learning curve (val_loss@0.25, val_loss@0.5, ... from curve.json), sorted;
    with objective.constraints, last: c_<metric> per constraint (NOMAD's value, <= 0 feasible) and feasible.
    The curves one row per checkpoint: load_curves.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from core.adapters import adapter_state
from core.baseline import read_baseline
from core.config import ExperimentConfig, load_config
from core.pruning import key as checkpoint_key
from core.pruning import read_curve
from core.store import RunStore, State, read_json

HP = ["rank", "alpha", "alpha_over_rank", "dropout", "lr"]
METRIC_COLUMNS = ["objective", "val_loss", "mmlu", "mmlu_full"]  # mmlu_<subject>... after mmlu, then the rest
FULL_MMLU_FILE = "mmlu_full.json"  # objective.finalists: a finalist's MMLU with mmlu.limit (blackbox/finalists.py)
NOT_SUBJECTS = {"mmlu_stderr", "mmlu_n", "mmlu_seconds", "mmlu_limit", "mmlu_processes", "mmlu_full"}
TAIL_METRICS = ["train_loss", "train_seconds", "eval_seconds", "wall_seconds", "tokens_per_second"]
STATUS_COLUMNS = ["run_id", "order", "status", "reason", "error_kind", "cached", "n_answers", "cached_hits", "source"]
TIME_COLUMNS = ["started", "finished"]
RUN_EXTRAS = ["attempt", "device", "num_processes", "slurm_job", "slurm_node", "slurm_state", "adapter"]
# Training seed, and for a point re-trained with other seeds (bbo confirm) its objective over all its ok seeds.
SEED_COLUMNS = ["seed", "seeds_n", "seeds_mean", "seeds_std"]
# Metrics that are not numbers per run, or are spread into their own columns.
SKIP_METRICS = {"mmlu_subjects", "device", "dtype", "precision", "lm_eval_version"}
INT_COLUMNS = {"order", "n_answers", "cached_hits", "rank", "alpha", "attempt", "num_processes", "seed", "seeds_n"}
STR_COLUMNS = {"run_id", "status", "reason", "error_kind", "source", "device", "experiment", "confirms",
               "slurm_job", "slurm_node", "slurm_state", "adapter"}


# ---------------------------------------------------------------- run folders

def load_runs(experiment_dir: str | Path, overrides: list[str] = ()) -> pd.DataFrame:
    """One row per evaluated point of an experiment, in the order NOMAD (or a user) first asked for it.

    A point re-trained with other seeds (`bbo confirm`) is still one row: seeds_n, seeds_mean and
    seeds_std summarise its objective over all its ok seeds; the extra runs are load_confirm_runs'.
    overrides: the `key=value` pairs the search ran with, if they changed the space.
    """
    config = load_config(experiment_dir, overrides)
    rows, extra = _rows(config)
    df = _typed_frame(rows, _base_columns(config.space.names()), config)
    df = _with_constraints(df, config, read_baseline(config))
    unanswered = df["order"].isna()
    if unanswered.any():  # runs never recorded (a crash before record): after the others, by start time
        df = pd.concat([df[~unanswered], df[unanswered].sort_values("started", kind="stable")], ignore_index=True)
    df = _with_seed_summary(df, extra)
    df.attrs.update(frame_attrs(config))
    return df


def _with_constraints(df: pd.DataFrame, config: ExperimentConfig, base: dict | None) -> pd.DataFrame:
    """objective_vs_base (the objective minus the base model's, when it is measured), and with
    objective.constraints a c_<metric> column per constraint (NOMAD's value: <= 0 feasible, inf for a metric
    the run never measured) and `feasible` (<NA> for a run that is neither ok nor pruned, or when a bound
    names a base model not measured yet)."""
    objective = config.objective
    if base and isinstance(base.get(objective.metric), (int, float)):
        df["objective_vs_base"] = df["objective"] - objective.to_objective(base)
    if not objective.constraints:
        return df
    answered = df["status"].isin([State.OK, State.PRUNED])
    can_bound = base is not None or not objective.uses_base
    for name, constraint in zip(objective.constraint_names, objective.constraints):
        df[name] = [constraint.value({k: v for k, v in row.items() if pd.notna(v)}, base) if ok and can_bound
                    else float("nan") for ok, (_, row) in zip(answered, df.iterrows())]
    values = df[objective.constraint_names]
    df["feasible"] = pd.array([bool((v <= 0).all()) if ok and can_bound else pd.NA
                               for ok, (_, v) in zip(answered, values.iterrows())], dtype="boolean")
    return df


def load_confirm_runs(experiment_dir: str | Path, overrides: list[str] = ()) -> pd.DataFrame:
    """Every run of the points that were re-trained with other seeds: the search's own run and its
    confirmations, one row per seed, with `confirms` = the search's run id (the same for all seeds)."""
    config = load_config(experiment_dir, overrides)
    rows, extra = _rows(config)
    confirmed = {r["confirms"] for r in extra}
    own = [dict(r, confirms=r["run_id"]) for r in rows if r["run_id"] in confirmed]
    df = _typed_frame(own + extra, ["confirms"] + _base_columns(config.space.names()), config)
    df = df.sort_values(["confirms", "seed"], kind="stable", ignore_index=True)
    df.attrs.update(frame_attrs(config))
    return df


def _rows(config: ExperimentConfig) -> tuple[list[dict], list[dict]]:
    """(rows of the search's own runs, rows of confirmation runs), from the run folders and the index."""
    store = RunStore(config.dir)
    names = config.space.names()
    # First answer per run id gives the order; later answers only count as hits. Confirmation
    # runs are answers too, but not points of the search: they take no order.
    answers: dict[str, dict] = {}
    points = 0
    for entry in store.evaluations():
        rid = entry.get("run_id")
        if not rid:
            continue
        if rid not in answers:
            points += not entry.get("confirms")
            answers[rid] = {"order": None if entry.get("confirms") else points, "first": entry, "last": entry,
                            "n": 0, "hits": 0}
        info = answers[rid]
        info["last"] = entry
        info["n"] += 1
        info["hits"] += bool(entry.get("cached"))

    rids = list(answers) + [r for r in store.run_ids() if r not in answers]
    rows, extra = [], []
    for rid in rids:
        row = _run_row(config, store, rid, answers.get(rid), names)
        (extra if row.get("confirms") else rows).append(row)
    return rows, extra


def _with_seed_summary(df: pd.DataFrame, extra: list[dict]) -> pd.DataFrame:
    """seeds_n / seeds_mean / seeds_std of each confirmed point: its own ok objective and its confirmations'."""
    if not extra or df.empty:
        return df
    by_point: dict[str, list[float]] = {}
    for row in extra:
        if row["status"] == State.OK and row.get("objective") is not None:
            by_point.setdefault(row["confirms"], []).append(row["objective"])
    for i, rid in df["run_id"].items():
        if rid not in by_point:
            continue
        values = list(by_point[rid])
        if df.at[i, "status"] == State.OK and pd.notna(df.at[i, "objective"]):
            values.insert(0, float(df.at[i, "objective"]))
        series = pd.Series(values, dtype="float64")
        df.loc[i, ["seeds_n", "seeds_mean", "seeds_std"]] = [len(values), series.mean(), series.std()]
    return df

def _run_row(config: ExperimentConfig, store: RunStore, rid: str, info: dict | None, names: list[str]) -> dict:
    run_dir = store.run_dir(rid)
    params = read_json(run_dir / "params.json") or {}
    status = read_json(run_dir / "status.json") or {}
    metrics = read_json(run_dir / "metrics.json")
    metrics = metrics if isinstance(metrics, dict) else {}
    slurm = read_json(run_dir / "slurm.json") or {}  # the Slurm job of a run of launch.executor=slurm
    first = info["first"] if info else {}
    last = info["last"] if info else {}

    hp = params.get("hp") or first.get("hp") or {}
    point = params.get("point") or first.get("point")
    if point is None and hp:
        point = config.space.encode(hp)  # a hand-given point the space can represent

    state = status.get("state") or last.get("state") or State.INCOMPLETE.value
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
        "slurm_job": slurm.get("job_id"), "slurm_node": slurm.get("node"), "slurm_state": slurm.get("state"),
        "adapter": adapter_state(run_dir),  # kept | removed (train.keep_adapters) | None: never had one
    }
    for name, x in zip(names, point or [None] * len(names)):
        row[f"x_{name}"] = x
    row.update(hp_columns(hp))
    row["seed"] = params.get("seed", ((params.get("fixed") or {}).get("train") or {}).get("seed"))
    if params.get("confirms") or first.get("confirms"):
        row["confirms"] = params.get("confirms") or first.get("confirms")
    if "objective" not in metrics and state == State.OK and isinstance(first.get("objective"), (int, float)):
        metrics = dict(metrics, objective=first["objective"])  # run folder lost its metrics: the answer has it
    row.update(_metric_columns(metrics))
    full = read_json(run_dir / FULL_MMLU_FILE)  # a finalist's MMLU on the full benchmark
    if isinstance(full, dict) and isinstance(full.get("mmlu"), (int, float)):
        row["mmlu_full"] = float(full["mmlu"])
    for point in read_curve(run_dir):
        if isinstance(point.get("fraction"), (int, float)):
            row[f"val_loss@{checkpoint_key(point['fraction'])}"] = point.get("val_loss")
    return row


def load_curves(experiment_dir: str | Path, overrides: list[str] = ()) -> pd.DataFrame:
    """The learning curves: one row per checkpoint of every run of the search (not its confirmations),
    columns run_id, status, objective, fraction, step, val_loss, train_loss, seconds."""
    runs = load_runs(experiment_dir, overrides)
    store = RunStore(load_config(experiment_dir, overrides).dir)
    rows = []
    for run in runs.itertuples():
        for point in read_curve(store.run_dir(run.run_id)):
            rows.append({"run_id": run.run_id, "status": run.status, "objective": run.objective,
                         **{k: point.get(k) for k in ("fraction", "step", "val_loss", "train_loss", "seconds")}})
    columns = ["run_id", "status", "objective", "fraction", "step", "val_loss", "train_loss", "seconds"]
    df = pd.DataFrame(rows, columns=columns)
    for col in columns[3:]:
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("float64")
    df.attrs.update(runs.attrs)
    return df


def hp_columns(hp: dict) -> dict:
    """The hyperparameter columns of a row (also of NOMAD's tables in bbo/history.py)."""
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
            + TIME_COLUMNS + RUN_EXTRAS + SEED_COLUMNS)


def _typed_frame(rows: list[dict], base: list[str], config: ExperimentConfig | None) -> pd.DataFrame:
    """Fixed columns first, then MMLU subjects, then any other metric; one dtype per column."""
    seen = []
    for row in rows:
        seen += [k for k in row if k not in base and k not in seen]
    subjects = sorted(k for k in seen if k.startswith("mmlu_") and k not in NOT_SUBJECTS)
    others = sorted(k for k in seen if k not in subjects)
    at = base.index("mmlu") + 1
    columns = base[:at] + subjects + base[at:] + others
    df = pd.DataFrame(rows, columns=columns)
    integer_x = set()
    if config is not None:
        integer_x = {f"x_{v.name}" for v in config.space.searched if v.input_type == "I"}
    for col in df.columns:
        df[col] = typed(df[col], col, integer_x)
    return df


def typed(s: pd.Series, col: str, integer_x: set) -> pd.Series:
    """One dtype per column: times in UTC, strings, nullable integers, else floats."""
    if col in TIME_COLUMNS:
        return pd.to_datetime(pd.to_numeric(s, errors="coerce"), unit="s", utc=True).astype("datetime64[ns, UTC]")
    if col == "cached":
        return s.astype("boolean")
    if col in STR_COLUMNS:
        return s.astype("str")
    if col in INT_COLUMNS or col in integer_x:
        return pd.to_numeric(s, errors="coerce").round().astype("Int64")
    return pd.to_numeric(s, errors="coerce").astype("float64")


def frame_attrs(config: ExperimentConfig) -> dict:
    """df.attrs of a table: what the summaries need to know about the experiment (metric, X0, names)."""
    return {"experiment": config.name, "metric": config.objective.metric, "x0": list(config.space.x0),
            "names": config.space.names(), "budget": config.nomad.budget,
            "constraints": dict(zip(config.objective.constraint_names, (c.label for c in config.objective.constraints))),
            "base": read_baseline(config)}


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
