"""Memory, time and disk of a search, estimated before any GPU time is spent.

    python -m bbo plan experiments/llama2-7b-bbo3 --gpus 4xA100-80GB [--tokens-per-second N] [--train-tokens N]

Why: a LLaMA-2-7B search is 50-100 evaluations of hours each on rented GPUs. An
out-of-memory at the largest rank shows up only when NOMAD first proposes that rank,
possibly a day in, and a search that takes three weeks is better known on day zero.
This module answers, from config.json alone (no weights are downloaded; the memory model is in
bbo/plan_memory.py, the printed text in bbo/plan_text.py):

- memory per GPU of ONE training process at the LARGEST rank of `space:` (and the
  largest dropout), with and without gradient checkpointing, against ~90% of the GPU's
  memory: "fits", "fits with gradient checkpointing" or "does not fit", and what to change;
- tokens, hours per evaluation and per search, from the tokenised data when it is local;
- disk for the adapters of the whole budget;
- MMLU questions: per evaluation (mmlu.search_limit, else mmlu.limit, per subject) x the budget,
  and the objective.finalists' full MMLU after the search (mmlu.limit), counted in the local set.

Time and disk
-------------
Tokens per evaluation: the training split's tokens (sum of the tokenised input_ids, from
core/data.py's cache, the one training uses) x train.epochs; with train.max_steps > 0,
max_steps x per_device_batch_size x grad_accum x num_processes x max_length (an upper
bound). Data or tokenizer on the hub: --train-tokens (tokens in the training split, one
epoch). Seconds per evaluation = tokens / (tokens_per_second_per_GPU x num_processes)
+ validation tokens at 1/3 the cost per token (forward only), once per checkpoint of
train.eval_every and at the end. Per search: x
ceil(nomad.budget / launch.parallel), plus with nomad.screen_fraction the low-fidelity start (the
design's rounds x the fraction, then the screen_keep full trainings). Tokens/s per GPU: --tokens-per-second, else A100
2,400 (HF LoRA on Llama-2-7B at seq 1024, LLaMA-Factory's published figure) and H100 twice
that (a guess, not measured); with these defaults, gradient checkpointing makes training
4/3 as long, and a model of another size scales them by 6.74e9 / N (none beyond 8x).
Process start, model loading and MMLU are not included. Adapter disk: P (LoRA parameters) x 2 bytes (4 for a
float32 base: adapters are saved in the weights' dtype) per adapter, at the largest rank, x
nomad.budget, or with train.keep_adapters best:k (none: k = 0) x k + launch.parallel (the
ones trained but not yet ranked): an upper bound.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from bbo.plan_memory import (GIB, USABLE_FRACTION, find_model_config, load_arch, memory_breakdown,
                             memory_verdict)
from bbo.plan_text import num, plan_text


VAL_COST = 1 / 3  # a validation token is a forward pass only: ~1/3 of a training token
CHECKPOINTING_COST = 4 / 3  # gradient checkpointing recomputes the forward: ~1/3 more compute

REFERENCE_PARAMS = 6.74e9  # LLaMA-2-7B, the model the default throughputs are for
A100_TOKENS_PER_SECOND = 2400.0
A100_SOURCE = ("HF LoRA on Llama-2-7B, one A100, seq 1024: LLaMA-Factory's published figure, the reference "
               "in docs/benchmarks.md; not measured by this project")
DEFAULT_THROUGHPUT = {
    "A100": (A100_TOKENS_PER_SECOND, A100_SOURCE),
    "H100": (2 * A100_TOKENS_PER_SECOND, "not measured; using the A100 figure x 2 as a guess"),
}


# ---------------------------------------------------------------- GPUs

@dataclass(frozen=True)
class GpuSpec:
    count: int
    name: str  # A100, H100, ... (upper case)
    memory_gib: float  # per GPU

    def __str__(self):
        return f"{self.count}x{self.name}-{self.memory_gib:g}GB"


_GPU_RE = re.compile(r"^\s*(?:(\d+)\s*[x*]\s*)?([a-z][a-z0-9_.\-]*?)\s*-\s*(\d+(?:\.\d+)?)\s*(?:gb|gib|g)\s*$",
                     re.IGNORECASE)


def parse_gpus(text: str) -> GpuSpec:
    """"4xA100-80GB", "1xA100-40GB", "8xH100-80GB", "H100-80GB" (one GPU); case-insensitive."""
    match = _GPU_RE.match(text or "")
    if not match:
        raise ValueError(f"--gpus: {text!r} is not COUNTxNAME-MEMORYGB, e.g. 4xA100-80GB, 1xA100-40GB or H100-80GB")
    count = int(match.group(1)) if match.group(1) else 1
    memory = float(match.group(3))
    if count < 1:
        raise ValueError(f"--gpus: {text!r}: the count must be at least 1")
    if memory <= 0:
        raise ValueError(f"--gpus: {text!r}: the memory must be above 0 GB")
    return GpuSpec(count, match.group(2).upper(), memory)


def detect_gpus() -> GpuSpec | None:
    """What torch sees (for a caller with no --gpus), or None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    name = props.name.replace("NVIDIA ", "").strip()
    for kind in DEFAULT_THROUGHPUT:
        if kind in name.upper():
            name = kind
            break
    return GpuSpec(torch.cuda.device_count(), name.upper(), round(props.total_memory / GIB, 1))


def default_throughput(gpus: GpuSpec | None) -> tuple[float, str] | None:
    if gpus is None:
        return None
    for kind, value in DEFAULT_THROUGHPUT.items():
        if kind in gpus.name.upper():
            return value
    return None


# ---------------------------------------------------------------- the plan

@dataclass
class Plan:
    experiment: str
    model: str
    model_source: str | None  # where config.json came from; None = unknown model size
    gpus: GpuSpec | None
    rank: int | None  # the largest rank of the space
    ranks: list = field(default_factory=list)
    dropout: float = 0.0  # the largest dropout of the space
    quantization: str | None = None
    gradient_checkpointing: bool = False  # the setting the run would use
    weights_dtype: str = "bf16"  # of the base weights (model.dtype; auto = bf16 on GPU)
    activations_dtype: str = "bf16"  # fp32 when train.precision is fp32
    params: int | None = None
    lora_params: int | None = None  # at the largest rank
    lora_params_by_module: dict = field(default_factory=dict)
    tokens_per_batch: int = 0  # per_device_batch_size x max_length
    memory: dict | None = None  # GiB by item, without gradient checkpointing
    memory_checkpointing: dict | None = None  # GiB by item, with gradient checkpointing
    usable_gib: float | None = None
    verdict: str | None = None  # fits | fits with gradient checkpointing | does not fit | None (no GPU given)
    advice: list = field(default_factory=list)
    train_tokens: int | None = None  # per evaluation (all epochs)
    val_tokens: int | None = None
    val_passes: int = 1  # validation passes per evaluation: train.eval_every's checkpoints and the end
    tokens_source: str = ""
    tokens_per_second: float | None = None  # per GPU
    throughput_source: str = ""
    num_processes: int = 1
    parallel: int = 1
    budget: int = 0
    seconds_per_eval: float | None = None
    seconds_per_search: float | None = None
    seconds_screen: float = 0.0  # of it, the low-fidelity start before NOMAD (nomad.screen_fraction)
    adapter_bytes: int | None = None  # one adapter at the largest rank
    disk_bytes: int | None = None  # adapters on disk at most (the whole budget, or train.keep_adapters')
    adapters_on_disk: int | None = None
    keep_adapters: str = "all"
    timeout_minutes: float | None = None
    mmlu_questions: dict | None = None  # questions per subject of the local MMLU set (None: not known here)
    mmlu_search: int | None = None  # MMLU questions per evaluation during the search (mmlu.search_limit)
    mmlu_finalists: int = 0  # objective.finalists
    mmlu_full: int | None = None  # MMLU questions per finalist afterwards (mmlu.limit)
    warnings: list = field(default_factory=list)

    @property
    def total_gib(self) -> float | None:
        """The memory the run would need, with its gradient checkpointing setting."""
        chosen = self.memory_checkpointing if self.gradient_checkpointing else self.memory
        return chosen["total"] if chosen else None

    def text(self) -> str:
        """What `python -m bbo plan` prints (bbo/plan_text.py)."""
        return plan_text(self)


def _largest(space, name: str):
    """(largest value, list of values or bounds) of a hyperparameter of the space."""
    var = next(v for v in space.variables if v.name == name)
    if var.kind == "fixed":
        return var.value, [var.value]
    if var.kind == "choices":
        return max(var.choices), list(var.choices)
    low, high = var.value_bounds
    return high, [low, high]


def estimate(config, gpus: GpuSpec | None = None, *, quantization: str | None = None,
             gradient_checkpointing: bool | None = None, tokens_per_second: float | None = None,
             train_tokens: int | None = None) -> Plan:
    """The plan of an experiment (a core.config.ExperimentConfig) on `gpus` (None = unknown).

    quantization: None = model.quantization of the config (when it has one); "4bit" = NF4 base.
    gradient_checkpointing: None = train.gradient_checkpointing of the config.
    tokens_per_second: per GPU (default: a figure per GPU kind, cited in the text).
    train_tokens: tokens in the training split (one epoch), when the data or tokenizer is not local.
    """
    quantization = quantization or getattr(config.model, "quantization", None)
    if quantization not in (None, "4bit"):
        raise ValueError(f"quantization: {quantization!r} is not one of None, 4bit")
    checkpointing = config.train.gradient_checkpointing if gradient_checkpointing is None else gradient_checkpointing
    rank, ranks = _largest(config.space, "rank")
    dropout, _ = _largest(config.space, "dropout")
    rank = int(rank)
    train, launch = config.train, config.launch
    tokens_per_batch = train.per_device_batch_size * config.data.max_length
    plan = Plan(experiment=config.name, model=config.model.path, model_source=None, gpus=gpus, rank=rank,
                ranks=[int(r) for r in ranks], dropout=float(dropout), quantization=quantization,
                gradient_checkpointing=checkpointing, tokens_per_batch=tokens_per_batch,
                num_processes=launch.num_processes, parallel=launch.parallel, budget=config.nomad.budget,
                timeout_minutes=launch.timeout_minutes)
    if gpus is not None:
        plan.usable_gib = gpus.memory_gib * USABLE_FRACTION
        needed = launch.num_processes * launch.parallel
        if gpus.count < needed:
            effective = train.per_device_batch_size * train.grad_accum * launch.num_processes
            accum = train.grad_accum * launch.num_processes // gpus.count
            plan.warnings.append(
                f"the experiment needs {needed} GPUs (launch.num_processes {launch.num_processes} x launch.parallel "
                f"{launch.parallel}), {gpus} has {gpus.count}: use launch.num_processes={gpus.count} "
                f"launch.parallel=1 train.grad_accum={accum} (keeps the effective batch of {effective})")
        elif gpus.count >= 2 * needed:
            plan.warnings.append(
                f"{gpus} has {gpus.count} GPUs, the search uses {needed} (launch.num_processes "
                f"{launch.num_processes} x launch.parallel {launch.parallel}): "
                f"launch.parallel={gpus.count // launch.num_processes} runs that many evaluations at once")

    # ---- memory
    found = find_model_config(config)
    arch = None
    if found is None:
        plan.warnings.append(f"unknown model size: no config.json for {config.model.path!r} (not a local folder, "
                             f"not in the hub cache, not in bbo/known_models): no memory estimate")
    else:
        arch = load_arch(*found)
        adapted = arch.adapted(config.lora.target_modules)
        if not adapted:
            plan.warnings.append(f"lora.target_modules {config.lora.target_modules} match no linear module "
                                 f"of the model")
        plan.model_source, plan.params = arch.source, arch.params
        plan.lora_params = rank * sum(m[1] + m[2] for m in adapted)
        by_module = {}
        for name, fan_in, fan_out in adapted:
            key = name.rsplit(".", 1)[-1]
            by_module[key] = by_module.get(key, 0) + rank * (fan_in + fan_out)
        plan.lora_params_by_module = by_module
        dtype_bytes = 4 if config.model.dtype == "float32" else 2
        a = 4 if train.precision == "fp32" else 2
        plan.weights_dtype = {"float32": "fp32", "float16": "fp16"}.get(config.model.dtype, "bf16")
        plan.activations_dtype = "fp32" if a == 4 else ("fp16" if train.precision == "fp16" else "bf16")

        def mem(r=rank, batch=train.per_device_batch_size, quant=quantization, ddp=launch.num_processes > 1,
                gc=False):
            return memory_breakdown(arch, adapted, r, tokens=batch * config.data.max_length, dtype_bytes=dtype_bytes,
                                    a=a, quantization=quant, ddp=ddp, dropout=dropout > 0, checkpointing=gc)

        plan.memory, plan.memory_checkpointing = mem(gc=False), mem(gc=True)
        if gpus is not None:
            plan.verdict, plan.advice = memory_verdict(plan, config, mem)
        plan.adapter_bytes = plan.lora_params * dtype_bytes  # saved in the weights' dtype (core.model.save_adapter)
        kept = config.train.adapters_kept  # pruned after each evaluation: k kept + those not yet ranked
        plan.adapters_on_disk = config.nomad.budget if kept is None else min(config.nomad.budget,
                                                                               kept + launch.parallel)
        plan.keep_adapters = config.train.keep_adapters
        plan.disk_bytes = plan.adapter_bytes * plan.adapters_on_disk

    # ---- tokens and time
    _tokens(plan, config, train_tokens)
    _time(plan, config, gpus, tokens_per_second, checkpointing)
    mmlu_cost(plan, config)
    return plan


def _local_data(config) -> bool:
    from core.data import is_local

    model = Path(config.resolve(config.model.path))
    if not model.is_dir():
        return False
    for source in config.data.sources:
        path = config.resolve(source.path)
        if not (is_local(path) and Path(path).is_file()):
            return False
    return True


def _tokens(plan: Plan, config, train_tokens: int | None) -> None:
    train, data = config.train, config.data
    epoch_tokens = val_tokens = None
    if _local_data(config):
        try:
            epoch_tokens, val_tokens = _count_local_tokens(config)
            source = "counted in the tokenised local data"
        except Exception as e:  # noqa: BLE001 - the plan goes on without tokens; the message says why
            plan.warnings.append(f"cannot count tokens in the local data: {type(e).__name__}: {e}")
            source = "the local data could not be tokenised (see the warning)"
    else:
        source = ("the data or the tokenizer is on the hub; give --train-tokens N "
                  "(tokens in the training split, one epoch)")
    if epoch_tokens is None and train_tokens is not None:
        epoch_tokens = int(train_tokens)
        val_tokens = int(round(epoch_tokens * data.val_fraction / (1 - data.val_fraction)))
        source = (f"--train-tokens {epoch_tokens:,} per epoch; validation estimated from "
                  f"data.val_fraction {data.val_fraction:g}")
    if train.max_steps > 0:
        plan.train_tokens = (train.max_steps * train.per_device_batch_size * train.grad_accum
                             * config.launch.num_processes * data.max_length)
        plan.val_tokens = val_tokens
        source = (f"train.max_steps {train.max_steps} x {train.per_device_batch_size} x {train.grad_accum} x "
                  f"{config.launch.num_processes} processes x max_length {data.max_length}: an upper bound"
                  + ("" if val_tokens is not None else "; validation unknown"))
        if val_tokens is None:
            plan.val_tokens = 0
    elif epoch_tokens is not None:
        plan.train_tokens = int(round(epoch_tokens * train.epochs))
        plan.val_tokens = val_tokens
        source += f"; x train.epochs {train.epochs:g}"
    plan.tokens_source = source


def _count_local_tokens(config) -> tuple[int, int]:
    """Train and validation tokens of the tokenised split, built (or reused) as train.py does."""
    import datasets

    from core.data import chat_template_text, load_tokenized
    from core.model import load_tokenizer

    cfg = config.to_dict()
    data = cfg["data"]
    for source in data["sources"]:
        source["path"] = config.resolve(source["path"])
    data["chat_template"] = chat_template_text(config.data.chat_template, config.dir)
    model_path = config.resolve(config.model.path)
    tokenizer = load_tokenizer(model_path, config.model.revision, config.model.trust_remote_code)
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # a plan prints one block, not the cache's "Saving the dataset" bars
    try:
        train_set, val_set = load_tokenized(data, tokenizer, model_path, str(config.dir / "cache"))
    finally:
        if bars:
            datasets.enable_progress_bars()
    return (sum(len(ids) for ids in train_set["input_ids"]), sum(len(ids) for ids in val_set["input_ids"]))


def _time(plan: Plan, config, gpus: GpuSpec | None, tokens_per_second: float | None, checkpointing: bool) -> None:
    factor = 1.0
    if tokens_per_second:
        plan.tokens_per_second, plan.throughput_source = float(tokens_per_second), "--tokens-per-second"
    else:
        default = default_throughput(gpus)
        if default is None:
            plan.throughput_source = ("give --tokens-per-second N (per GPU)"
                                      + ("" if gpus else " or --gpus") + ": no default figure for "
                                      + (f"{gpus.name}" if gpus else "an unknown GPU"))
            return
        tps, source = default
        if plan.params and not 0.5 <= plan.params / REFERENCE_PARAMS <= 2:
            if not 1 / 8 <= plan.params / REFERENCE_PARAMS <= 8:
                plan.throughput_source = (f"give --tokens-per-second N (per GPU): the default figures are for "
                                          f"a ~7B model, this one has {num(plan.params)} parameters")
                return
            tps *= REFERENCE_PARAMS / plan.params
            source += f"; scaled by 6.74e9 / {num(plan.params)} parameters (compute ~ parameters): a rough guess"
        if checkpointing:
            factor = CHECKPOINTING_COST
            source += "; training x 4/3 for gradient checkpointing"
        if plan.quantization == "4bit":
            source += "; 4-bit dequantisation makes it slower, not included"
        plan.tokens_per_second, plan.throughput_source = tps, source
    if plan.train_tokens is None:
        return
    rate = plan.tokens_per_second * config.launch.num_processes
    from core.pruning import checkpoints

    plan.val_passes = len(checkpoints(config.train.eval_every))  # the curve's checkpoints, then the end
    plan.seconds_per_eval = (plan.train_tokens / rate * factor
                             + plan.val_passes * (plan.val_tokens or 0) / rate * VAL_COST)
    plan.seconds_per_search = plan.seconds_per_eval * math.ceil(config.nomad.budget / config.launch.parallel)
    if config.nomad.screen_fraction:  # before NOMAD: the start design to the fraction, then its best in full
        design = len(config.space.start_design(config.nomad.start_points, config.nomad.seed))
        rounds = math.ceil(design / config.launch.parallel) * config.nomad.screen_fraction \
            + math.ceil(config.nomad.screen_keep / config.launch.parallel)
        plan.seconds_screen = plan.seconds_per_eval * rounds
        plan.seconds_per_search += plan.seconds_screen
    if config.objective.needs_mmlu:
        plan.warnings.append("the MMLU evaluation of each point is not included in the time"
                             + (" (nor the finalists' full MMLU)" if config.objective.finalists else ""))
    if config.objective.needs_rouge:
        plan.warnings.append("the ROUGE generation of each point is not included in the time")
    timeout = config.launch.timeout_minutes
    if timeout and plan.seconds_per_eval > timeout * 60:
        plan.warnings.append(f"one evaluation is estimated at {plan.seconds_per_eval / 3600:.1f} h, above "
                             f"launch.timeout_minutes {timeout:g} ({timeout / 60:.1f} h): it would be killed; "
                             f"raise launch.timeout_minutes or train on fewer tokens")


def mmlu_cost(plan: Plan, config) -> None:
    """MMLU questions of the search (mmlu.search_limit, else mmlu.limit, per subject) and of the
    objective.finalists afterwards (mmlu.limit), counted in the local MMLU set's test.jsonl."""
    if not config.objective.needs_mmlu:
        return
    mmlu = config.objective.mmlu
    plan.mmlu_finalists = config.objective.finalists
    if mmlu.task != "mmlu_local" or not mmlu.data_dir:
        plan.mmlu_full = mmlu.limit
        return
    counts: dict = {}
    try:
        with open(Path(config.resolve(mmlu.data_dir)) / "test.jsonl") as f:
            for line in f:
                if line.strip():
                    subject = json.loads(line).get("subject")
                    counts[subject] = counts.get(subject, 0) + 1
    except (OSError, ValueError, AttributeError):
        plan.mmlu_full = mmlu.limit
        return

    def questions(limit):
        return sum(n if limit is None else min(n, limit) for n in counts.values())

    plan.mmlu_questions = counts
    plan.mmlu_search = questions(mmlu.search_questions)
    plan.mmlu_full = questions(mmlu.limit)


def plan_warnings(config) -> list[str]:
    """What a search about to start on this machine's GPUs should hear from its plan: a largest
    point that does not fit (with the changes that would make it fit), an evaluation that would
    pass launch.timeout_minutes. Empty without a GPU."""
    gpus = detect_gpus()
    if gpus is None:
        return []
    plan = estimate(config, gpus)
    out = []
    if plan.verdict == "does not fit" or (plan.verdict == "fits with gradient checkpointing"
                                          and not plan.gradient_checkpointing):
        out.append(f"memory: the largest point (rank {plan.rank}) {plan.verdict} on {gpus} "
                   f"({plan.total_gib:.1f} GiB of {plan.usable_gib:.1f} usable, estimated); "
                   + "; ".join(plan.advice[:2]) + f" (python -m bbo plan {config.dir})")
    out.extend(w for w in plan.warnings if "launch.timeout_minutes" in w)
    return out
