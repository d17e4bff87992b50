"""The optimiser's command line.

    python -m bbo run experiments/demo [key=value ...]   # NOMAD search (PyNomad in a child process)
    python -m bbo check experiments/demo                 # validate experiment.yaml and param.txt
    python -m bbo paramfile experiments/demo             # (re)write param.txt and bb.sh from experiment.yaml
    python -m bbo results experiments/demo [--csv F] [--parquet F]
    python -m bbo plot experiments/demo [more experiments ...]
    python -m bbo report experiments/demo
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys

from bbo.config import ConfigError, load_config


def cmd_check(args) -> int:
    from bbo import paramfile

    config = load_config(args.experiment, args.overrides)
    _check_inputs(config)
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
    """Validate everything first, then run NOMAD in a child: a NOMAD crash becomes an error line."""
    from bbo import paramfile

    config = load_config(args.experiment, args.overrides)
    _check_inputs(config)
    paramfile.write(load_config(args.experiment))  # the generated file follows experiment.yaml
    # The overrides travel in the environment: NOMAD's child and every blackbox it starts read them.
    env = dict(os.environ, BBO_OVERRIDES=json.dumps(list(args.overrides)), BBO_DRIVER_PID=str(os.getpid()))
    cmd = [sys.executable, "-m", "bbo.nomad", "--experiment", str(config.dir), "--resume"]
    print(f"NOMAD search: {config.name}, budget {config.nomad.budget}, "
          f"{config.space.dimension} variables ({' '.join(config.space.names())}); runs in {config.dir / 'runs'}",
          flush=True)
    from bbo.procs import die_with_parent

    nomad_dir = config.dir / "nomad"  # NOMAD writes its temporary point files in its working folder
    nomad_dir.mkdir(exist_ok=True)
    proc = subprocess.Popen(cmd, env=env, cwd=str(nomad_dir), preexec_fn=die_with_parent)  # dies with us
    try:
        rc = proc.wait()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGINT)
        rc = proc.wait()
        print("interrupted: finished evaluations are kept; run the same command to continue", file=sys.stderr)
        return 130
    if rc < 0:
        print(f"error: NOMAD died with signal {signal.Signals(-rc).name}; finished evaluations are kept in "
              f"{config.dir / 'runs'}; run the same command to continue", file=sys.stderr)
        return 1
    if rc != 0:
        print(f"error: NOMAD exited with code {rc}", file=sys.stderr)
        return rc
    from bbo.results import load_runs, summary_text

    print(summary_text(load_runs(config.dir, args.overrides), config))
    return 0


def cmd_results(args) -> int:
    from bbo.results import load_runs, table_text

    frames = load_runs(args.experiment)
    print(table_text(frames, top=args.top))
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

    print(f"wrote {write_report(args.experiment)}")
    return 0


def _check_inputs(config) -> None:
    from blackbox.__main__ import _check_inputs_exist

    _check_inputs_exist(config)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bbo", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name, fn, help_text in [("run", cmd_run, "run the NOMAD search of an experiment"),
                                ("check", cmd_check, "validate an experiment"),
                                ("paramfile", cmd_paramfile, "write param.txt and bb.sh from experiment.yaml")]:
        s = sub.add_parser(name, help=help_text)
        s.add_argument("experiment")
        s.add_argument("overrides", nargs="*", metavar="key=value")
        s.set_defaults(fn=fn)
    s = sub.add_parser("results", help="print the table of runs")
    s.add_argument("experiment")
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
    s.set_defaults(fn=cmd_report)
    args = p.parse_args(argv)
    try:
        return args.fn(args)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
