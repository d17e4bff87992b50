"""Constraints of a search: `objective.constraints` in experiment.yaml, and the numbers NOMAD reads for them.

    objective:
      metric: rougeL
      constraints:
        - {metric: mmlu, at_least: base - 0.01}                   # no forgetting (PB, the default)
        - {metric: train_hours, at_most: 2.0, barrier: extreme}   # a cost cap (EB)

NOMAD's convention: a constraint's output c is feasible when c <= 0 (at_most b: value - b; at_least b:
b - value). `progressive` is NOMAD's PB (the progressive barrier: an infeasible point still guides the
search), `extreme` its EB (an infeasible point is discarded). A bound is a number or `base +- x`, where
base is the base model's own value of that metric without an adapter (blackbox/baseline.py measures it
once; core/baseline.py stores it). A metric a run never measured (a pruned run's MMLU) makes the point
infeasible: its output is inf. One rule, used by the blackbox's outputs and the results table alike.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from core.yamlvalues import ConfigError, one_of

BASE = "base"
BARRIERS = {"progressive": "PB", "extreme": "EB"}  # barrier -> NOMAD's BB_OUTPUT_TYPE
# Derived from what a run records: name -> (the recorded metric, its factor).
DERIVED = {"train_hours": ("train_seconds", 1 / 3600)}
# What a constraint can bound: the blackbox's outputs (core/objective.py METRICS), the derived ones, what
# training records of its cost (adapter_mb: the saved adapter; peak_memory_gb: on a GPU only).
RECORDED = ["adapter_mb", "peak_memory_gb", "wall_seconds", "val_tokens", "steps"]
_BOUND = re.compile(r"^\s*base\s*(?:([+-])\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?))?\s*$")


@dataclass
class Constraint:
    metric: str = field(default="", metadata={"help": "what is bounded: a metric the runs record, train_hours, "
                                                      "adapter_mb, peak_memory_gb (GPU)"})
    at_least: float | str | None = field(default=None, metadata={
        "help": "lower bound: a number, or base +- x (the base model's value of the metric)"})
    at_most: float | str | None = field(default=None, metadata={"help": "upper bound: a number, or base +- x"})
    barrier: str = field(default="progressive", metadata={
        "help": "progressive (NOMAD's PB: infeasible points still guide) | extreme (EB: discarded)"})

    def check(self, key: str, known: list[str], with_base: list[str]) -> None:
        """known: the metrics a constraint can name; with_base: those the base model has a value of."""
        if not self.metric:
            raise ConfigError(f"{key}.metric: missing (what the constraint bounds)")
        one_of(f"{key}.metric", self.metric, known)
        one_of(f"{key}.barrier", self.barrier, list(BARRIERS))
        if (self.at_least is None) == (self.at_most is None):
            raise ConfigError(f"{key}: give one bound, at_least or at_most")
        bound = self.bound_text
        if isinstance(bound, str):
            if not _BOUND.match(bound):
                raise ConfigError(f"{key}.{self.side}: {bound!r} is neither a number nor base, base + x or base - x")
            if self.metric not in with_base:
                raise ConfigError(f"{key}.{self.side}: the base model has no {self.metric} "
                                  f"(base is one of: {', '.join(with_base)})")
        elif not math.isfinite(bound):
            raise ConfigError(f"{key}.{self.side}: must be finite, got {bound!r}")

    @property
    def side(self) -> str:
        return "at_least" if self.at_least is not None else "at_most"

    @property
    def bound_text(self) -> float | str:
        return self.at_least if self.at_least is not None else self.at_most

    @property
    def uses_base(self) -> bool:
        return isinstance(self.bound_text, str)

    @property
    def output_type(self) -> str:
        return BARRIERS[self.barrier]

    def bound(self, base: dict | None) -> float:
        """The bound as a number; base: the base model's metrics (needed when the bound names base)."""
        text = self.bound_text
        if not isinstance(text, str):
            return float(text)
        if not base or not isinstance(base.get(self.metric), (int, float)):
            raise ValueError(f"constraint {self.label}: the base model's {self.metric} is not measured")
        sign, offset = _BOUND.match(text).groups()
        return float(base[self.metric]) + (float(offset) if sign == "+" else -float(offset) if sign else 0.0)

    def value(self, metrics: dict, base: dict | None) -> float:
        """NOMAD's output for a run's metrics: <= 0 feasible; inf when the run never measured the metric."""
        measured = metric_value(metrics, self.metric)
        if measured is None:
            return math.inf
        bound = self.bound(base)
        return measured - bound if self.at_most is not None else bound - measured

    @property
    def label(self) -> str:
        """`mmlu >= base - 0.01`: the constraint in words, for tables and reports."""
        return f"{self.metric} {'>=' if self.at_least is not None else '<='} {self.bound_text}"


def metric_value(metrics: dict, name: str) -> float | None:
    """A run's value of a metric a constraint can name (train_hours from train_seconds), or None."""
    source, factor = DERIVED.get(name, (name, 1.0))
    value = metrics.get(source)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value) * factor


def column_names(constraints: list[Constraint]) -> list[str]:
    """The outputs' and the table's name for each constraint: c_<metric>, c_<metric>_2 for a second one."""
    names, seen = [], {}
    for c in constraints:
        seen[c.metric] = seen.get(c.metric, 0) + 1
        names.append(f"c_{c.metric}" + (f"_{seen[c.metric]}" if seen[c.metric] > 1 else ""))
    return names


def feasible(values: list[float]) -> bool:
    """A point is feasible when every constraint's value is <= 0 (and measured)."""
    return all(math.isfinite(v) and v <= 0 for v in values)


def feasibility(objective, base: dict | None):
    """A test of a run's metrics against objective.constraints (core/objective.py ObjectiveConfig), for
    ranking runs (core/adapters.py); None without constraints, or when a bound needs a base not measured."""
    if not objective.constraints or (objective.uses_base and not base):
        return None
    return lambda metrics: feasible([c.value(metrics, base) for c in objective.constraints])
