"""PNG figures of one or several experiments (matplotlib, Agg backend: no display needed).

    python -m bbo plot experiments/a experiments/b [--out folder]

best_so_far.png            best objective so far against evaluation number, one line per experiment
objective_vs_<hp>.png      objective against each searched hyperparameter (and alpha/rank)
parallel_coordinates.png   every evaluated point as a line over normalised axes, coloured by objective
confirm_seeds.png          the confirmed finalists' objective per seed, best mean first (after `bbo confirm`)
learning_curves.png        validation loss at each checkpoint of every run (curve.json), best run highlighted,
                           pruned runs dashed to where they stopped
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: files only, never a window

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import ScalarFormatter  # noqa: E402
from matplotlib.transforms import blended_transform_factory  # noqa: E402

from bbo.results import load_confirm_runs, load_curves, load_runs  # noqa: E402
from core.objective import objective_label  # noqa: E402
from core.store import State  # noqa: E402

LOG_AXES = {"lr", "alpha_over_rank"}  # searched over orders of magnitude
LOG2_AXES = {"rank", "alpha"}  # usually powers of two
LABELS = {"rank": "LoRA rank r", "alpha": "LoRA alpha", "alpha_over_rank": "alpha / rank", "dropout": "LoRA dropout",
          "lr": "learning rate"}


def plot_experiments(dirs, out_dir=None, overrides: list[str] = ()) -> list[Path]:
    """Write every figure for the experiments `dirs`; returns the PNG paths (default folder <first>/report/).
    overrides: a search's `key=value` pairs, for one experiment."""
    dirs = [Path(d) for d in ([dirs] if isinstance(dirs, (str, Path)) else dirs)]
    if not dirs:
        raise ValueError("plot: give at least one experiment folder")
    frames = []
    for d in dirs:
        df = load_runs(d, overrides)
        frames.append((df.attrs.get("experiment") or d.name, df))
    out = Path(out_dir) if out_dir else dirs[0] / "report"
    out.mkdir(parents=True, exist_ok=True)
    paths = [best_so_far(frames, out / "best_so_far.png")]
    for hp in searched_hyperparameters(frames):
        paths.append(objective_vs(frames, hp, out / f"objective_vs_{hp}.png"))
    paths.append(parallel_coordinates(frames, out / "parallel_coordinates.png"))
    if len(dirs) == 1:
        seeds = load_confirm_runs(dirs[0], overrides)
        if len(seeds):
            paths.append(confirm_seeds(seeds, out / "confirm_seeds.png"))
        curves = load_curves(dirs[0], overrides)
        if len(curves):
            paths.append(learning_curves(curves, out / "learning_curves.png"))
        df = frames[0][1]
        for name, label in (df.attrs.get("constraints") or {}).items():
            if name in df and df[name].notna().any():
                paths.append(objective_vs_constraint(df, name, label, out / f"constraint_{name}.png"))
    return paths


def objective_vs_constraint(df: pd.DataFrame, name: str, label: str, path: Path) -> Path:
    """Objective against one constraint's value (NOMAD's: <= 0 feasible, shaded); star: the best feasible point."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    values = pd.to_numeric(df[name], errors="coerce").astype("float64")
    shown = _ok(df) & np.isfinite(values)
    ax.scatter(values[shown], df.loc[shown, "objective"], color="C0", alpha=0.8)
    feasible = shown & df["feasible"].eq(True)
    if feasible.any():
        top = df.loc[feasible, "objective"].idxmin()
        ax.scatter([values[top]], [df.loc[top, "objective"]], marker="*", s=200, color="C0", edgecolor="black", zorder=3)
    low, high = (min(values[shown].min(), 0.0), max(values[shown].max(), 0.0)) if shown.any() else (-1.0, 1.0)
    pad = 0.05 * (high - low or 1.0)
    ax.set_xlim(low - pad, high + pad)
    ax.axvspan(low - pad, 0.0, color="C2", alpha=0.15, label=f"{label} holds")
    ax.axvline(0.0, color="C2", linewidth=1)
    ax.set_xlabel(f"{name} (NOMAD's constraint value: <= 0 feasible)")
    ax.set_ylabel(_ylabel([("", df)]))
    ax.set_title(f"Objective vs {label} (star: best feasible)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def learning_curves(curves: pd.DataFrame, path: Path) -> Path:
    """Every run's validation loss against the fraction of its training; the best ok run in red."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ok = curves[curves["status"].eq(State.OK) & curves["objective"].notna()]
    best_id = ok.loc[ok["objective"].idxmin(), "run_id"] if len(ok) else None
    labelled = set()
    for rid, rows in curves.groupby("run_id", sort=False):
        rows = rows.sort_values("fraction")
        status = rows["status"].iloc[0]
        if rid == best_id:
            continue  # drawn last, on top
        kind = "pruned" if status == State.PRUNED else "other runs"
        ax.plot(rows["fraction"], rows["val_loss"], color="C1" if kind == "pruned" else "C0", alpha=0.45, lw=1,
                ls="--" if kind == "pruned" else "-", marker="x" if kind == "pruned" else None,
                markevery=[len(rows) - 1], label=None if kind in labelled else kind)
        labelled.add(kind)
    if best_id is not None:
        rows = curves[curves["run_id"] == best_id].sort_values("fraction")
        ax.plot(rows["fraction"], rows["val_loss"], color="C3", lw=2.5, marker="o", label=f"best: {best_id}")
    ax.set_xlabel("fraction of training")
    ax.set_ylabel("validation loss")
    ax.set_title("Learning curves")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def confirm_seeds(runs: pd.DataFrame, path: Path) -> Path:
    """One column per confirmed point (best mean first): its objective with each seed, and the mean."""
    ok = runs[runs["status"].eq(State.OK) & runs["objective"].notna()]
    means = ok.groupby("confirms")["objective"].mean().sort_values()
    fig, ax = plt.subplots(figsize=(max(4.5, 1.4 * len(means) + 2), 4.5))
    for i, rid in enumerate(means.index):
        rows = ok[ok["confirms"] == rid]
        ax.scatter(np.full(len(rows), i), rows["objective"], color="C0", alpha=0.8, zorder=2)
        for _, row in rows.iterrows():
            ax.annotate(f"s{row['seed']}", (i, row["objective"]), xytext=(6, 0), textcoords="offset points",
                        fontsize=7, va="center")
        ax.scatter([i], [means[rid]], marker="_", s=900, color="C3", zorder=3, label="mean" if i == 0 else None)
    first = ok.drop_duplicates("confirms").set_index("confirms")
    ax.set_xticks(range(len(means)), [f"r={first.loc[r, 'rank']} a={first.loc[r, 'alpha']}\n"
                                      f"d={first.loc[r, 'dropout']:g} lr={first.loc[r, 'lr']:.2g}" for r in means.index],
                  fontsize=8)
    ax.set_xlim(-0.6, len(means) - 0.4)
    ax.set_ylabel(_ylabel([("", ok)]))
    ax.set_title("Finalists: objective per training seed (bar: mean)")
    ax.grid(alpha=0.3, axis="y")
    if len(means):
        ax.legend(fontsize=8)
    return _save(fig, path)


def searched_hyperparameters(frames) -> list[str]:
    """The hyperparameters any of the experiments searches, plus alpha/rank when alpha is searched."""
    names = []
    for _, df in frames:
        names += [n for n in df.attrs.get("names", []) if n not in names]
    if "alpha" in names:
        names.insert(names.index("alpha") + 1, "alpha_over_rank")
    return names


def _ylabel(frames) -> str:
    metrics = {df.attrs.get("metric") for _, df in frames}
    return objective_label(metrics.pop()) if len(metrics) == 1 else "objective (min)"


def _ok(df: pd.DataFrame) -> pd.Series:
    return df["status"].eq(State.OK) & df["objective"].notna()


def _answered(df: pd.DataFrame) -> pd.DataFrame:
    """Rows in evaluation order; runs never recorded go last, numbered after the others."""
    df = df.reset_index(drop=True)
    return df.assign(eval_n=np.arange(1, len(df) + 1))


def best_so_far(frames, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    failed_label = True
    for i, (name, df) in enumerate(frames):
        color = f"C{i % 10}"
        if df.empty:
            ax.plot([], [], color=color, label=f"{name} (no evaluations)")
            continue
        rows = _answered(df)
        ok = _ok(rows)
        objective = rows["objective"].where(ok)
        running = objective.cummin()
        ax.scatter(rows.loc[ok, "eval_n"], objective[ok], color=color, alpha=0.35, s=14)
        has = running.notna()
        if has.any():
            ax.step(rows.loc[has, "eval_n"], running[has], where="post", color=color, lw=2,
                    label=f"{name} (best {running[has].iloc[-1]:.4g})")
        bad = rows[~ok]
        if len(bad):  # failures sit on the bottom edge: they have no objective
            ax.scatter(bad["eval_n"], np.zeros(len(bad)), marker="x", color=color, s=40, clip_on=False,
                       transform=blended_transform_factory(ax.transData, ax.transAxes),
                       label="failed" if failed_label else None)
            failed_label = False
    ax.set_xlabel("evaluation number")
    ax.set_ylabel(f"best {_ylabel(frames)} so far")
    ax.set_title("Best objective so far")
    ax.grid(alpha=0.3)
    if frames:
        ax.legend(fontsize=8)
    return _save(fig, path)


def objective_vs(frames, hp: str, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for i, (name, df) in enumerate(frames):
        if df.empty or hp not in df:
            continue
        color = f"C{i % 10}"
        ok = _ok(df)
        x = pd.to_numeric(df[hp], errors="coerce").astype("float64")
        ax.scatter(x[ok], df.loc[ok, "objective"], color=color, alpha=0.8, label=name)
        if ok.any():
            top = df.loc[ok, "objective"].idxmin()
            ax.scatter([x[top]], [df.loc[top, "objective"]], marker="*", s=200, color=color, edgecolor="black",
                       zorder=3)
        bad = ~ok & x.notna()
        if bad.any():
            ax.scatter(x[bad], np.ones(bad.sum()), marker="x", color=color, clip_on=False,
                       transform=blended_transform_factory(ax.transData, ax.transAxes))
    values = pd.concat([pd.to_numeric(df[hp], errors="coerce") for _, df in frames if hp in df and len(df)] or
                       [pd.Series(dtype="float64")])
    if hp in LOG_AXES and (values > 0).any():
        ax.set_xscale("log")
    elif hp in LOG2_AXES and (values > 0).any():
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(ScalarFormatter())  # 16, not 2^4
    ax.set_xlabel(LABELS.get(hp, hp))
    ax.set_ylabel(_ylabel(frames))
    ax.set_title(f"Objective vs {LABELS.get(hp, hp)} (star: best; x on top: failed)")
    ax.grid(alpha=0.3)
    if len(frames) > 1:
        ax.legend(fontsize=8)
    return _save(fig, path)


def parallel_coordinates(frames, path: Path) -> Path:
    """One panel per experiment: each point a line across the hyperparameter axes, coloured by objective."""
    axes_names = [a for a in searched_hyperparameters(frames) if a != "alpha_over_rank"] + ["objective"]
    fig, panels = plt.subplots(len(frames), 1, figsize=(8, 3.8 * len(frames)), squeeze=False)
    for (name, df), ax in zip(frames, panels[:, 0]):
        ax.set_title(f"{name}: evaluated points (colour: objective, thick: best)")
        ax.set_xticks(range(len(axes_names)))
        ax.set_xticklabels([LABELS.get(a, a) for a in axes_names])
        ax.set_yticks([])
        for j in range(len(axes_names)):
            ax.axvline(j, color="grey", lw=0.8)
        rows = df[_ok(df)] if len(df) else df
        if rows.empty:
            ax.text(0.5, 0.5, "no successful evaluation", ha="center", va="center", transform=ax.transAxes)
            continue
        scaled = np.column_stack([_normalise(rows, a) for a in axes_names])
        for j, a in enumerate(axes_names):  # axis end values, for reading the lines back
            lo, hi = _range_text(rows, a)
            ax.text(j, -0.06, lo, ha="center", va="top", fontsize=7)
            ax.text(j, 1.04, hi, ha="center", va="bottom", fontsize=7)
        objective = rows["objective"].to_numpy(dtype="float64")
        lo, hi = objective.min(), objective.max()
        norm = plt.Normalize(lo, hi if hi > lo else lo + 1)
        cmap = plt.get_cmap("viridis")  # dark = low = good, and visible on white
        order = np.argsort(-objective)  # best drawn last, on top
        best_i = order[-1]
        for k in order:
            ax.plot(range(len(axes_names)), scaled[k], color=cmap(norm(objective[k])),
                    lw=3 if k == best_i else 1.2, alpha=1.0 if k == best_i else 0.7)
        ax.set_ylim(-0.15, 1.15)
        fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=_ylabel([(name, df)]))
    return _save(fig, path)


def _values(rows: pd.DataFrame, axis: str) -> np.ndarray:
    values = pd.to_numeric(rows[axis], errors="coerce").astype("float64").to_numpy() if axis in rows else \
        np.full(len(rows), np.nan)
    if axis in LOG_AXES | LOG2_AXES and np.all(values[~np.isnan(values)] > 0):
        values = np.log10(values)
    return values


def _normalise(rows: pd.DataFrame, axis: str) -> np.ndarray:
    """Min-max to [0, 1] (on a log scale for lr, rank, alpha); a constant axis sits at 0.5."""
    values = _values(rows, axis)
    if not np.isfinite(values).any():
        return np.full(len(values), np.nan)
    lo, hi = np.nanmin(values), np.nanmax(values)
    if hi <= lo:
        return np.where(np.isnan(values), np.nan, 0.5)
    return (values - lo) / (hi - lo)


def _range_text(rows: pd.DataFrame, axis: str) -> tuple[str, str]:
    if axis not in rows:
        return "", ""
    values = pd.to_numeric(rows[axis], errors="coerce").astype("float64")
    if values.isna().all():
        return "", ""
    return f"{values.min():.3g}", f"{values.max():.3g}"


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
