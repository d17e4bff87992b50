"""Measure a real LoRA-HPO landscape with this project's own blackbox, for benchmarks/search_efficiency.py.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python -m benchmarks.make_landscape            # the small grid (24 points)
    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python -m benchmarks.make_landscape --full     # 3 x 4 x 2 x 4 = 96 points
    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python -m benchmarks.make_landscape --curves   # 48 points x 8 checkpoints
    python -m benchmarks.make_landscape --quick                                       # 2 points, a smoke test
    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python -m benchmarks.make_landscape --model smollm2   # the real model:
        24 points x 8 checkpoints -> benchmarks/data/landscape_smollm2.csv (after python -m fixtures --real)

Why: a search benchmark on made-up functions only says so much; this one replays
validation losses that the real training path produced. Every grid point
(rank x alpha multiple x dropout x lr) is evaluated by `blackbox.evaluate.evaluate`
(the function behind `python -m blackbox`: accelerate launch blackbox/train.py,
then the validation loss) on a copy of experiments/demo (the generated tiny LLaMA
and synthetic data), or with --model smollm2 of experiments/smollm2-135m (the real pretrained
SmolLM2-135M-Instruct on the chat data), with a short training budget (train.max_steps).

Resumable: the copy lives in .cache/benchmarks/<name>/ and its run store caches
every finished point, so a stopped run picks up where it was; the CSV is rewritten
after each point, from the run store, with what is finished so far.
The CSV starts with `#` lines that say how it was made (command, settings,
versions, date, machine) and the search space it spans (`# space: {json}`).
--curves also keeps each run's learning curve (validation loss at 8 checkpoints, train.eval_every
0.125: columns val_loss@0.125 ... val_loss@1) in benchmarks/data/curves.csv, which
benchmarks/pruning.py replays.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import yaml  # noqa: E402

from benchmarks import REPO  # noqa: E402  (also sets the offline, single-thread defaults)
from core.config import load_config  # noqa: E402
from core.pruning import checkpoints, read_curve  # noqa: E402
from core.pruning import key as checkpoint_key  # noqa: E402
from core.space import canonical  # noqa: E402
from core.store import RunStore  # noqa: E402

DEMO = REPO / "experiments" / "demo"
SOURCES = {"tiny": DEMO, "smollm2": REPO / "experiments" / "smollm2-135m"}  # --model: the experiment copied
WORK = REPO / ".cache" / "benchmarks"
DATA = Path(__file__).resolve().parent / "data"

# Grids: consecutive alpha multiples, so the project's own `alpha: {times_rank: [a, b]}` spans them exactly.
GRIDS = {
    "small": {"ranks": [4, 16], "multiples": [1, 2, 3], "dropouts": [0.0],
              "lrs": [1e-3, 10 ** -2.5, 1e-2, 10 ** -1.5], "max_steps": 30},
    "full": {"ranks": [4, 8, 16], "multiples": [1, 2, 3, 4], "dropouts": [0.0, 0.1],
             "lrs": [1e-3, 10 ** -2.5, 1e-2, 10 ** -1.5], "max_steps": 30},
    "quick": {"ranks": [4], "multiples": [1], "dropouts": [0.0], "lrs": [1e-3, 1e-2], "max_steps": 2},
    "curves": {"ranks": [4, 8, 16], "multiples": [1, 2], "dropouts": [0.0, 0.1],
               "lrs": [1e-3, 10 ** -2.5, 1e-2, 10 ** -1.5], "max_steps": 32, "eval_every": 0.125},
    # The real model: 16 steps of 8 conversations (2/3 of experiments/smollm2-135m's budget, for time:
    # ~2.5 min a point on one thread), validation every 2 steps. lr 10^-3.5 was measured too and left out
    # for time: 2.92-2.94 against 1.39 at the best lr, far from the optimum.
    "smollm2": {"ranks": [4, 16], "multiples": [1, 2], "dropouts": [0.0, 0.1],
                "lrs": [1e-3, 10 ** -2.5, 1e-2], "max_steps": 16, "eval_every": 0.125},
}
COLUMNS = ["rank", "alpha_multiple", "alpha", "dropout", "lr", "log10_lr", "val_loss", "train_loss",
           "train_seconds", "wall_seconds", "state", "run_id"]


def make_experiment(name: str, max_steps: int, eval_every: float | None = None, model: str = "tiny") -> Path:
    """A copy of experiments/demo (or --model's experiment): absolute asset paths, validation loss only,
    max_steps training steps (eval_every: the learning curve's checkpoints, as train.eval_every)."""
    from fixtures import make_assets
    from fixtures.real import make_real

    make_assets()  # the tiny LLaMA and data of the demo (instant when already generated)
    if model == "smollm2":
        make_real()  # the converted SmolLM2 (instant when already converted)
    source_dir = SOURCES[model]
    raw = yaml.safe_load((source_dir / "experiment.yaml").read_text())
    raw["name"] = name
    raw["description"] = f"benchmarks/make_landscape.py: {source_dir.name} copy, {max_steps} training steps per point"
    raw["model"]["path"] = str((source_dir / raw["model"]["path"]).resolve())
    for source in raw["data"]["sources"]:
        source["path"] = str((source_dir / source["path"]).resolve())
    raw["train"]["max_steps"] = max_steps
    raw["train"]["logging_steps"] = max(1, max_steps // 3)
    if eval_every:
        raw["train"]["eval_every"] = eval_every
    raw["objective"] = {"metric": "val_loss", "extra_outputs": ["train_loss", "train_seconds"]}
    folder = WORK / name
    folder.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(raw, sort_keys=False)
    path = folder / "experiment.yaml"
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return folder


def grid_points(grid: dict) -> list[dict]:
    return [{"rank": r, "alpha": k * r, "dropout": canonical(d), "lr": canonical(lr), "alpha_multiple": k}
            for r in grid["ranks"] for k in grid["multiples"] for d in grid["dropouts"] for lr in grid["lrs"]]


def space_of(grid: dict) -> dict:
    """The experiment-like `space:` this grid spans (X0 as the demo's: rank 4, k=1, dropout 0, lowest lr)."""
    ranks, ks, dropouts, lrs = grid["ranks"], grid["multiples"], grid["dropouts"], grid["lrs"]
    if ks != list(range(ks[0], ks[-1] + 1)):
        raise SystemExit("alpha multiples must be consecutive integers (times_rank spans every integer)")
    if len(ks) > 1:
        alpha = {"times_rank": [ks[0], ks[-1]], "x0": ks[0]}
    elif len(ranks) == 1:
        alpha = ks[0] * ranks[0]  # one rank, one multiple: alpha is fixed
    else:
        raise SystemExit("give at least two alpha multiples when several ranks are measured")
    logs = [round(math.log10(lr), 6) for lr in lrs]
    return {"rank": {"choices": ranks, "x0": 4 if 4 in ranks else ranks[0]},
            "alpha": alpha,
            "dropout": {"choices": dropouts, "x0": dropouts[0]} if len(dropouts) > 1 else dropouts[0],
            "lr": {"log10": [min(logs), max(logs)], "x0": min(lrs)} if len(lrs) > 1 else lrs[0]}


MODELS = {"tiny": "tiny generated LLaMA, synthetic Alpaca+Dolly data",
          "smollm2": "SmolLM2-135M-Instruct, real pretrained, synthetic chat data in its ChatML template"}


def header(args, grid: dict, experiment: Path, n_done: int, n_total: int) -> str:
    import importlib.metadata as md

    versions = {p: md.version(p) for p in ("torch", "transformers", "peft", "accelerate")}
    config = load_config(experiment)
    lines = [
        "Real LoRA-HPO landscape measured with this project's blackbox (blackbox.evaluate.evaluate).",
        f"command: python -m benchmarks.make_landscape {' '.join(sys.argv[1:])}".rstrip(),
        f"model: {MODELS[args.model]}",
        f"experiment: copy of experiments/{SOURCES[args.model].name} in {experiment.relative_to(REPO)}, "
        f"train.max_steps={grid['max_steps']}, batch {config.train.per_device_batch_size * config.train.grad_accum}, "
        f"{config.train.lr_scheduler}, seed {config.train.seed}, "
        + (f"train.eval_every={grid['eval_every']} (learning curve), " if grid.get("eval_every") else "") +
        "objective = validation loss",
        f"grid: ranks {grid['ranks']} x alpha multiples {grid['multiples']} x dropouts {grid['dropouts']} "
        f"x lr {[canonical(x) for x in grid['lrs']]}; finished {n_done} of {n_total}",
        f"written: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; machine: {platform.machine()} "
        f"{os.cpu_count()} CPU(s), no GPU; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}",
        f"versions: {json.dumps(versions)}; fixture STAMP: {_fixture_stamp(args.model)}",
        "replay (benchmarks/landscapes.py): lr is snapped to the nearest grid value in log10",
        f"space: {json.dumps(space_of(grid))}",
    ]
    return "".join(f"# {line}\n" for line in lines)


def _fixture_stamp(model: str) -> str:
    """The model's fixture STAMP (generator and library versions): a regenerated model is another landscape."""
    from fixtures import DEFAULT_OUT
    from fixtures.real import DEFAULT_REAL_OUT

    stamp = Path(DEFAULT_REAL_OUT if model == "smollm2" else DEFAULT_OUT) / "STAMP"
    return stamp.read_text().strip() if stamp.exists() else "unknown"


def write_csv(path: Path, head: str, rows: list[dict], columns: list[str] = COLUMNS) -> None:
    out = io.StringIO()
    out.write(head)
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(out.getvalue())
    os.replace(tmp, path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--full", action="store_true", help="the 96-point grid (ranks 4,8,16 x k 1..4 x dropout 0,0.1 x 4 lr)")
    p.add_argument("--quick", action="store_true", help="2 points of 2 steps: checks the pipeline")
    p.add_argument("--curves", action="store_true",
                   help="48 points with their learning curves (8 checkpoints) -> benchmarks/data/curves.csv")
    p.add_argument("--model", choices=sorted(SOURCES), default="tiny",
                   help="tiny: the demo's generated LLaMA (default); smollm2: the real SmolLM2-135M-Instruct, "
                        "its own grid of 24 points with learning curves -> benchmarks/data/landscape_smollm2.csv")
    p.add_argument("--max-steps", type=int, help="training steps per point (default: the grid's)")
    p.add_argument("--out", help="CSV path (default: benchmarks/data/landscape_<grid>.csv; --quick: .cache/benchmarks/)")
    args = p.parse_args(argv)

    if args.model != "tiny" and (args.full or args.curves):
        raise SystemExit("--model smollm2 has its own grid: leave out --full and --curves")
    name = "quick" if args.quick else args.model if args.model != "tiny" else "full" if args.full \
        else "curves" if args.curves else "small"
    grid = dict(GRIDS[name])
    if args.quick and args.model != "tiny":
        grid["lrs"] = GRIDS[args.model]["lrs"][:2]  # the model's own lr scale
    if args.max_steps:
        grid["max_steps"] = args.max_steps
    eval_every = grid.get("eval_every")
    prefix = "landscape" if args.model == "tiny" else f"landscape-{args.model}"
    experiment = make_experiment(f"{prefix}-{grid['max_steps']}steps", grid["max_steps"], eval_every,
                                 args.model)  # grids of one model share runs
    default = DATA / "curves.csv" if args.curves else (WORK if args.quick else DATA) / f"landscape_{name}.csv"
    out = Path(args.out) if args.out else default
    columns = COLUMNS + [f"val_loss@{checkpoint_key(f)}" for f in checkpoints(eval_every)] if eval_every else COLUMNS
    out.parent.mkdir(parents=True, exist_ok=True)
    config = load_config(experiment)
    points = grid_points(grid)
    print(f"{len(points)} points, {grid['max_steps']} steps each, runs in {experiment}", file=sys.stderr)

    from blackbox.evaluate import evaluate  # after the environment is set; torch stays in the child

    rows = []
    for i, pt in enumerate(points, 1):
        hp = {k: pt[k] for k in ("rank", "alpha", "dropout", "lr")}
        t0 = time.time()
        outcome = evaluate(config, hp, config.space.encode(hp), source="landscape")
        m = outcome.metrics
        rows.append({"rank": hp["rank"], "alpha_multiple": pt["alpha_multiple"], "alpha": hp["alpha"],
                     "dropout": hp["dropout"], "lr": hp["lr"], "log10_lr": round(math.log10(hp["lr"]), 6),
                     "val_loss": m.get("val_loss"), "train_loss": m.get("train_loss"),
                     "train_seconds": m.get("train_seconds"), "wall_seconds": m.get("wall_seconds"),
                     "state": outcome.state, "run_id": outcome.run_id})
        if eval_every:
            for point in read_curve(RunStore(config.dir).run_dir(outcome.run_id)):
                rows[-1][f"val_loss@{checkpoint_key(point['fraction'])}"] = point["val_loss"]
        print(f"[{i}/{len(points)}] {hp} -> {outcome.state} val_loss={m.get('val_loss')} "
              f"({'cached' if outcome.cached else f'{time.time() - t0:.1f} s'})", file=sys.stderr)
        write_csv(out, header(args, grid, experiment, len(rows), len(points)), rows, columns)
    print(f"wrote {out} ({len(rows)} points)")
    return 0 if all(r["state"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
