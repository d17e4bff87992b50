"""The optimiser's command line.

    python -m bbo run experiments/demo [key=value ...] [--retry-failed]   # NOMAD search (PyNomad in a child)
    python -m bbo plan experiments/demo [--gpus 4xA100-80GB]             # checks, memory and time, before any GPU time
    python -m bbo confirm experiments/demo --top 3 --seeds 2  # the best points again with other seeds
    python -m bbo baseline experiments/demo              # the base model without an adapter, measured once
    python -m bbo check experiments/demo                 # validate experiment.yaml and param.txt
    python -m bbo paramfile experiments/demo             # (re)write param.txt and bb.sh from experiment.yaml
    python -m bbo status experiments/demo                # counts, best so far, running trainings, ETA
    python -m bbo results experiments/demo [key=value ...] [--csv F] [--parquet F]   # the search's overrides, if any
    python -m bbo plot experiments/demo [more experiments ...]
    python -m bbo report experiments/demo [key=value ...]     # the search's overrides, if any
    python -m bbo export experiments/demo --best out/demo-best [--merge] [--force]   # the adapter out
"""
from __future__ import annotations

import argparse
import os
import sys

from core.config import ConfigError, load_config


def cmd_check(args) -> int:
    from bbo import paramfile
    from core.preflight import check_inputs

    config = load_config(args.experiment, args.overrides)
    check_inputs(config)
    if (config.dir / "param.txt").exists():
        paramfile.check(config)
    import yaml
    print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
    print(f"ok: {config.dir / 'experiment.yaml'} ({config.space.dimension} searched variables, "
          f"budget {config.nomad.budget})")
    return 0


def cmd_paramfile(args) -> int:
    from bbo import paramfile

    config = load_config(args.experiment, args.overrides)
    path = paramfile.write(config)
    print(f"wrote {path} and {path.parent / 'bb.sh'}")
    return 0


def cmd_run(args) -> int:
    """A NOMAD search (bbo.search.run_search), then what it ended with: the table, the best point, errors."""
    from bbo.confirm import summary_text as confirm_text
    from bbo.search import run_search
    from bbo.summary import finalists_text, summary_text

    try:
        result = run_search(args.experiment, args.overrides, retry_failed=args.retry_failed,
                            retry_pruned=args.retry_pruned)
    except KeyboardInterrupt:
        print("interrupted: finished evaluations are kept; run the same command to continue", file=sys.stderr)
        return 130
    if result.finished:
        print(summary_text(result.table, result.config))
    if result.error:
        print(f"error: {result.error}", file=sys.stderr)
    if result.finalists_measured:
        print(finalists_text(result.table, result.config.objective.finalists))
    if result.confirmed:
        print(confirm_text(result.table))
        if result.exit_code:
            print(_CONFIRM_ERRORS.get(result.exit_code, _CONFIRM_ERRORS[None]), file=sys.stderr)
    return result.exit_code


_CONFIRM_ERRORS = {1: "error: every confirmation run of a seed failed: see `python -m bbo results`",
                   None: "error: the confirmation runs could not start (see the error above)"}


def _confirm(config, overrides, top: int, seeds: int, env: dict) -> int:
    from bbo.confirm import run_confirm, summary_text
    from bbo.results import load_runs

    try:
        rc = run_confirm(config, overrides, top, seeds, env)
    except KeyboardInterrupt:
        print("interrupted: finished confirmation runs are kept; run the same command to continue", file=sys.stderr)
        return 130
    print(summary_text(load_runs(config.dir, overrides)))
    if rc:
        print(_CONFIRM_ERRORS.get(rc, _CONFIRM_ERRORS[None]), file=sys.stderr)
    return rc


def _finalists(config, overrides, env: dict) -> int:
    """objective.finalists: `python -m blackbox.finalists` (through the executor, no retraining), then their table."""
    from bbo.results import load_runs
    from bbo.search import measure_finalists
    from bbo.summary import finalists_text

    try:
        rc = measure_finalists(config, overrides, env)
    except KeyboardInterrupt:
        print("interrupted: measured finalists are kept; run `python -m bbo finalists` to continue", file=sys.stderr)
        return 130
    print(finalists_text(load_runs(config.dir, overrides), config.objective.finalists))
    return rc


def cmd_finalists(args) -> int:
    """The k best points of a finished search on the full MMLU (again: answered from their folders)."""
    from core.procs import checkout_env

    config = load_config(args.experiment, args.overrides)
    if not config.objective.finalists:
        raise ConfigError("objective.finalists: is 0: set it, e.g. `python -m bbo finalists X objective.finalists=3`")
    return _finalists(config, args.overrides, checkout_env(BBO_DRIVER_PID=str(os.getpid())))


def cmd_baseline(args) -> int:
    """The base model without an adapter, with the experiment's metrics: measured once, then read."""
    import json

    from bbo.search import measure_baseline
    from core.baseline import baseline_dir, read_baseline
    from core.preflight import GPU_SLOTS_ENV, check_before_training
    from core.procs import checkout_env

    config = load_config(args.experiment, args.overrides)
    if read_baseline(config) is None:
        slots, warnings = check_before_training(config)
        for warning in warnings:
            print(f"warning: {warning}", file=sys.stderr)
        env = checkout_env(BBO_DRIVER_PID=str(os.getpid()), **{GPU_SLOTS_ENV: json.dumps(slots)})
        rc = measure_baseline(config, args.overrides, env)
        if rc != 0:
            return rc
    result = read_baseline(config)
    print(f"base model (no adapter) of {config.name}: {baseline_dir(config)}")
    for metric in config.objective.base_metrics:
        print(f"  {metric}: {result[metric]:.6g}")
    return 0


def cmd_confirm(args) -> int:
    """Train the best points again with other seeds, after a search (or again: answered from disk)."""
    from core.procs import checkout_env

    config = load_config(args.experiment, args.overrides)
    top = args.top if args.top is not None else config.confirm.top or 3
    seeds = args.seeds if args.seeds is not None else config.confirm.seeds
    if top < 1 or seeds < 1:
        raise ConfigError("confirm: --top and --seeds must be >= 1")
    env = checkout_env(BBO_DRIVER_PID=str(os.getpid()))
    return _confirm(config, args.overrides, top, seeds, env)


def cmd_plan(args) -> int:
    """The checks every search runs before training, then memory, time and disk; exit 1 if a check
    fails or the largest point does not fit."""
    from bbo.plan import detect_gpus, estimate, parse_gpus
    from bbo.plan_text import machine_text
    from core.preflight import (PreflightError, check_attention, check_hub, check_inputs, check_model_runtime,
                                check_trackers, gpu_slots)

    config = load_config(args.experiment, args.overrides)
    gpus = parse_gpus(args.gpus) if args.gpus else None
    print(machine_text())  # torch's CUDA build against the driver's: the first thing to read on a new server
    problems, notes = [], []
    for check in (lambda: check_inputs(config), lambda: check_trackers(config), lambda: notes.extend(check_hub(config))):
        try:
            check()
        except PreflightError as e:
            problems.append(str(e))
    if gpus is None:  # the GPUs of this machine, as a search here would use them
        try:
            slots = gpu_slots(config)
            gpus = detect_gpus()
            if slots[0] is None:
                notes.append("torch sees no GPU here: evaluations would run on CPU (give --gpus to plan for a "
                             "GPU server)")
            check_model_runtime(config, slots)
        except PreflightError as e:
            problems.append(str(e))
    else:  # a plan for the GPU server given: what this environment must have for it
        try:
            check_attention(config, on_gpu=True)
        except PreflightError as e:
            problems.append(str(e))
    plan = estimate(config, gpus, quantization=args.quantization, tokens_per_second=args.tokens_per_second,
                    train_tokens=args.train_tokens)
    print(f"checks for {config.name}: " + ("all passed" if not problems else f"{len(problems)} failed"))
    for line in problems:
        print(f"  error: {line}")
    for line in notes:
        print(f"  note: {line}")
    print()
    print(plan.text(), end="")
    return 1 if problems or plan.verdict == "does not fit" else 0


def cmd_status(args) -> int:
    from bbo.status import search_status, status_text

    print(status_text(search_status(load_config(args.experiment, args.overrides))))
    return 0


def cmd_results(args) -> int:
    from bbo.results import load_runs
    from bbo.summary import feasibility_text, table_text

    frames = load_runs(args.experiment, args.overrides)  # the search's overrides: its metric names the objective
    print("\n".join([table_text(frames, top=args.top), *feasibility_text(frames)]))
    if args.csv:
        frames.to_csv(args.csv, index=False)
        print(f"wrote {args.csv}")
    if args.parquet:
        frames.to_parquet(args.parquet, index=False)
        print(f"wrote {args.parquet}")
    return 0


def cmd_plot(args) -> int:
    from bbo.plots import plot_experiments

    for path in plot_experiments(args.experiments, out_dir=args.out):
        print(f"wrote {path}")
    return 0


def cmd_report(args) -> int:
    from bbo.report import write_report

    print(f"wrote {write_report(args.experiment, overrides=args.overrides)}")
    return 0


def cmd_export(args) -> int:
    from bbo.export import export

    if not args.run and not args.best:
        raise ConfigError("export: say which run: --best (the best ok run) or --run ID (python -m bbo results)")
    done = export(args.experiment, args.out, run_id=args.run, best=args.best, merge=args.merge, force=args.force)
    what = "merged model" if done["merged"] else "adapter"
    print(f"wrote {done['out']}: the {what} of run {done['run_id']} (objective {done['objective']:.6g}, "
          f"{done['dtype']}); how to load it: {done['out'] / 'README.md'}")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bbo", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name, fn, help_text in [("run", cmd_run, "run the NOMAD search of an experiment"),
                                ("check", cmd_check, "validate an experiment"),
                                ("paramfile", cmd_paramfile, "write param.txt and bb.sh from experiment.yaml")]:
        s = sub.add_parser(name, help=help_text)
        s.add_argument("experiment")
        s.add_argument("overrides", nargs="*", metavar="key=value")
        if name == "run":
            s.add_argument("--retry-failed", action="store_true",
                           help="train failed points again (after fixing their cause)")
            s.add_argument("--retry-pruned", action="store_true",
                           help="train pruned points again (after changing the pruning rule)")
        s.set_defaults(fn=fn)
    s = sub.add_parser("plan", help="check an experiment and estimate memory, time and disk before any training")
    s.add_argument("experiment")
    s.add_argument("overrides", nargs="*", metavar="key=value")
    s.add_argument("--gpus", help="the server to plan for, e.g. 4xA100-80GB, 1xA100-40GB, 8xH100-80GB "
                                  "(default: the GPUs torch sees here)")
    s.add_argument("--tokens-per-second", type=float, help="training tokens/s per GPU (default: a cited figure)")
    s.add_argument("--train-tokens", type=int, help="tokens in the training split, one epoch, when the data or "
                                                    "tokenizer is on the hub")
    s.add_argument("--quantization", choices=["4bit"], help="plan for a 4-bit (QLoRA) base instead of the config's")
    s.set_defaults(fn=cmd_plan)
    s = sub.add_parser("confirm", help="train the best points again with other seeds (is the winner real?)")
    s.add_argument("experiment")
    s.add_argument("overrides", nargs="*", metavar="key=value")
    s.add_argument("--top", type=int, help="how many of the best points (default: confirm.top, else 3)")
    s.add_argument("--seeds", type=int, help="other seeds per point (default: confirm.seeds)")
    s.set_defaults(fn=cmd_confirm)
    s = sub.add_parser("baseline", help="measure the base model without an adapter (once; constraints' `base`)")
    s.add_argument("experiment")
    s.add_argument("overrides", nargs="*", metavar="key=value")
    s.set_defaults(fn=cmd_baseline)
    s = sub.add_parser("finalists", help="the best points on the full MMLU (objective.finalists), no retraining")
    s.add_argument("experiment")
    s.add_argument("overrides", nargs="*", metavar="key=value")
    s.set_defaults(fn=cmd_finalists)
    s = sub.add_parser("status", help="where a search stands: counts, best so far, running trainings, ETA")
    s.add_argument("experiment")
    s.add_argument("overrides", nargs="*", metavar="key=value")
    s.set_defaults(fn=cmd_status)
    s = sub.add_parser("results", help="print the table of runs")
    s.add_argument("experiment")
    s.add_argument("overrides", nargs="*", metavar="key=value")
    s.add_argument("--csv")
    s.add_argument("--parquet")
    s.add_argument("--top", type=int, default=None)
    s.set_defaults(fn=cmd_results)
    s = sub.add_parser("plot", help="write PNG figures")
    s.add_argument("experiments", nargs="+")
    s.add_argument("--out", default=None, help="folder for the figures (default: <first experiment>/report)")
    s.set_defaults(fn=cmd_plot)
    s = sub.add_parser("report", help="write a Markdown report with figures")
    s.add_argument("experiment")
    s.add_argument("overrides", nargs="*", metavar="key=value")
    s.set_defaults(fn=cmd_report)
    s = sub.add_parser("export", help="write the adapter (or the merged model) of a run to a folder")
    s.add_argument("experiment")
    which = s.add_mutually_exclusive_group()  # one of them: cmd_export says so in one line
    which.add_argument("--run", metavar="ID", help="the run id (python -m bbo results)")
    which.add_argument("--best", action="store_true", help="the best ok run of the search")
    s.add_argument("out", help="the folder to write (must not exist, unless --force)")
    s.add_argument("--merge", action="store_true", help="a full model: the base with the adapter merged in")
    s.add_argument("--force", action="store_true", help="replace OUT if it exists")
    s.set_defaults(fn=cmd_export)
    args, extra = p.parse_known_args(argv)
    # key=value overrides after an option (`plan X --gpus 4xA100 train.epochs=1`): argparse has already
    # closed the overrides' list at the option; anything else unknown is the usual error
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        p.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.fn(args)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
