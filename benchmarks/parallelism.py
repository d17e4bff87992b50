"""What parallelism buys: k evaluations at a time (launch.parallel = k GPUs slots or Slurm jobs), k = 1, 2, 4, 8.

    OMP_NUM_THREADS=1 python -m benchmarks.parallelism            # 20 seeds x 50 evaluations (~15 min on 2 cores)
    python -m benchmarks.parallelism --quick                      # 2 seeds x 16 evaluations, k = 1, 4: a smoke test

Why: on a cluster an evaluation is an hour of 4 GPUs; k at a time shortens the search's wall-clock
to about rounds x one evaluation, but a batch of k points is chosen knowing less, so it may need
more evaluations. Same landscapes, space and NOMAD settings as benchmarks/search_efficiency.py
(the tuned variant the experiments use). NOMAD gets BB_MAX_BLOCK_SIZE k, as `bbo run` writes it
for launch.parallel k, and evaluates a block per round; Optuna TPE asks k trials before telling
any (constant_liar=True, Optuna's advice for parallel workers). Reported per k: median rounds
(wall-clock in evaluation units) and evaluations to within 1% of the optimum, their ratio to
k = 1, and the share of runs that reached 1% within the budget. Goal (docs/benchmarks.md):
with k = 8, rounds at most 1/4 of k = 1, at no more than 1.5x the evaluations.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

from benchmarks.search_efficiency import (TUNED, evals_to_target, landscapes, rounds_to_target, run_nomad,
                                          run_optuna)

K_VALUES = [1, 2, 4, 8]


def measure(histories, optimum: float, budget: int) -> dict:
    evals = [evals_to_target(h, optimum, budget) for h in histories]
    rounds = [rounds_to_target(h, optimum, budget) for h in histories]
    return {"evals": statistics.median(evals), "rounds": statistics.median(rounds),
            "reached": sum(e <= budget for e in evals) / len(evals),
            "used_rounds": statistics.median(max((r for *_, r in h), default=0) for h in histories)}


def fmt(value: float, budget: int) -> str:
    return f">{budget}" if value > budget else f"{value:g}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="2 seeds x 16 evaluations, k = 1 and 4 (smoke test)")
    p.add_argument("--seeds", type=int, default=20)
    p.add_argument("--budget", type=int, default=50)
    args = p.parse_args(argv)
    budget, n_seeds, ks = (16, 2, [1, 4]) if args.quick else (args.budget, args.seeds, K_VALUES)
    seeds = list(range(100, 100 + n_seeds))  # the report seeds of benchmarks/search_efficiency.py
    t0 = time.time()
    print(f"# Parallel evaluations: {n_seeds} seeds x {budget} evaluations; medians over seeds; "
          f"NOMAD {TUNED['label']} with BB_MAX_BLOCK_SIZE k vs Optuna TPE with k trials in flight (constant liar)")
    summary = {}
    for ls in landscapes(args.quick):
        print(f"\n### {ls.name}: optimum {ls.optimum:.4f}\n")
        print("| k | method | median rounds to 1% | rounds vs k=1 | median evals to 1% | evals vs k=1 "
              "| runs reaching 1% | median rounds used |")
        print("|---" * 8 + "|")
        base = {}
        for k in ks:
            for method in ("NOMAD", "Optuna TPE"):
                if method == "NOMAD":
                    histories, _ = run_nomad(ls.name, TUNED, seeds, budget, block=k)
                else:
                    histories = [run_optuna(ls, "tpe", s, budget, in_flight=k) for s in seeds]
                m = measure(histories, ls.optimum, budget)
                base.setdefault(method, m)
                summary.setdefault((method, k), []).append((m, base[method]))
                print(f"| {k} | {method} | {fmt(m['rounds'], budget)} | {m['rounds'] / base[method]['rounds']:.2f} "
                      f"| {fmt(m['evals'], budget)} | {m['evals'] / base[method]['evals']:.2f} | {m['reached']:.0%} "
                      f"| {m['used_rounds']:g} |", flush=True)
    top = max(ks)
    print(f"\n## Goal: with k = {top}, rounds to 1% at most 1/4 of k = 1, evaluations at most 1.5x\n")
    print("| method | landscape | rounds ratio | evals ratio | met |")
    print("|---|---|---|---|---|")
    for (method, k), rows in summary.items():
        if k != top:
            continue
        for ls, (m, b) in zip(landscapes(args.quick), rows):
            rounds, evals = m["rounds"] / b["rounds"], m["evals"] / b["evals"]
            met = "yes" if rounds <= 0.25 and evals <= 1.5 and m["reached"] >= b["reached"] else "no"
            print(f"| {method} | {ls.name} | {rounds:.2f} | {evals:.2f} | {met} |")
    print(f"\n({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
