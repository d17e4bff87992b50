"""NOMAD's batch mode, as the `nomad` executable runs it, for a parameter file of this project.

    python -m bbo.nomad experiments/demo/param.txt                 # resumes to MAX_BB_EVAL, as `bbo run` does
    python -m bbo.nomad experiments/demo/param.txt --no-resume     # MAX_BB_EVAL anew, as `nomad param.txt`
    python -m bbo.nomad --experiment experiments/demo              # what `python -m bbo run` starts

PyNomadBBO ships no `nomad` binary; `PyNomad.optimizeWithMainStep` is its batch
mode and, with PROBLEM_DIR set to the parameter file's folder, behaves like
`nomad param.txt` (BB_EXE, CACHE_FILE, HISTORY_FILE resolved against that folder).
When an experiment.yaml sits beside the file, the two must agree. With
--experiment the lines are rendered from experiment.yaml plus the overrides in
BBO_OVERRIDES (the blackbox reads the same variable, so both see one config).

Resuming is the default (--resume, kept for old command lines): MAX_BB_EVAL counts the
successful evaluations already in CACHE_FILE (the failed ones too with nomad.count_failed),
so a rerun never spends a second budget, a search stopped half-way and started again ends
where an unstopped one would, and a search stopped by a cause that was then fixed does not
lose its budget to the failures. --no-resume spends MAX_BB_EVAL anew, as the `nomad`
binary does: its cache makes old points free, so it trains up to MAX_BB_EVAL new points
(the way to go past the budget on purpose). Under the binary itself the blackbox refuses
new trainings past nomad.budget (blackbox/blocks.py); the points it refused are taken out
of the cache here (forget_unanswered), so that NOMAD asks them again once budget is left.

No budget is left unused: on an all-integer (granular) space NOMAD stops as soon as its mesh cannot
be refined, often well before MAX_BB_EVAL. Then NOMAD starts again (`restart_lines`): from the best
point so far, with the next SEED and a few new Latin-hypercube points drawn with it, the cache file shared, so
nothing is evaluated twice, until the budget is spent or three starts in a row find nothing new.

With nomad.model_step (guided_search), NOMAD runs one iteration per start, its state kept in a hot restart file
between them, and bbo/model_step.py's point is evaluated before each iteration.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from bbo.paramfile import check, render, write_start_points
from core.config import ConfigError, load_config
from core.yamlvalues import env_overrides
from core.failures import read_stop, refused_file
from core.nomadtext import (CACHE_FILE, FAILED, KEEP_FILE, NOMAD_DIR, X0_PREFIX, drop_points, number, param_line,
                            param_lines, parse_params, point_file, point_lines, read_cache, read_hot_restart,
                            tokens)
from core.space import latin_hypercube

MAX_RESTARTS = 50
RESTART_SUFFIX = ".restart"  # a new start writes its own history file, appended to the search's after it
RESTART_X0 = "restart-x0.txt"  # a new start's X0 file (the best point and seeded LH points), beside CACHE_FILE
STALE_STARTS = 3  # starts in a row that find nothing new end the search
OTHER_STOPS = ("MAX_TIME", "MAX_ITERATIONS", "MAX_EVAL", "STOP_IF_FEASIBLE")  # the user's own stop: no restart


def prepare_lines(text: str, folder: Path, resume: bool = True, where: str = "param.txt",
                  count_failed: bool = False) -> list[str] | None:
    """The parameter lines to hand NOMAD; None when resuming finds the budget already spent
    (resume=False: MAX_BB_EVAL as written, what the `nomad` binary does)."""
    entries = parse_params(text, where)
    if "BB_EXE" not in entries:
        raise ConfigError(f"{where}: BB_EXE is missing")
    for keyword in ("CACHE_FILE", "HISTORY_FILE", "SOLUTION_FILE", "STATS_FILE"):
        for value in entries.get(keyword, []):
            (folder / value.split()[0]).parent.mkdir(parents=True, exist_ok=True)
    lines = [_absolute_x0(line, folder, where) for line in param_lines(text)]
    if resume and "CACHE_FILE" in entries and "MAX_BB_EVAL" in entries:
        budget = int(entries["MAX_BB_EVAL"][-1]) - counted(folder, lines, count_failed)
        if budget <= 0:
            return None
        lines = [line for line in lines if line.split()[0].upper() != "MAX_BB_EVAL"]
        lines.append(param_line("MAX_BB_EVAL", budget))
    return lines + [param_line("PROBLEM_DIR", f"{folder}/")]


def _absolute_x0(line, folder: Path, where: str) -> str:
    """An X0 file named relative to the parameter file's folder, as an absolute path: NOMAD reads it
    relative to its working folder, which PROBLEM_DIR does not change."""
    if line.keyword != "X0" or line.value.startswith("(") or not line.value:
        return line.text
    try:
        float(line.value.split()[0])
        return line.text  # X0 written without parentheses
    except ValueError:
        pass
    path = folder / line.value.split()[0]
    if not path.is_file():
        raise ConfigError(f"{where}:{line.number}: X0 file {line.value.split()[0]} not found in {folder}")
    return param_line("X0", path.resolve())


def counted(folder: Path, lines: list[str], count_failed: bool) -> int | None:
    """How many evaluations in the cache count against MAX_BB_EVAL (None: no CACHE_FILE)."""
    entries = parse_params("\n".join(lines), strict=False)
    if "CACHE_FILE" not in entries:
        return None
    cached = read_cache(folder / entries["CACHE_FILE"][-1].split()[0])
    return len([c for c in cached if count_failed or c["status"] not in FAILED])


def restart_lines(lines: list[str], folder: Path, spent: int, restart: int, fresh: bool) -> list[str] | None:
    """The lines of NOMAD's next start when it stopped with budget left, else None.

    lines: this invocation's lines (their MAX_BB_EVAL is its budget); spent: the evaluations counted
    since it began; restart: 1, 2, ...; fresh: whether the last start evaluated anything new.
    The next start: X0 = the best point of the cache and Latin-hypercube points drawn with SEED + restart
    (a handful; many when the last start found nothing new), in an X0 file beside the cache (NOMAD's own
    LH_SEARCH points ignore SEED), MAX_BB_EVAL = what is left.
    """
    entries = parse_params("\n".join(lines), strict=False)
    if "CACHE_FILE" not in entries or "MAX_BB_EVAL" not in entries or any(k in entries for k in OTHER_STOPS):
        return None
    left = int(entries["MAX_BB_EVAL"][-1]) - spent
    if left <= 0 or restart > MAX_RESTARTS:
        return None
    outputs = entries.get("BB_OUTPUT_TYPE", ["OBJ"])[-1].split()
    obj = outputs.index("OBJ") if "OBJ" in outputs else 0
    ok = [c for c in read_cache(folder / entries["CACHE_FILE"][-1].split()[0])
          if c["status"] == "BB_EVAL_OK" and len(c["outputs"]) > obj and isinstance(c["outputs"][obj], (int, float))
          and c["outputs"][obj] == c["outputs"][obj]]
    if not ok:
        return None
    cons = [i for i, t in enumerate(outputs) if t in ("PB", "EB")]  # the best feasible point, else the least infeasible

    def violation(c) -> float:
        return sum(max(float(c["outputs"][i]), 0.0) ** 2 for i in cons if i < len(c["outputs"]))

    best = min(ok, key=lambda c: (violation(c), c["outputs"][obj]))["x"]
    dimension = int(entries["DIMENSION"][-1])
    seed = int(entries.get("SEED", ["0"])[-1]) + restart
    # after a start that found nothing new, many: NOMAD evaluates them until MAX_BB_EVAL, skipping cached ones
    new_points = min(left, max(2, dimension)) if fresh else max(left, 100 * dimension)
    kept = [line.text for line in param_lines("\n".join(lines)) if line.keyword not in
            ("X0", "SEED", "MAX_BB_EVAL", "LH_SEARCH", "PROBLEM_DIR", "HISTORY_FILE", "ADD_SEED_TO_FILE_NAMES")]
    if "HISTORY_FILE" in entries:  # its own file, appended to the first start's (whose name may carry its seed)
        kept.append(param_line("HISTORY_FILE", f"{history_name(entries)}{RESTART_SUFFIX}"))
    box = box_of(entries, dimension)
    if box is None:  # bounds NOMAD's way (infinite, `*`): NOMAD's own LH points, the same whatever the SEED
        start = [param_line("X0", best), param_line("LH_SEARCH", new_points, 0)]
    else:  # the best point, then LH points drawn with this start's seed (core.space.latin_hypercube)
        drawn = latin_hypercube(*box, new_points, seed, draws=64 if new_points <= 20 else 1)
        x0_file = (folder / entries["CACHE_FILE"][-1].split()[0]).parent / RESTART_X0
        x0_file.write_text(point_file([best] + [p for p in drawn if p != best]))
        start = [param_line("X0", x0_file.resolve())]
    return kept + [param_line("ADD_SEED_TO_FILE_NAMES", "no"), *start, param_line("SEED", seed),
                   param_line("MAX_BB_EVAL", left)] + \
        [line for line in lines if line.startswith("PROBLEM_DIR")]


def box_of(entries: dict, dimension: int) -> tuple[list, list, list] | None:
    """(lower, upper, input types) from finite bounds written in full; None otherwise."""
    lower = [number(t) for t in tokens(entries.get("LOWER_BOUND", [""])[-1])]
    upper = [number(t) for t in tokens(entries.get("UPPER_BOUND", [""])[-1])]
    types = ([t.upper() for t in tokens(entries["BB_INPUT_TYPE"][-1])] if "BB_INPUT_TYPE" in entries
             else ["R"] * dimension)
    types = ["I" if t == "B" else t for t in types]
    if not (len(lower) == len(upper) == len(types) == dimension) or not set(types) <= {"R", "I"}:
        return None
    if any(v is None or not math.isfinite(v) for v in lower + upper):
        return None
    return lower, upper, types


def history_name(entries: dict) -> str:
    """The history file the first start wrote: NOMAD puts its SEED into the name unless told not to."""
    name = entries["HISTORY_FILE"][-1].split()[0]
    if entries.get("ADD_SEED_TO_FILE_NAMES", ["yes"])[-1].strip().lower() in ("no", "false", "0"):
        return name
    stem, dot, ext = name.rpartition(".")
    seed = entries.get("SEED", ["0"])[-1].strip()
    return f"{stem}.{seed}.{ext}" if dot else f"{name}.{seed}"


def rotate_stale_nomad_files(config) -> None:
    """NOMAD's cache is only valid for one problem: when the settings that shape the answers
    change, set the old files aside (the run folders stay the truth and are reused where they match)."""
    blob = json.dumps({"fixed": config.fingerprint(), "space": config.space.to_dict(),
                       "outputs": config.objective.outputs, "metric": config.objective.metric,
                       "constraints": [(c.label, c.barrier) for c in config.objective.constraints]},
                      sort_keys=True, default=str)
    signature = hashlib.sha256(blob.encode()).hexdigest()[:16]
    folder = config.dir / NOMAD_DIR
    stamp = folder / "problem.sha256"
    files = [p for p in folder.iterdir()  # not the files written from experiment.yaml
             if p.name != KEEP_FILE and not p.name.startswith(X0_PREFIX)] if folder.exists() else []
    if files and (not stamp.exists() or stamp.read_text().strip() != signature):
        aside = config.dir / f"{NOMAD_DIR}.old-{time.strftime('%Y%m%d-%H%M%S')}"
        aside.mkdir()
        for path in files:  # the folder itself stays (with its .gitkeep): a plain `nomad param.txt` writes into it
            shutil.move(str(path), str(aside / path.name))
        print(f"note: the problem changed since NOMAD's files were written; moved them to {aside.name}",
              file=sys.stderr)
    folder.mkdir(parents=True, exist_ok=True)
    stamp.write_text(signature + "\n")


def forget_unanswered(config) -> int:
    """Take out of NOMAD's cache the points it holds as failed though no run of them failed, so that NOMAD asks
    them again: their blackbox was stopped before it answered (the search killed while NOMAD still read it),
    or answered without training (a stopped search's points; those a plain `nomad` was refused for the budget,
    listed in core.failures.refused_file, which goes with them). Their run folder is unfinished or missing; a
    point whose run failed stays failed. Returns how many were removed."""
    from core.space import PointError
    from core.store import RunStore, run_id

    store, fingerprint = RunStore(config.dir), config.fingerprint()

    def unanswered(x) -> bool:
        try:
            hp = config.space.decode(config.space.parse_point([str(v) for v in x]))
        except PointError:
            return False
        return store.finished(run_id(hp, fingerprint)) is None

    cache = config.dir / CACHE_FILE
    dropped = drop_points(cache, [c["x"] for c in read_cache(cache) if c["status"] in FAILED and unanswered(c["x"])])
    refused_file(config.dir).unlink(missing_ok=True)  # its points are asked again from now on
    return dropped


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bbo.nomad", description="NOMAD 4 batch mode on a parameter file")
    p.add_argument("param_file", nargs="?")
    p.add_argument("--experiment", help="render the parameters from this experiment's config instead")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="count the evaluations already in CACHE_FILE against MAX_BB_EVAL (the default); "
                        "--no-resume: MAX_BB_EVAL new evaluations, as the `nomad` binary does")
    args = p.parse_args(argv)
    config = None
    try:
        if args.experiment:
            config = load_config(args.experiment, env_overrides())
            folder, text, where = config.dir, render(config), f"{config.dir}/experiment.yaml"
            rotate_stale_nomad_files(config)
            forget_unanswered(config)
            write_start_points(config)
        elif args.param_file:
            path = Path(args.param_file)
            if not path.is_file():
                raise ConfigError(f"no parameter file {path}")
            folder, text, where = path.resolve().parent, path.read_text(), str(path)
            if (folder / "experiment.yaml").exists():
                config = load_config(folder, env_overrides())
                check(config, path)
                rotate_stale_nomad_files(config)
                forget_unanswered(config)
        else:
            raise ConfigError("give a parameter file or --experiment DIR")
        lines = prepare_lines(text, folder, args.resume, where, count_failed=bool(config and config.nomad.count_failed))
        if config is not None and not os.environ.get("BBO_SEARCH_ID"):  # `bbo run` checked already
            from core.preflight import GPU_SLOTS_ENV, check_before_training

            slots, warnings = check_before_training(config)
            os.environ[GPU_SLOTS_ENV] = json.dumps(slots)  # the blackboxes need not check again
            for warning in warnings:
                print(f"warning: {warning}", file=sys.stderr)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if lines is None:
        print("budget already spent: nothing left to evaluate", file=sys.stderr)
        return 0
    import PyNomad

    os.environ.setdefault("BBO_DRIVER_PID", str(os.getpid()))  # blackboxes stop when this search dies
    os.environ.setdefault("BBO_SEARCH_ID", f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
    start = counted(folder, lines, True)  # NOMAD's MAX_BB_EVAL of this invocation counts failed points too
    stopped = (lambda: read_stop(config.dir, os.environ["BBO_SEARCH_ID"])) if config is not None else (lambda: False)
    if config is not None and config.nomad.model_step and start is not None:
        return guided_search(lines, folder, start, lambda more: _start_again(more, folder),
                             lambda points: _answers(config, points), stopped)
    PyNomad.optimizeWithMainStep(lines)
    if start is None:
        return 0
    return start_again_until_spent(lines, folder, start, lambda more: _start_again(more, folder), stopped)


def start_again_until_spent(lines: list[str], folder: Path, start: int, run_start, stopped=lambda: False) -> int:
    """After NOMAD's first start: start it again (restart_lines) while budget is left and starts find new points.

    start: the cache's count before the first start; run_start(lines) -> exit status runs one more start
    (a process of its own here; the benchmark's callable in its own process); stopped() -> the search was stopped.
    """
    before, stale = start, 0
    for restart in range(1, MAX_RESTARTS + 1):
        if stopped():
            return 0  # the search was stopped: `bbo run` says why
        now = counted(folder, lines, True)
        fresh = now > before  # did the last start evaluate anything new?
        stale = 0 if fresh else stale + 1
        if stale >= STALE_STARTS:
            print("NOMAD found nothing new to evaluate three times in a row: the points it can reach are evaluated",
                  file=sys.stderr)
            return 0
        before = now
        more = restart_lines(lines, folder, now - start, restart, fresh)
        if more is None:
            return 0
        left = next(line for line in more if line.startswith("MAX_BB_EVAL")).split()[1]
        print(f"NOMAD stopped with {left} evaluations of its budget left (its mesh cannot be refined further): "
              f"start {restart + 1} from the best point so far, with new seed and Latin-hypercube points",
              file=sys.stderr, flush=True)
        rc = run_start(more)
        if rc:
            return rc
    return 0


def guided_search(lines: list[str], folder: Path, start: int, run_start: Callable[[list[str]], int],
                  evaluate: Callable[[list[list]], list[str] | None], stopped: Callable[[], bool] = lambda: False,
                  echo: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True)) -> int:
    """NOMAD to its budget, one iteration per start, with the model step before each; its exit status.

    lines: the search's parameter lines (bbo.nomad.prepare_lines: MAX_BB_EVAL is what is left, the cache's count
    before it was `start`); run_start(lines) runs one NOMAD start (a process of its own for the real search);
    evaluate(points) -> their blackbox output lines, or None when they could not be evaluated (nothing written).
    """
    from bbo.model_step import HOT_RESTART_FILE, take_step

    entries = parse_params("\n".join(lines), strict=False)
    cache = folder / entries["CACHE_FILE"][-1].split()[0]
    hot = cache.parent / HOT_RESTART_FILE
    history = folder / history_name(entries) if "HISTORY_FILE" in entries else None
    budget = int(entries["MAX_BB_EVAL"][-1])
    outputs = entries.get("BB_OUTPUT_TYPE", ["OBJ"])[-1].split()
    obj = outputs.index("OBJ") if "OBJ" in outputs else 0
    block = int(entries.get("BB_MAX_BLOCK_SIZE", ["1"])[-1])
    seed = int(entries.get("SEED", ["0"])[-1])
    box = box_of(entries, int(entries["DIMENSION"][-1]))
    current, restart, stale = lines, 0, 0
    if history is not None:  # each start writes a history file of its own, appended to the search's (bbo.nomad)
        current = [line for line in lines if line.split()[0].upper() not in ("HISTORY_FILE", "ADD_SEED_TO_FILE_NAMES")]
        current += [param_line("HISTORY_FILE", f"{history_name(entries)}{RESTART_SUFFIX}"),
                    param_line("ADD_SEED_TO_FILE_NAMES", "no")]
    for step in range(10 * budget + 100):  # an iteration evaluates at least one point, or starts NOMAD again
        left = budget - (counted(folder, lines, True) - start)
        if left <= 0 or stopped():
            return 0
        state = read_hot_restart(hot)
        if state is not None and box is not None:
            try:
                take_step(cache, hot, history, state, box, obj, outputs, min(block, left), seed + step, evaluate, echo)
            except Exception as e:  # noqa: BLE001 - any failure of the model leaves the iteration to NOMAD
                echo(f"model step skipped ({type(e).__name__}: {e}); NOMAD's own iteration")
            left = budget - (counted(folder, lines, True) - start)
            if left <= 0 or stopped():
                return 0
        before = counted(folder, lines, True)
        rc = run_start(_iteration_lines(current, hot, state, left))
        if rc:
            return rc
        if counted(folder, lines, True) > before:
            stale = 0
            continue
        # NOMAD found nothing new: its mesh is at its finest; start it again from the best point, fresh
        stale += 1
        if stale >= STALE_STARTS:
            echo("NOMAD found nothing new to evaluate three times in a row: the points it can reach are evaluated")
            return 0
        restart += 1
        hot.unlink(missing_ok=True)
        current = restart_lines(lines, folder, counted(folder, lines, True) - start, restart, fresh=stale == 1)
        if current is None:
            return 0
        echo(f"NOMAD's mesh cannot be refined further: start {restart + 1} from the best point so far")
    return 0


def _iteration_lines(lines: list[str], hot: Path, state: dict | None, left: int) -> list[str]:
    """One NOMAD iteration from the hot restart file (when there is one): MAX_BB_EVAL counts NOMAD's own evaluations
    across the starts that read the file, so it is theirs plus what is left."""
    done = state["evaluations"] if state else 0
    kept = [line for line in lines if line.split()[0].upper() not in ("MAX_BB_EVAL", "MAX_ITERATIONS")]
    if state is not None:  # the initial Latin-hypercube points were drawn by the first start
        kept = [param_line("LH_SEARCH", 0, *line.split()[2:]) if line.split()[0].upper() == "LH_SEARCH" else line
                for line in kept]
    # NOMAD 4.5.1 crashes writing its hot restart file after MAX_BB_EVAL stopped it among its X0 points: a start
    # whose budget may end there is the last one and writes none
    write = state is not None or left > _x0_count(kept)
    return kept + [param_line("MAX_BB_EVAL", done + left), param_line("MAX_ITERATIONS", 1),
                   param_line("HOT_RESTART_FILE", hot), param_line("HOT_RESTART_WRITE_FILES", "yes" if write else "no"),
                   *([param_line("HOT_RESTART_READ_FILES", "yes")] if state is not None else [])]


def _x0_count(lines: list[str]) -> int:
    """How many X0 points the lines give NOMAD (a vector each, or the points of an X0 file)."""
    count = 0
    for line in param_lines("\n".join(lines)):
        if line.keyword == "X0":
            path = Path(line.value.split()[0]) if not line.value.startswith("(") else None
            count += len(point_lines(path.read_text())) if path is not None and path.is_file() else 1
    return count


def _answers(config, points: list[list]) -> list[str] | None:
    """The blackbox's output lines for points of the model-guided step, one per point; None when it gave none."""
    from bbo.paramfile import run_blackbox

    answers: list[str] = []
    run_blackbox(config, points, ["--model-step"], dict(os.environ), answers)
    return answers if len(answers) == len(points) else None


def _start_again(lines: list[str], folder: Path) -> int:
    """One more NOMAD start, in a process of its own (NOMAD sets up its output files once per process);
    its history is appended to the search's history file."""
    proc = subprocess.run([sys.executable, "-c", "import json, sys, PyNomad; "
                           "PyNomad.optimizeWithMainStep(json.load(sys.stdin))"], input=json.dumps(lines), text=True)
    entries = parse_params("\n".join(lines), strict=False)
    part = folder / entries["HISTORY_FILE"][-1].split()[0] if "HISTORY_FILE" in entries else None
    if part is not None and part.exists():
        with open(str(part)[:-len(RESTART_SUFFIX)], "a") as history:
            history.write(part.read_text())
        part.unlink()
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
