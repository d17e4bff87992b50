"""`bbo plan`'s words: a plan as the block `python -m bbo plan` prints, and this machine's torch,
NVIDIA driver and GPUs (`bbo plan` without --gpus, the GPU checks)."""
from __future__ import annotations

import math

from bbo.plan_memory import GIB, USABLE_FRACTION


def plan_text(plan) -> str:
    """A bbo.plan.Plan (Plan.text()): model, GPUs, memory per item with and without gradient checkpointing,
    the verdict and what to change, tokens, time, MMLU questions, disk, warnings."""
    lines = [f"plan for {plan.experiment}: memory at the largest point, time and disk of the search"]

    def row(label, value):
        lines.append(f"  {label:<22}{value}")

    if plan.model_source:
        row("model", f"{plan.model}: {num(plan.params)} parameters")
        row("", f"config.json: {plan.model_source}")
    else:
        row("model", f"{plan.model}: unknown model size (no local config.json and no shipped copy; "
                     f"set model.path to a local folder)")
    if plan.gpus:
        row("GPUs", f"{plan.gpus.count} x {plan.gpus.name}, {plan.gpus.memory_gib:.1f} GiB each "
                    f"({plan.usable_gib:.1f} GiB usable at {USABLE_FRACTION:.0%})")
    else:
        row("GPUs", "unknown (give --gpus, e.g. 4xA100-80GB): memory only, no verdict")
    if plan.rank is not None:
        ranks = f" of {plan.ranks}" if len(plan.ranks) > 1 else ""
        row("largest point", f"rank {plan.rank}{ranks}, dropout up to {plan.dropout:g}")
    if plan.lora_params is not None:
        by_module = ", ".join(f"{k} {num(v)}" for k, v in plan.lora_params_by_module.items())
        row("LoRA parameters", f"{num(plan.lora_params)} at rank {plan.rank} ({by_module})")
    row("tokens per GPU batch", f"{plan.tokens_per_batch:,} (train.per_device_batch_size x data.max_length)")

    if plan.memory:
        m, c = plan.memory, plan.memory_checkpointing
        base = "NF4 linears, fp32 rest" if plan.quantization == "4bit" else plan.weights_dtype
        items = [("base weights", "weights", base), ("LoRA weights", "lora_weights", "fp32"),
                 ("LoRA gradients", "lora_grads", "fp32"), ("AdamW states", "optimizer", "2 x fp32"),
                 ("DDP gradient buckets", "ddp_buckets", "fp32"),
                 ("activations", "activations", plan.activations_dtype),
                 ("logits", "logits", f"{plan.activations_dtype} + fp32 copy + fp32 grad"),
                 ("CUDA context, fragm.", "overhead", "fixed")]
        items = [(f"{label} ({note})", key) for label, key, note in items if key != "ddp_buckets" or m[key]]
        width = max(len(label) for label, _ in items) + 2
        lines.append("")
        lines.append(f"  {'memory per GPU (one process)':<{width + 2}}{'without':>7}  {'with':>7}"
                     f"  gradient checkpointing")
        for label, key in items:
            lines.append(f"    {label:<{width}}{m[key]:>7.1f}  {c[key]:>7.1f}  GiB")
        lines.append(f"    {'total':<{width}}{m['total']:>7.1f}  {c['total']:>7.1f}  GiB"
                     + (f"   (usable: {plan.usable_gib:.1f} GiB)" if plan.usable_gib else ""))
        setting = "on" if plan.gradient_checkpointing else "off"
        if plan.verdict:
            needed = m["total"] if plan.verdict == "fits" else c["total"]
            other = c["total"] if plan.verdict == "fits" else m["total"]
            row("verdict", f"{plan.verdict}: {needed:.1f} of {plan.usable_gib:.1f} GiB usable "
                           f"({other:.1f} GiB {'with' if plan.verdict == 'fits' else 'without'} gradient "
                           f"checkpointing; train.gradient_checkpointing is {setting})")
        for item in plan.advice:
            row("", f"- {item}")

    lines.append("")
    if plan.train_tokens is not None:
        row("tokens per evaluation", f"{plan.train_tokens:,} train + {plan.val_tokens:,} validation "
                                     f"x {plan.val_passes} passes (train.eval_every) ({plan.tokens_source})")
    else:
        row("tokens per evaluation", f"unknown: {plan.tokens_source}")
    if plan.tokens_per_second:
        row("throughput", f"{plan.tokens_per_second:,.0f} tokens/s per GPU x {plan.num_processes} "
                          f"GPU(s) per evaluation ({plan.throughput_source})")
    else:
        row("throughput", f"unknown: {plan.throughput_source}")
    if plan.seconds_per_eval is None:
        row("time per evaluation", "unknown (needs the tokens and the throughput above)")
    else:
        row("time per evaluation", f"{hours(plan.seconds_per_eval)} "
                                   f"(training + validation; process start and model loading not included)")
        rounds = math.ceil(plan.budget / plan.parallel)
        screen = f" + the low-fidelity start {hours(plan.seconds_screen)}" if plan.seconds_screen else ""
        row("time per search", f"{hours(plan.seconds_per_search)} = {rounds} rounds "
                               f"(nomad.budget {plan.budget} / launch.parallel {plan.parallel}){screen} "
                               f"= {plan.seconds_per_search / 86400:.1f} days")
    if plan.mmlu_search is not None:
        search = plan.mmlu_search * plan.budget
        text = f"{plan.mmlu_search:,} questions per evaluation x {plan.budget} = {search:,}"
        if plan.mmlu_finalists:
            full = plan.mmlu_full * plan.mmlu_finalists
            share = f", {full / search:.0%} of the search's" if search else ""
            text += f"; finalists {plan.mmlu_finalists} x {plan.mmlu_full:,} = {full:,} more{share}"
        row("MMLU questions", text + " (objective.mmlu limits; time not estimated)")
    elif plan.mmlu_finalists:
        full = "every question" if plan.mmlu_full is None else f"{plan.mmlu_full} questions"
        row("MMLU questions", f"unknown (stock task); the {plan.mmlu_finalists} finalists get mmlu.limit "
                              f"{full} per subject after the search")
    if plan.adapter_bytes is not None:
        each = (f"{plan.adapter_bytes / GIB:.1f} GiB" if plan.adapter_bytes >= GIB
                else f"{plan.adapter_bytes / 2 ** 20:.1f} MiB")
        row("adapter disk", f"{each} per adapter at rank {plan.rank} ({plan.weights_dtype}), "
                            f"{plan.disk_bytes / GIB:.1f} GiB for {plan.adapters_on_disk} adapters (at most; "
                            f"nomad.budget {plan.budget}, train.keep_adapters {plan.keep_adapters})")
    if plan.warnings:
        lines.append("")
        lines.extend(f"warning: {w}" for w in plan.warnings)
    return "\n".join(lines) + "\n"


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


def num(n: int) -> str:
    if n >= 1e9:
        return f"{n / 1e9:.2f}e9"
    if n >= 1e6:
        return f"{n / 1e6:.1f}M"
    return f"{n:,}"


def hours(seconds: float) -> str:
    text = f"{seconds / 3600:.1f} h"
    return text if seconds >= 3600 else f"{text} ({seconds / 60:.1f} min)"
