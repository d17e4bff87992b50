"""Is the winner real? The best points of a search trained again with other seeds.

    python -m bbo confirm experiments/demo --top 3 --seeds 2     # on demand
    python -m bbo run experiments/demo confirm.top=3              # after the search's budget

Each finalist is trained again with train.seed + 1 ... train.seed + seeds by the blackbox
(`python -m blackbox --confirm-seed N`, all finalists of one seed as one block, so they share
the GPU slots like a NOMAD block). The runs are ordinary run folders (-s<seed> in their id),
resumable and answered from disk when asked again; NOMAD's cache and history never see them.
`finalist_stats` ranks the finalists by their mean over seeds and says whether the winner's
margin over the runner-up is beyond the noise (Welch's t interval of the difference, 95%).
"""
from __future__ import annotations

import json
import math
import os
import sys
import time

import pandas as pd

from bbo.paramfile import run_blackbox
from bbo.results import load_runs
from core.config import ExperimentConfig, confirm_seeds
from bbo.summary import candidates

# Two-sided 95% quantiles of Student's t, by degrees of freedom (more than 30: the normal's 1.96).
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
       12: 2.179, 15: 2.131, 20: 2.086, 25: 2.060, 30: 2.042}


def t95(df: float) -> float:
    """The 95% t quantile for df degrees of freedom (the nearest tabulated df at or below it)."""
    if df > 30:
        return 1.96
    return T95[max(k for k in T95 if k <= max(1.0, df))]


def finalists(df: pd.DataFrame, top: int) -> pd.DataFrame:
    """The `top` best ok points of the search (what NOMAD or a user evaluated, not confirmation runs)."""
    return candidates(df).sort_values("objective", kind="stable").head(top)  # feasible ones, with constraints


def run_confirm(config: ExperimentConfig, overrides: list[str], top: int, seeds: int, env: dict) -> int:
    """Train the finalists with the other seeds (blackbox processes); returns the worst exit status."""
    chosen = finalists(load_runs(config.dir, overrides), top)
    if chosen.empty:
        print("confirm: no successful evaluation to confirm", file=sys.stderr)
        return 1
    points = [point for point in (_point(config, row) for _, row in chosen.iterrows()) if point]
    seed_list = confirm_seeds(config.train.seed, seeds)
    print(f"confirm: the {len(points)} best points again with seeds {', '.join(map(str, seed_list))} "
          f"(train.seed {config.train.seed} was the search's)", flush=True)
    env = dict(env, BBO_OVERRIDES=json.dumps(list(overrides)))
    env.setdefault("BBO_SEARCH_ID", f"confirm-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
    return max(run_blackbox(config, points, ["--confirm-seed", str(seed)], env) for seed in seed_list)


def _point(config: ExperimentConfig, row: pd.Series) -> list | None:
    """The finalist's NOMAD point, for the point file: the stored coordinates (they decode to exactly
    its hyperparameters, hence its run id), else the space's encoding of a hand-given point."""
    names = [f"x_{n}" for n in config.space.names()]
    if all(n in row and pd.notna(row[n]) for n in names):
        coords = [row[n] for n in names]
    else:
        coords = config.space.encode({k: row[k] for k in ("rank", "alpha", "dropout", "lr")})
    return list(coords) if coords else None


def finalist_stats(df: pd.DataFrame) -> pd.DataFrame:
    """The confirmed points ranked by mean objective over seeds, with a 95% interval of the mean."""
    done = df[df["seeds_n"].notna()].copy()
    if done.empty:
        return done
    done["seeds_half_width"] = [t95(n - 1) * s / math.sqrt(n) if n > 1 and pd.notna(s) else math.nan
                                for n, s in zip(done["seeds_n"], done["seeds_std"])]
    return done.sort_values("seeds_mean", kind="stable", ignore_index=True)


def margin_sentence(stats: pd.DataFrame) -> str:
    """Whether the winner is ahead of the runner-up beyond the noise, in one sentence."""
    if len(stats) < 2:
        return "Only one point was confirmed: there is no runner-up to compare with."
    a, b = stats.iloc[0], stats.iloc[1]
    diff = b["seeds_mean"] - a["seeds_mean"]
    if min(a["seeds_n"], b["seeds_n"]) < 2:
        return f"The winner leads the runner-up by {diff:.4g} in mean objective, but a point with one seed has no noise estimate."
    va, vb = a["seeds_std"] ** 2 / a["seeds_n"], b["seeds_std"] ** 2 / b["seeds_n"]
    se = math.sqrt(va + vb)
    dof = (va + vb) ** 2 / ((va ** 2 / (a["seeds_n"] - 1)) + (vb ** 2 / (b["seeds_n"] - 1))) if se > 0 else math.inf
    half = t95(dof) * se
    where = "beyond the noise" if diff > half else "within the noise"
    return (f"The winner ({a['run_id']}) leads the runner-up ({b['run_id']}) by {diff:.4g} in mean objective, "
            f"{where} (95% interval of the difference: ±{half:.3g}, Welch, {a['seeds_n']:g} and {b['seeds_n']:g} seeds).")


def summary_text(df: pd.DataFrame) -> str:
    """What `bbo confirm` (and `bbo run` with confirm.top) prints: the finalists by mean, and the sentence."""
    stats = finalist_stats(df)
    if stats.empty:
        return "confirmed: none yet"
    lines = ["finalists by mean objective over seeds:"]
    for i, row in stats.iterrows():
        spread = f" ± {row['seeds_half_width']:.3g}" if pd.notna(row["seeds_half_width"]) else ""
        std = f", std {row['seeds_std']:.3g}" if pd.notna(row["seeds_std"]) else ""
        lines.append(f"  {i + 1}. r={row['rank']} alpha={row['alpha']} dropout={row['dropout']:g} lr={row['lr']:.3g}: "
                     f"mean {row['seeds_mean']:.6g}{spread} over {row['seeds_n']} seeds{std} "
                     f"(search's seed: {row['objective']:.6g})")
    lines.append(margin_sentence(stats))
    return "\n".join(lines)
