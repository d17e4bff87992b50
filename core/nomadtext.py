"""NOMAD's text, read in one place: parameter files, point files, cache and history files.

    experiments/<name>/param.txt          parameter lines (KEYWORD value ...), `#` comments
    experiments/<name>/nomad/cache.txt    ( x1 x2 ) STATUS ( out1 out2 ) ...   one line per point
    experiments/<name>/nomad/history.txt  x1 x2 out1 out2                      one line per evaluation
    a point file (NOMAD -> blackbox)      x1 x2 ...  (or ( x1 x2 ... ))       one line per point

The text this project writes for NOMAD is formatted here only: parameter lines (param.txt through
bbo/paramfile.py, the driver's lines in bbo/nomad.py, the benchmarks' lines), point files (X0 files, the
points `bbo confirm` hands the blackbox), and, with nomad.model_step, the model step's points added to the
cache and history and its incumbent in NOMAD's hot restart file (nomad/hotrestart.txt). NOMAD writes the rest. Readers of any of them (resume,
--retry-failed, the results tables, the blackbox, the benchmarks) use this module too.
"""
from __future__ import annotations

import numbers
from pathlib import Path
from typing import NamedTuple

from core.config import ConfigError

NOMAD_DIR = "nomad"  # NOMAD's files of an experiment: committed empty (KEEP_FILE), as NOMAD makes no folders
CACHE_FILE = f"{NOMAD_DIR}/cache.txt"
HISTORY_FILE = f"{NOMAD_DIR}/history.txt"
SOLUTION_FILE = f"{NOMAD_DIR}/solution.txt"
X0_PREFIX = "x0-"  # nomad/x0-<hash>.txt: X0 and the start points (nomad.start_points), one point a line
KEEP_FILE = ".gitkeep"

# Standard NOMAD 4.5 keywords a parameter file of ours may hold (extra_lines included).
KNOWN_KEYWORDS = {
    "DIMENSION", "BB_INPUT_TYPE", "BB_OUTPUT_TYPE", "X0", "LOWER_BOUND", "UPPER_BOUND", "MAX_BB_EVAL", "SEED",
    "BB_EXE", "BB_MAX_BLOCK_SIZE", "CACHE_FILE", "HISTORY_FILE", "SOLUTION_FILE", "ADD_SEED_TO_FILE_NAMES",
    "DISPLAY_DEGREE", "DISPLAY_STATS", "DISPLAY_ALL_EVAL", "DISPLAY_INFEASIBLE", "DISPLAY_UNSUCCESSFUL",
    "STATS_FILE", "LH_SEARCH", "VNS_MADS_SEARCH", "VNS_MADS_SEARCH_TRIGGER", "NM_SEARCH", "QUAD_MODEL_SEARCH",
    "SGTELIB_MODEL_SEARCH", "SPECULATIVE_SEARCH", "DIRECTION_TYPE", "GRANULARITY", "MIN_MESH_SIZE",
    "MIN_FRAME_SIZE", "INITIAL_MESH_SIZE", "INITIAL_FRAME_SIZE", "MAX_TIME", "MAX_ITERATIONS", "F_TARGET",
    "NB_THREADS_PARALLEL_EVAL", "EVAL_OPPORTUNISTIC", "EVAL_QUEUE_SORT", "FIXED_VARIABLE", "H_MAX_0",
    "MAX_EVAL", "STOP_IF_FEASIBLE", "ANISOTROPIC_MESH", "ORTHO_MESH_REFINE_FREQ", "RHO", "EVAL_USE_CACHE",
    "CACHE_SIZE_MAX", "BB_EVAL_FORMAT", "SURROGATE_EXE", "DIRECTION_TYPE_SECONDARY_POLL", "NB_THREADS_OPENMP",
    "MEGA_SEARCH_POLL", "QUAD_MODEL_MAX_EVAL", "NM_SEARCH_MAX_TRIAL_PTS_NFACTOR", "SEED_FOR_SIMPLE_RNG",
    "PROBLEM_DIR",
}
REMOVED_KEYWORDS = {"NB_THREADS_OPENMP": "it no longer exists in NOMAD 4.5 (use BB_MAX_BLOCK_SIZE via launch.parallel)"}
INTEGER_KEYWORDS = ("MAX_BB_EVAL", "DIMENSION", "SEED", "BB_MAX_BLOCK_SIZE")

EVALUATED = ("BB_EVAL_OK", "BB_EVAL_FAILED", "BB_EVAL_ERROR")  # cache statuses of an evaluated point
FAILED = ("BB_EVAL_FAILED", "BB_EVAL_ERROR")


# ---------------------------------------------------------------- parameter files

class ParamLine(NamedTuple):
    number: int  # 1-based line number in the file
    keyword: str  # upper case
    value: str  # the rest of the line, comment removed
    text: str  # the whole line as written, comment removed


def param_lines(text: str) -> list[ParamLine]:
    """Every line that is not blank or a comment."""
    out = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if line:
            keyword, _, value = line.replace("\t", " ").partition(" ")
            out.append(ParamLine(number, keyword.upper(), value.strip(), line))
    return out


def parse_params(text: str, where: str = "param.txt", strict: bool = True) -> dict[str, list[str]]:
    """Keyword -> the value text of each line that sets it.

    strict (files this project runs): an unknown or removed keyword, or a non-integer MAX_BB_EVAL,
    DIMENSION, SEED or BB_MAX_BLOCK_SIZE, is a one-line ConfigError. Not strict: any keyword
    (files of other systems, read for tables).
    """
    entries = {}
    for number, keyword, value, _ in param_lines(text):
        if strict:
            if keyword in REMOVED_KEYWORDS:
                raise ConfigError(f"{where}:{number}: {keyword}: {REMOVED_KEYWORDS[keyword]}")
            if keyword not in KNOWN_KEYWORDS:
                raise ConfigError(f"{where}:{number}: unknown NOMAD keyword {keyword}")
            if keyword in INTEGER_KEYWORDS and not value.lstrip("-").isdigit():
                kind = "a positive integer" if keyword == "MAX_BB_EVAL" else "an integer"
                raise ConfigError(f"{where}: {keyword} must be {kind}, got {value!r}")
            if keyword == "MAX_BB_EVAL" and int(value) <= 0:
                raise ConfigError(f"{where}: MAX_BB_EVAL must be a positive integer, got {value!r}")
        entries.setdefault(keyword, []).append(value)
    return entries


def tokens(value: str) -> list[str]:
    """The items of a value: `( 1 8 1 )` and `1 8 1` both give ["1", "8", "1"]."""
    return value.replace("(", " ").replace(")", " ").split()


def number(text: str):
    """A NOMAD number: int when written as one ("3"), float otherwise ("3.0", "1e-4"); None if not a number."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value


# ---------------------------------------------------------------- writing parameter lines

def format_number(value) -> str:
    """One value as written for NOMAD: an integral number without ".0" (8, not 8.0), another number as
    Python's shortest repr (0.05, 1e-05, -4.5), anything else (a word, a path) as its text."""
    if not isinstance(value, numbers.Number):
        return str(value)
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else repr(float(value))


def vector(values) -> str:
    """NOMAD's vector: ( v1 v2 ... )."""
    return "( " + " ".join(format_number(v) for v in values) + " )"


def param_line(keyword: str, *values) -> str:
    """KEYWORD value ...; a list or tuple value as a vector: param_line("X0", [2, 8, 1]) -> "X0 ( 2 8 1 )"."""
    return " ".join([keyword, *(vector(v) if isinstance(v, (list, tuple)) else format_number(v) for v in values)])


def render_params(*, input_types, output_types, x0, lower, upper, budget: int, seed: int, bb_exe: str,
                  block_size: int = 1, lh_search=None, initial_frame=None, extra_lines=()) -> list[str]:
    """The parameter lines of a search (param.txt without its comments), standard NOMAD 4.5 keywords only.

    output_types: BB_OUTPUT_TYPE's words (OBJ, PB/EB per constraint, EXTRA_O per extra output);
    x0: a point (a vector) or the name of an X0 file; block_size > 1: BB_MAX_BLOCK_SIZE and MEGA_SEARCH_POLL;
    lh_search: (initial, per iteration) or None; initial_frame: INITIAL_FRAME_SIZE's vector or None. NOMAD's
    files go to NOMAD_DIR; extra_lines (nomad.extra_lines) come last, as written.
    """
    lines = [
        param_line("DIMENSION", len(input_types)),
        param_line("BB_INPUT_TYPE", list(input_types)),
        param_line("BB_OUTPUT_TYPE", *output_types),
        param_line("X0", x0 if isinstance(x0, (str, Path)) else list(x0)),
        param_line("LOWER_BOUND", list(lower)),
        param_line("UPPER_BOUND", list(upper)),
        param_line("MAX_BB_EVAL", budget),
        param_line("SEED", seed),
        param_line("BB_EXE", bb_exe),
    ]
    if block_size > 1:
        lines.append(param_line("BB_MAX_BLOCK_SIZE", block_size))
        # search and poll points in one block, so the block fills (benchmarks/parallelism.py: 2-4x fewer rounds)
        lines.append(param_line("MEGA_SEARCH_POLL", "yes"))
    if lh_search:
        lines.append(param_line("LH_SEARCH", *lh_search))
    if initial_frame:
        lines.append(param_line("INITIAL_FRAME_SIZE", list(initial_frame)))
    lines += [
        param_line("CACHE_FILE", CACHE_FILE),
        param_line("HISTORY_FILE", HISTORY_FILE),
        param_line("SOLUTION_FILE", SOLUTION_FILE),
        param_line("ADD_SEED_TO_FILE_NAMES", "no"),
        param_line("DISPLAY_DEGREE", 2),
        param_line("DISPLAY_STATS", "BBE", ["SOL"], "OBJ", *(["CONS_H"] if {"PB", "EB"} & set(output_types) else [])),
    ]
    return lines + list(extra_lines)


def normalize_value(value: str) -> str:
    """A value's text with NOMAD's spacing, to compare two files' values: "(2 8  1)" -> "( 2 8 1 )"."""
    return " ".join(value.replace("(", " ( ").replace(")", " ) ").split())


# ---------------------------------------------------------------- point files

def point_line(point) -> str:
    """One point of a point file or an X0 file: v1 v2 ... (format_number, no parentheses)."""
    return " ".join(format_number(v) for v in point)


def point_file(points) -> str:
    """The text of a point file or an X0 file: one point a line."""
    return "".join(point_line(p) + "\n" for p in points)


def point_lines(text: str) -> list[list[str]]:
    """The points of a point file, one token list per non-empty line (validation is the space's)."""
    return [t for t in (tokens(line) for line in text.splitlines()) if t]


# ---------------------------------------------------------------- cache and history

def _cache_line(line: str) -> tuple[list[str], str, list[str]] | None:
    """( x1 x2 ) STATUS ( out1 out2 ) SURROGATE_STATUS ( ... ) -> (x, STATUS, outputs); None for other lines."""
    if not line.startswith("("):
        return None
    x_text, _, rest = line[1:].partition(")")
    status, _, rest = rest.strip().partition(" ")
    out_text = rest.strip()[1:].partition(")")[0] if rest.strip().startswith("(") else ""
    return x_text.split(), status, out_text.split()


def read_cache(path: str | Path) -> list[dict]:
    """Points NOMAD evaluated, from CACHE_FILE: [{"x": [...], "status": "BB_EVAL_OK", "outputs": [...]}]."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        parsed = _cache_line(line)
        if parsed and parsed[1] in EVALUATED:
            x, status, outputs = parsed
            rows.append({"x": [number(v) for v in x], "status": status, "outputs": [number(v) for v in outputs]})
    return rows


def read_history(path: str | Path, dimension: int) -> list[dict]:
    """HISTORY_FILE: one line per evaluation in order, the point's coordinates then the outputs.

    A failed evaluation's outputs are what the blackbox printed (e.g. FAILED): kept as None.
    """
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        items = line.split()
        if len(items) < dimension:
            continue
        rows.append({"x": [number(v) for v in items[:dimension]], "outputs": [number(v) for v in items[dimension:]]})
    return rows


def drop_failed(path: str | Path) -> int:
    """Remove the failed points from CACHE_FILE, so that NOMAD asks them again (`bbo run --retry-failed`)."""
    return _drop_cached(path, lambda x, status: status in FAILED)


def drop_points(path: str | Path, points: list[list[float]]) -> int:
    """Remove these points from CACHE_FILE (`bbo run --retry-pruned`: NOMAD asks them again)."""
    wanted = [[float(v) for v in p] for p in points]

    def matches(x, status):
        try:
            values = [float(number(v)) for v in x]
        except (TypeError, ValueError):
            return False
        return any(len(p) == len(values) and all(abs(a - b) <= 1e-9 * max(1.0, abs(b)) for a, b in zip(values, p))
                   for p in wanted)

    return _drop_cached(path, matches) if wanted else 0


def _drop_cached(path: str | Path, drop) -> int:
    """Rewrite CACHE_FILE without the lines for which drop(x, status) holds, atomically; other lines
    are kept as they are. Returns how many were removed."""
    path = Path(path)
    if not path.exists():
        return 0
    lines = path.read_text().splitlines(keepends=True)
    kept = [line for line in lines if not ((parsed := _cache_line(line)) and drop(parsed[0], parsed[1]))]
    if len(kept) != len(lines):
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text("".join(kept))
        tmp.replace(path)
    return len(lines) - len(kept)


def cache_entry(x, outputs: str) -> str:
    """The CACHE_FILE line NOMAD writes for a point the blackbox answered with this output line
    ("FAILED", or the outputs' numbers): a point evaluated outside NOMAD (bbo/model_step.py) is one NOMAD knows."""
    status = "BB_EVAL_FAILED" if outputs.strip().upper() == "FAILED" or not outputs.strip() else "BB_EVAL_OK"
    return f"( {point_line(x)} ) {status} ( {outputs.strip() or 'FAILED'} ) SURROGATE_EVAL_NOT_STARTED ( )"


def append_evaluations(cache: str | Path, history: str | Path | None, answered: list[tuple[list, str]]) -> None:
    """Points evaluated outside NOMAD, (x, output line) each, added to its cache (and history) as NOMAD adds its own."""
    with open(cache, "a") as out:
        out.writelines(cache_entry(x, line) + "\n" for x, line in answered)
    if history is not None:
        with open(history, "a") as out:
            out.writelines(f"{point_line(x)} {line.strip()}\n" for x, line in answered)


# ---------------------------------------------------------------- hot restart file

def read_hot_restart(path: str | Path) -> dict | None:
    """What NOMAD's HOT_RESTART_FILE says of its state: {"evaluations": NB_BB_EVAL, "mesh": DELTA_MESH_SIZE,
    "incumbent": the first X_FEAS point or None}; None without the file."""
    path = Path(path)
    if not path.exists():
        return None
    state = {"evaluations": 0, "mesh": None, "incumbent": None}
    for line in path.read_text().splitlines():
        keyword, _, value = line.partition(" ")
        if keyword == "NB_BB_EVAL":
            state["evaluations"] = int(value)
        elif keyword == "DELTA_MESH_SIZE":
            state["mesh"] = [number(v) for v in value.split()]
        elif keyword == "X_FEAS" and state["incumbent"] is None:
            parsed = _cache_line(value.strip())
            state["incumbent"] = [number(v) for v in parsed[0]] if parsed else None
    return state


def set_incumbent(path: str | Path, x, outputs: str) -> None:
    """Make x (evaluated, feasible, better than NOMAD's incumbent) the only X_FEAS point of the hot restart file's
    barrier: NOMAD's next start from the file polls around it."""
    path = Path(path)
    entry = "X_FEAS " + cache_entry(x, outputs)
    lines = [line for line in path.read_text().splitlines() if not line.startswith("X_FEAS ")]
    barrier = next(i for i, line in enumerate(lines) if line.strip() == "BARRIER")  # X_FEAS, then X_INF, follow it
    lines.insert(barrier + 1, entry)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)
