"""The experiment config: one typed, validated object loaded from experiment.yaml.

    python -m bbo check experiments/demo            # validate, print the resolved config
    python -m bbo run experiments/demo train.epochs=2 nomad.budget=5

Every key of experiment.yaml maps to a field below; an unknown key, a wrong
type or an impossible value raises ConfigError with a one-line message that
names the key. Command-line overrides are dotted `key=value` pairs whose values
are parsed as YAML scalars (`train.lr_scheduler=linear`, `launch.num_processes=2`).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from core.data import FORMATS, TEMPLATES, computed_settings, is_inline_template
from core.space import SearchSpace, SpaceError


class ConfigError(ValueError):
    """A problem in experiment.yaml or an override; the message names the key."""


@dataclass
class ModelConfig:
    path: str  # hub id or local folder (relative paths are relative to the experiment folder)
    dtype: str = "auto"  # auto = bfloat16 on GPU, float32 on CPU; or float32 / bfloat16 / float16
    attn_implementation: str = "sdpa"  # sdpa | eager | flash_attention_2
    trust_remote_code: bool = False  # off unless you trust the model's repository
    revision: str | None = None
    quantization: str | None = None  # 4bit = QLoRA: NF4 base weights (bitsandbytes), bf16 compute

    def check(self):
        _one_of("model.dtype", self.dtype, ["auto", "float32", "bfloat16", "float16"])
        _one_of("model.attn_implementation", self.attn_implementation, ["sdpa", "eager", "flash_attention_2"])
        if self.quantization is not None:
            _one_of("model.quantization", self.quantization, ["4bit"])


@dataclass
class SourceFields:
    """The row fields a source is read from, for files with other column names (unset: the format's own)."""

    instruction: str | None = None
    input: str | None = None
    output: str | None = None
    messages: str | None = None  # the column of chat turns, for format messages


@dataclass
class DataSource:
    path: str  # local .json/.jsonl file, or a hub dataset id
    format: str = "alpaca"  # alpaca (instruction/input/output) | dolly (instruction/context/response) | messages (chat turns): core/data.py FORMATS
    max_samples: int | None = None  # take at most this many (seeded shuffle first): mixes sources without resampling
    split: str = "train"  # split name, for hub datasets
    fields: SourceFields | None = None  # e.g. {instruction: question, output: answer}, {messages: conversation}

    def check(self, key):
        _one_of(f"{key}.format", self.format, list(FORMATS))
        _positive(f"{key}.max_samples", self.max_samples, allow_none=True)
        for name, value in dataclasses.asdict(self.fields or SourceFields()).items():
            if value is None:
                continue
            if name not in FORMATS[self.format]:
                raise ConfigError(f"{key}.fields.{name}: not a field of format {self.format} "
                                  f"(it maps {', '.join(FORMATS[self.format])})")
            if not value.strip():
                raise ConfigError(f"{key}.fields.{name}: must name a column, got {value!r}")


@dataclass
class DataConfig:
    sources: list[DataSource]
    template: str = "alpaca"  # the prompt template: alpaca | plain (core/data.py TEMPLATES)
    val_fraction: float = 0.2  # held-out share, split after deduplication: no example is in both
    split_seed: int = 0
    max_length: int = 512  # tokens; longer examples are truncated
    packing: bool = True  # pack examples into full rows (no padding); attention stays per example
    chat_template: str | None = None  # for format messages: a Jinja template, or a file (default: the tokenizer's own)

    def check(self):
        if not self.sources:
            raise ConfigError("data.sources: needs at least one source")
        for i, source in enumerate(self.sources):
            source.check(f"data.sources[{i}]")
        _one_of("data.template", self.template, list(TEMPLATES))
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction: must be in (0, 1), got {self.val_fraction}")
        _positive("data.max_length", self.max_length)
        if self.chat_template is not None and not self.chat_template.strip():
            raise ConfigError("data.chat_template: empty; give a Jinja template, a file, or leave it unset")


LLAMA_LINEAR_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class LoraConfig:
    target_modules: list[str] = field(default_factory=lambda: list(LLAMA_LINEAR_MODULES))
    bias: str = "none"
    use_rslora: bool = False  # scale by alpha/sqrt(r) instead of alpha/r

    def check(self):
        if not self.target_modules:
            raise ConfigError("lora.target_modules: must name at least one module (default: all LLaMA linear layers)")
        _one_of("lora.bias", self.bias, ["none", "all", "lora_only"])


@dataclass
class TrainConfig:
    epochs: float = 3.0
    max_steps: int = -1  # > 0 overrides epochs
    per_device_batch_size: int = 4
    grad_accum: int = 8
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    precision: str = "auto"  # auto = bf16 on GPU, fp32 on CPU; or bf16 / fp16 / fp32
    gradient_checkpointing: bool = False  # only when memory requires it: it costs ~1/3 more compute
    seed: int = 42
    logging_steps: int = 10
    diverge_loss: float = 1.0e4  # a logged train loss above this (or NaN/inf) stops the run as diverged
    eval_every: float | None = 0.25  # validation loss every this fraction of the run (curve.json); None: at the end only
    report_to: list[str] | str = field(default_factory=list)  # trackers (transformers' report_to): [tensorboard, mlflow]; "none"
    keep_adapters: str = "all"  # all | best:k (the k best ok runs keep theirs) | none: disk use (core/adapters.py)

    def check(self):
        self.report_to = _trackers(self.report_to)
        if self.max_steps <= 0 and self.epochs <= 0:
            raise ConfigError("train: set train.epochs > 0 or train.max_steps > 0")
        _positive("train.per_device_batch_size", self.per_device_batch_size)
        _positive("train.grad_accum", self.grad_accum)
        _positive("train.logging_steps", self.logging_steps)
        _one_of("train.lr_scheduler", self.lr_scheduler,
                ["linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial"])
        _one_of("train.precision", self.precision, ["auto", "bf16", "fp16", "fp32"])
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(f"train.warmup_ratio: must be in [0, 1), got {self.warmup_ratio}")
        if self.weight_decay < 0:
            raise ConfigError(f"train.weight_decay: must be >= 0, got {self.weight_decay}")
        if self.eval_every is not None and not 0.0 < self.eval_every <= 0.5:
            raise ConfigError(f"train.eval_every: must be in (0, 0.5] (a fraction of the run) or null, "
                              f"got {self.eval_every}")
        self.adapters_kept  # noqa: B018 - reading it checks train.keep_adapters

    @property
    def adapters_kept(self) -> int | None:
        """How many of the best ok runs keep their adapter: None = all, 0 = none, k for best:k."""
        value = self.keep_adapters
        if value == "all":
            return None
        if value == "none":
            return 0
        head, _, k = str(value).partition(":")
        if head == "best" and k.isdigit() and int(k) >= 1:
            return int(k)
        raise ConfigError(f"train.keep_adapters: {value!r} is not one of all, best:k (k >= 1), none")


# What transformers' TrainingArguments.report_to accepts (INTEGRATION_TO_CALLBACK of transformers 5.23);
# core/preflight.py knows the package each needs.
TRACKERS = ("tensorboard", "mlflow", "trackio", "wandb", "comet_ml", "clearml", "neptune", "dvclive", "swanlab",
            "codecarbon", "dagshub", "azure_ml", "flyte", "kubeflow")


def _trackers(value) -> list[str]:
    """train.report_to as a list of tracker names: "none" is [], a single name is [name]."""
    names = [] if value == "none" else [value] if isinstance(value, str) else list(value)
    for name in names:
        if name == "all":
            raise ConfigError("train.report_to: name the trackers (e.g. [tensorboard, mlflow]); 'all' would "
                              "depend on what happens to be installed")
        _one_of("train.report_to", name, list(TRACKERS))
    return names


@dataclass
class LaunchConfig:
    num_processes: int = 1  # processes (GPUs) per evaluation, run by `accelerate launch`
    parallel: int = 1  # evaluations at once; each gets its own num_processes GPUs (or its own Slurm job)
    executor: str = "local"  # local = GPU slots of this machine; slurm = one Slurm job per evaluation (slurm:)
    device: str = "auto"  # auto = the GPUs torch sees, else CPU; cuda = GPUs or a clear error; cpu
    gpus: list[int] | None = None  # indices into the GPUs torch sees (default: all); [0, 0] shares GPU 0 by 2 slots
    timeout_minutes: float | None = None  # wall-clock limit of one evaluation; the whole process group is killed
    accelerate_args: list[str] = field(default_factory=list)  # extra `accelerate launch` options
    # how long the processes of one training wait for each other in a collective (torch.distributed's
    # timeout; transformers' default is 30 min): a rank that hangs ends the group after this
    ddp_timeout_minutes: float = 10.0

    def check(self):
        _positive("launch.num_processes", self.num_processes)
        _positive("launch.parallel", self.parallel)
        _positive("launch.ddp_timeout_minutes", self.ddp_timeout_minutes)
        _one_of("launch.device", self.device, ["auto", "cuda", "cpu"])
        _one_of("launch.executor", self.executor, ["local", "slurm"])
        _positive("launch.timeout_minutes", self.timeout_minutes, allow_none=True)


@dataclass
class SlurmConfig:
    """What users put in an sbatch header; used with launch.executor=slurm (submitit writes the script)."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    gpus_per_job: int | None = None  # default: launch.num_processes; with launch.device=auto only if the partition has GPUs
    cpus_per_job: int | None = None  # --cpus-per-task
    mem_gb: float | None = None  # --mem
    time_minutes: int = 240  # the job's time limit: a job past it is a failed point (timeout)
    extra_sbatch: list[str] = field(default_factory=list)  # more sbatch options, e.g. ["--constraint=a100"]
    setup: list[str] = field(default_factory=list)  # shell lines before the job: module load ..., source .../activate
    poll_seconds: float = 10.0  # how often the blackbox looks at its jobs

    def check(self):
        if self.gpus_per_job is not None and self.gpus_per_job < 0:
            raise ConfigError(f"slurm.gpus_per_job: must be >= 0, got {self.gpus_per_job}")
        _positive("slurm.cpus_per_job", self.cpus_per_job, allow_none=True)
        _positive("slurm.mem_gb", self.mem_gb, allow_none=True)
        _positive("slurm.time_minutes", self.time_minutes)
        _positive("slurm.poll_seconds", self.poll_seconds)
        for option in self.extra_sbatch:
            if not option.startswith("--") or len(option) < 3:
                raise ConfigError(f"slurm.extra_sbatch: {option!r} is not a long sbatch option such as --constraint=a100")

    def sbatch_options(self) -> dict:
        """extra_sbatch as submitit's additional_parameters: {"constraint": "a100", "exclusive": True}."""
        out = {}
        for option in self.extra_sbatch:
            key, sep, value = option[2:].partition("=")
            out[key] = value if sep else True
        return out


MMLU_TASKS = ("mmlu_local", "mmlu")


@dataclass
class MmluConfig:
    task: str = "mmlu_local"  # mmlu_local (offline, eval/tasks) or mmlu (lm-eval's stock task, needs the hub)
    data_dir: str | None = None  # MMLU-format dev.jsonl + test.jsonl, for mmlu_local
    num_fewshot: int = 5
    limit: int | None = None  # questions per subject (None = all); with search_limit, what finalists get
    search_limit: int | None = None  # questions per subject during the search (objective.finalists: the full run after)
    batch_size: int = 8

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


ROUGE_METRICS = ("rouge1", "rouge2", "rougeL", "rougeLsum")  # eval/rouge.py measures all four at once
VALIDATION_SPLIT = "validation"  # objective.generation.data: the experiment's own held-out split


@dataclass
class GenerationConfig:
    """ROUGE of greedy generations (do_sample=False, num_beams=1: one answer per prompt, no sampling
    noise between runs) on held-out instruction/response pairs; eval/rouge.py."""

    data: str | None = VALIDATION_SPLIT  # validation (the experiment's validation split) or a .json/.jsonl file
    format: str = "alpaca"  # the file's fields (core/data.py FORMATS); the validation split needs none
    num_examples: int | None = 64  # the first N pairs (the validation split is shuffled already); null: all
    max_new_tokens: int = 128  # generation stops at the eos token or after this many tokens
    batch_size: int = 8  # prompts per generate call, left-padded
    use_stemmer: bool = False  # Porter stemming before matching (rouge_score's option)

    def check(self, metric: str):
        key = "objective.generation"
        if not self.data:
            raise ConfigError(f"{key}.data: {metric} is measured on held-out instruction/response pairs: set it to "
                              f"{VALIDATION_SPLIT} (the experiment's validation split) or a .json/.jsonl file of pairs")
        if self.data != VALIDATION_SPLIT and not self.data.endswith((".json", ".jsonl")):
            raise ConfigError(f"{key}.data: {self.data!r} is neither {VALIDATION_SPLIT} nor a .json/.jsonl file")
        _one_of(f"{key}.format", self.format, [f for f in FORMATS if f != "messages"])  # pairs, not chats
        _positive(f"{key}.num_examples", self.num_examples, allow_none=True)
        _positive(f"{key}.max_new_tokens", self.max_new_tokens)
        _positive(f"{key}.batch_size", self.batch_size)


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


def metric_sign(metric: str) -> float:
    """objective = sign * metric: NOMAD minimises, so a maximised metric (MMLU accuracy) is negated."""
    return -1.0 if METRICS[metric] == "maximise" else 1.0


def objective_label(metric: str | None) -> str:
    """What the objective column holds, in words: "objective (min)" or "objective (min) = -mmlu"."""
    if metric in METRICS and metric_sign(metric) < 0:
        return f"objective (min) = -{metric}"
    return "objective (min)"


@dataclass
class ObjectiveConfig:
    metric: str = "val_loss"  # val_loss (minimised as is), mmlu or rouge1|rouge2|rougeL|rougeLsum (NOMAD minimises -metric)
    extra_outputs: list[str] = field(default_factory=lambda: ["val_loss", "train_loss", "train_seconds", "eval_seconds"])
    mmlu: MmluConfig = field(default_factory=MmluConfig)
    finalists: int = 0  # after the search, the k best points get MMLU with mmlu.limit (no retraining)
    generation: GenerationConfig = field(default_factory=GenerationConfig)  # for the ROUGE metrics

    def check(self):
        _one_of("objective.metric", self.metric, ["val_loss", "mmlu", *ROUGE_METRICS])
        if self.needs_rouge:
            self.generation.check(next(m for m in [self.metric, *self.extra_outputs] if m in ROUGE_METRICS))
        for name in self.extra_outputs:
            _one_of("objective.extra_outputs", name, list(METRICS))
        if self.needs_mmlu:
            self.mmlu.check()
        if self.finalists < 0:
            raise ConfigError(f"objective.finalists: must be >= 0 (0 = off), got {self.finalists}")
        if self.finalists and not self.needs_mmlu:
            raise ConfigError("objective.finalists: re-evaluates MMLU, but the search measures no MMLU "
                              "(objective.metric or objective.extra_outputs must name mmlu)")

    @property
    def needs_mmlu(self) -> bool:
        return self.metric == "mmlu" or "mmlu" in self.extra_outputs

    @property
    def needs_rouge(self) -> bool:
        return any(name in ROUGE_METRICS for name in [self.metric, *self.extra_outputs])

    @property
    def outputs(self) -> list[str]:
        """The names of the blackbox's output columns, in BB_OUTPUT_TYPE order."""
        return ["objective"] + list(self.extra_outputs)

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


@dataclass
class NomadConfig:
    budget: int = 50  # MAX_BB_EVAL: new evaluations (cached points do not count)
    seed: int = 0
    lh_search: list[int] | None = None  # LH_SEARCH [initial, per-iteration] Latin-hypercube points
    extra_lines: list[str] = field(default_factory=list)  # more NOMAD parameter lines, written as given
    count_failed: bool = False  # a resumed search counts its failed evaluations against the budget
    stop_after_failures: int = 3  # the first N evaluations of a search all failing the same way stop it (0: never)
    initial_frame: float | None = None  # INITIAL_FRAME_SIZE as this fraction of each variable's range (None: NOMAD's)
    start_points: int = 0  # X0 and this many seeded Latin-hypercube points first (core.space.start_design)

    def check(self):
        _positive("nomad.budget", self.budget)
        if self.initial_frame is not None and not (isinstance(self.initial_frame, (int, float))
                                                   and 0 < self.initial_frame <= 1):
            raise ConfigError(f"nomad.initial_frame: must be a fraction in (0, 1], got {self.initial_frame!r}")
        if not isinstance(self.start_points, int) or isinstance(self.start_points, bool) or self.start_points < 0:
            raise ConfigError(f"nomad.start_points: must be an integer >= 0, got {self.start_points!r}")
        if self.stop_after_failures < 0:
            raise ConfigError(f"nomad.stop_after_failures: must be >= 0, got {self.stop_after_failures}")
        if self.lh_search is not None and (len(self.lh_search) != 2 or min(self.lh_search) < 0):
            raise ConfigError(f"nomad.lh_search: must be two integers >= 0, got {self.lh_search}")


@dataclass
class PruningConfig:
    """Stop hopeless trainings (core/pruning.py): at a checkpoint of train.eval_every, a validation loss
    worse than the `percentile` of the finished runs' there stops the run as pruned."""

    enabled: bool = False
    warmup: float = 0.25  # no pruning before this fraction of the run
    percentile: float = 50.0  # 50 = the median of the finished runs at the same checkpoint
    min_runs: int = 5  # finished runs needed at a checkpoint before it prunes (Optuna's n_startup_trials)

    def check(self):
        if not 0.0 <= self.warmup < 1.0:
            raise ConfigError(f"pruning.warmup: must be in [0, 1), got {self.warmup}")
        if not 0.0 < self.percentile <= 100.0:
            raise ConfigError(f"pruning.percentile: must be in (0, 100], got {self.percentile}")
        _positive("pruning.min_runs", self.min_runs)


@dataclass
class ConfirmConfig:
    top: int = 0  # after the search, train the `top` best points again with other seeds (0: off)
    seeds: int = 2  # more seeds per finalist: train.seed + 1 ... train.seed + seeds

    def check(self):
        if self.top < 0:
            raise ConfigError(f"confirm.top: must be >= 0 (0 = off), got {self.top}")
        _positive("confirm.seeds", self.seeds)


def confirm_seeds(train_seed: int, n: int) -> list[int]:
    """The other seeds of each finalist (confirm.seeds = n), after the experiment's own train.seed."""
    return [train_seed + i for i in range(1, n + 1)]


@dataclass
class ExperimentConfig:
    name: str
    model: ModelConfig
    data: DataConfig
    space: SearchSpace
    lora: LoraConfig = field(default_factory=LoraConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    nomad: NomadConfig = field(default_factory=NomadConfig)
    confirm: ConfirmConfig = field(default_factory=ConfirmConfig)
    pruning: PruningConfig = field(default_factory=PruningConfig)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    description: str = ""
    dir: Path = field(default=Path("."), metadata={"internal": True})  # the experiment folder

    def check(self):
        if not self.name or not all(c.isalnum() or c in "-_." for c in self.name):
            raise ConfigError(f"name: use letters, digits, '-', '_' or '.', got {self.name!r}")
        for part in (self.model, self.data, self.lora, self.train, self.launch, self.objective, self.nomad,
                     self.confirm, self.pruning, self.slurm):
            part.check()
        kept = self.train.adapters_kept
        if self.objective.finalists and kept is not None and kept < self.objective.finalists:
            raise ConfigError(f"train.keep_adapters: {self.train.keep_adapters} keeps fewer adapters than "
                              f"objective.finalists: {self.objective.finalists} needs (their MMLU runs on them): "
                              f"use best:{self.objective.finalists} or all")
        if self.pruning.enabled and self.train.eval_every is None:
            raise ConfigError("pruning.enabled: needs checkpoints: set train.eval_every (e.g. 0.125)")
        chats = [i for i, source in enumerate(self.data.sources) if source.format == "messages"]
        if self.objective.needs_rouge and self.objective.generation.data == VALIDATION_SPLIT and chats:
            raise ConfigError(f"objective.generation.data: ROUGE prompts are instruction/response pairs, but "
                              f"data.sources[{chats[0]}] is chat data (format messages): give a .json/.jsonl "
                              f"file of pairs")

    def resolve(self, path: str | None) -> str | None:
        """A path from the config: relative ones are relative to the experiment folder; hub ids pass through."""
        if path is None:
            return None
        candidate = self.dir / path
        return str(candidate.resolve()) if candidate.exists() or path.startswith((".", "/")) else path

    def fingerprint(self) -> dict:
        """Every setting that changes what training or evaluation computes.

        The run id hashes this with the point's hyperparameters: change any of it and
        old runs are not reused; change what is not here (budget, encodings, timeout,
        parallelism) and they are.
        """
        def plain(obj):
            return dataclasses.asdict(obj)

        model_path = self.resolve(self.model.path)
        fp = {
            "model": {"identity": content_identity(model_path), "dtype": self.model.dtype,
                      "revision": self.model.revision, "quantization": self.model.quantization},
            "data": computed_settings(plain(self.data)),
            "lora": plain(self.lora),
            # what is measured along the way, not what is trained: the curve's checkpoints and the trackers
            # (train.report_to) leave the run id as it is; so does keep_adapters (which adapters stay on disk)
            "train": {k: v for k, v in plain(self.train).items()
                      if k not in ("logging_steps", "eval_every", "report_to", "keep_adapters")},
            "num_processes": self.launch.num_processes,
        }
        # What the files hold, not where they are: a moved or re-cloned checkout reuses its runs,
        # and a data file edited in place gets new run ids.
        fp["data"]["sources"] = [{k: v for k, v in s.items() if k != "path"} | {"identity": content_identity(
            self.resolve(s["path"]))} for s in fp["data"]["sources"]]
        if "chat_template" in fp["data"] and not is_inline_template(self.data.chat_template):
            fp["data"]["chat_template"] = content_identity(self.resolve(self.data.chat_template))
        if self.objective.needs_mmlu:
            mmlu = plain(self.objective.mmlu)
            mmlu.pop("search_limit")  # the search's runs measured search_questions; finalists' limit is not theirs
            fp["mmlu"] = {k: v for k, v in mmlu.items() if k != "data_dir"} | {
                "data": content_identity(self.resolve(mmlu["data_dir"])), "limit": self.objective.mmlu.search_questions}
        if self.objective.needs_rouge:  # the validation split is in fp["data"]; a file enters by content
            generation = plain(self.objective.generation)
            if generation["data"] == VALIDATION_SPLIT:
                del generation["format"]  # the split's records are already in the common shape
            else:
                generation["data"] = content_identity(self.resolve(generation["data"]))
            fp["generation"] = generation
        return fp

    def to_dict(self) -> dict:
        out = {}
        for f in dataclasses.fields(self):
            if f.metadata.get("internal"):
                continue
            value = getattr(self, f.name)
            out[f.name] = value.to_dict() if isinstance(value, SearchSpace) else (
                dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value)
        return out


WHOLE_FILE_BYTES = 64 * 2 ** 20  # files up to this size are hashed whole; larger ones (weights) by size, head and tail
EDGE_BYTES = 2 ** 20


def content_identity(path: str | None):
    """What a model, data file or data folder holds, independent of where it lives.

    A local file: its sha256 (up to WHOLE_FILE_BYTES; above, its size and the sha256 of its first
    and last MiB, so that 13 GB of weights cost milliseconds). A local folder: that of each file
    in it, by relative name. Anything else (a hub id) is itself: its revision is in the config.
    """
    if path is None:
        return None
    target = Path(path)
    if target.is_file():
        return _file_digest(str(target), *_stat_key(target))
    if target.is_dir():
        files = [p for p in sorted(target.rglob("*")) if p.is_file()
                 and not any(part.startswith(".") for part in p.relative_to(target).parts)]  # no .cache/
        return {str(p.relative_to(target)): _file_digest(str(p), *_stat_key(p)) for p in files}
    return {"hub": path}


def _stat_key(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


@functools.lru_cache(maxsize=4096)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    """Keyed by size and mtime too: a file edited in place is hashed again."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if size <= WHOLE_FILE_BYTES:
            for block in iter(lambda: f.read(2 ** 20), b""):
                h.update(block)
            return h.hexdigest()
        h.update(f.read(EDGE_BYTES))
        f.seek(size - EDGE_BYTES)
        h.update(f.read(EDGE_BYTES))
    return f"{size}:{h.hexdigest()}"


# ---------------------------------------------------------------- loading

def env_overrides() -> list[str]:
    """Overrides handed down by `python -m bbo run` (JSON list in BBO_OVERRIDES), so the
    blackbox processes NOMAD starts see the same config as the command that started NOMAD."""
    text = os.environ.get("BBO_OVERRIDES", "").strip()
    if not text:
        return []
    try:
        items = json.loads(text)
    except ValueError:
        raise ConfigError(f"BBO_OVERRIDES: not a JSON list of key=value strings: {text!r}") from None
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise ConfigError(f"BBO_OVERRIDES: not a JSON list of key=value strings: {text!r}")
    return items


def load_config(experiment_dir: str | Path, overrides: list[str] = ()) -> ExperimentConfig:
    """Read experiment_dir/experiment.yaml, apply `key=value` overrides, validate."""
    experiment_dir = Path(experiment_dir)
    path = experiment_dir / "experiment.yaml" if experiment_dir.is_dir() else experiment_dir
    if not path.is_file():
        raise ConfigError(f"no experiment config at {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: must be a mapping of keys to values")
    for item in overrides:
        apply_override(raw, item)
    config = from_dict(raw)
    config.dir = path.parent.resolve()
    return config


def from_dict(raw: dict) -> ExperimentConfig:
    raw = dict(raw)
    if "space" not in raw:
        raise ConfigError("space: missing (the searched hyperparameters)")
    try:
        space = SearchSpace.from_dict(raw.pop("space"))
    except SpaceError as e:
        raise ConfigError(str(e)) from None
    config = _build(ExperimentConfig, dict(raw, space=space), "")
    config.check()
    return config


def apply_override(raw: dict, item: str) -> None:
    """Set raw[a][b] = value for an override `a.b=value` (value parsed as YAML)."""
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {item!r}: expected key=value, e.g. train.epochs=2")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {key}: {part} is not a section")
        node = child
    node[parts[-1]] = value


def _build(cls, data, key):
    """Build dataclass `cls` from a mapping, rejecting unknown keys and wrong types."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{key or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"{key}." if key else ""
        raise ConfigError(f"{where}{unknown[0]}: unknown key (known: {', '.join(fields)})")
    values = {}
    for name, f in fields.items():
        sub = f"{key}.{name}" if key else name
        if name in data:
            values[name] = _convert(hints[name], data[name], sub)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{sub}: missing (required)")
    return cls(**values)


def _convert(hint, value, key):
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        for alternative in inner[:-1]:  # e.g. list[str] | str: the first that fits
            try:
                return _convert(alternative, value, key)
            except ConfigError:
                pass
        return _convert(inner[-1], value, key)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_convert(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key)
    if hint is SearchSpace:
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise TypeError(f"no converter for {hint} at {key}")  # a bug in this file, not in the config


def _one_of(key, value, allowed):
    if value not in allowed:
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(str, allowed))}")


def _positive(key, value, allow_none=False):
    if value is None and allow_none:
        return
    if value is None or value <= 0:
        raise ConfigError(f"{key}: must be > 0, got {value!r}")
