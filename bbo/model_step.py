"""The model-guided step (nomad.model_step): before each NOMAD iteration, the point a model of the finished runs
expects to be best is evaluated first; NOMAD still drives the search around it.

NOMAD 4.5.1's own Gaussian-process search (SGTELIB_MODEL_SEARCH) aborts (docs/benchmarks.md, section 1), so the
step is taken between NOMAD's iterations, as SGTELIB would take it inside one:

1. fit a Gaussian process (scikit-learn) to the evaluated points of NOMAD's cache: the coordinates NOMAD sees,
   scaled to [0, 1], and the objective;
2. let NOMAD minimise the lower confidence bound mean - KAPPA * deviation on it (a PyNomad run on the model:
   milliseconds), from the incumbent and a few Latin-hypercube points;
3. put the minimiser on NOMAD's mesh around the incumbent (DELTA_MESH_SIZE of NOMAD's hot restart file), inside
   the bounds;
4. evaluate it as NOMAD's blackbox would (the run store answers a point trained before from its folder), add it to
   NOMAD's cache and history, and make it NOMAD's incumbent when it is feasible and beats it;
5. run one NOMAD iteration (its search steps and poll) from the hot restart file (HOT_RESTART_READ_FILES,
   MAX_ITERATIONS 1), which NOMAD writes again for the next step (bbo.nomad.guided_search, the loop).

A point the cache holds already, a model that cannot be fitted (too few points, a numerical failure) or any
other error of steps 1-3 skips the step: that iteration is NOMAD's own. When an iteration of NOMAD finds
nothing new (its mesh is at its finest), NOMAD starts again as bbo.nomad does without the step (restart_lines:
from the best point, a new seed and Latin-hypercube points), from a fresh state.
"""
from __future__ import annotations

import math
from pathlib import Path

from core.nomadtext import append_evaluations, number, param_line, read_cache, set_incumbent, tokens

KAPPA = 1.0  # the lower confidence bound's weight on the deviation (0, 0.3 and 2 did no better: docs/benchmarks.md)
KAPPAS = (KAPPA, 0.0, 2 * KAPPA, 4 * KAPPA, KAPPA / 2, 8 * KAPPA, KAPPA / 4, 16 * KAPPA)  # a block's points: one each
ACQUISITION_EVALS = 100  # NOMAD's evaluations of the model per step (NOMAD spends ~5 ms on each)
HOT_RESTART_FILE = "hotrestart.txt"  # beside NOMAD's cache


def propose(rows: list[dict], box: tuple[list, list, list], obj: int, incumbent: list, mesh: list | None,
            count: int, seed: int) -> list[list]:
    """Up to `count` new points for the model step (none when the model cannot be fitted yet), on the mesh.

    rows: NOMAD's cache (core.nomadtext.read_cache); box: (lower, upper, input types); obj: the objective's index
    among the outputs; incumbent: the point the mesh is centred on; mesh: its size per variable (None: 1 for an
    integer variable, a thousandth of the range for a real one).
    """
    import numpy as np

    from core.faults import fails_model_step

    lower, upper, types = box
    ok = [r for r in rows if r["status"] == "BB_EVAL_OK" and len(r["outputs"]) > obj
          and isinstance(r["outputs"][obj], (int, float)) and math.isfinite(r["outputs"][obj])]
    if len(ok) < len(lower) + 2:
        return []
    fails_model_step()  # BBO_FAULT=model_step: the tests' model crash
    low, span = np.array(lower, float), np.array(upper, float) - np.array(lower, float)
    span[span == 0] = 1.0
    scaled = np.array([r["x"] for r in ok], float)
    model = fit(((scaled - low) / span), np.array([r["outputs"][obj] for r in ok], float), seed)
    seen = {key(r["x"]) for r in rows}
    points = []
    for kappa in KAPPAS[:count]:
        def lcb(x):  # a point whose mesh point is evaluated (or chosen) already is no candidate
            if key(on_mesh(x, incumbent, mesh, box)) in seen:
                return math.inf
            mean, deviation = model.predict(((np.asarray(x, float) - low) / span)[None, :], return_std=True)
            return mean[0] - kappa * deviation[0]

        point = on_mesh(minimise(lcb, box, incumbent, seed), incumbent, mesh, box)
        if key(point) not in seen:  # the minimiser found no new point: none from this weight
            seen.add(key(point))
            points.append(point)
    return points


def fit(x, y, seed: int):
    """A Gaussian process with a Matern 5/2 kernel, one length scale per variable, and noise."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

    kernel = (ConstantKernel(1.0, (1e-3, 1e3)) * Matern([0.3] * x.shape[1], (1e-2, 1e2), nu=2.5)
              + WhiteKernel(1e-3, (1e-6, 1e-1)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return GaussianProcessRegressor(kernel, normalize_y=True, n_restarts_optimizer=1, random_state=seed).fit(x, y)


def minimise(function, box: tuple[list, list, list], start: list, seed: int) -> list:
    """NOMAD's minimiser of a cheap function of a point, from `start` (its own search steps off: on a model they
    cost more than they find)."""
    import PyNomad

    lower, upper, types = box
    best = [math.inf, list(start)]

    def one(point):
        x = [point.get_coord(j) for j in range(len(lower))]
        value = float(function(x))
        point.setBBO(str(value if math.isfinite(value) else 1e300).encode())
        if value < best[0]:
            best[:] = [value, x]
        return True

    PyNomad.optimize(one, list(start), list(lower), list(upper),
                     [param_line("DIMENSION", len(lower)), param_line("BB_INPUT_TYPE", list(types)),
                      param_line("BB_OUTPUT_TYPE", "OBJ"), param_line("MAX_BB_EVAL", ACQUISITION_EVALS),
                      param_line("MAX_EVAL", 2 * ACQUISITION_EVALS), param_line("LH_SEARCH", 4 * len(lower), 0),
                      param_line("QUAD_MODEL_SEARCH", "no"), param_line("NM_SEARCH", "no"),
                      param_line("SEED", seed), param_line("DISPLAY_DEGREE", 0)])
    return best[1]


def on_mesh(point: list, centre: list, mesh: list | None, box: tuple[list, list, list]) -> list:
    """The point moved to NOMAD's mesh around `centre` (centre + k * mesh), the nearest inside the bounds."""
    lower, upper, types = box
    out = []
    for i, (x, c, low, high, kind) in enumerate(zip(point, centre, lower, upper, types)):
        size = mesh[i] if mesh else (1 if kind == "I" else (high - low) / 1000)
        size = max(size, 1) if kind == "I" else size
        lowest, highest = math.ceil((low - c) / size - 1e-9), math.floor((high - c) / size + 1e-9)
        steps = min(max(round((x - c) / size), lowest), highest)
        value = c + steps * size
        out.append(int(round(value)) if kind == "I" else float(f"{value:.12g}"))
    return out


def key(x) -> tuple:
    """A point as compared with NOMAD's cache (which writes its numbers in its own precision)."""
    return tuple(float(f"{float(v):.9g}") for v in x)


# ---------------------------------------------------------------- one step

def take_step(cache: Path, hot: Path, history: Path | None, state: dict, box, obj: int, outputs: list[str],
              count: int, seed: int, evaluate, echo) -> None:
    """Steps 1-4 before one NOMAD iteration: propose, evaluate, write into NOMAD's cache, history and hot restart
    file (state: core.nomadtext.read_hot_restart of it). Raises when the model fails."""
    rows = read_cache(cache)
    incumbent = state["incumbent"] or min((r for r in rows if r["status"] == "BB_EVAL_OK"),
                                          key=lambda r: r["outputs"][obj], default={"x": None})["x"]
    if incumbent is None:
        return
    points = propose(rows, box, obj, incumbent, state["mesh"], count, seed)
    if not points:
        return
    answers = evaluate(points)
    if answers is None or len(answers) != len(points):
        echo("model step: its points could not be evaluated; NOMAD's own iteration")
        return
    append_evaluations(cache, history, list(zip(points, answers)))
    best = _objective(state, obj, rows, incumbent)
    for point, line in zip(points, answers):
        values = [number(v) for v in tokens(line)]
        if len(values) != len(outputs) or not all(isinstance(v, (int, float)) for v in values):
            continue  # failed
        feasible = all(v <= 0 for v, t in zip(values, outputs) if t in ("EB", "PB"))
        if feasible and values[obj] < best:
            set_incumbent(hot, point, line)
            best = values[obj]


def _objective(state: dict, obj: int, rows: list[dict], incumbent: list) -> float:
    """The incumbent's objective, from the cache (inf when it is not there)."""
    wanted = key(incumbent)
    return next((r["outputs"][obj] for r in rows if key(r["x"]) == wanted and r["status"] == "BB_EVAL_OK"), math.inf)
