"""Readers for NOMAD's own files (cache and history), for resuming and for results tables."""
from __future__ import annotations

from pathlib import Path

EVALUATED = ("BB_EVAL_OK", "BB_EVAL_FAILED", "BB_EVAL_ERROR")
FAILED = ("BB_EVAL_FAILED", "BB_EVAL_ERROR")


def read_cache(path: str | Path) -> list[dict]:
    """Points NOMAD evaluated, from CACHE_FILE: [{"x": [...], "status": "BB_EVAL_OK", "outputs": [...]}]."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        if not line.startswith("("):
            continue
        # ( x1 x2 ) STATUS ( out1 out2 ) SURROGATE_STATUS ( ... )
        x_text, _, rest = line[1:].partition(")")
        status, _, rest = rest.strip().partition(" ")
        out_text = rest.strip()[1:].partition(")")[0] if rest.strip().startswith("(") else ""
        if status not in EVALUATED:
            continue
        rows.append({"x": [_num(v) for v in x_text.split()], "status": status,
                     "outputs": [_num(v) for v in out_text.split()]})
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
        tokens = line.split()
        if len(tokens) < dimension:
            continue
        rows.append({"x": [_num(v) for v in tokens[:dimension]], "outputs": [_num(v) for v in tokens[dimension:]]})
    return rows


def _num(text: str):
    try:
        value = float(text)
    except ValueError:
        return None
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value


def drop_failed(path: str | Path) -> int:
    """Remove the failed points from CACHE_FILE, so that NOMAD asks them again (`bbo run --retry-failed`).

    Returns how many were removed. The file is rewritten atomically; other lines are kept as they are.
    """
    path = Path(path)
    if not path.exists():
        return 0
    lines = path.read_text().splitlines(keepends=True)
    kept = [line for line in lines if not (line.startswith("(") and line[1:].partition(")")[2].split()[:1]
                                           and line[1:].partition(")")[2].split()[0] in FAILED)]
    if len(kept) != len(lines):
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text("".join(kept))
        tmp.replace(path)
    return len(lines) - len(kept)
