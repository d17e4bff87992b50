"""Reading a results table: ranking, the best point, X0, and the text `bbo run` and `bbo results` print.

    from bbo.summary import best, ranked, table_text
    best(load_runs("experiments/demo"))        # the row NOMAD's search found best

Works on the tables of bbo/results.py and bbo/history.py alike (df.attrs says the metric and X0).
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from bbo.results import HP, frame_attrs
from core.config import ExperimentConfig
from core.objective import ROUGE_METRICS, objective_label
from core.store import State


def ranked(df: pd.DataFrame) -> pd.DataFrame:
    """ok rows by objective (best first; with constraints, the feasible ones first), then everything else
    in evaluation order."""
    if df.empty:
        return df
    ok = df["status"].eq(State.OK) & df["objective"].notna()
    rest = df[~ok]
    if "order" in rest:
        rest = rest.sort_values("order", kind="stable", na_position="last")
    good = df[ok].sort_values("objective", kind="stable")
    if "feasible" in good:  # unknown feasibility (<NA>: the base model not measured yet) goes with the infeasible
        feasible = good["feasible"].eq(True).fillna(False).astype(bool)
        good = pd.concat([good[feasible], good[~feasible]])
    return pd.concat([good, rest], ignore_index=True)


def candidates(df: pd.DataFrame) -> pd.DataFrame:
    """The rows a best point is chosen from: ok, with an objective, and feasible when the search has
    constraints (bbo run, export --best, confirm and the report choose among these)."""
    if df.empty:
        return df
    ok = df[df["status"].eq(State.OK) & df["objective"].notna()]
    return ok[ok["feasible"].eq(True)] if "feasible" in ok else ok


def best(df: pd.DataFrame) -> pd.Series | None:
    """The ok (and feasible) row with the lowest objective (what NOMAD minimised), or None."""
    ok = candidates(df)
    if ok.empty:
        return None
    return ok.loc[ok["objective"].idxmin()]


def best_infeasible(df: pd.DataFrame) -> pd.Series | None:
    """With constraints: the ok row with the lowest objective among those that break one, or None."""
    if df.empty or "feasible" not in df:
        return None
    ok = df[df["status"].eq(State.OK) & df["objective"].notna() & df["feasible"].eq(False)]
    return None if ok.empty else ok.loc[ok["objective"].idxmin()]


def tightest_constraint(df: pd.DataFrame) -> str | None:
    """The constraint the most answered runs break (ties: the larger median violation), in words, or None."""
    labels = df.attrs.get("constraints") or {}
    answered = df[df["status"].isin([State.OK, State.PRUNED])] if len(df) else df
    scores = []
    for name, label in labels.items():
        if name in answered and answered[name].notna().any():
            values = answered[name].dropna()
            broken = values[values > 0]
            scores.append((len(broken), float(broken.clip(upper=1e300).median()) if len(broken) else 0.0, name, label))
    if not scores:
        return None
    n, _, name, label = max(scores)
    return f"{name}: {label}, broken by {n} of {len(answered)} runs"


def feasibility_text(df: pd.DataFrame) -> list[str]:
    """With constraints: how many runs are feasible, and the best point that breaks one."""
    labels = df.attrs.get("constraints") or {}
    if not labels or "feasible" not in df:
        return []
    lines = [f"constraints: {'; '.join(f'{name}: {label}' for name, label in labels.items())} "
             f"({int(df['feasible'].eq(True).sum())} of {int(df['feasible'].notna().sum())} runs feasible)"]
    if df["feasible"].isna().all() and df["status"].eq(State.OK).any():
        lines.append("feasibility: unknown until the base model is measured (python -m bbo baseline <experiment>)")
    other = best_infeasible(df)
    if other is not None:
        broken = [n for n in labels if n in other and not missing(other[n]) and other[n] > 0]
        lines.append(f"best infeasible point: {describe_point(other)} -> objective {other['objective']:.6g} "
                     f"(breaks {', '.join(broken)})")
    return lines


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
    ok = hits[hits["status"].eq(State.OK)]
    return (ok if len(ok) else hits).iloc[0]


TABLE_COLUMNS = ["experiment", "order", "status", "rank", "alpha", "alpha_over_rank", "dropout", "lr",
                 "objective", "objective_vs_base", "feasible", "seeds_mean", "seeds_std", "seeds_n", "val_loss", "mmlu", "mmlu_full", *ROUGE_METRICS,
                 "train_loss",
                 "curve", "pruned_at", "wall_seconds", "cached", "cached_hits", "run_id", "reason"]
OPTIONAL_COLUMNS = {"objective_vs_base", "feasible", "val_loss", "mmlu", "train_loss", "wall_seconds", "cached", "cached_hits", "run_id", "reason",
                    "seeds_mean", "seeds_std", "seeds_n", "curve", "pruned_at", "mmlu_full", *ROUGE_METRICS}


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
    constraint_cols = [c for c in (df.attrs.get("constraints") or {}) if c in rows]
    if constraint_cols:  # NOMAD's constraint values (<= 0 feasible) after feasible
        at = cols.index("feasible") + 1 if "feasible" in cols else cols.index("objective") + 1
        cols[at:at] = constraint_cols
    if "rank" not in rows or rows["rank"].isna().all():  # no decoded hyperparameters: show the coordinates
        cols = [c for c in cols if c not in HP]
        at = cols.index("status") + 1 if "status" in cols else 0
        cols[at:at] = _coordinate_columns(rows)
    elif _coordinate_columns(rows):  # NOMAD's coordinates in one compact column
        cols.insert(cols.index("status") + 1 if "status" in cols else 0, "point")
    cols += [c for c in rows.columns if c.startswith("extra_")]
    curve = sorted((c for c in rows.columns if c.startswith("val_loss@")), key=lambda c: float(c.split("@")[1]))
    if curve:  # the learning curve in one compact column: val_loss at each checkpoint, the end last
        rows = rows.assign(curve=rows[curve].apply(lambda r: " ".join(f"{v:.3g}" for v in r if not missing(v)),
                                                   axis=1))
        cols.insert(cols.index("pruned_at") if "pruned_at" in cols else len(cols), "curve")
    out = rows.assign(point=_point_text(rows))[cols].copy() if "point" in cols else rows[cols].copy()
    if "reason" in out:
        out["reason"] = out["reason"].map(lambda r: "" if not isinstance(r, str) else r if len(r) <= 40
                                          else r[:37] + "...")
    if "run_id" in out:
        out["run_id"] = out["run_id"].map(lambda r: r if isinstance(r, str) else "")
    if "wall_seconds" in out:
        out["wall_seconds"] = out["wall_seconds"] / 60
        out = out.rename(columns={"wall_seconds": "wall_min"})
    formats = {"objective_vs_base": "{:+.4f}", **dict.fromkeys(constraint_cols, "{:.4g}"), "objective": "{:.4f}", "seeds_mean": "{:.4f}", "seeds_std": "{:.2g}", "val_loss": "{:.4f}", "mmlu": "{:.4f}", "train_loss": "{:.4f}",
               "alpha_over_rank": "{:g}", "dropout": "{:g}", "lr": "{:.3g}", "wall_min": "{:.1f}",
               "pruned_at": "{:.0%}", "mmlu_full": "{:.4f}"}
    formats.update({c: "{:.4g}" for c in out.columns if c.startswith("extra_")} | dict.fromkeys(ROUGE_METRICS, "{:.4f}"))
    for col, fmt in formats.items():
        if col in out:
            out[col] = out[col].map(lambda v, f=fmt: "" if missing(v) else f.format(v))
    for col in out.columns:
        if col not in formats:
            out[col] = out[col].map(lambda v: "" if missing(v) else str(v))
    out = out.rename(columns={"objective": objective_label(df.attrs.get("metric"))})
    return out.to_string(index=False)


def _point_text(df: pd.DataFrame) -> pd.Series:
    coords = _coordinate_columns(df)
    return df[coords].apply(lambda r: " ".join("" if missing(v) else f"{v:g}" if isinstance(v, float) else str(v)
                                               for v in r).strip(), axis=1)


def missing(v) -> bool:
    """None, NA, NaN or NaT: a cell to show empty."""
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)) or v is pd.NaT


def describe_point(row: pd.Series) -> str:
    """rank 8, alpha 16 (2 x rank), dropout 0.05, lr 0.0001: the hyperparameters of one row, in words."""
    if "rank" in row and not missing(row["rank"]):
        text = f"rank {row['rank']}, alpha {row['alpha']} ({row['alpha_over_rank']:g} x rank), " \
               f"dropout {row['dropout']:g}, lr {row['lr']:.3g}"
    else:
        text = ""
    coords = [c for c in row.index if _is_coordinate(c)]
    if coords and not all(missing(row[c]) for c in coords):
        point = " ".join(f"{row[c]:g}" if isinstance(row[c], float) else str(row[c])
                         for c in coords if not missing(row[c]))
        text = f"{text} [NOMAD point ({point})]" if text else f"NOMAD point ({point})"
    return text


def summary_text(df: pd.DataFrame, config: ExperimentConfig | None = None) -> str:
    """What `bbo run` prints at the end: the table, the best point, X0 versus best."""
    if config is not None:  # a frame that lost its attrs (concat, filtering) still finds X0
        df = df.copy(deep=False)
        df.attrs.update({k: v for k, v in frame_attrs(config).items() if k not in df.attrs})
    lines = [table_text(df)] + feasibility_text(df)
    top = best(df)
    if top is None and df.attrs.get("constraints") and "feasible" in df and df["status"].eq(State.OK).any():
        lines.append(f"best point: none feasible (tightest constraint {tightest_constraint(df)})"
                     if df["feasible"].notna().any() else "best point: unknown until the base model is measured")
        return "\n".join(lines)
    if top is None:
        lines.append("best point: none (no evaluation succeeded)")
        return "\n".join(lines)
    label = objective_label(df.attrs.get("metric"))
    lines.append(f"best point: {describe_point(top)} -> {label} {top['objective']:.6g}")
    lines += base_text(df, top)
    start = x0_row(df)
    if start is None:
        lines.append("X0: not evaluated")
    elif start["status"] != State.OK or missing(start["objective"]):
        lines.append(f"X0: {describe_point(start)} -> {start['status']}")
    else:
        lines.append(f"X0: {describe_point(start)} -> {label} {start['objective']:.6g}")
        diff = top["objective"] - start["objective"]
        rel = diff / abs(start["objective"]) * 100 if start["objective"] else float("nan")
        lines.append(f"X0 vs best: {start['objective']:.6g} -> {top['objective']:.6g} "
                     f"(difference {diff:+.4g}, {rel:+.2f}%)")
    return "\n".join(lines)


def base_text(df: pd.DataFrame, top: pd.Series) -> list[str]:
    """The base model (no adapter) against the best point, when it is measured (bbo baseline)."""
    base, metric = df.attrs.get("base"), df.attrs.get("metric")
    if not base or not isinstance(base.get(metric), (int, float)):
        return []
    value = top.get(metric) if metric in top and not missing(top.get(metric)) else None
    if value is None:
        return [f"base model (no adapter): {metric} {base[metric]:.6g}"]
    return [f"base model (no adapter) vs best: {metric} {base[metric]:.6g} -> {value:.6g} "
            f"(difference {value - base[metric]:+.4g})"]


def finalists_table(df: pd.DataFrame) -> pd.DataFrame:
    """objective.finalists: the runs measured on the full MMLU, in the search's order (best objective first),
    with search_place (1 = the search's best among them) and full_place (by mmlu_full, higher is better)."""
    if df.empty or "mmlu_full" not in df or df["mmlu_full"].isna().all():
        return pd.DataFrame(columns=["search_place", "full_place", *HP, "mmlu", "mmlu_full", "run_id"])
    rows = ranked(df)
    rows = rows[rows["mmlu_full"].notna() & rows["status"].eq(State.OK)].reset_index(drop=True)
    rows["search_place"] = range(1, len(rows) + 1)
    rows["full_place"] = rows["mmlu_full"].rank(ascending=False, method="first").astype(int)
    return rows[["search_place", "full_place", *HP, "mmlu", "mmlu_full", "run_id"]]


def ranking_sentence(table: pd.DataFrame) -> str:
    """Whether the full MMLU orders the finalists as the search's MMLU did."""
    if len(table) < 2:
        return "One finalist: no ranking to compare."
    if table["full_place"].tolist() == table["search_place"].tolist():
        return "The ranking did not change: the full MMLU orders the finalists as the search did."
    top = table.loc[table["full_place"].idxmin()]
    return (f"The ranking changed: on the full MMLU the best finalist is run {top['run_id']} "
            f"(the search's number {top['search_place']}).")


def finalists_text(df: pd.DataFrame, k: int) -> str:
    """What `bbo run` and `bbo finalists` print after the finalists' MMLU."""
    table = finalists_table(df)
    if table.empty:
        return f"finalists (objective.finalists={k}): none measured on the full MMLU"
    out = table.copy()
    for col in ("mmlu", "mmlu_full"):
        out[col] = out[col].map(lambda v: "" if missing(v) else f"{v:.4f}")
    out["lr"] = out["lr"].map(lambda v: "" if missing(v) else f"{v:.3g}")
    return "\n".join([f"finalists on the full MMLU (search's mmlu -> mmlu_full), {len(table)} of {k}:",
                      out.to_string(index=False), ranking_sentence(table)])
