"""Constrained search on measured landscapes: NOMAD with a progressive barrier (PB) against Optuna TPE with
its constraints, same landscapes, same constraint, same budget.

    OMP_NUM_THREADS=1 python -m benchmarks.constraints            # 20 seeds x 50 evaluations per landscape
    python -m benchmarks.constraints --quick                      # 2 seeds x 10 evaluations: a smoke test

Why: objective.constraints (core/constraints.py) hands NOMAD a PB output per constraint; this measures
whether that finds the best feasible point as fast as the peer a user would pick. The landscapes are the
measured tables of benchmarks/make_landscape.py (benchmarks/data/landscape_*.csv). The constraint is a
cost cap of the kind `{metric: adapter_mb, at_most: ...}` expresses: the adapter no larger than rank
CAP_RANK's (LoRA's parameters grow linearly with the rank), as NOMAD's value (rank - CAP_RANK) / CAP_RANK,
<= 0 feasible. It is binding on every table: their best point has a larger rank.

NOMAD gets the lines `bbo run` writes (benchmarks/search_efficiency.py nomad_lines, the templates' tuned nomad
section) with BB_OUTPUT_TYPE OBJ PB, one fresh process per seed; Optuna's TPESampler the same space
(search_efficiency.suggest), the constraint value set on each trial before it is told (trial.set_constraint:
Optuna 5's form of constraints_func, which it deprecates). A point
asked again costs nothing for either. Per seed: the evaluations until the first feasible point within 1% of
the best feasible value of the table, and whether the method's final choice (its best feasible point seen)
is within 1% of it.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.landscapes import Tabulated  # noqa: E402
from benchmarks.search_efficiency import MEASURED_CSVS, TARGET, TUNED, nomad_lines, run_child, suggest  # noqa: E402
from core.space import SearchSpace  # noqa: E402

CAP_RANK = 4  # the adapter no larger than rank 4's


def cap(hp: dict) -> float:
    """NOMAD's constraint value: <= 0 feasible."""
    return (hp["rank"] - CAP_RANK) / CAP_RANK


def best_feasible(landscape: Tabulated) -> float:
    """The lowest value of the table among the points that meet the cap (its keys: rank, alpha, dropout, log10 lr)."""
    return min(v for (rank, *_), v in landscape.table.items() if rank <= CAP_RANK)


def _nomad_child(path: str, seed: int, budget: int, conn) -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    import PyNomad

    from bbo.nomad import start_again_until_spent

    landscape = Tabulated(Path(path))
    space = SearchSpace.from_dict(landscape.space)
    seen = {}

    def evaluate(point):
        coords = [point.get_coord(i) for i in range(space.dimension)]
        hp = space.decode([int(round(x)) if t == "I" else x for x, t in zip(coords, space.input_types)])
        key = tuple(sorted((k, f"{v:.6g}") for k, v in hp.items()))
        if key not in seen:
            seen[key] = (landscape(hp), cap(hp))
            conn.send(seen[key])
        point.setBBO(f"{seen[key][0]} {seen[key][1]}".encode())
        return True

    def start(lines):
        PyNomad.optimize(evaluate, [], [], [], lines)
        return 0

    with tempfile.TemporaryDirectory() as folder:
        lines = nomad_lines(landscape.space, budget, seed, TUNED, Path(folder))
        lines = [("BB_OUTPUT_TYPE OBJ PB" if line.startswith("BB_OUTPUT_TYPE") else line) for line in lines]
        start(lines)
        start_again_until_spent(lines, Path(folder), 0, start)
    conn.close()


def run_nomad(path: Path, seed: int, budget: int) -> list[tuple[float, float]]:
    """(objective, constraint value) of each distinct evaluation, in order (a fresh process: NOMAD's SEED)."""
    history, _ = run_child(_nomad_child, lambda send: (str(path), seed, budget, send))
    return history[:budget]


def run_tpe(path: Path, seed: int, budget: int) -> list[tuple[float, float]]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    landscape = Tabulated(path)
    space = SearchSpace.from_dict(landscape.space)
    sampler = optuna.samplers.TPESampler(seed=seed)  # it reads each trial's set_constraint values
    study = optuna.create_study(direction="minimize", sampler=sampler)
    seen, history = {}, []
    for _ in range(50 * budget):
        if len(history) >= budget:
            break
        trial = study.ask()
        hp = suggest(trial, space)
        key = tuple(sorted((k, f"{v:.6g}") for k, v in hp.items()))
        if key not in seen:
            seen[key] = (landscape(hp), cap(hp))
            history.append(seen[key])
        trial.set_constraint("adapter_cap", seen[key][1])
        study.tell(trial, seen[key][0])
    return history


def evals_to_target(history, target: float, budget: int) -> int:
    """1-based index of the first feasible value within 1% of the best feasible one; budget + 1 when never."""
    for i, (value, c) in enumerate(history, 1):
        if c <= 0 and value <= target:
            return i
    return budget + 1


def summarize(histories, optimum: float, budget: int) -> dict:
    target = optimum * (1 + TARGET)
    hits = [evals_to_target(h, target, budget) for h in histories]
    chosen = [min((v for v, c in h if c <= 0), default=float("inf")) for h in histories]
    return {"to1%": statistics.median(hits), "reached": sum(h <= budget for h in hits) / len(hits),
            "chosen": sum(v <= target for v in chosen) / len(chosen),
            "feasible": statistics.median(sum(c <= 0 for _, c in h) / max(len(h), 1) for h in histories)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="2 seeds x 10 evaluations (smoke test)")
    p.add_argument("--seeds", type=int, default=20)
    p.add_argument("--budget", type=int, default=50)
    args = p.parse_args(argv)
    budget, n_seeds = (10, 2) if args.quick else (args.budget, args.seeds)
    seeds = list(range(n_seeds))
    t0 = time.time()
    print(f"# Constrained search: the adapter no larger than rank {CAP_RANK}'s (NOMAD: PB, the templates' nomad "
          f"section {TUNED['nomad']}; Optuna TPE: set_constraint), {n_seeds} seeds x {budget} evaluations")
    print("\n| landscape | best feasible (best overall) | method | median evals to a feasible point within 1% "
          "| runs reaching it | final choice within 1% | median share of feasible evaluations |")
    print("|---|---|---|---|---|---|---|")
    for path in MEASURED_CSVS:
        try:
            landscape = Tabulated(path)
        except ValueError as e:
            print(f"note: {path.name} left out: {e}", file=sys.stderr)
            continue
        optimum = best_feasible(landscape)
        for method, run in (("NOMAD (PB)", run_nomad), ("Optuna TPE", run_tpe)):
            s = summarize([run(path, seed, budget) for seed in seeds], optimum, budget)
            to = f"not reached (>{budget})" if s["to1%"] > budget else f"{s['to1%']:g}"
            print(f"| {path.stem} | {optimum:.4f} ({landscape.optimum:.4f}) | {method} | {to} | {s['reached']:.0%} "
                  f"| {s['chosen']:.0%} | {s['feasible']:.0%} |", flush=True)
    print(f"\n({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
