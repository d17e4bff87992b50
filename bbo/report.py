"""A Markdown report of one experiment: what the search found, what it cost, how sure to be.

    python -m bbo report experiments/demo     # -> experiments/demo/report/report.md + PNG figures

Sections: best point, X0 versus best (before / after), top-5 table, the finalists on the full MMLU
(objective.finalists), the finalists re-trained with
other seeds (after `bbo confirm`), budget spent, spread of the objective, figures. Tables are written here (no `tabulate` needed).
"""
from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from bbo.confirm import finalist_stats, margin_sentence
from bbo.plots import plot_experiments
from bbo.results import load_runs
from bbo.summary import (base_text, best, describe_point, feasibility_text, finalists_table, missing, ranked,
                         ranking_sentence, tightest_constraint, x0_row)
from core.config import load_config
from core.objective import objective_label
from core.store import FINISHED, State

COMPARED = ["objective", "val_loss", "mmlu", "train_loss", "train_seconds", "wall_seconds"]
TOP_COLUMNS = ["order", "rank", "alpha", "alpha_over_rank", "dropout", "lr", "objective", "val_loss", "mmlu",
               "train_loss", "wall_seconds", "cached_hits", "run_id"]
FIGURE_TITLES = {"best_so_far": "Best objective so far", "parallel_coordinates": "Parallel coordinates",
                 "confirm_seeds": "Finalists: objective per seed", "learning_curves": "Learning curves"}


def write_report(experiment_dir, top: int = 5, overrides: list[str] = ()) -> Path:
    """Write <experiment>/report/report.md (figures beside it, linked relatively); returns its path."""
    config = load_config(experiment_dir, overrides)  # the search's overrides (its constraints, say)
    df = load_runs(config.dir, overrides)
    out_dir = config.dir / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = plot_experiments([config.dir], out_dir=out_dir, overrides=overrides)
    label = objective_label(config.objective.metric)

    lines = [f"# HPO report: {config.name}", ""]
    if config.description:
        lines += [config.description, ""]
    lines += [f"Objective: `{config.objective.metric}`; {config.objective.sense}. Search space: "
              f"{', '.join(config.space.names())} (NOMAD budget {config.nomad.budget} new evaluations). "
              f"Generated {time.strftime('%Y-%m-%d %H:%M')} from `{config.dir}`.", ""]
    lines += _best_section(df, label)
    lines += _constraints_section(df)
    lines += _x0_section(df, config, label)
    lines += _top_section(df, top, label)
    lines += _finalists_section(df, config)
    lines += _confirm_section(df, config, label)
    lines += _budget_section(df, config)
    lines += _pruning_section(df, config)
    lines += _spread_section(df, label)
    lines += ["## Figures", ""]
    for path in figures:
        title = FIGURE_TITLES.get(path.stem) or path.stem.replace("objective_vs_", "Objective vs ").replace("_", " ")
        lines += [f"![{title}]({path.relative_to(out_dir).as_posix()})", ""]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines))
    return path


# ---------------------------------------------------------------- sections

def _best_section(df, label) -> list[str]:
    top = best(df)
    lines = ["## Best point", ""]
    if top is None:
        return lines + ["No evaluation succeeded yet.", ""]
    order = "" if missing(top.get("order")) else f", found at evaluation {top['order']} of {len(df)}"
    lines += [f"**{describe_point(top)}** -> {label} **{top['objective']:.6g}** (run `{top['run_id']}`{order}).", ""]
    rows = [(name, _fmt(top.get(name))) for name in
            ["rank", "alpha", "alpha_over_rank", "dropout", "lr", "objective", "val_loss", "mmlu", "train_loss",
             "train_seconds", "eval_seconds", "wall_seconds", "tokens_per_second"]
            if name in top and not missing(top[name])]
    rows += [(c, _fmt(top[c])) for c in top.index
             if c.startswith("mmlu_") and c not in ("mmlu_n", "mmlu_stderr", "mmlu_seconds") and not missing(top[c])]
    return lines + markdown_table(pd.DataFrame(rows, columns=["", "best"])) + [""]


def _constraints_section(df) -> list[str]:
    """objective.constraints and the base model: which runs are feasible, and the best point that is not."""
    lines = feasibility_text(df)
    top = best(df)
    if top is not None:
        lines += base_text(df, top)
    elif df.attrs.get("constraints") and "feasible" in df and df["feasible"].notna().any():
        lines.append(f"No feasible point: the tightest constraint is {tightest_constraint(df)}.")
    if not lines:
        return []
    return ["## Constraints and the base model", ""] + [f"- {line}" for line in lines] + [""]


def _x0_section(df, config, label) -> list[str]:
    lines = ["## X0 versus best (before / after)", ""]
    x0 = config.space.x0
    start, top = x0_row(df, x0), best(df)
    if start is None:
        hp = config.space.decode(x0)
        return lines + [f"X0 ({' '.join(map(str, x0))}: rank {hp['rank']}, alpha {hp['alpha']}, dropout "
                        f"{hp['dropout']:g}, lr {hp['lr']:.3g}) was not evaluated.", ""]
    if top is None or start["status"] != State.OK:
        return lines + [f"X0 ({describe_point(start)}) ended {start['status']}: "
                        f"{start.get('reason') or 'no objective'}; nothing to compare.", ""]
    rows = []
    for name in ["rank", "alpha", "dropout", "lr"]:
        rows.append((name, _fmt(start[name]), _fmt(top[name]), "", ""))
    for name in COMPARED:
        if name not in df or missing(start.get(name)) or missing(top.get(name)):
            continue
        before, after = float(start[name]), float(top[name])
        diff = after - before
        rel = f"{diff / abs(before) * 100:+.2f}%" if before else ""
        rows.append((label if name == "objective" else name, _fmt(before), _fmt(after), f"{diff:+.4g}", rel))
    lines += markdown_table(pd.DataFrame(rows, columns=["", "X0 (before)", "best (after)", "difference", "relative"]))
    if start["run_id"] == top["run_id"]:
        lines += ["", "The best point is X0 itself: the search found nothing better."]
    return lines + [""]


def _top_section(df, top, label) -> list[str]:
    lines = [f"## Top {top}", ""]
    rows = ranked(df)
    rows = rows[rows["status"].eq(State.OK)].head(top) if len(rows) else rows
    if rows.empty:
        return lines + ["No successful evaluation.", ""]
    cols = [c for c in TOP_COLUMNS if c in rows and not rows[c].isna().all()]
    table = rows[cols].copy()
    if "wall_seconds" in table:
        table["wall_seconds"] = table["wall_seconds"] / 60
    table = table.rename(columns={"objective": label, "wall_seconds": "wall_min", "alpha_over_rank": "alpha/rank"})
    return lines + markdown_table(table.map(_fmt)) + [""]


def _finalists_section(df, config) -> list[str]:
    """objective.finalists: the search's cheap MMLU next to the full one, and whether the order held."""
    table = finalists_table(df)
    if table.empty:
        return []
    mmlu = config.objective.mmlu
    search = mmlu.search_questions
    lines = ["## Finalists on the full MMLU", "",
             f"The {len(table)} best points of the search measured again on their kept adapters, no retraining "
             f"(`python -m bbo finalists`): `mmlu` with {_questions(search)} per subject during the search, "
             f"`mmlu_full` with {_questions(mmlu.limit)}" + ("" if mmlu.limit is None else " per subject") + ".", ""]
    table = table.assign(**{c: table[c].map(lambda v: "" if missing(v) else f"{v:.4f}") for c in ("mmlu", "mmlu_full")})
    shown = table.rename(columns={"search_place": "search #", "full_place": "full #", "alpha_over_rank": "alpha/rank"})
    return lines + markdown_table(shown.map(_fmt)) + ["", ranking_sentence(table), ""]


def _questions(limit) -> str:
    return "every question" if limit is None else f"{limit} question{'s' if limit != 1 else ''}"


def _confirm_section(df, config, label) -> list[str]:
    """The finalists trained again with other seeds, ranked by mean, with the one-sentence verdict."""
    stats = finalist_stats(df)
    if stats.empty:
        return []
    lines = ["## Is the winner real? Finalists re-trained with other seeds", "",
             f"Each finalist trained again with other seeds (`python -m bbo confirm`; train.seed "
             f"{config.train.seed} was the search's). Ranked by the mean {label} over its seeds, with a 95% "
             "t interval of the mean.", ""]
    rows = []
    for i, row in stats.iterrows():
        interval = f"± {row['seeds_half_width']:.3g}" if pd.notna(row["seeds_half_width"]) else ""
        rows.append([i + 1, row["rank"], row["alpha"], f"{row['dropout']:g}", f"{row['lr']:.3g}",
                     f"{row['seeds_mean']:.4f} {interval}".strip(), _fmt(row["seeds_std"]), row["seeds_n"],
                     f"{row['objective']:.4f}", row["run_id"]])
    lines += markdown_table(pd.DataFrame(rows, columns=["", "rank", "alpha", "dropout", "lr", "mean", "std",
                                                        "seeds", "search's seed", "run_id"]))
    return lines + ["", margin_sentence(stats), ""]


def _budget_section(df, config) -> list[str]:
    answered = int(df["n_answers"].sum()) if len(df) else 0
    hits = int(df["cached_hits"].sum()) if len(df) else 0
    unrecorded = df[df["order"].isna() & df["status"].isin(FINISHED + (State.PRUNED,))] if len(df) else df
    trainings = answered - hits + len(unrecorded)
    failed = df[df["status"].eq(State.FAILED)] if len(df) else df
    kinds = failed["error_kind"].fillna("unknown").value_counts() if len(failed) else pd.Series(dtype="int64")
    kinds_text = ", ".join(f"{k} {v}" for k, v in kinds.items())
    seconds = _training_seconds(df)
    hours = seconds.sum() / 3600
    processes = df["num_processes"].fillna(config.launch.num_processes).astype("float64") if len(df) else seconds
    device_hours = (seconds * processes).sum() / 3600
    gpu = len(df) and df["device"].dropna().astype(str).str.startswith("cuda").any()
    unit = "GPU-hours" if gpu else "CPU-hours"
    lines = ["## Budget spent", ""]
    lines += [f"- evaluations answered: {answered} (distinct points: {len(df)}; NOMAD budget {config.nomad.budget})",
              f"- new trainings: {trainings}",
              f"- cached hits (answered from a finished run, no training): {hits}",
              f"- failures: {len(failed)}" + (f" ({kinds_text})" if len(failed) else ""),
              f"- pruned (stopped early as hopeless): {int(df['status'].eq(State.PRUNED).sum()) if len(df) else 0}",
              f"- wall time of the trainings: {hours:.3g} h",
              f"- {unit}: {device_hours:.3g} (wall hours x processes per evaluation)", ""]
    return lines


def _pruning_section(df, config) -> list[str]:
    saved = pruning_savings(df, config.launch.num_processes)
    if not saved["pruned"] and not config.pruning.enabled:
        return []
    p = config.pruning
    lines = ["## Pruning", "",
             f"Rule: from {p.warmup:.0%} of training on, a run whose validation loss at a checkpoint "
             f"(every {config.train.eval_every:g} of the run) is above the {p.percentile:g}th percentile of the "
             f"finished runs there (at least {p.min_runs}) stops. Its objective is its last measured validation loss.",
             "",
             f"- pruned runs: {saved['pruned']} (at " + (", ".join(f"{f:.0%}" for f in saved["at"]) or "-") + ")",
             f"- device-hours spent training: {saved['spent_hours']:.3g}",
             f"- device-hours saved: {saved['saved_hours']:.3g} (what the pruned runs would have taken to the end, "
             f"from their own speed) = {saved['saved_share']:.0%} of what the search would have cost without pruning",
             ""]
    return lines


def pruning_savings(df, default_processes: int = 1) -> dict:
    """Device-hours spent on training, and those the pruned runs did not spend (train_seconds scaled to
    the whole run by trained_fraction), times the processes of each evaluation."""
    out = {"pruned": 0, "at": [], "spent_hours": 0.0, "saved_hours": 0.0, "saved_share": 0.0}
    if df.empty or "train_seconds" not in df:
        return out
    seconds = df["train_seconds"].fillna(0.0)
    processes = df["num_processes"].fillna(default_processes).astype("float64")
    pruned = df["status"].eq(State.PRUNED)
    fraction = df["trained_fraction"].where(pruned) if "trained_fraction" in df else pd.Series(float("nan"), df.index)
    saved = (seconds * (1.0 / fraction - 1.0) * processes).where(pruned & fraction.gt(0), 0.0)
    spent = (seconds * processes).sum() / 3600
    out.update(pruned=int(pruned.sum()), at=sorted(df.loc[pruned, "pruned_at"].dropna().tolist()) if "pruned_at" in df
               else [], spent_hours=spent, saved_hours=saved.sum() / 3600)
    total = out["spent_hours"] + out["saved_hours"]
    out["saved_share"] = out["saved_hours"] / total if total else 0.0
    return out


def _training_seconds(df) -> pd.Series:
    """Seconds each run took: wall_seconds when measured, else finished - started (failed runs)."""
    if df.empty:
        return pd.Series(dtype="float64")
    span = (df["finished"] - df["started"]).dt.total_seconds()
    return df["wall_seconds"].fillna(span).fillna(0.0).astype("float64")


def _spread_section(df, label) -> list[str]:
    lines = ["## Spread of the objective", ""]
    ok = df.loc[df["status"].eq(State.OK), "objective"].dropna() if len(df) else pd.Series(dtype="float64")
    if ok.empty:
        return lines + ["No successful evaluation.", ""]
    stats = {"successful runs": len(ok), "min": ok.min(), "median": ok.median(), "max": ok.max(),
             "std": ok.std() if len(ok) > 1 else float("nan")}
    lines += markdown_table(pd.DataFrame([{k: _fmt(v) for k, v in stats.items()}]))
    diff = ok.min() - ok.median()
    rel = f" ({diff / abs(ok.median()) * 100:+.2f}%)" if ok.median() else ""
    lines += ["", f"Best versus median {label}: {diff:+.4g}{rel}. Each point was trained once (one seed): "
              "differences smaller than the spread of repeated trainings are not evidence.", ""]
    return lines


# ---------------------------------------------------------------- Markdown

def markdown_table(df: pd.DataFrame) -> list[str]:
    """A GitHub-flavoured Markdown table of df's cells as text (pandas' to_markdown needs tabulate)."""
    header = [str(c) for c in df.columns]
    rows = [[_cell(v) for v in row] for row in df.itertuples(index=False)]
    return (["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
            + ["| " + " | ".join(r) + " |" for r in rows])


def _cell(value) -> str:
    return ("" if missing(value) else str(value)).replace("|", "\\|").replace("\n", " ")


def _fmt(value) -> str:
    if missing(value):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3g}"
    return str(value)
