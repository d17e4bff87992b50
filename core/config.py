"""The experiment config: one typed, validated object loaded from experiment.yaml.

    python -m bbo check experiments/demo            # validate, print the resolved config
    python -m bbo run experiments/demo train.epochs=2 nomad.budget=5

Every key of experiment.yaml maps to a field below (the objective: section's in core/objective.py),
whose metadata["help"] says what it does (docs/experiments.md lists them all, tests/test_config_docs.py
keeps the two alike); an unknown key, a wrong type or an impossible value raises ConfigError with a
one-line message that names the key. Command-line overrides are dotted `key=value` pairs whose values
are parsed as YAML scalars (`train.lr_scheduler=linear`, `launch.num_processes=2`): core/yamlvalues.py
reads values into the field types; core/identity.py says what the config's files hold.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from core.data import FORMATS, TEMPLATES
from core.identity import fingerprint
from core.objective import VALIDATION_SPLIT, ObjectiveConfig
from core.space import SearchSpace, SpaceError
from core.yamlvalues import ConfigError, apply_override, build, one_of, positive


@dataclass
class ModelConfig:
    path: str = field(metadata={"help": "hub id or local folder (relative to the experiment folder)"})
    dtype: str = field(default="auto", metadata={
        "help": "auto = bfloat16 on a GPU that has it (else float16), float32 on CPU | float32 | bfloat16 | float16"})
    attn_implementation: str = field(default="sdpa", metadata={
        "help": "sdpa | eager | flash_attention_2 (needs the flash-attn package and a GPU)"})
    trust_remote_code: bool = field(default=False, metadata={"help": "off unless you trust the model's repository"})
    revision: str | None = field(default=None, metadata={"help": "hub branch, tag or commit of model.path"})
    quantization: str | None = field(default=None, metadata={
        "help": "4bit = QLoRA: NF4 base weights (bitsandbytes), bf16 compute (fp16 on GPUs without bf16)"})

    def check(self):
        one_of("model.dtype", self.dtype, ["auto", "float32", "bfloat16", "float16"])
        one_of("model.attn_implementation", self.attn_implementation, ["sdpa", "eager", "flash_attention_2"])
        if self.quantization is not None:
            one_of("model.quantization", self.quantization, ["4bit"])


@dataclass
class SourceFields:
    """The row fields a source is read from, for files with other column names (unset: the format's own)."""

    instruction: str | None = field(default=None, metadata={"help": "the instruction's column (alpaca, dolly)"})
    input: str | None = field(default=None, metadata={
        "help": "the input's (dolly: context's) column; may be absent in a row"})
    output: str | None = field(default=None, metadata={"help": "the response's column (alpaca, dolly)"})
    messages: str | None = field(default=None, metadata={"help": "the column of chat turns, for format messages"})


@dataclass
class DataSource:
    path: str = field(metadata={"help": "local .json/.jsonl file, or a hub dataset id"})
    format: str = field(default="alpaca", metadata={
        "help": "alpaca (instruction/input/output) | dolly (instruction/context/response) | messages (chat turns)"})
    max_samples: int | None = field(default=None, metadata={
        "help": "take at most this many (seeded shuffle first): mixes sources without resampling"})
    split: str = field(default="train", metadata={"help": "split name, for hub datasets"})
    fields: SourceFields | None = field(default=None, metadata={
        "help": "other column names, e.g. {instruction: question, output: answer}, {messages: conversation}"})

    def check(self, key):
        one_of(f"{key}.format", self.format, list(FORMATS))
        positive(f"{key}.max_samples", self.max_samples, allow_none=True)
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
    sources: list[DataSource] = field(metadata={
        "help": "concatenated, each example once; duplicates (same prompt) dropped"})
    template: str = field(default="alpaca", metadata={"help": "the prompt template: alpaca | plain"})
    val_fraction: float = field(default=0.2, metadata={
        "help": "held out after deduplication: train and validation never overlap"})
    split_seed: int = field(default=0, metadata={"help": "seed of the train/validation split"})
    max_length: int = field(default=512, metadata={"help": "tokens; longer examples are truncated"})
    packing: bool = field(default=True, metadata={
        "help": "padding-free: examples concatenated, attention kept per example"})
    chat_template: str | None = field(default=None, metadata={
        "help": "for format messages: a Jinja template or a file (default: the tokenizer's own)"})

    def check(self):
        if not self.sources:
            raise ConfigError("data.sources: needs at least one source")
        for i, source in enumerate(self.sources):
            source.check(f"data.sources[{i}]")
        one_of("data.template", self.template, list(TEMPLATES))
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction: must be in (0, 1), got {self.val_fraction}")
        positive("data.max_length", self.max_length)
        if self.chat_template is not None and not self.chat_template.strip():
            raise ConfigError("data.chat_template: empty; give a Jinja template, a file, or leave it unset")


LLAMA_LINEAR_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class LoraConfig:
    target_modules: list[str] = field(default_factory=lambda: list(LLAMA_LINEAR_MODULES), metadata={
        "help": "the linear modules LoRA adapts (default: all LLaMA linear layers)"})
    bias: str = field(default="none", metadata={"help": "none | all | lora_only (peft's bias)"})
    use_rslora: bool = field(default=False, metadata={"help": "scale by alpha/sqrt(r) instead of alpha/r"})

    def check(self):
        if not self.target_modules:
            raise ConfigError("lora.target_modules: must name at least one module (default: all LLaMA linear layers)")
        one_of("lora.bias", self.bias, ["none", "all", "lora_only"])


@dataclass
class TrainConfig:
    epochs: float = field(default=3.0, metadata={"help": "passes over the training split (or max_steps)"})
    max_steps: int = field(default=-1, metadata={"help": "> 0 overrides epochs"})
    per_device_batch_size: int = field(default=4, metadata={
        "help": "examples per GPU per step (packed rows with data.packing)"})
    grad_accum: int = field(default=8, metadata={"help": "gradient accumulation steps"})
    lr_scheduler: str = field(default="cosine", metadata={
        "help": "linear | cosine | constant | constant_with_warmup | cosine_with_restarts | polynomial"})
    warmup_ratio: float = field(default=0.03, metadata={"help": "share of the steps spent warming up the lr"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW's weight decay"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping"})
    precision: str = field(default="auto", metadata={
        "help": "auto = bf16 on a GPU that has it (fp16 + loss scaling on V100/T4), fp32 on CPU | bf16 | fp16 | fp32"})
    gradient_checkpointing: bool = field(default=False, metadata={
        "help": "only when memory requires it: it costs ~1/3 more compute"})
    seed: int = field(default=42, metadata={"help": "set before LoRA init too"})
    logging_steps: int = field(default=10, metadata={"help": "the train loss is logged every this many steps"})
    diverge_loss: float = field(default=1.0e4, metadata={
        "help": "NaN/inf or a logged train loss above this stops the run as diverged"})
    eval_every: float | None = field(default=0.25, metadata={
        "help": "validation loss every this fraction of the run -> curve.json (null: at the end only)"})
    report_to: list[str] | str = field(default_factory=list, metadata={
        "help": "trackers (transformers' report_to): [tensorboard, mlflow, wandb, trackio, ...]; none"})
    keep_adapters: str = field(default="all", metadata={
        "help": "all | best:k (the k best ok runs keep theirs) | none: disk use"})

    def check(self):
        self.report_to = _trackers(self.report_to)
        if self.max_steps <= 0 and self.epochs <= 0:
            raise ConfigError("train: set train.epochs > 0 or train.max_steps > 0")
        positive("train.per_device_batch_size", self.per_device_batch_size)
        positive("train.grad_accum", self.grad_accum)
        positive("train.logging_steps", self.logging_steps)
        one_of("train.lr_scheduler", self.lr_scheduler,
               ["linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial"])
        one_of("train.precision", self.precision, ["auto", "bf16", "fp16", "fp32"])
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
        one_of("train.report_to", name, list(TRACKERS))
    return names


@dataclass
class LaunchConfig:
    num_processes: int = field(default=1, metadata={"help": "GPUs (processes) per evaluation: accelerate launch, DDP"})
    parallel: int = field(default=1, metadata={
        "help": "evaluations at once (NOMAD's block size), each on its own num_processes GPUs or Slurm job"})
    executor: str = field(default="local", metadata={
        "help": "local (GPU slots of this machine) | slurm (one Slurm job per evaluation)"})
    device: str = field(default="auto", metadata={
        "help": "auto = the GPUs torch sees, else CPU | cuda (no GPU is an error) | cpu"})
    gpus: list[int] | None = field(default=None, metadata={
        "help": "indices into the GPUs torch sees (default: all); [0, 0]: 2 slots share GPU 0"})
    timeout_minutes: float | None = field(default=None, metadata={
        "help": "per evaluation (null: none); the whole process group is killed"})
    accelerate_args: list[str] = field(default_factory=list, metadata={"help": "extra `accelerate launch` options"})
    ddp_timeout_minutes: float = field(default=10.0, metadata={
        "help": "how long a training's processes wait for each other in a collective; then the group ends"})

    def check(self):
        positive("launch.num_processes", self.num_processes)
        positive("launch.parallel", self.parallel)
        positive("launch.ddp_timeout_minutes", self.ddp_timeout_minutes)
        one_of("launch.device", self.device, ["auto", "cuda", "cpu"])
        one_of("launch.executor", self.executor, ["local", "slurm"])
        positive("launch.timeout_minutes", self.timeout_minutes, allow_none=True)


@dataclass
class SlurmConfig:
    """What users put in an sbatch header; used with launch.executor=slurm (submitit writes the script)."""

    partition: str | None = field(default=None, metadata={"help": "sbatch --partition"})
    account: str | None = field(default=None, metadata={"help": "sbatch --account"})
    qos: str | None = field(default=None, metadata={"help": "sbatch --qos"})
    gpus_per_job: int | None = field(default=None, metadata={
        "help": "default: launch.num_processes (device auto: if the partition has GPUs; cpu: 0)"})
    cpus_per_job: int | None = field(default=None, metadata={"help": "sbatch --cpus-per-task"})
    mem_gb: float | None = field(default=None, metadata={"help": "sbatch --mem, in GB"})
    time_minutes: int = field(default=240, metadata={
        "help": "the job's time limit; past it the point failed (timeout)"})
    extra_sbatch: list[str] = field(default_factory=list, metadata={
        "help": "more sbatch options, e.g. [--constraint=a100, --exclusive]"})
    setup: list[str] = field(default_factory=list, metadata={
        "help": "shell lines in the job before Python: module load ..., source .../activate"})
    poll_seconds: float = field(default=10.0, metadata={"help": "how often the blackbox looks at its jobs"})

    def check(self):
        if self.gpus_per_job is not None and self.gpus_per_job < 0:
            raise ConfigError(f"slurm.gpus_per_job: must be >= 0, got {self.gpus_per_job}")
        positive("slurm.cpus_per_job", self.cpus_per_job, allow_none=True)
        positive("slurm.mem_gb", self.mem_gb, allow_none=True)
        positive("slurm.time_minutes", self.time_minutes)
        positive("slurm.poll_seconds", self.poll_seconds)
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


@dataclass
class NomadConfig:
    budget: int = field(default=50, metadata={"help": "MAX_BB_EVAL: new evaluations (cached points do not count)"})
    seed: int = field(default=0, metadata={"help": "NOMAD's SEED"})
    lh_search: list[int] | None = field(default=None, metadata={
        "help": "LH_SEARCH: [initial, per-iteration] Latin-hypercube points"})
    extra_lines: list[str] = field(default_factory=list, metadata={
        "help": "more NOMAD parameter lines, written as given, e.g. [VNS_MADS_SEARCH yes]"})
    count_failed: bool = field(default=False, metadata={
        "help": "a resumed search counts its failed evaluations against the budget"})
    stop_after_failures: int = field(default=3, metadata={
        "help": "the first N trainings of a search all failing the same way stop it (0: never)"})
    initial_frame: float | None = field(default=None, metadata={
        "help": "INITIAL_FRAME_SIZE as this fraction of each variable's range (null: NOMAD's)"})
    start_points: int = field(default=0, metadata={
        "help": "X0 and this many seeded Latin-hypercube points first (nomad/x0-<hash>.txt)"})
    screen_fraction: float = field(default=0.0, metadata={
        "help": "low-fidelity start (bbo/screen.py): the start design trained to this fraction of its run first, "
                "a checkpoint of train.eval_every (0: off)"})
    screen_keep: int = field(default=3, metadata={
        "help": "the low-fidelity start's best points, by validation loss there, trained in full: NOMAD's X0"})
    model_step: bool = field(default=False, metadata={
        "help": "before each NOMAD iteration, the best point of a Gaussian process on the finished runs first "
                "(bbo/model_step.py)"})

    def check(self):
        positive("nomad.budget", self.budget)
        if self.initial_frame is not None and not (isinstance(self.initial_frame, (int, float))
                                                   and 0 < self.initial_frame <= 1):
            raise ConfigError(f"nomad.initial_frame: must be a fraction in (0, 1], got {self.initial_frame!r}")
        if not isinstance(self.start_points, int) or isinstance(self.start_points, bool) or self.start_points < 0:
            raise ConfigError(f"nomad.start_points: must be an integer >= 0, got {self.start_points!r}")
        if self.stop_after_failures < 0:
            raise ConfigError(f"nomad.stop_after_failures: must be >= 0, got {self.stop_after_failures}")
        if self.lh_search is not None and (len(self.lh_search) != 2 or min(self.lh_search) < 0):
            raise ConfigError(f"nomad.lh_search: must be two integers >= 0, got {self.lh_search}")
        if not isinstance(self.screen_fraction, (int, float)) or not 0.0 <= self.screen_fraction < 1.0:
            raise ConfigError(f"nomad.screen_fraction: must be in [0, 1) (0: off), got {self.screen_fraction!r}")
        if self.screen_fraction and not self.start_points:
            raise ConfigError("nomad.screen_fraction: the low-fidelity start screens the start design: "
                              "set nomad.start_points too")
        positive("nomad.screen_keep", self.screen_keep)


@dataclass
class PruningConfig:
    """Stop hopeless trainings (core/pruning.py): at a checkpoint of train.eval_every, a validation loss
    worse than the `percentile` of the finished runs' there stops the run as pruned."""

    enabled: bool = field(default=False, metadata={"help": "stop hopeless trainings; needs train.eval_every"})
    warmup: float = field(default=0.25, metadata={"help": "no pruning before this fraction of the run"})
    percentile: float = field(default=50.0, metadata={
        "help": "above this percentile of the finished runs at the same checkpoint: pruned"})
    min_runs: int = field(default=5, metadata={
        "help": "finished runs a checkpoint needs before it prunes (Optuna's n_startup_trials)"})

    def check(self):
        if not 0.0 <= self.warmup < 1.0:
            raise ConfigError(f"pruning.warmup: must be in [0, 1), got {self.warmup}")
        if not 0.0 < self.percentile <= 100.0:
            raise ConfigError(f"pruning.percentile: must be in (0, 100], got {self.percentile}")
        positive("pruning.min_runs", self.min_runs)


@dataclass
class ConfirmConfig:
    top: int = field(default=0, metadata={
        "help": "after the budget, train the `top` best points again with other seeds (0: off)"})
    seeds: int = field(default=2, metadata={"help": "more seeds per point: train.seed + 1 ... train.seed + seeds"})

    def check(self):
        if self.top < 0:
            raise ConfigError(f"confirm.top: must be >= 0 (0 = off), got {self.top}")
        positive("confirm.seeds", self.seeds)


def confirm_seeds(train_seed: int, n: int) -> list[int]:
    """The other seeds of each finalist (confirm.seeds = n), after the experiment's own train.seed."""
    return [train_seed + i for i in range(1, n + 1)]


@dataclass
class ExperimentConfig:
    name: str = field(metadata={"help": "letters, digits, - _ ."})
    model: ModelConfig = field(metadata={"help": "the base model"})
    data: DataConfig = field(metadata={"help": "the instruction data: sources, template, split"})
    space: SearchSpace = field(metadata={"help": "NOMAD's variables, in this order (core/space.py)"})
    lora: LoraConfig = field(default_factory=LoraConfig, metadata={"help": "LoRA's fixed settings"})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "the training of one evaluation"})
    launch: LaunchConfig = field(default_factory=LaunchConfig, metadata={"help": "where an evaluation runs"})
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig, metadata={"help": "what NOMAD minimises"})
    nomad: NomadConfig = field(default_factory=NomadConfig, metadata={"help": "NOMAD's settings"})
    confirm: ConfirmConfig = field(default_factory=ConfirmConfig, metadata={
        "help": "the best points trained again with other seeds"})
    pruning: PruningConfig = field(default_factory=PruningConfig, metadata={"help": "stop hopeless trainings"})
    slurm: SlurmConfig = field(default_factory=SlurmConfig, metadata={
        "help": "with launch.executor slurm; none of it changes a run id"})
    description: str = field(default="", metadata={"help": "a line for the report and the model card"})
    dir: Path = field(default=Path("."), metadata={"internal": True, "help": "the experiment folder"})

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
        if self.nomad.screen_fraction:
            from core.pruning import checkpoints

            inside = checkpoints(self.train.eval_every)[:-1]
            if not any(abs(self.nomad.screen_fraction - f) < 1e-6 for f in inside):
                raise ConfigError(f"nomad.screen_fraction: {self.nomad.screen_fraction:g} is not a checkpoint of "
                                  f"train.eval_every {self.train.eval_every} (the validation loss there ranks the "
                                  f"start design): use one of {[f'{f:g}' for f in inside] or 'none: set train.eval_every'}")
            if self.nomad.screen_keep > self.nomad.start_points + 1:
                raise ConfigError(f"nomad.screen_keep: {self.nomad.screen_keep} is more than the start design's "
                                  f"{self.nomad.start_points + 1} points (X0 and nomad.start_points)")
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
        """Every setting that changes what training or evaluation computes, files by content: the run id
        hashes it with the point's hyperparameters (core/identity.py)."""
        return fingerprint(self)

    def to_dict(self) -> dict:
        out = {}
        for f in dataclasses.fields(self):
            if f.metadata.get("internal"):
                continue
            value = getattr(self, f.name)
            out[f.name] = value.to_dict() if isinstance(value, SearchSpace) else (
                dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value)
        return out


# ---------------------------------------------------------------- loading

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
    config = build(ExperimentConfig, dict(raw, space=space), "")
    config.check()
    return config
