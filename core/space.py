"""The search space: the ONE place where NOMAD vectors become LoRA hyperparameters.

NOMAD has no categorical variables and searches on a mesh, so each LoRA
hyperparameter gets an encoding NOMAD handles well (experiment.yaml, `space:`):

    rank:    {choices: [4, 8, 16, 32, 64], x0: 8}   # NOMAD sees the index 1..5 (I)
    alpha:   {times_rank: [1, 64], x0: 1}            # NOMAD sees k, alpha = k * rank (I)
    alpha:   {range: [1, 64], x0: 16}                # NOMAD sees alpha itself (I)
    dropout: {choices: [0, 1.0e-4, 0.01, 0.1], x0: 0}
    lr:      {log10: [-6, -3], x0: 1.0e-4}           # NOMAD sees x, lr = 10^x (R)
    lr: 3.16e-4                                      # fixed: not searched

Variables enter NOMAD's vector in the order they are written. `x0` is given in
the hyperparameter's own units (a rank, a learning rate), except for
`times_rank`, where it is the multiplier k.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

NAMES = ("rank", "alpha", "dropout", "lr")
INTEGER = {"rank", "alpha"}  # hyperparameters that only take integer values


class SpaceError(ValueError):
    """A problem in the `space:` section of experiment.yaml."""


class PointError(ValueError):
    """A NOMAD point or hand-given hyperparameters that cannot be evaluated."""


def canonical(value: float):
    """Round to 6 significant digits so one hyperparameter value has one spelling (and one run id)."""
    value = float(f"{float(value):.6g}")
    return int(value) if value.is_integer() and abs(value) < 1e15 else value


@dataclass(frozen=True)
class Variable:
    name: str
    kind: str  # fixed | choices | range | times_rank | log10
    choices: tuple = ()
    lower: float | None = None
    upper: float | None = None
    value: float | None = None  # for fixed
    x0: float | None = None  # in NOMAD coordinates

    @property
    def searched(self) -> bool:
        return self.kind != "fixed"

    @property
    def input_type(self) -> str:
        """NOMAD's BB_INPUT_TYPE letter."""
        if self.kind in ("choices", "times_rank"):
            return "I"
        if self.kind == "range":
            return "I" if self.name in INTEGER else "R"
        return "R"

    @property
    def bounds(self) -> tuple[float, float]:
        """In NOMAD's coordinates."""
        if self.kind == "choices":
            return 1, len(self.choices)
        return self.lower, self.upper

    @property
    def value_bounds(self) -> tuple[float, float]:
        """In the hyperparameter's own units (a learning rate, a dropout); for times_rank, the multiples."""
        if self.kind == "fixed":
            return self.value, self.value
        if self.kind == "choices":
            return min(self.choices), max(self.choices)
        if self.kind == "log10":
            return 10.0 ** self.lower, 10.0 ** self.upper
        return self.lower, self.upper

    def decode(self, x: float, rank: int | None = None):
        """NOMAD coordinate -> hyperparameter value."""
        if self.kind == "choices":
            return self.choices[int(x) - 1]
        if self.kind == "range":
            return int(x) if self.input_type == "I" else canonical(x)
        if self.kind == "times_rank":
            return int(x) * rank
        if self.kind == "log10":
            return canonical(10.0 ** x)
        return self.value

    def encode(self, value, rank: int | None = None):
        """Hyperparameter value -> NOMAD coordinate, or None when the space cannot represent it."""
        if self.kind == "choices":
            matches = [i + 1 for i, c in enumerate(self.choices) if math.isclose(c, value, rel_tol=1e-9, abs_tol=1e-12)]
            return matches[0] if matches else None
        if self.kind == "times_rank":
            k = value / rank
            x = int(round(k))
            return x if math.isclose(k, x) and self.lower <= x <= self.upper else None
        x = math.log10(value) if self.kind == "log10" else value
        if self.kind == "range" and self.input_type == "I" and not float(x).is_integer():
            return None
        x = int(x) if self.input_type == "I" else canonical(x)
        return x if self.lower - 1e-9 <= x <= self.upper + 1e-9 else None


def _parse_variable(name: str, spec) -> Variable:
    key = f"space.{name}"
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        spec = {"value": spec}
    if not isinstance(spec, dict):
        raise SpaceError(f"{key}: expected a number (fixed) or a mapping such as {{choices: [...]}}")
    spec = dict(spec)
    x0 = spec.pop("x0", None)
    kinds = [k for k in ("value", "choices", "range", "times_rank", "log10") if k in spec]
    unknown = sorted(set(spec) - {"value", "choices", "range", "times_rank", "log10"})
    if unknown:
        raise SpaceError(f"{key}.{unknown[0]}: unknown key (use one of value, choices, range, times_rank, log10, plus x0)")
    if len(kinds) != 1:
        raise SpaceError(f"{key}: give exactly one of value, choices, range, times_rank, log10")
    kind = kinds[0]
    body = spec[kind]
    if kind == "value":
        _check_value(name, body, key)
        return Variable(name, "fixed", value=canonical(body))
    if kind == "choices":
        if not isinstance(body, list) or not body:
            raise SpaceError(f"{key}.choices: must be a non-empty list")
        for c in body:
            _check_value(name, c, f"{key}.choices")
        if len(set(body)) != len(body):
            raise SpaceError(f"{key}.choices: has duplicates")
        var = Variable(name, kind, choices=tuple(canonical(c) for c in body))
        if x0 is None:
            x0_coord = (len(body) + 1) // 2
        else:
            x0_coord = var.encode(x0)
            if x0_coord is None:
                raise SpaceError(f"{key}.x0: {x0!r} is not one of the choices {list(body)}")
        return Variable(name, kind, choices=var.choices, x0=x0_coord)
    if not (isinstance(body, list) and len(body) == 2 and all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in body)):
        raise SpaceError(f"{key}.{kind}: must be [lower, upper]")
    lower, upper = body
    if lower >= upper:
        raise SpaceError(f"{key}.{kind}: lower bound {lower} must be below upper bound {upper}")
    if kind == "times_rank":
        if name != "alpha":
            raise SpaceError(f"{key}.times_rank: only alpha can be a multiple of rank")
        if not (float(lower).is_integer() and float(upper).is_integer()) or lower < 1:
            raise SpaceError(f"{key}.times_rank: bounds must be integers >= 1")
        lower, upper = int(lower), int(upper)
    if kind == "range":
        if name in INTEGER:
            if not (float(lower).is_integer() and float(upper).is_integer()):
                raise SpaceError(f"{key}.range: {name} bounds must be integers")
            lower, upper = int(lower), int(upper)
        _check_value(name, lower, f"{key}.range")
        _check_value(name, upper, f"{key}.range")
    if kind == "log10" and name in INTEGER:
        raise SpaceError(f"{key}.log10: {name} is an integer; use choices or range")
    var = Variable(name, kind, lower=lower, upper=upper)
    if x0 is None:
        mid = (lower + upper) / 2
        x0_coord = int(math.floor(mid)) if var.input_type == "I" else canonical(mid)
    elif kind == "times_rank":
        x0_coord = x0 if isinstance(x0, int) and lower <= x0 <= upper else None
    else:
        x0_coord = var.encode(x0) if isinstance(x0, (int, float)) and x0 > 0 or kind == "range" else None
    if x0_coord is None:
        raise SpaceError(f"{key}.x0: {x0!r} is outside {kind} [{body[0]}, {body[1]}] or of the wrong type")
    return Variable(name, kind, lower=lower, upper=upper, x0=x0_coord)


def value_problem(name: str, value: float) -> str | None:
    """The rule a hyperparameter value breaks, in words ("must be in [0, 1)"), or None: the one rule set,
    for the space's bounds and choices (SpaceError) and for points given by hand (PointError)."""
    if name in INTEGER and (not float(value).is_integer() or value < 1):
        return "must be an integer >= 1"
    if name == "dropout" and not 0 <= value < 1:
        return "must be in [0, 1)"
    if name in ("lr", "alpha") and value <= 0:
        return "must be > 0"
    return None


def _check_value(name, value, key):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpaceError(f"{key}: expected a number, got {value!r}")
    problem = value_problem(name, value)
    if problem:
        raise SpaceError(f"{key}: {name} {problem}, got {value!r}")


def latin_hypercube(lower: list, upper: list, input_types: list[str], n: int, seed: int,
                    draws: int = 64) -> list[list]:
    """n points in the box, one per stratum of each variable (the most spread of `draws` seeded draws);
    integers where the type is I, reals rounded to 4 digits. random.Random(seed) is the same everywhere."""
    rng = random.Random(seed)
    best, spread = [], -1.0
    for _ in range(draws if n > 1 else 1):
        columns = []
        for _ in lower:  # one stratum of [0, 1) per point, in a random order per variable
            order = list(range(n))
            rng.shuffle(order)
            columns.append([(k + rng.random()) / n for k in order])
        units = [list(point) for point in zip(*columns)]
        gap = min((math.dist(a, b) for i, a in enumerate(units) for b in units[i + 1:]), default=0.0)
        if gap > spread:
            best, spread = units, gap
    return [[min(high, low + math.floor(u * (high - low + 1))) if kind == "I"
             else min(high, max(low, float(f"{low + u * (high - low):.4g}")))
             for u, low, high, kind in zip(unit, lower, upper, input_types)] for unit in best]


class SearchSpace:
    """The ordered LoRA variables; decode/encode between NOMAD points and hyperparameters."""

    def __init__(self, variables: list[Variable]):
        self.variables = variables
        self.searched = [v for v in variables if v.searched]
        if not self.searched:
            raise SpaceError("space: every hyperparameter is fixed; search at least one")

    @classmethod
    def from_dict(cls, raw) -> "SearchSpace":
        if not isinstance(raw, dict):
            raise SpaceError("space: expected a mapping with rank, alpha, dropout, lr")
        unknown = sorted(set(raw) - set(NAMES))
        if unknown:
            raise SpaceError(f"space.{unknown[0]}: unknown hyperparameter (known: {', '.join(NAMES)})")
        missing = [n for n in NAMES if n not in raw]
        if missing:
            raise SpaceError(f"space.{missing[0]}: missing (give a fixed value or a searched range)")
        return cls([_parse_variable(name, spec) for name, spec in raw.items()])

    def to_dict(self) -> dict:
        out = {}
        for v in self.variables:
            if v.kind == "fixed":
                out[v.name] = v.value
            elif v.kind == "choices":
                out[v.name] = {"choices": list(v.choices), "x0": v.choices[v.x0 - 1]}
            else:
                x0 = v.x0 if v.kind != "log10" else canonical(10.0 ** v.x0)
                out[v.name] = {v.kind: [v.lower, v.upper], "x0": x0}
        return out

    # ------------------------------------------------------------ NOMAD's view
    @property
    def dimension(self) -> int:
        return len(self.searched)

    @property
    def input_types(self) -> list[str]:
        return [v.input_type for v in self.searched]

    @property
    def lower(self) -> list:
        return [v.bounds[0] for v in self.searched]

    @property
    def upper(self) -> list:
        return [v.bounds[1] for v in self.searched]

    @property
    def x0(self) -> list:
        return [v.x0 for v in self.searched]

    def names(self) -> list[str]:
        return [v.name for v in self.searched]

    def start_design(self, n: int, seed: int) -> list[list]:
        """X0, then n Latin-hypercube points drawn with `seed` (latin_hypercube), no point twice.

        Why the project draws them (nomad.start_points) instead of NOMAD's LH_SEARCH: NOMAD 4.5.1 draws
        the same LH points whatever its SEED, so a search started again with another seed would not
        start anywhere else (docs/benchmarks.md).
        """
        points = [list(self.x0)]
        for point in latin_hypercube(self.lower, self.upper, self.input_types, n, seed):
            if point not in points:
                points.append(point)
        return points

    # ------------------------------------------------------------ decoding
    def parse_point(self, tokens: list[str]) -> list[float]:
        """Validate one point as NOMAD writes it (strings) and return its coordinates."""
        if len(tokens) != self.dimension:
            raise PointError(f"point has {len(tokens)} values, the space has {self.dimension} ({' '.join(self.names())})")
        coords = []
        for var, token in zip(self.searched, tokens):
            try:
                x = float(token)
            except (TypeError, ValueError):
                raise PointError(f"{var.name}: {token!r} is not a number") from None
            if not math.isfinite(x):
                raise PointError(f"{var.name}: {token!r} is not finite")
            if var.input_type == "I":
                if not x.is_integer():
                    raise PointError(f"{var.name}: {token!r} must be an integer")
                x = int(x)
            lo, hi = var.bounds
            if not lo - 1e-9 <= x <= hi + 1e-9:
                raise PointError(f"{var.name}: {token} is outside its bounds [{lo}, {hi}]")
            coords.append(x)
        return coords

    def decode(self, coords: list[float]) -> dict:
        """NOMAD coordinates -> {rank, alpha, dropout, lr}."""
        by_name = dict(zip(self.names(), coords))
        variables = {v.name: v for v in self.variables}
        hp = {"rank": variables["rank"].decode(by_name.get("rank"))}
        for name in ("alpha", "dropout", "lr"):
            hp[name] = variables[name].decode(by_name.get(name), rank=hp["rank"])
        return hp

    def complete(self, given: dict) -> dict:
        """Hand-given hyperparameters (None = not given) with the others from X0 (or their fixed value),
        checked. An unset times_rank alpha keeps X0's multiple of the given rank, as NOMAD's encoding does."""
        x0 = self.decode(self.x0)
        given = dict(given)
        alpha = next(v for v in self.variables if v.name == "alpha")
        if given.get("alpha") is None and alpha.kind == "times_rank" and given.get("rank") is not None:
            given["alpha"] = alpha.decode(alpha.x0, rank=given["rank"])
        return check_hyperparameters({name: given[name] if given.get(name) is not None else x0[name]
                                      for name in NAMES})

    def encode(self, hp: dict) -> list | None:
        """Hyperparameters -> NOMAD coordinates, or None if the space cannot represent them."""
        coords = []
        for var in self.variables:
            x = var.encode(hp[var.name], rank=hp["rank"]) if var.searched else None
            if var.searched:
                if x is None:
                    return None
                coords.append(x)
            elif not math.isclose(var.value, hp[var.name], rel_tol=1e-6):
                return None
        return coords


def check_hyperparameters(hp: dict) -> dict:
    """Validate hand-given hyperparameters and return them in canonical form."""
    out = {}
    for name in NAMES:
        if name not in hp or hp[name] is None:
            raise PointError(f"{name}: missing")
        try:
            value = float(hp[name])
        except (TypeError, ValueError):
            raise PointError(f"{name}: {hp[name]!r} is not a number") from None
        if not math.isfinite(value):
            raise PointError(f"{name}: {hp[name]!r} is not finite")
        problem = value_problem(name, value)
        if problem:
            raise PointError(f"{name}: {problem}, got {hp[name]!r}")
        out[name] = int(value) if name in INTEGER else canonical(value)
    return out
