"""Pruning on measured learning curves: training-hours to within 1% of the optimum, with and without pruning.

    OMP_NUM_THREADS=1 python -m benchmarks.pruning             # 20 seeds, the paper templates' settings (~1 min)
    OMP_NUM_THREADS=1 python -m benchmarks.pruning --tune      # + a sweep of pruning settings on tuning seeds (~5 min)
    python -m benchmarks.pruning --quick                       # 2 seeds, budget 20: a smoke test
    OMP_NUM_THREADS=1 python -m benchmarks.pruning --curves benchmarks/data/landscape_smollm2.csv   # the real model

Why: pruning (core/pruning.py) claims to save training time without losing the optimum. This
replays real learning curves (benchmarks/data/curves.csv: the tiny model's validation loss at
8 checkpoints of each of the 48 grid points, from `python -m benchmarks.make_landscape --curves`)
(or, with --curves, another such table: the real SmolLM2-135M's 24 points, landscape_smollm2.csv)
and counts training-hours as a search pays them: a full run is 1.0, a run stopped at 25% is
0.25, a point asked again is free (the run store answers it; a pruned one stays pruned). The
count stops when a completed run is within 1% of the table's optimum (a pruned run keeps no
adapter, so it is never the answer).

NOMAD is driven as benchmarks/search_efficiency.py drives it (its nomad_lines: the lines
`bbo run` writes, here with the templates' nomad section), one fresh process per seed, its lr
snapped to the grid. Its pruning is the project's rule itself: before each training, the
thresholds of core.pruning.thresholds over the finished (ok) runs' curves, then
core.pruning.prune_reason at each checkpoint of train.eval_every; a pruned point answers NOMAD
its last measured validation loss, as the blackbox does. The peer is Optuna's TPE with its
MedianPruner (PercentilePruner for another percentile): trial.report at each checkpoint (step =
the checkpoint's number among curves.csv's 8), trial.should_prune, the same warm-up and
number of finished runs before it prunes.
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.landscapes import DATA, Tabulated  # noqa: E402
from benchmarks.search_efficiency import TARGET, TUNE_SEEDS, nomad_lines, run_child, suggest  # noqa: E402
from core import pruning  # noqa: E402
from core.config import NomadConfig, load_config  # noqa: E402
from core.space import SearchSpace  # noqa: E402

CURVES_CSV = DATA / "curves.csv"
TEMPLATES = [REPO / "experiments" / n for n in ("llama2-7b-bbo3", "llama2-7b-mmlu", "llama2-7b-valloss")]
GOAL = 0.6  # pruned / unpruned median training-hours to 1%, at the same number of seeds reaching it
SCREEN_GOAL = GOAL  # the same for NOMAD with its low-fidelity start / TPE with its MedianPruner


# ---------------------------------------------------------------- the measured curves

class Curves(Tabulated):
    """curves.csv: the lookup of benchmarks.landscapes.Tabulated plus each point's val_loss@<fraction> columns."""

    def __init__(self, path: Path = CURVES_CSV):
        super().__init__(path)
        import csv

        lines = [line for line in Path(path).read_text().splitlines() if not line.startswith("#")]
        rows = [r for r in csv.DictReader(lines) if r["state"] == "ok"]
        self.fractions = sorted(float(c.split("@", 1)[1]) for c in rows[0] if c.startswith("val_loss@"))
        self.curves = {}
        for row in rows:
            hp = {"rank": int(row["rank"]), "alpha": int(row["alpha"]), "dropout": float(row["dropout"]),
                  "lr": float(row["lr"])}
            self.curves[self.point(hp)] = {f: float(row[f"val_loss@{pruning.key(f)}"]) for f in self.fractions}
        if not self.fractions or self.fractions[-1] != 1.0:
            raise ValueError(f"{path}: no val_loss@<fraction> columns ending at 1")

    def point(self, hp: dict) -> tuple:
        """The grid point a (snapped) set of hyperparameters trains."""
        return self._key(hp)

    def step(self, fraction: float) -> int:
        """The checkpoint's number among the table's (1-based): Optuna's step."""
        return min(range(len(self.fractions)), key=lambda i: abs(self.fractions[i] - fraction)) + 1


# ---------------------------------------------------------------- settings: the paper templates'

def template_settings() -> tuple[dict, dict]:
    """(pruning settings, NOMAD variant) of the paper templates, which must agree."""
    found = set()
    for path in TEMPLATES:
        c = load_config(path)
        found.add((c.pruning.enabled, c.train.eval_every, c.pruning.warmup, c.pruning.percentile,
                   c.pruning.min_runs, tuple(c.nomad.lh_search or ()), tuple(c.nomad.extra_lines),
                   c.nomad.initial_frame, c.nomad.start_points))
    if len(found) != 1:
        raise SystemExit(f"error: the paper templates differ in pruning/nomad settings: {sorted(found)}")
    enabled, eval_every, warmup, percentile, min_runs, lh, extra, frame, start_points = found.pop()
    if not enabled:
        raise SystemExit("error: the paper templates have pruning.enabled false")
    settings = {"eval_every": eval_every, "warmup": warmup, "percentile": percentile, "min_runs": min_runs}
    nomad = {"lh_search": list(lh) or None, "extra_lines": list(extra), "initial_frame": frame,
             "start_points": start_points}
    variant = {"label": "templates", "nomad": {k: v for k, v in nomad.items() if v}}
    return settings, variant


def label(settings: dict | None) -> str:
    if not settings:
        return "off"
    return (f"eval_every {settings['eval_every']:g}, warmup {settings['warmup']:g}, "
            f"percentile {settings['percentile']:g}, min_runs {settings['min_runs']}")


# ---------------------------------------------------------------- trainings replayed

@dataclass
class Run:
    state: str  # ok | pruned
    fraction: float  # of the training done: its training-hours
    objective: float  # the final validation loss, or the last measured one when pruned
    points: list  # [(fraction, val_loss)] measured


class Replay:
    """One search's trainings: each grid point at most once (the run store), the rest from its cache.

    log: (training-hours this evaluation cost, state, objective) per evaluation, cached ones at 0 hours."""

    def __init__(self, curves: Curves, eval_every: float | None):
        self.curves = curves
        self.fractions = pruning.checkpoints(eval_every)
        missing = [f for f in self.fractions if f not in curves.fractions]
        if missing:
            raise SystemExit(f"error: train.eval_every {eval_every}: checkpoints {missing} are not among "
                             f"{curves.path.name}'s {curves.fractions}")
        self.cache, self.log = {}, []

    def train(self, hp: dict, stop) -> tuple[Run, bool]:
        """(the run, whether it came from the cache); stop(fraction, val_loss) -> True ends it as pruned."""
        point = self.curves.point(hp)
        if point in self.cache:
            run = self.cache[point]
            self.log.append((0.0, run.state, run.objective))
            return run, True
        curve, measured = self.curves.curves[point], []
        run = None
        for fraction in self.fractions:
            measured.append((fraction, curve[fraction]))
            if fraction < 1.0 and stop(fraction, curve[fraction]):
                run = Run("pruned", fraction, curve[fraction], measured)
                break
        run = run or Run("ok", 1.0, curve[1.0], measured)
        self.cache[point] = run
        self.log.append((run.fraction, run.state, run.objective))
        return run, False

    def finished_curves(self) -> list[list[dict]]:
        """The curves of the ok runs, as curve.json holds them: what core.pruning.rule_for reads."""
        return [[{"fraction": f, "val_loss": v} for f, v in run.points] for run in self.cache.values()
                if run.state == "ok"]


def never(fraction, val_loss) -> bool:
    return False


def project_stop(replay: Replay, settings: dict):
    """The project's rule for the next training: thresholds from the finished runs now (as spec.json carries
    them), then prune_reason at each checkpoint."""
    curves = replay.finished_curves()
    rule = {"thresholds": pruning.thresholds(curves, settings["eval_every"], settings["warmup"],
                                             settings["percentile"], settings["min_runs"]),
            "percentile": settings["percentile"], "warmup": settings["warmup"], "runs": len(curves)}
    return lambda fraction, val_loss: pruning.prune_reason(fraction, val_loss, rule) is not None


def hours_to_target(log: list[tuple], optimum: float) -> tuple[float, bool, int]:
    """(training-hours until a completed run is within TARGET of the optimum, reached?, trainings started);
    not reached: all the hours of the search."""
    hours, trainings = 0.0, 0
    for cost, state, objective in log:
        hours += cost
        trainings += cost > 0
        if state == "ok" and objective <= optimum * (1 + TARGET):
            return hours, True, trainings
    return hours, False, trainings


# ---------------------------------------------------------------- NOMAD, as search_efficiency drives it

def _nomad_child(csv_path: str, variant: dict, settings: dict | None, seed: int, budget: int, x0: dict | None,
                 conn) -> None:
    """One NOMAD search in this (fresh) process; sends each evaluation's log entry to the parent. As
    search_efficiency (and `python -m bbo.nomad`) runs it: when NOMAD stops with budget left, it starts again from
    the best point (bbo.nomad.start_again_until_spent), the cache file shared. x0: another start ({variable: x0 in
    the space's units}) than the table's space gives."""
    import tempfile

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # NOMAD prints notes on stdout
    os.dup2(devnull, 2)  # and the driver its restart notes on stderr (a crash shows in the exit code)
    import PyNomad

    from bbo.nomad import guided_search, start_again_until_spent

    curves = Curves(Path(csv_path))
    space = SearchSpace.from_dict(curves.space)
    replay = Replay(curves, settings["eval_every"] if settings else None)

    def evaluate(point):
        coords = [point.get_coord(i) for i in range(space.dimension)]
        coords = [int(round(x)) if t == "I" else x for x, t in zip(coords, space.input_types)]
        run, _ = replay.train(space.decode(coords), project_stop(replay, settings) if settings else never)
        conn.send(replay.log[-1])
        point.setBBO(str(run.objective).encode())
        return True

    def start(lines):
        PyNomad.optimize(evaluate, [], [], [], lines)
        return 0

    def model_points(points):  # the model-guided step's points (bbo/model_step.py), trained as NOMAD's
        answers = []
        for coords in points:
            run, _ = replay.train(space.decode(coords), project_stop(replay, settings) if settings else never)
            conn.send(replay.log[-1])
            answers.append(repr(run.objective))
        return answers

    space_dict = {k: dict(v, x0=x0[k]) if x0 and k in x0 else v for k, v in curves.space.items()}
    with tempfile.TemporaryDirectory() as folder:
        lines = nomad_lines(space_dict, budget, seed, variant, Path(folder))
        nomad = variant.get("nomad", {})
        if nomad.get("screen_fraction"):  # the low-fidelity start, as bbo.screen runs it before NOMAD
            screen_design(replay, space, Path(folder) / "x0.txt", nomad["screen_fraction"],
                          nomad.get("screen_keep", NomadConfig().screen_keep), settings, conn)
        if nomad.get("model_step"):
            guided_search(lines, Path(folder), 0, start, model_points, echo=lambda line: None)
        else:
            start(lines)
            start_again_until_spent(lines, Path(folder), 0, start)
    conn.close()


def screen_design(replay: Replay, space: SearchSpace, x0_file: Path, fraction: float, keep: int,
                  settings: dict | None, conn) -> None:
    """The low-fidelity start (bbo/screen.py): every point of the start design (the X0 file nomad.start_points
    wrote) trained to `fraction` and stopped there (pruned, its cost `fraction`), the `keep` best by validation
    loss there trained again in full (the pruning rule of the moment), then NOMAD's X0 file is those points."""
    from core.nomadtext import point_file, point_lines

    design = [space.parse_point(tokens) for tokens in point_lines(x0_file.read_text())]
    if fraction not in replay.fractions:  # as the config requires: a checkpoint of train.eval_every
        raise SystemExit(f"error: screen_fraction {fraction} is not a checkpoint of {replay.fractions}")
    screened = []
    for coords in design:
        run, _ = replay.train(space.decode(coords), lambda f, v: f >= fraction - 1e-9)
        conn.send(replay.log[-1])
        screened.append((dict(run.points)[fraction], coords))
    best = [coords for _, coords in sorted(screened, key=lambda t: t[0])[:keep]]
    for coords in best:  # --retry-pruned on these: trained again, to the end
        del replay.cache[replay.curves.point(space.decode(coords))]
        replay.train(space.decode(coords), project_stop(replay, settings) if settings else never)
        conn.send(replay.log[-1])
    x0_file.write_text(point_file(best))


def run_nomad(variant: dict, settings: dict | None, seed: int, budget: int, x0: dict | None = None,
              csv_path: Path = CURVES_CSV) -> list:
    """The log of one NOMAD search (a fresh process: NOMAD's SEED is reproducible only there). NOMAD's budget
    (MAX_BB_EVAL) counts every evaluation, a point snapped to a grid point already trained included, as in
    `bbo run` where the run store answers it; the log is cut at the budget-th training as search_efficiency
    cuts its history (on a 48-point grid a cap that only binds for a budget under 48)."""
    log, exitcode = run_child(_nomad_child, lambda send: (str(csv_path), variant, settings, seed, budget, x0, send))
    if exitcode != 0:
        raise SystemExit(f"error: NOMAD crashed (seed {seed}, exit code {exitcode})")
    return first_trainings(log, budget)


def first_trainings(log: list, budget: int) -> list:
    """The log up to (and with) its budget-th training; the free answers after it are dropped."""
    out, trainings = [], 0
    for entry in log:
        if trainings == budget:
            break
        out.append(entry)
        trainings += entry[0] > 0
    return out


# ---------------------------------------------------------------- Optuna TPE with its MedianPruner

def run_tpe(settings: dict | None, seed: int, budget: int, csv_path: Path = CURVES_CSV) -> list:
    """The log of one TPE search: up to `budget` distinct trainings, stopped at the target (nothing after it
    counts) or when every grid point is known."""
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    curves = Curves(csv_path)
    space = SearchSpace.from_dict(curves.space)
    if settings:
        common = {"n_startup_trials": settings["min_runs"], "n_warmup_steps": curves.step(settings["warmup"])}
        pruner = (optuna.pruners.MedianPruner(**common) if settings["percentile"] == 50
                  else optuna.pruners.PercentilePruner(settings["percentile"], **common))
    else:
        pruner = optuna.pruners.NopPruner()
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=seed), pruner=pruner)
    replay = Replay(curves, settings["eval_every"] if settings else None)
    for _ in range(50 * budget):
        if len(replay.cache) >= min(budget, len(curves.curves)) or hours_to_target(replay.log, curves.optimum)[1]:
            break
        trial = study.ask()

        def stop(fraction, val_loss, trial=trial):
            trial.report(val_loss, curves.step(fraction))
            return trial.should_prune()

        run, cached = replay.train(suggest(trial, space), stop)
        if cached:  # the stored run's curve, as a fresh training would have reported it
            for fraction, val_loss in run.points:
                if fraction < 1.0:
                    trial.report(val_loss, curves.step(fraction))
        if run.state == "pruned":
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, run.objective)
    return replay.log


# ---------------------------------------------------------------- figures

def quantile(values: list[float], q: float) -> float:
    """core.pruning.percentile, where an unreached seed (inf) makes the quantiles it touches inf."""
    if any(math.isinf(v) for v in values):
        ordered = sorted(values)
        position = (len(ordered) - 1) * q / 100.0
        if math.isinf(ordered[math.ceil(position)]):
            return math.inf
    return pruning.percentile(values, q)


def summarize(logs: list[list], optimum: float) -> dict:
    """Median and quartiles of the training-hours to 1% (inf: not reached), seeds reaching it, and how many
    distinct searches (logs up to the target) the seeds made."""
    figures = [hours_to_target(log, optimum) for log in logs]
    hours = [h if reached else math.inf for h, reached, _ in figures]
    paths = {tuple(log[:t]) if r else tuple(log) for log, (_, r, t) in zip(logs, figures)}
    reached = [t for _, r, t in figures if r]
    return {"median": quantile(hours, 50), "q1": quantile(hours, 25), "q3": quantile(hours, 75),
            "reached": len(reached), "runs": len(logs), "per_seed": figures, "paths": len(paths),
            "trainings": statistics.median(reached) if reached else math.nan}


def fmt(value: float) -> str:
    return "not reached" if math.isinf(value) else f"{value:.2f}"


def ratio(pruned: dict, unpruned: dict) -> float:
    if math.isinf(pruned["median"]) or math.isinf(unpruned["median"]):
        return math.inf
    return pruned["median"] / unpruned["median"]


def meets_goal(pruned: dict, unpruned: dict) -> bool:
    return pruned["reached"] >= unpruned["reached"] and ratio(pruned, unpruned) <= GOAL


def grid_starts(curves: Curves) -> list[dict]:
    """Every grid point as NOMAD's X0, in the space's units (times_rank: the multiplier)."""
    return [{"rank": r, "alpha": a // r, "dropout": d, "lr": 10 ** x} for r, a, d, x in sorted(curves.curves)]


def measure(method: str, settings: dict | None, seeds: list[int], budget: int, variant: dict,
            starts: list[dict] | None = None, csv_path: Path = CURVES_CSV) -> dict:
    """The summary of one method and pruning setting over the seeds (or, with starts, over NOMAD starts at seed
    seeds[0])."""
    optimum = Curves(csv_path).optimum
    if method == "Optuna TPE":
        return summarize([run_tpe(settings, s, budget, csv_path) for s in seeds], optimum)
    if starts:
        return summarize([run_nomad(variant, settings, seeds[0], budget, x0, csv_path) for x0 in starts], optimum)
    return summarize([run_nomad(variant, settings, s, budget, None, csv_path) for s in seeds], optimum)


def print_table(title: str, rows: list[tuple[str, dict | None, dict]], baseline: dict,
                against: str = "pruned / unpruned") -> None:
    """rows: (method, settings or None, summary); baseline: {method: its summary with pruning off} (or what
    `against` names)."""
    print(f"\n### {title}\n")
    print("| method | pruning | median training-hours to 1% | IQR | runs reaching 1% | median trainings to 1% "
          f"| distinct searches | ratio {against} | goal |")
    print("|---|---|---|---|---|---|---|---|---|")
    for method, settings, s in rows:
        off = baseline[method]
        r = ("n/a: a median not reached" if math.isinf(ratio(s, off)) else f"{ratio(s, off):.2f}") if settings else ""
        goal = ("met" if meets_goal(s, off) else "not met") if settings else ""
        print(f"| {method} | {label(settings)} | {fmt(s['median'])} | {fmt(s['q1'])}-{fmt(s['q3'])} | "
              f"{s['reached']}/{s['runs']} | {s['trainings']:g} | {s['paths']} | {r} | {goal} |", flush=True)


SWEEP = [{"eval_every": e, "warmup": w, "percentile": p, "min_runs": m}
         for e in (0.25, 0.125) for w in (0.25, 0.5) for p in (50.0, 75.0) for m in (5, 3)]


def tune(variant: dict, seeds: list[int], budget: int, csv_path: Path = CURVES_CSV) -> list[dict]:
    """NOMAD with each SWEEP setting on the tuning seeds: those that meet the goal, the lowest ratio first."""
    off = measure("NOMAD", None, seeds, budget, variant, csv_path=csv_path)
    rows, good = [("NOMAD", None, off)], []
    for settings in SWEEP:
        on = measure("NOMAD", settings, seeds, budget, variant, csv_path=csv_path)
        rows.append(("NOMAD", settings, on))
        if meets_goal(on, off):
            good.append((ratio(on, off), SWEEP.index(settings), settings))
    print_table(f"Sweep of pruning settings, NOMAD (tuning seeds {seeds[0]}..{seeds[-1]}, budget {budget})",
                rows, {"NOMAD": off})
    return [settings for *_, settings in sorted(good)]


SCREENS = [{"start_points": n, "screen_fraction": f, "screen_keep": k}
           for n in (6, 10) for f in (0.25, 0.5) for k in (1, 2, 3)]
# reported on every table (the winners of the sweep on the tiny model's and the real model's tuning seeds, and the
# templates' design screened at a quarter), so that one setting is judged on both
SCREEN_CANDIDATES = [{"start_points": 10, "screen_fraction": 0.25, "screen_keep": 3},
                     {"start_points": 6, "screen_fraction": 0.5, "screen_keep": 1},
                     {"start_points": 6, "screen_fraction": 0.25, "screen_keep": 2}]


# the model-guided step (nomad.model_step), alone and after the first low-fidelity start: on every --screen table
MODEL_CANDIDATES = [{"model_step": True}, dict(SCREEN_CANDIDATES[0], model_step=True)]


def screen_label(screen: dict) -> str:
    parts = ([f"low-fidelity start: {screen['start_points']} + X0 to {screen['screen_fraction']:g}, "
              f"best {screen['screen_keep']} in full"] if screen.get("screen_fraction") else [])
    return ", ".join(parts + (["model step"] if screen.get("model_step") else []))


def screening(variant: dict, settings: dict, seeds: list[int], tune_seeds: list[int] | None, budget: int,
              csv_path: Path) -> None:
    """NOMAD with the low-fidelity start against NOMAD without it and TPE with its MedianPruner, all with the
    templates' pruning: training-hours to 1%, for each of SCREEN_CANDIDATES. With tune_seeds: every SCREENS
    setting on those first, and the reporting seeds for the one with the lowest median ratio to TPE there too."""
    chosen = [dict(variant["nomad"], **screen) for screen in SCREEN_CANDIDATES + MODEL_CANDIDATES]
    if tune_seeds:
        tpe = measure("Optuna TPE", settings, tune_seeds, budget, variant, csv_path=csv_path)
        rows, scores = [("Optuna TPE", settings, tpe)], []
        for screen in SCREENS:
            on = measure("NOMAD", settings, tune_seeds, budget, {"nomad": dict(variant["nomad"], **screen)},
                         csv_path=csv_path)
            rows.append((f"NOMAD, {screen_label(screen)}", settings, on))
            if on["reached"] >= tpe["reached"]:
                scores.append((ratio(on, tpe), SCREENS.index(screen), screen))
        print_table(f"Sweep of low-fidelity starts, NOMAD with the templates' pruning (tuning seeds "
                    f"{tune_seeds[0]}..{tune_seeds[-1]}, budget {budget}); ratio: to TPE with its MedianPruner",
                    rows, {m: tpe for m, *_ in rows}, "to TPE with pruning")
        best = dict(variant["nomad"], **min(scores, key=lambda t: t[:2])[2]) if scores else None
        if best is not None and best not in chosen:
            chosen.append(best)
    tpe = measure("Optuna TPE", settings, seeds, budget, variant, csv_path=csv_path)
    rows = [("Optuna TPE", settings, tpe),
            ("NOMAD", settings, measure("NOMAD", settings, seeds, budget, variant, csv_path=csv_path))]
    for nomad in chosen:
        rows.append((f"NOMAD, {screen_label(nomad)}", settings,
                     measure("NOMAD", settings, seeds, budget, {"nomad": nomad}, csv_path=csv_path)))
    print_table(f"Low-fidelity start (reporting seeds {seeds[0]}..{seeds[-1]}, budget {budget}), all with the "
                f"templates' pruning; ratio: to Optuna TPE with its MedianPruner (goal {SCREEN_GOAL}x)",
                rows, {m: tpe for m, *_ in rows}, "to TPE with pruning")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="2 seeds, budget 20 (smoke test)")
    p.add_argument("--seeds", type=int, default=20,
                   help=f"reporting seeds per method (default 20: 0..19; --tune: {TUNE_SEEDS}..)")
    p.add_argument("--budget", type=int, default=100,
                   help="NOMAD evaluations / TPE distinct trainings (default 100, llama2-7b-valloss's nomad.budget)")
    p.add_argument("--tune", action="store_true",
                   help=f"also sweep pruning settings (tuning seeds {TUNE_SEEDS}.., disjoint) and report those "
                        "meeting the goal")
    p.add_argument("--starts", action="store_true",
                   help="also NOMAD from every grid point as X0 (seed 0): one search per grid point")
    p.add_argument("--screen", action="store_true",
                   help="also the low-fidelity start (nomad.screen_fraction) and the model-guided step "
                        "(nomad.model_step) against TPE with its MedianPruner; with --tune, the start's settings swept "
                        "on the tuning seeds first")
    p.add_argument("--curves", type=Path, default=CURVES_CSV,
                   help="the measured curves (default: the tiny model's benchmarks/data/curves.csv; the real model's: "
                        "benchmarks/data/landscape_smollm2.csv, from make_landscape --model smollm2)")
    args = p.parse_args(argv)
    budget, n_seeds = (20, 2) if args.quick else (args.budget, args.seeds)
    seeds = list(range(n_seeds))
    settings, variant = template_settings()
    curves = Curves(args.curves)
    t0 = time.time()
    print(f"# Pruning on measured learning curves ({curves.path.name}: {len(curves.curves)} points, checkpoints "
          f"{[f'{f:g}' for f in curves.fractions]}); optimum {curves.optimum:.4f} (1% target "
          f"{curves.optimum * (1 + TARGET):.4f}); NOMAD: the templates' nomad section {variant['nomad']}, budget {budget}")
    print(f"paper templates' settings: {label(settings)}")
    print(f"goal: NOMAD with pruning reaches 1% on as many runs as without, at <= {GOAL}x the median training-hours")

    chosen = [settings]
    if args.tune:
        chosen += [s for s in tune(variant, list(range(TUNE_SEEDS, TUNE_SEEDS + n_seeds)), budget, args.curves)
                   if s != settings]
    baseline = {m: measure(m, None, seeds, budget, variant, csv_path=args.curves) for m in ("NOMAD", "Optuna TPE")}
    rows = []
    for method in ("NOMAD", "Optuna TPE"):
        rows.append((method, None, baseline[method]))
        rows += [(method, s, measure(method, s, seeds, budget, variant, csv_path=args.curves)) for s in chosen]
    print_table(f"Reporting seeds {seeds[0]}..{seeds[-1]}, budget {budget}: the templates' settings first"
                + (", then those that met the goal on the tuning seeds" if args.tune else ""), rows, baseline)
    if args.screen:
        screening(variant, settings, seeds, list(range(TUNE_SEEDS, TUNE_SEEDS + n_seeds)) if args.tune else None,
                  budget, args.curves)
    if args.starts:
        starts = grid_starts(curves)
        off = measure("NOMAD", None, seeds, budget, variant, starts, args.curves)
        rows = [("NOMAD", None, off)] + [("NOMAD", s, measure("NOMAD", s, seeds, budget, variant, starts, args.curves))
                                         for s in chosen]
        print_table(f"NOMAD from each of the {len(starts)} grid points as X0 (seed {seeds[0]}, budget {budget})",
                    rows, {"NOMAD": off})
    print(f"\n({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
