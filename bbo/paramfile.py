"""The NOMAD parameter file of an experiment, written from experiment.yaml, and checked against it.

    python -m bbo paramfile experiments/demo     # (re)write param.txt and bb.sh

param.txt uses standard NOMAD 4.5 keywords only, so a real `nomad param.txt`
runs it too. BB_EXE is the experiment's own bb.sh (no `$`: NOMAD resolves it
against the parameter file's folder), which starts `python -m blackbox` for this
experiment. NOMAD's cache, history and solution files go to <experiment>/nomad/, which exists from the start
(committed with a .gitkeep): NOMAD does not make folders. Writing and reading NOMAD's text (the parameter
lines, the X0 file's points) is core/nomadtext.py's job; this module says what goes into them.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from core.config import ConfigError, ExperimentConfig
from core.nomadtext import KEEP_FILE, NOMAD_DIR, X0_PREFIX, normalize_value, parse_params, point_file, render_params


def render(config: ExperimentConfig) -> str:
    space = config.space
    found = start_points(config)
    x0 = found[0] if found is not None else space.x0
    screened = screened_x0(config)
    if screened is not None and (config.dir / screened).exists():  # the low-fidelity start ran: its best first
        x0 = screened
    decoded = ", ".join(f"{v.name} {v.kind}" for v in space.searched)
    lines = [
        f"# NOMAD parameter file of experiment {config.name!r}, generated from experiment.yaml by",
        f"#   python -m bbo paramfile {_display_dir(config)}",
        "# Edit experiment.yaml (nomad.extra_lines for more NOMAD options), not this file.",
        f"# Variables: {decoded}; outputs: {' '.join(config.objective.outputs)}",
    ]
    lines += render_params(
        input_types=space.input_types, output_types=config.objective.output_types,
        x0=x0, lower=space.lower, upper=space.upper,
        budget=config.nomad.budget, seed=config.nomad.seed, bb_exe="bb.sh", block_size=config.launch.parallel,
        lh_search=config.nomad.lh_search,
        initial_frame=initial_frame(space, config.nomad.initial_frame) if config.nomad.initial_frame else None,
        extra_lines=config.nomad.extra_lines)
    return "\n".join(lines) + "\n"


def initial_frame(space, fraction: float) -> list:
    """NOMAD's first frame: `fraction` of each variable's range (an integer variable at least 1, so it can move)."""
    out = []
    for low, high, kind in zip(space.lower, space.upper, space.input_types):
        size = fraction * (high - low)
        out.append(max(1, round(size)) if kind == "I" else float(f"{size:.6g}"))
    return out


def start_points(config: ExperimentConfig) -> tuple[str, str] | None:
    """(file name, text) of nomad.start_points' X0 file: X0 first, then the seeded Latin-hypercube points;
    None without start points. The name carries a hash of the text, so another seed or space (an override
    on `bbo run`) is another file and never rewrites the one param.txt names."""
    if not config.nomad.start_points:
        return None
    points = config.space.start_design(config.nomad.start_points, config.nomad.seed)
    text = point_file(points)
    return f"{NOMAD_DIR}/{X0_PREFIX}{hashlib.sha256(text.encode()).hexdigest()[:8]}.txt", text


def screened_x0(config: ExperimentConfig) -> str | None:
    """The X0 file the low-fidelity start writes (bbo/screen.py), relative to the experiment: its best points,
    trained in full. Named by the design, the screen's settings and the fixed settings (which decide the
    ranking); None when nomad.screen_fraction is off."""
    if not config.nomad.screen_fraction:
        return None
    found = start_points(config)
    blob = json.dumps([found[1], config.nomad.screen_fraction, config.nomad.screen_keep, config.fingerprint()],
                      sort_keys=True, default=str)
    return f"{NOMAD_DIR}/{X0_PREFIX}screened-{hashlib.sha256(blob.encode()).hexdigest()[:8]}.txt"


def write_start_points(config: ExperimentConfig) -> None:
    found = start_points(config)
    if found is not None:
        (config.dir / NOMAD_DIR).mkdir(exist_ok=True)
        (config.dir / found[0]).write_text(found[1])


def run_blackbox(config: ExperimentConfig, points: list[list], args: list[str], env: dict,
                 answers: list[str] | None = None) -> int:
    """`python -m blackbox --experiment X <point file> <args>`, as bb.sh runs it for NOMAD: the points as one
    block (launch.parallel at once, each where the executor puts it); its exit code. `answers`, when given,
    receives the output lines NOMAD would read, one per point. The point file is a temporary one, as NOMAD's
    are (a file in nomad/ would read as NOMAD's own and a changed problem)."""
    with tempfile.TemporaryDirectory(prefix="bbo-points-") as folder:
        path = Path(folder) / "points.txt"
        path.write_text(point_file(points))
        cmd = [sys.executable, "-m", "blackbox", "--experiment", str(config.dir), str(path), *args]
        done = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL if answers is None else subprocess.PIPE,
                              text=True)
        if answers is not None:
            answers += [line for line in done.stdout.splitlines() if line.strip()]
        return done.returncode


def render_bb_script(config: ExperimentConfig) -> str:
    root = os.path.relpath(Path(__file__).resolve().parent.parent, config.dir)
    return f"""#!/bin/sh
# NOMAD's BB_EXE for experiment {config.name!r} (written by `python -m bbo paramfile`):
# evaluates the points of the file "$1" and prints one output line per point.
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/{root}" && pwd)
python=${{BBO_PYTHON:-python3}}
if [ -z "$BBO_PYTHON" ] && [ -x "$root/.venv/bin/python" ]; then python="$root/.venv/bin/python"; fi
PYTHONPATH="$root${{PYTHONPATH:+:$PYTHONPATH}}" exec "$python" -m blackbox --experiment "$here" "$@"
"""


def _display_dir(config) -> str:
    try:
        return str(config.dir.relative_to(Path.cwd()))
    except ValueError:
        return str(config.dir)


def write(config: ExperimentConfig) -> Path:
    """Write param.txt and bb.sh into the experiment folder, and make nomad/ for NOMAD's files."""
    keep = config.dir / NOMAD_DIR / KEEP_FILE
    keep.parent.mkdir(exist_ok=True)
    keep.touch()
    write_start_points(config)
    path = config.dir / "param.txt"
    path.write_text(render(config))
    script = config.dir / "bb.sh"
    script.write_text(render_bb_script(config))
    script.chmod(0o755)
    return path


def check(config: ExperimentConfig, path: Path | None = None) -> None:
    """param.txt must say what experiment.yaml says; raises ConfigError naming the first difference."""
    path = path or config.dir / "param.txt"
    if not path.exists():
        raise ConfigError(f"{path}: missing; write it with `python -m bbo paramfile {config.dir}`")
    found = parse_params(path.read_text(), str(path))
    expected = parse_params(render(config))
    for keyword in sorted(set(found) | set(expected)):
        if normalize_values(found.get(keyword)) != normalize_values(expected.get(keyword)):
            raise ConfigError(f"{path}: {keyword} is {found.get(keyword)} but experiment.yaml gives "
                              f"{expected.get(keyword)}; regenerate with `python -m bbo paramfile {config.dir}`")
    found = start_points(config)
    x0_file = path.parent / found[0] if found is not None else None
    if x0_file is not None and (not x0_file.exists() or x0_file.read_text() != found[1]):
        raise ConfigError(f"{x0_file}: {'edited' if x0_file.exists() else 'missing'} (the start points of "
                          f"nomad.start_points={config.nomad.start_points}, seed {config.nomad.seed}); "
                          f"regenerate with `python -m bbo paramfile {config.dir}`")


def normalize_values(values):
    """A keyword's values as check compares them (NOMAD's vectors with their spacing made one)."""
    if values is None:
        return None
    return [normalize_value(v) for v in values]
