"""Memory, time and disk of a search, estimated before any GPU time is spent.

    python -m bbo plan experiments/llama2-7b-bbo3 --gpus 4xA100-80GB [--tokens-per-second N] [--train-tokens N]

Why: a LLaMA-2-7B search is 50-100 evaluations of hours each on rented GPUs. An
out-of-memory at the largest rank shows up only when NOMAD first proposes that rank,
possibly a day in, and a search that takes three weeks is better known on day zero.
This module answers, from config.json alone (no weights are downloaded):

- memory per GPU of ONE training process at the LARGEST rank of `space:` (and the
  largest dropout), with and without gradient checkpointing, against ~90% of the GPU's
  memory: "fits", "fits with gradient checkpointing" or "does not fit", and what to change;
- tokens, hours per evaluation and per search, from the tokenised data when it is local;
- disk for the adapters of the whole budget;
- MMLU questions: per evaluation (mmlu.search_limit, else mmlu.limit, per subject) x the budget,
  and the objective.finalists' full MMLU after the search (mmlu.limit), counted in the local set.

Parameter counts
----------------
The architecture is built from config.json on the meta device (no memory, no weights)
and counted. config.json comes from the local model folder (model.path), else from the
hub cache, else from a copy shipped in bbo/known_models/<org>--<name>.json (LLaMA-2-7B).
An unknown hub id without a local copy gives "unknown model size", never a guess.
LoRA adds r * (in_features + out_features) parameters per adapted linear module (A is
r x in, B is out x r), for every module named by lora.target_modules (peft's matching:
the module's name or its last dotted parts).

Memory model (bytes, one process, N = parameters, P = LoRA parameters at the largest rank)
-----------------------------------------------------------------------------------------
(a) base weights: N x 2 (model.dtype auto = bfloat16 on GPU; float32 = 4).
    model.quantization=4bit (bitsandbytes NF4, double quantisation): every linear layer of
    the decoder stores 4 bits/param + 0.127 bit/param of block scales (one 8-bit absmax per
    64-element block = 0.125, one fp32 scale per 256 of those = 0.002), i.e. ~0.516 byte;
    embeddings, lm_head and norms are not quantised, and train.py's
    peft.prepare_model_for_kbit_training casts them to float32 (4 bytes/param).
(b) LoRA: peft keeps adapter weights in float32 when the base is bf16/fp16
    (autocast_adapter_dtype): P x 4 weights + P x 4 gradients + P x 8 AdamW (exp_avg and
    exp_avg_sq, fp32) + P x 4 DDP gradient buckets when launch.num_processes > 1 (DDP keeps
    a flat copy of the gradients to all-reduce). The optimizer step's temporaries are
    allocated after backward has freed the activations and are not counted.
(c) activations of train.per_device_batch_size x data.max_length tokens (T; packing puts the
    examples of a batch in one row of at most that many tokens), a = 2 bytes (bf16 autocast;
    4 when train.precision=fp32). Saved for backward, per token and per LLaMA-style
    decoder layer (h = hidden_size, i = intermediate_size, q = heads x head_dim,
    kv = key/value heads x head_dim, n = heads):
      attention  4h  norm input (RMSNorm upcasts its input to fp32 and keeps it)
               + a*h normed (the input LoRA's A matrices of q/k/v need for their gradients)
               + a*(q + 2kv)  q, k, v (after rotary; SDPA keeps them)
               + a*q attention output (o_proj's input) + 4n  SDPA's log-sum-exp (fp32)
      MLP        4h  norm input (fp32) + a*h normed
               + 4a*i  gate, up, act(gate), act(gate)*up (down_proj's input)
      LoRA       a * sum(r) over the layer's adapted modules (A's output, B's input)
      dropout    (a + 1) * sum(in_features) over the layer's adapted modules when the space
                 allows lora dropout > 0: each adapted module draws its own dropout, whose
                 output (a bytes) and mask (1 byte) are kept. The normed inputs above are still
                 counted, so this slightly overstates. With dropout 0 peft skips the dropout.
    Without checkpointing: T x layers x (attention + MLP + LoRA + dropout).
    With gradient checkpointing (one checkpoint per decoder layer, as transformers does):
    T x layers x a*h (each layer's input) + T x (attention + MLP + LoRA + dropout): one
    layer is recomputed at a time during backward.
    Logits: T x vocab x (a bf16 logits + 4 fp32 upcast for the loss, kept by log-softmax
    + 4 fp32 gradient); not affected by checkpointing.
(d) 1.5 GiB for the CUDA context, cuBLAS workspaces and allocator fragmentation.
Verdict: compared with 90% of the GPU's memory ("80GB" is read as 80 GiB, as nvidia-smi
shows it); the rest is headroom for what the model above leaves out.

Time and disk
-------------
Tokens per evaluation: the training split's tokens (sum of the tokenised input_ids, from
core/data.py's cache, the one training uses) x train.epochs; with train.max_steps > 0,
max_steps x per_device_batch_size x grad_accum x num_processes x max_length (an upper
bound). Data or tokenizer on the hub: --train-tokens (tokens in the training split, one
epoch). Seconds per evaluation = tokens / (tokens_per_second_per_GPU x num_processes)
+ validation tokens at 1/3 the cost per token (forward only), once per checkpoint of
train.eval_every and at the end. Per search: x
ceil(nomad.budget / launch.parallel). Tokens/s per GPU: --tokens-per-second, else A100
2,400 (HF LoRA on Llama-2-7B at seq 1024, LLaMA-Factory's published figure) and H100 twice
that (a guess, not measured); with these defaults, gradient checkpointing makes training
4/3 as long, and a model of another size scales them by 6.74e9 / N (none beyond 8x).
Process start, model loading and MMLU are not included. Adapter disk: P x 2 bytes (4 for a
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

GIB = 2 ** 30
USABLE_FRACTION = 0.90  # of the GPU's memory; the rest is headroom for what the model leaves out
OVERHEAD_GIB = 1.5  # CUDA context + cuBLAS workspaces + allocator fragmentation
NF4_BITS = 4 + 8 / 64 + 32 / (64 * 256)  # 4-bit codes + double-quantised block scales: ~4.127 bits/param
VAL_COST = 1 / 3  # a validation token is a forward pass only: ~1/3 of a training token
CHECKPOINTING_COST = 4 / 3  # gradient checkpointing recomputes the forward: ~1/3 more compute
KNOWN_MODELS = Path(__file__).resolve().parent / "known_models"

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


def machine_text() -> str:
    """This machine's torch, NVIDIA driver and the GPUs torch sees: what a search here would train on."""
    import shutil

    import torch

    from core.nvidia import read_driver, torch_build

    driver = read_driver()
    if driver is None:
        smi = "no nvidia-smi" if shutil.which("nvidia-smi") is None else "nvidia-smi failed: no usable driver"
    else:
        smi = (f"{driver.version or 'version unknown'}, CUDA {driver.cuda or 'unknown'} "
               f"({driver.gpus} GPUs listed by nvidia-smi)")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    seen = ", ".join(f"{i} {torch.cuda.get_device_name(i)}" for i in range(count)) if count else "none"
    lines = ["this machine",
             f"  {'torch':<22}{torch.__version__} ({torch_build(torch.version.cuda)})",
             f"  {'NVIDIA driver':<22}{smi}",
             f"  {'GPUs torch sees':<22}{count}" + (f": {seen}" if count else "")]
    return "\n".join(lines) + "\n"


def default_throughput(gpus: GpuSpec | None) -> tuple[float, str] | None:
    if gpus is None:
        return None
    for kind, value in DEFAULT_THROUGHPUT.items():
        if kind in gpus.name.upper():
            return value
    return None


# ---------------------------------------------------------------- the architecture

@dataclass
class Arch:
    """What the estimate needs from config.json (counted on the meta device)."""
    source: str  # where config.json came from
    params: int
    quantizable: int  # linear-layer parameters bitsandbytes quantises (all but lm_head)
    layers: int
    hidden: int
    intermediate: int
    heads: int
    q_dim: int
    kv_dim: int
    vocab: int
    linears: list[tuple[str, int, int]]  # (module name, in_features, out_features)

    def adapted(self, target_modules: list[str]) -> list[tuple[str, int, int]]:
        """The linear modules peft adapts: name == target or name ends with '.' + target."""
        return [m for m in self.linears if any(m[0] == t or m[0].endswith("." + t) for t in target_modules)]


def find_model_config(config) -> tuple[dict, str] | None:
    """(config.json as a dict, where it came from), or None when the model's size is unknown."""
    path = config.resolve(config.model.path)
    folder = Path(path)
    if folder.is_dir():
        file = folder / "config.json"
        return (json.loads(file.read_text()), str(file)) if file.is_file() else None
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(path, "config.json", revision=config.model.revision)
        if isinstance(cached, str):
            return json.loads(Path(cached).read_text()), f"{cached} (hub cache)"
    except Exception:  # noqa: BLE001 - not a valid repo id, no hub library: fall through
        pass
    shipped = KNOWN_MODELS / (path.replace("/", "--") + ".json")
    if shipped.is_file():
        where = f"bbo/known_models/{shipped.name} (shipped copy of {path}'s config.json)"
        return json.loads(shipped.read_text()), where
    return None


def load_arch(cfg: dict, source: str) -> Arch:
    """Instantiate the architecture on the meta device and count."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
    try:
        model_config = AutoConfig.for_model(**cfg)
    except (KeyError, ValueError):
        from transformers import LlamaConfig

        model_config = LlamaConfig(**cfg)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config)
    params = sum(p.numel() for p in model.parameters())
    output = model.get_output_embeddings()
    linears, quantizable = [], 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            linears.append((name, module.in_features, module.out_features))
            if module is not output:
                quantizable += sum(p.numel() for p in module.parameters())
    c = model_config
    hidden = c.hidden_size
    heads = c.num_attention_heads
    head_dim = getattr(c, "head_dim", None) or hidden // heads
    kv_heads = getattr(c, "num_key_value_heads", None) or heads
    return Arch(source=source, params=params, quantizable=quantizable, layers=c.num_hidden_layers, hidden=hidden,
                intermediate=getattr(c, "intermediate_size", None) or 4 * hidden, heads=heads,
                q_dim=heads * head_dim, kv_dim=kv_heads * head_dim, vocab=c.vocab_size, linears=linears)


# ---------------------------------------------------------------- memory

def activation_bytes_per_token_layer(arch: Arch, adapted: list, rank: int, dropout: bool, a: int = 2) -> dict:
    """The documented formula (module docstring, (c)), term by term, in bytes per token per layer."""
    h, i, n = arch.hidden, arch.intermediate, arch.heads
    per_layer = len(adapted) / arch.layers
    in_features = sum(m[1] for m in adapted) / arch.layers
    return {
        "attention": 4 * h + a * h + a * (arch.q_dim + 2 * arch.kv_dim) + a * arch.q_dim + 4 * n,
        "mlp": 4 * h + a * h + 4 * a * i,
        "lora": a * rank * per_layer,
        "dropout": (a + 1) * in_features if dropout else 0,
    }


def memory_breakdown(arch: Arch, adapted: list, rank: int, *, tokens: int, dtype_bytes: float = 2, a: int = 2,
                     quantization: str | None = None, ddp: bool = False, dropout: bool = False,
                     checkpointing: bool = False) -> dict:
    """GiB per item of one training process; see the module docstring for each term."""
    if quantization == "4bit":
        weights = arch.quantizable * NF4_BITS / 8 + (arch.params - arch.quantizable) * 4
    else:
        weights = arch.params * dtype_bytes
    lora = rank * sum(m[1] + m[2] for m in adapted)
    per = sum(activation_bytes_per_token_layer(arch, adapted, rank, dropout, a).values())
    if checkpointing:
        activations = tokens * arch.layers * a * arch.hidden + tokens * per
    else:
        activations = tokens * arch.layers * per
    out = {
        "weights": weights,
        "lora_weights": lora * 4,
        "lora_grads": lora * 4,
        "optimizer": lora * 8,
        "ddp_buckets": lora * 4 if ddp else 0,
        "activations": activations,
        "logits": tokens * arch.vocab * (a + 4 + 4),
    }
    out = {k: v / GIB for k, v in out.items()}
    out["overhead"] = OVERHEAD_GIB
    out["total"] = sum(out.values())
    return out


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

    def mmlu_full_limit_text(self) -> str:
        return "every question" if self.mmlu_full is None else f"{self.mmlu_full} questions"

    @property
    def total_gib(self) -> float | None:
        """The memory the run would need, with its gradient checkpointing setting."""
        chosen = self.memory_checkpointing if self.gradient_checkpointing else self.memory
        return chosen["total"] if chosen else None

    def text(self) -> str:
        lines = [f"plan for {self.experiment}: memory at the largest point, time and disk of the search"]

        def row(label, value):
            lines.append(f"  {label:<22}{value}")

        if self.model_source:
            row("model", f"{self.model}: {_num(self.params)} parameters")
            row("", f"config.json: {self.model_source}")
        else:
            row("model", f"{self.model}: unknown model size (no local config.json and no shipped copy; "
                         f"set model.path to a local folder)")
        if self.gpus:
            row("GPUs", f"{self.gpus.count} x {self.gpus.name}, {self.gpus.memory_gib:.1f} GiB each "
                        f"({self.usable_gib:.1f} GiB usable at {USABLE_FRACTION:.0%})")
        else:
            row("GPUs", "unknown (give --gpus, e.g. 4xA100-80GB): memory only, no verdict")
        if self.rank is not None:
            ranks = f" of {self.ranks}" if len(self.ranks) > 1 else ""
            row("largest point", f"rank {self.rank}{ranks}, dropout up to {self.dropout:g}")
        if self.lora_params is not None:
            by_module = ", ".join(f"{k} {_num(v)}" for k, v in self.lora_params_by_module.items())
            row("LoRA parameters", f"{_num(self.lora_params)} at rank {self.rank} ({by_module})")
        row("tokens per GPU batch", f"{self.tokens_per_batch:,} (train.per_device_batch_size x data.max_length)")

        if self.memory:
            m, c = self.memory, self.memory_checkpointing
            base = "NF4 linears, fp32 rest" if self.quantization == "4bit" else self.weights_dtype
            items = [("base weights", "weights", base), ("LoRA weights", "lora_weights", "fp32"),
                     ("LoRA gradients", "lora_grads", "fp32"), ("AdamW states", "optimizer", "2 x fp32"),
                     ("DDP gradient buckets", "ddp_buckets", "fp32"),
                     ("activations", "activations", self.activations_dtype),
                     ("logits", "logits", f"{self.activations_dtype} + fp32 copy + fp32 grad"),
                     ("CUDA context, fragm.", "overhead", "fixed")]
            items = [(f"{label} ({note})", key) for label, key, note in items if key != "ddp_buckets" or m[key]]
            width = max(len(label) for label, _ in items) + 2
            lines.append("")
            lines.append(f"  {'memory per GPU (one process)':<{width + 2}}{'without':>7}  {'with':>7}"
                         f"  gradient checkpointing")
            for label, key in items:
                lines.append(f"    {label:<{width}}{m[key]:>7.1f}  {c[key]:>7.1f}  GiB")
            lines.append(f"    {'total':<{width}}{m['total']:>7.1f}  {c['total']:>7.1f}  GiB"
                         + (f"   (usable: {self.usable_gib:.1f} GiB)" if self.usable_gib else ""))
            setting = "on" if self.gradient_checkpointing else "off"
            if self.verdict:
                needed = m["total"] if self.verdict == "fits" else c["total"]
                other = c["total"] if self.verdict == "fits" else m["total"]
                row("verdict", f"{self.verdict}: {needed:.1f} of {self.usable_gib:.1f} GiB usable "
                               f"({other:.1f} GiB {'with' if self.verdict == 'fits' else 'without'} gradient "
                               f"checkpointing; train.gradient_checkpointing is {setting})")
            for item in self.advice:
                row("", f"- {item}")

        lines.append("")
        if self.train_tokens is not None:
            row("tokens per evaluation", f"{self.train_tokens:,} train + {self.val_tokens:,} validation "
                                         f"x {self.val_passes} passes (train.eval_every) ({self.tokens_source})")
        else:
            row("tokens per evaluation", f"unknown: {self.tokens_source}")
        if self.tokens_per_second:
            row("throughput", f"{self.tokens_per_second:,.0f} tokens/s per GPU x {self.num_processes} "
                              f"GPU(s) per evaluation ({self.throughput_source})")
        else:
            row("throughput", f"unknown: {self.throughput_source}")
        if self.seconds_per_eval is None:
            row("time per evaluation", "unknown (needs the tokens and the throughput above)")
        else:
            row("time per evaluation", f"{_hours(self.seconds_per_eval)} "
                                       f"(training + validation; process start and model loading not included)")
            rounds = math.ceil(self.budget / self.parallel)
            row("time per search", f"{_hours(self.seconds_per_search)} = {rounds} rounds "
                                   f"(nomad.budget {self.budget} / launch.parallel {self.parallel}) "
                                   f"= {self.seconds_per_search / 86400:.1f} days")
        if self.mmlu_search is not None:
            search = self.mmlu_search * self.budget
            text = f"{self.mmlu_search:,} questions per evaluation x {self.budget} = {search:,}"
            if self.mmlu_finalists:
                full = self.mmlu_full * self.mmlu_finalists
                share = f", {full / search:.0%} of the search's" if search else ""
                text += f"; finalists {self.mmlu_finalists} x {self.mmlu_full:,} = {full:,} more{share}"
            row("MMLU questions", text + " (objective.mmlu limits; time not estimated)")
        elif self.mmlu_finalists:
            row("MMLU questions", f"unknown (stock task); the {self.mmlu_finalists} finalists get mmlu.limit "
                                  f"{self.mmlu_full_limit_text()} per subject after the search")
        if self.adapter_bytes is not None:
            each = (f"{self.adapter_bytes / GIB:.1f} GiB" if self.adapter_bytes >= GIB
                    else f"{self.adapter_bytes / 2 ** 20:.1f} MiB")
            row("adapter disk", f"{each} per adapter at rank {self.rank} ({self.weights_dtype}), "
                                f"{self.disk_bytes / GIB:.1f} GiB for {self.adapters_on_disk} adapters (at most; "
                                f"nomad.budget {self.budget}, train.keep_adapters {self.keep_adapters})")
        if self.warnings:
            lines.append("")
            lines.extend(f"warning: {w}" for w in self.warnings)
        return "\n".join(lines) + "\n"


def _num(n: int) -> str:
    if n >= 1e9:
        return f"{n / 1e9:.2f}e9"
    if n >= 1e6:
        return f"{n / 1e6:.1f}M"
    return f"{n:,}"


def _hours(seconds: float) -> str:
    text = f"{seconds / 3600:.1f} h"
    return text if seconds >= 3600 else f"{text} ({seconds / 60:.1f} min)"


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
            plan.verdict, plan.advice = _verdict(plan, config, mem)
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


def _verdict(plan: Plan, config, mem) -> tuple[str, list[str]]:
    usable = plan.usable_gib
    train = config.train
    without, with_gc = plan.memory["total"], plan.memory_checkpointing["total"]
    advice = []
    if without <= usable:
        if plan.gradient_checkpointing:
            advice.append(f"it fits without gradient checkpointing ({without:.1f} GiB): "
                          f"train.gradient_checkpointing=false saves ~1/3 of the compute")
        elif without > 0.9 * usable:
            advice.append(f"tight: {without / usable:.0%} of the usable memory; train.gradient_checkpointing=true "
                          f"would need {with_gc:.1f} GiB")
        return "fits", advice
    if with_gc <= usable:
        verdict = "fits with gradient checkpointing"
        if not plan.gradient_checkpointing:
            advice.append(f"train.gradient_checkpointing=true ({with_gc:.1f} GiB; ~1/3 more compute per step)")
    else:
        verdict = "does not fit"
    # a smaller batch per GPU, the same effective batch (without checkpointing first: no recompute)
    batch = train.per_device_batch_size
    options = (False,) if verdict != "does not fit" else (False, True)
    found = False
    for gc in options:
        for smaller in (b for b in range(batch - 1, 0, -1) if batch % b == 0):
            total = mem(batch=smaller, gc=gc)["total"]
            if total <= usable:
                how = " train.gradient_checkpointing=true" if gc else ""
                accum = train.grad_accum * batch // smaller
                advice.append(f"train.per_device_batch_size={smaller} train.grad_accum={accum}{how} "
                              f"(same effective batch): {total:.1f} GiB")
                found = True
                break
        if found:
            break
    if plan.quantization != "4bit":
        q_without, q_gc = mem(quant="4bit")["total"], mem(quant="4bit", gc=True)["total"]
        if q_gc <= usable:
            how = "" if q_without <= usable else " train.gradient_checkpointing=true"
            advice.append(f"model.quantization=4bit{how} (QLoRA base): {q_without:.1f} GiB without / "
                          f"{q_gc:.1f} GiB with gradient checkpointing")
    if verdict == "does not fit":
        single = mem(ddp=False, gc=True)["total"]
        if config.launch.num_processes > 1 and single <= usable:
            advice.append(f"launch.num_processes=1 train.gradient_checkpointing=true: no DDP gradient buckets, "
                          f"{single:.1f} GiB (one GPU per evaluation)")
        fitting = [r for r in plan.ranks if r < plan.rank and mem(r=r, gc=True)["total"] <= usable]
        if fitting:
            advice.append(f"ranks up to {max(fitting)} fit with gradient checkpointing: drop the larger ones "
                          f"from space.rank")
    if verdict == "does not fit":
        advice.append(f"a larger GPU: at least {math.ceil(with_gc / USABLE_FRACTION)} GiB with gradient "
                      f"checkpointing, {math.ceil(without / USABLE_FRACTION)} GiB without")
    else:
        advice.append(f"without gradient checkpointing it needs a GPU of at least "
                      f"{math.ceil(without / USABLE_FRACTION)} GiB")
    return verdict, advice


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
                                          f"a ~7B model, this one has {_num(plan.params)} parameters")
                return
            tps *= REFERENCE_PARAMS / plan.params
            source += f"; scaled by 6.74e9 / {_num(plan.params)} parameters (compute ~ parameters): a rough guess"
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
