"""The blackbox NOMAD calls, and the way to evaluate one point by hand.

    # as NOMAD runs it (BB_EXE in param.txt); the file holds one point per line
    python -m blackbox --experiment experiments/demo /tmp/points.txt

    # by hand, in hyperparameter units (unset ones take the space's fixed value or x0)
    python -m blackbox --experiment experiments/demo --rank 8 --alpha 16 --dropout 0.05 --lr 3e-4

    # the same point trained again with another seed (what `bbo confirm` runs): its own run folder
    python -m blackbox --experiment experiments/demo --rank 8 --alpha 16 --confirm-seed 43

stdout gets one line per point, the outputs in BB_OUTPUT_TYPE order (objective
first), or FAILED for a point whose evaluation failed. Exit status: 0 if at least
one point was evaluated, 1 if every point failed, 2 for bad input (nothing is run).

Run by a plain `nomad` binary (no `bbo run` or `python -m bbo.nomad` around it: no BBO_SEARCH_ID), a
point file trains no new point past nomad.budget: those are answered FAILED untrained, with one line
saying how to raise the budget; --extend (or BBO_EXTEND=1) trains past it. Stored points are answered
from their folders as always.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from core.config import ConfigError, load_config
from core.yamlvalues import env_overrides
from core.failures import EXTEND_ENV, Interrupted
from core.nomadtext import point_lines
from core.preflight import check_inputs
from core.procs import on_death_of
from core.space import PointError
from core.store import RunStore, State, run_id


def read_points(path: str, space) -> list[tuple[dict, list]]:
    """Parse and validate a NOMAD point file: every line, before anything is trained."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise PointError(f"cannot read point file {path}: {e.strerror}") from None
    lines = point_lines(text)
    if not lines:
        raise PointError(f"point file {path} is empty")
    points = []
    for i, tokens in enumerate(lines, 1):
        try:
            coords = space.parse_point(tokens)
        except PointError as e:
            raise PointError(f"point file {path}, line {i}: {e}") from None
        points.append((space.decode(coords), coords))
    return points


def hand_point(args, space) -> tuple[dict, list | None]:
    """Hyperparameters given as flags; unset ones default to the space's fixed value or X0."""
    hp = space.complete({name: getattr(args, name) for name in ("rank", "alpha", "dropout", "lr")})
    return hp, space.encode(hp)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m blackbox", description=__doc__.split("\n\n")[0])
    p.add_argument("pointfile", nargs="?", help="NOMAD point file (one point per line)")
    p.add_argument("--experiment", "-e", required=True, help="experiment folder (holds experiment.yaml)")
    p.add_argument("--rank", type=float)
    p.add_argument("--alpha", type=float)
    p.add_argument("--dropout", type=float)
    p.add_argument("--lr", type=float)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. --set train.epochs=1 (changes the run id)")
    p.add_argument("--confirm-seed", type=int, metavar="N",
                   help="train with train.seed=N as a confirmation of the point's own run (bbo confirm): "
                        "a run folder of its own, -sN in its id; NOMAD never sees it")
    p.add_argument("--retry-failed", action="store_true",
                   help="train again points whose stored run failed (also set by `bbo run --retry-failed`)")
    p.add_argument("--retry-pruned", action="store_true",
                   help="train again points whose stored run was pruned (also set by `bbo run --retry-pruned`)")
    p.add_argument("--screen", type=float, metavar="FRACTION",
                   help="a point of the low-fidelity start (bbo/screen.py, nomad.screen_fraction): trained to FRACTION "
                        "of its run and recorded pruned there (1: in full); not counted against nomad.budget")
    p.add_argument("--model-step", action="store_true",
                   help="points of the model-guided step (bbo/model_step.py, nomad.model_step): NOMAD's in all but "
                        "their source")
    p.add_argument("--extend", action="store_true",
                   help="under a plain `nomad`, train past nomad.budget (also BBO_EXTEND=1 in the environment); "
                        "without it, new points past the budget are answered FAILED untrained")
    p.add_argument("--verbose", "-v", action="store_true", help="print the metrics of each point on stderr")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from blackbox.blocks import evaluate_block
    from blackbox.executors import orphaned, stop_with_search

    try:
        config = load_config(args.experiment, env_overrides() + args.set)
        hand = any(getattr(args, n) is not None for n in ("rank", "alpha", "dropout", "lr"))
        if args.pointfile and hand:
            raise PointError("give a point file or --rank/--alpha/--dropout/--lr, not both")
        points = read_points(args.pointfile, config.space) if args.pointfile else [hand_point(args, config.space)]
        check_inputs(config)  # cheap; hub and GPU checks run only if a point must be trained
        confirms = None
        if args.confirm_seed is not None:
            if args.confirm_seed == config.train.seed:
                raise PointError(f"--confirm-seed {args.confirm_seed} is train.seed itself: the point's own run")
            searched = config.fingerprint()
            confirms = [run_id(hp, searched) for hp, _ in points]
            config = load_config(args.experiment, env_overrides() + args.set + [f"train.seed={args.confirm_seed}"])
        if args.screen is not None and (not args.pointfile or confirms or not 0.0 < args.screen <= 1.0):
            raise PointError("--screen FRACTION: a point file, a fraction in (0, 1], and no --confirm-seed")
        if args.model_step and (not args.pointfile or confirms or args.screen is not None):
            raise PointError("--model-step: a point file, and neither --confirm-seed nor --screen")
    except (ConfigError, PointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    stop_with_search()  # NOMAD or the user stopped us, or the search was killed (even by SIGKILL): training too
    if args.pointfile:  # NOMAD (our parent: bb.sh execs python) ended or was stopped: so do we
        on_death_of(os.getppid(), orphaned)
    retry_failed = args.retry_failed or os.environ.get("BBO_RETRY_FAILED") == "1"
    retry_pruned = args.retry_pruned or os.environ.get("BBO_RETRY_PRUNED") == "1"
    extend = args.extend or os.environ.get(EXTEND_ENV) == "1"
    try:
        source = ("confirm" if confirms else "screen" if args.screen else "model" if args.model_step
                  else "nomad" if args.pointfile else "hand")
        outcomes = evaluate_block(config, points, source=source, retry_failed=retry_failed, confirms=confirms,
                                  retry_pruned=retry_pruned, extend=extend,
                                  screen=args.screen if args.screen and args.screen < 1.0 else None)
    except ConfigError as e:  # a check before training (hub access, GPUs): nothing was trained
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Interrupted:  # the search was stopped while we trained: the next run finishes these points
        print("interrupted: the search was stopped; the points in training are evaluated again by its next run",
              file=sys.stderr)
        return 128 + signal.SIGTERM
    for outcome in outcomes:
        print(outcome.line(), flush=True)
        if args.verbose or not args.pointfile:
            _explain(outcome, config)
    return 0 if any(o.state != State.FAILED for o in outcomes) else 1


def _explain(outcome, config) -> None:
    print(f"run: {RunStore(config.dir).run_dir(outcome.run_id)}", file=sys.stderr)
    if outcome.state != State.FAILED:
        shown = {k: v for k, v in outcome.metrics.items() if isinstance(v, (int, float))}
        print("  " + "  ".join(f"{k}={v:.6g}" for k, v in shown.items()), file=sys.stderr)
        if outcome.state == State.PRUNED:
            print(f"  pruned: {outcome.reason}", file=sys.stderr)
    else:
        print(f"  failed: {outcome.reason}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
