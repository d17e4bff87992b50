"""NOMAD's batch mode, as the `nomad` executable runs it, for a parameter file of this project.

    python -m bbo.nomad experiments/demo/param.txt

PyNomadBBO ships no `nomad` binary; `PyNomad.optimizeWithMainStep` is its batch
mode and, with PROBLEM_DIR set to the parameter file's folder, behaves like
`nomad param.txt` (BB_EXE, CACHE_FILE, HISTORY_FILE resolved against that folder).
When an experiment.yaml sits beside the file, the two must agree.
--resume makes MAX_BB_EVAL count the evaluations already in CACHE_FILE, so a
search stopped half-way and started again ends where an unstopped one would.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bbo.config import ConfigError, load_config
from bbo.nomadfiles import read_cache
from bbo.paramfile import check, parse


def prepare_lines(param_path: Path, resume: bool = False) -> list[str] | None:
    """The parameter lines to hand NOMAD; None when --resume finds the budget already spent."""
    text = param_path.read_text()
    entries = parse(text, str(param_path))
    folder = param_path.resolve().parent
    if (folder / "experiment.yaml").exists():
        check(load_config(folder), param_path)
    for keyword in ("MAX_BB_EVAL", "DIMENSION", "SEED", "BB_MAX_BLOCK_SIZE"):
        for value in entries.get(keyword, []):
            if not value.lstrip("-").isdigit():
                raise ConfigError(f"{param_path}: {keyword} must be an integer, got {value!r}")
    if "BB_EXE" not in entries:
        raise ConfigError(f"{param_path}: BB_EXE is missing")
    for keyword in ("CACHE_FILE", "HISTORY_FILE", "SOLUTION_FILE", "STATS_FILE"):
        for value in entries.get(keyword, []):
            (folder / value.split()[0]).parent.mkdir(parents=True, exist_ok=True)
    lines = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    if resume and "CACHE_FILE" in entries:
        done = len(read_cache(folder / entries["CACHE_FILE"][-1].split()[0]))
        budget = int(entries["MAX_BB_EVAL"][-1]) - done if "MAX_BB_EVAL" in entries else None
        if budget is not None:
            if budget <= 0:
                return None
            lines = [line for line in lines if not line.upper().startswith("MAX_BB_EVAL")]
            lines.append(f"MAX_BB_EVAL {budget}")
    lines.append(f"PROBLEM_DIR {folder}/")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bbo.nomad", description="NOMAD 4 batch mode on a parameter file")
    p.add_argument("param_file")
    p.add_argument("--resume", action="store_true", help="count evaluations already in CACHE_FILE in the budget")
    args = p.parse_args(argv)
    param_path = Path(args.param_file)
    if not param_path.is_file():
        print(f"error: no parameter file {param_path}", file=sys.stderr)
        return 2
    try:
        lines = prepare_lines(param_path, args.resume)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if lines is None:
        print("budget already spent: nothing to evaluate", file=sys.stderr)
        return 0
    import PyNomad

    PyNomad.optimizeWithMainStep(lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
