"""Per-evaluation overhead: where one demo evaluation's wall time goes, and what a cached point costs.

    OMP_NUM_THREADS=1 python -m benchmarks.overhead            # one full demo evaluation (~1-2 CPU minutes)
    python -m benchmarks.overhead --quick                      # 4 training steps, no MMLU: checks the figures print

Why: NOMAD waits for every evaluation; whatever is not training (starting
processes, loading the model, preparing data, writing) is paid 50-100 times per
search, and a point NOMAD asks again must come back from the run store at the
cost of a Python start, without loading torch.

Phase 1 runs one evaluation of a copy of experiments/demo through the real entry
point (`python -m blackbox --experiment <copy> --rank 8 --lr 1e-3`) and splits
its wall time with the run's metrics.json: data_seconds, model_load_seconds,
train_seconds, eval_seconds (validation loss; + the MMLU process when the
objective asks for it) are measured inside train.py; "process start" is timed
apart by starting, the way blackbox/work.py starts a one-process training, a script
that only does train.py's imports, and beside it through `accelerate launch` (what
that start cost before the launcher was left out); writing (adapter, metrics, run
folder) and the blackbox's own start are the rest of the wall time.
Phase 2 asks the same point again, several times, and checks in-process that
neither torch nor transformers was imported.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml  # noqa: E402

from benchmarks import REPO  # noqa: E402  (also sets the offline, single-thread defaults)

DEMO = REPO / "experiments" / "demo"
WORK = REPO / ".cache" / "benchmarks"
POINT = ["--rank", "8", "--lr", "1e-3"]  # alpha and dropout take the demo's X0

# What train.py imports before its phases are timed: torch, the data and loss modules, transformers' Trainer
# (peft is imported later, inside the model-load phase).
IMPORTS_ONLY = """import sys, time
t0 = time.time()
import torch
sys.path.insert(0, {repo!r})
from core.data import load_tokenized
from eval.loss import validation_loss
from transformers import Trainer, TrainingArguments
"""


def make_experiment(quick: bool) -> Path:
    """A copy of experiments/demo with absolute asset paths; --quick: 4 steps and no MMLU."""
    from fixtures import make_assets

    make_assets()
    raw = yaml.safe_load((DEMO / "experiment.yaml").read_text())
    raw["name"] = "overhead-quick" if quick else "overhead"
    raw["model"]["path"] = str((DEMO / raw["model"]["path"]).resolve())
    for source in raw["data"]["sources"]:
        source["path"] = str((DEMO / source["path"]).resolve())
    raw["objective"]["mmlu"]["data_dir"] = str((DEMO / raw["objective"]["mmlu"]["data_dir"]).resolve())
    if quick:
        raw["train"]["max_steps"] = 4
        raw["objective"] = {"metric": "val_loss", "extra_outputs": ["train_loss"]}
    folder = WORK / raw["name"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "experiment.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    shutil.rmtree(folder / "runs", ignore_errors=True)  # this script's own copy: the point must train anew
    (folder / "evaluations.jsonl").unlink(missing_ok=True)
    return folder


def blackbox(experiment: Path) -> tuple[float, subprocess.CompletedProcess]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "blackbox", "--experiment", str(experiment)] + POINT,
                          cwd=REPO, env=env, capture_output=True, text=True)
    return time.perf_counter() - t0, proc


def process_start_seconds(launcher: bool = False) -> float:
    """The start of a one-process training, timed on a script that only imports what train.py imports: as
    blackbox/work.py starts it (the script itself, launch_command), or with launcher=True through
    `accelerate launch` (what every evaluation paid before 2026-12-07, and still pays with launch.accelerate_args)."""
    from blackbox.work import SINGLE_PROCESS_ENV, accelerate_command

    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "imports_only.py"
        script.write_text(IMPORTS_ONLY.format(repo=str(REPO)))
        cmd = accelerate_command(1) + [str(script)] if launcher else [sys.executable, str(script)]
        env = dict(os.environ, PYTHONPATH=str(REPO), **({} if launcher else SINGLE_PROCESS_ENV))
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=REPO, env=env, check=True, capture_output=True)
        return time.perf_counter() - t0


def heavy_modules_after_cached_call(experiment: Path) -> dict:
    """Run the blackbox's main() in a fresh interpreter for the cached point; report what it imported."""
    code = ("import sys; from blackbox.__main__ import main; rc = main(sys.argv[1:]); "
            "import json; print('MODULES ' + json.dumps({m: m in sys.modules for m in "
            "('torch', 'transformers', 'peft', 'accelerate', 'datasets')}))")
    proc = subprocess.run([sys.executable, "-c", code, "--experiment", str(experiment)] + POINT, cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True, check=True)
    line = [x for x in proc.stdout.splitlines() if x.startswith("MODULES ")][-1]
    return json.loads(line[len("MODULES "):])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="4 training steps, no MMLU")
    p.add_argument("--repeats", type=int, default=5, help="cached calls timed (default 5)")
    args = p.parse_args(argv)
    experiment = make_experiment(args.quick)
    warm_data = any((experiment / "cache").glob("tokenized-*/DONE"))

    # Phase 1: one real evaluation, split into phases.
    wall_cli, proc = blackbox(experiment)
    if proc.returncode != 0:
        print(proc.stderr[-3000:], file=sys.stderr)
        return 1
    run_dir = Path([x for x in proc.stderr.splitlines() if x.startswith("run: ")][-1][len("run: "):])
    m = json.loads((run_dir / "metrics.json").read_text())
    start = process_start_seconds()
    mmlu = m.get("mmlu_seconds", 0.0)
    phases = [
        ("process start (train.py's imports, timed apart)", start),
        ("data preparation (tokenizer, tokenized split" + (", cached)" if warm_data else ", built now: cold)"),
         m["data_seconds"]),
        ("model load (+ LoRA)", m["model_load_seconds"]),
        ("training", m["train_seconds"]),
        ("validation loss", m["eval_seconds"] - mmlu),
    ]
    if mmlu:
        phases.append(("MMLU (its own process: start, load, lm-eval)", mmlu))
    rest = wall_cli - sum(s for _, s in phases)
    phases.append(("writing + the blackbox's own start (the rest)", rest))
    print(f"# Per-evaluation overhead: one evaluation of {experiment.name} "
          f"({m['steps']} training steps, {m['device']}), point {' '.join(POINT)}\n")
    print("| phase | seconds | share of wall |")
    print("|---|---|---|")
    for name, seconds in phases:
        print(f"| {name} | {seconds:.2f} | {seconds / wall_cli:.1%} |")
    print(f"| wall (`python -m blackbox`, as NOMAD calls it) | {wall_cli:.2f} | 100% |")
    print(f"\nnot training: {1 - m['train_seconds'] / wall_cli:.1%} of the wall time")
    n = 1 if args.quick else 3
    launched = statistics.median(process_start_seconds(launcher=True) for _ in range(n))
    direct = statistics.median(process_start_seconds() for _ in range(n))
    print(f"process start, median of {n} each, side by side: {direct:.2f} s as training starts now, {launched:.2f} s "
          f"through `accelerate launch` ({launched - direct:.2f} s saved per evaluation, x{launched / direct:.2f})")

    # Phase 2: the same point again: answered from the run store.
    times, lines = [], set()
    for _ in range(args.repeats):
        seconds, again = blackbox(experiment)
        times.append(seconds)
        lines.add(again.stdout.strip())
    first_line = proc.stdout.strip()
    modules = heavy_modules_after_cached_call(experiment)
    print(f"\ncached point: median {statistics.median(times):.3f} s over {args.repeats} calls "
          f"(min {min(times):.3f}, max {max(times):.3f}); same output line as the first call: "
          f"{lines == {first_line}}")
    print("heavy modules imported by a cached call: "
          + ", ".join(f"{k} {'YES' if v else 'no'}" for k, v in modules.items()))
    return 0 if lines == {first_line} and not modules["torch"] else 1


if __name__ == "__main__":
    sys.exit(main())
