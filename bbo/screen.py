"""The low-fidelity start (nomad.screen_fraction): the start design trained to a fraction of its run, the
best few of it in full, and NOMAD started from those.

Why: with pruning on, most of the training-hours a search spends before its first good point go to its
start design (X0 and nomad.start_points' Latin-hypercube points), which pruning cannot stop: there are
no finished runs to compare them with yet (docs/benchmarks.md, section 5). Here the design is compared
with itself, as one rung of successive halving (Jamieson & Talwalkar 2016, Hyperband's inner loop):

1. every design point is trained by the blackbox with `--screen FRACTION`: the full run's schedule, stopped
   at that checkpoint of train.eval_every and recorded `pruned` with the reason "low-fidelity start";
2. the nomad.screen_keep best by validation loss there are trained again, in full (`--screen 1
   --retry-pruned`; the pruning rule of the moment applies as to any run);
3. NOMAD's X0 is those points, best first (bbo.paramfile.screened_x0, a file beside the design's).

Honest by construction: a screened run is a pruned run, never an answer, and NOMAD sees only what the
blackbox answers: the full runs it starts from, and, should it ask a screened point later, that run's
validation loss at the fraction, as for any pruned run (worse than the run would have reached, never
better; `bbo run --retry-pruned` trains them in full). The screened trainings do not count against
nomad.budget (core.store.budget_use). Resumable: a rerun answers the trained points from their
folders; once the X0 file exists the start is done and NOMAD starts from it.
"""
from __future__ import annotations

import math
from typing import Callable

from core.config import ExperimentConfig
from core.nomadtext import point_file
from core.pruning import key, read_curve
from core.store import RunStore, run_id


def screened_order(config: ExperimentConfig, design: list[list]) -> list[tuple[float, list]]:
    """(validation loss at nomad.screen_fraction, point) of the design, best first; a point whose run has no
    value there (it failed, or pruned earlier) last, as inf."""
    store, fingerprint, at = RunStore(config.dir), config.fingerprint(), key(config.nomad.screen_fraction)
    ranked = []
    for point in design:
        curve = read_curve(store.run_dir(run_id(config.space.decode(point), fingerprint)))
        values = [p.get("val_loss") for p in curve if key(p.get("fraction", -1)) == at]
        value = values[-1] if values and isinstance(values[-1], (int, float)) else math.inf
        ranked.append((value if math.isfinite(value) else math.inf, point))
    return sorted(ranked, key=lambda t: t[0])


def screen_start(config: ExperimentConfig, env: dict, echo: Callable[[str], None] = print) -> int:
    """Run the low-fidelity start unless its X0 file exists; 0 when NOMAD can start from it, else the
    blackbox's exit code (1: no design point could be screened)."""
    from bbo.paramfile import run_blackbox, screened_x0

    x0_file = config.dir / screened_x0(config)
    if x0_file.exists():
        return 0
    fraction, keep = config.nomad.screen_fraction, config.nomad.screen_keep
    design = config.space.start_design(config.nomad.start_points, config.nomad.seed)
    echo(f"low-fidelity start: {len(design)} points of the start design to {fraction:.0%} of their training, "
         f"then the best {keep} in full (nomad.screen_fraction)")
    rc = run_blackbox(config, design, ["--screen", f"{fraction:g}"], env)
    ranked = [(v, p) for v, p in screened_order(config, design) if math.isfinite(v)]
    if rc not in (0, 1) or not ranked:
        return rc or 1
    best = [p for _, p in ranked[:keep]]
    rc = run_blackbox(config, best, ["--screen", "1", "--retry-pruned"], env)
    if rc != 0:
        return rc
    for value, point in ranked:
        mark = "in full" if point in best else "screened out"
        echo(f"  {' '.join(f'{v:g}' for v in point)}: val_loss {value:.6g} at {fraction:.0%} ({mark})")
    x0_file.write_text(point_file(best))
    return 0
