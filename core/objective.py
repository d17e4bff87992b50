"""What a search minimises: the metrics, their sign, and the `objective:` section of experiment.yaml
(its MMLU and ROUGE options). core/config.py puts ObjectiveConfig in the experiment config.

NOMAD minimises: objective = metric_sign(metric) x metric, so a maximised metric (MMLU accuracy,
ROUGE) is negated. That rule is applied here (ObjectiveConfig, objective_label) and nowhere else.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from core.constraints import DERIVED, RECORDED, Constraint, column_names
from core.data import FORMATS
from core.yamlvalues import ConfigError, one_of, positive

MMLU_TASKS = ("mmlu_local", "mmlu")
ROUGE_METRICS = ("rouge1", "rouge2", "rougeL", "rougeLsum")  # eval/rouge.py measures all four at once
VALIDATION_SPLIT = "validation"  # objective.generation.data: the experiment's own held-out split

# Every output the blackbox can report, and whether NOMAD should minimise it as is. The sign rule
# (metric_sign) is applied by ObjectiveConfig and objective_label, and nowhere else.
METRICS = {
    "val_loss": "minimise",
    "mmlu": "maximise",
    "train_loss": "minimise",
    "train_seconds": "minimise",
    "eval_seconds": "minimise",
    "tokens_per_second": "maximise",
} | {name: "maximise" for name in ROUGE_METRICS}
BASE_METRICS = ["val_loss", "mmlu", *ROUGE_METRICS]  # what the base model has a value of (a constraint's `base`)


def metric_sign(metric: str) -> float:
    """objective = sign * metric: NOMAD minimises, so a maximised metric (MMLU accuracy) is negated."""
    return -1.0 if METRICS[metric] == "maximise" else 1.0


def objective_label(metric: str | None) -> str:
    """What the objective column holds, in words: "objective (min)" or "objective (min) = -mmlu"."""
    if metric in METRICS and metric_sign(metric) < 0:
        return f"objective (min) = -{metric}"
    return "objective (min)"


@dataclass
class MmluConfig:
    task: str = field(default="mmlu_local", metadata={
        "help": "mmlu_local (offline, needs data_dir) | mmlu (lm-eval's stock task, from the hub)"})
    data_dir: str | None = field(default=None, metadata={
        "help": "MMLU-format dev.jsonl + test.jsonl: {subject, question, choices[4], answer 0-3}"})
    num_fewshot: int = field(default=5, metadata={"help": "solved examples in each prompt"})
    limit: int | None = field(default=None, metadata={
        "help": "questions per subject (null: all); with search_limit, what the finalists get"})
    search_limit: int | None = field(default=None, metadata={
        "help": "questions per subject during the search (null: limit); in the run id"})
    batch_size: int = field(default=8, metadata={"help": "lm-eval's batch size"})

    @property
    def search_questions(self) -> int | None:
        """Questions per subject a search's run measures: search_limit when set, else limit (None = all)."""
        return self.search_limit if self.search_limit is not None else self.limit

    def check(self):
        self.check_values(ConfigError, "objective.mmlu.")
        if self.task == "mmlu_local" and not self.data_dir:
            raise ConfigError("objective.mmlu.data_dir: required by task mmlu_local")

    def check_values(self, error=ValueError, prefix: str = "") -> None:
        """The rules of the options themselves, also for `python -m eval.mmlu` (which raises ValueError)."""
        if self.task not in MMLU_TASKS:
            raise error(f"{prefix}task: unknown task {self.task!r}: expected one of {', '.join(MMLU_TASKS)}")
        if isinstance(self.num_fewshot, bool) or not isinstance(self.num_fewshot, int) or self.num_fewshot < 0:
            raise error(f"{prefix}num_fewshot: must be an integer >= 0, got {self.num_fewshot!r}")
        for name in ("limit", "search_limit", "batch_size"):
            value = getattr(self, name)
            if value is None and name != "batch_size":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise error(f"{prefix}{name}: must be a positive integer, got {value!r}")


@dataclass
class GenerationConfig:
    """ROUGE of greedy generations (do_sample=False, num_beams=1: one answer per prompt, no sampling
    noise between runs) on held-out instruction/response pairs; eval/rouge.py."""

    data: str | None = field(default=VALIDATION_SPLIT, metadata={
        "help": "validation (the experiment's validation split) | a .json/.jsonl file of pairs"})
    format: str = field(default="alpaca", metadata={
        "help": "that file's fields: alpaca | dolly (the validation split needs none)"})
    num_examples: int | None = field(default=64, metadata={
        "help": "the first N pairs (the validation split is shuffled already); null: all"})
    max_new_tokens: int = field(default=128, metadata={
        "help": "generation stops at the eos token or after this many tokens"})
    batch_size: int = field(default=8, metadata={"help": "prompts per generate call, left-padded"})
    use_stemmer: bool = field(default=False, metadata={"help": "Porter stemming before matching (rouge-score's option)"})

    def check(self, metric: str):
        key = "objective.generation"
        if not self.data:
            raise ConfigError(f"{key}.data: {metric} is measured on held-out instruction/response pairs: set it to "
                              f"{VALIDATION_SPLIT} (the experiment's validation split) or a .json/.jsonl file of pairs")
        if self.data != VALIDATION_SPLIT and not self.data.endswith((".json", ".jsonl")):
            raise ConfigError(f"{key}.data: {self.data!r} is neither {VALIDATION_SPLIT} nor a .json/.jsonl file")
        one_of(f"{key}.format", self.format, [f for f in FORMATS if f != "messages"])  # pairs, not chats
        positive(f"{key}.num_examples", self.num_examples, allow_none=True)
        positive(f"{key}.max_new_tokens", self.max_new_tokens)
        positive(f"{key}.batch_size", self.batch_size)


@dataclass
class ObjectiveConfig:
    metric: str = field(default="val_loss", metadata={
        "help": "val_loss (minimised as is) | mmlu | rouge1 | rouge2 | rougeL | rougeLsum (NOMAD minimises -metric)"})
    extra_outputs: list[str] = field(default_factory=lambda: ["val_loss", "train_loss", "train_seconds",
                                                              "eval_seconds"],
                                     metadata={"help": "NOMAD's EXTRA_O columns, in order"})
    mmlu: MmluConfig = field(default_factory=MmluConfig, metadata={
        "help": "MMLU, when metric or extra_outputs names mmlu"})
    finalists: int = field(default=0, metadata={
        "help": "after the budget, the k best points on MMLU with mmlu.limit (0: off; no retraining)"})
    generation: GenerationConfig = field(default_factory=GenerationConfig, metadata={
        "help": "for the ROUGE metrics: greedy generation on held-out pairs"})
    constraints: list[Constraint] = field(default_factory=list, metadata={
        "help": "NOMAD's PB/EB outputs: [{metric, at_least or at_most (a number or base +- x), barrier}]"})

    def check(self):
        one_of("objective.metric", self.metric, ["val_loss", "mmlu", *ROUGE_METRICS])
        for i, constraint in enumerate(self.constraints):
            constraint.check(f"objective.constraints[{i}]", [*METRICS, *DERIVED, *RECORDED], BASE_METRICS)
        if self.needs_rouge:
            self.generation.check(next(m for m in self.measured if m in ROUGE_METRICS))
        for name in self.extra_outputs:
            one_of("objective.extra_outputs", name, list(METRICS))
        if self.needs_mmlu:
            self.mmlu.check()
        if self.finalists < 0:
            raise ConfigError(f"objective.finalists: must be >= 0 (0 = off), got {self.finalists}")
        if self.finalists and not self.needs_mmlu:
            raise ConfigError("objective.finalists: re-evaluates MMLU, but the search measures no MMLU "
                              "(objective.metric or objective.extra_outputs must name mmlu)")

    @property
    def measured(self) -> list[str]:
        """Every metric the search needs from a run: the objective's, the constraints', the extra outputs."""
        return [self.metric, *(c.metric for c in self.constraints), *self.extra_outputs]

    @property
    def needs_mmlu(self) -> bool:
        return "mmlu" in self.measured

    @property
    def needs_rouge(self) -> bool:
        return any(name in ROUGE_METRICS for name in self.measured)

    @property
    def uses_base(self) -> bool:
        """Whether a constraint's bound names the base model (blackbox/baseline.py measures it first)."""
        return any(c.uses_base for c in self.constraints)

    @property
    def base_metrics(self) -> list[str]:
        """What the base model is measured on: the validation loss, and MMLU and ROUGE when the search uses them."""
        return ["val_loss"] + ["mmlu"] * self.needs_mmlu + list(ROUGE_METRICS) * self.needs_rouge

    @property
    def constraint_names(self) -> list[str]:
        return column_names(self.constraints)

    @property
    def outputs(self) -> list[str]:
        """The names of the blackbox's output columns, in BB_OUTPUT_TYPE order."""
        return ["objective"] + self.constraint_names + list(self.extra_outputs)

    @property
    def output_types(self) -> list[str]:
        """NOMAD's BB_OUTPUT_TYPE: OBJ, a PB or EB per constraint, EXTRA_O per extra output."""
        return ["OBJ"] + [c.output_type for c in self.constraints] + ["EXTRA_O"] * len(self.extra_outputs)

    def to_objective(self, metrics: dict) -> float:
        """The number NOMAD minimises, from a run's metrics."""
        return metric_sign(self.metric) * float(metrics[self.metric])

    def from_objective(self, objective):
        """The metric back from an objective (a number or a pandas column)."""
        return metric_sign(self.metric) * objective

    @property
    def sense(self) -> str:
        """How NOMAD treats the metric, in words, for reports."""
        if metric_sign(self.metric) < 0:
            return f"NOMAD minimised -{self.metric} (lower objective = higher {self.metric})"
        return f"NOMAD minimised {self.metric} as is"
