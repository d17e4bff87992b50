"""Train one LoRA adapter, then measure its validation loss. The blackbox runs it as

    accelerate launch [--multi_gpu --num_processes N] blackbox/train.py experiments/<name>/runs/<run id>

It reads everything from <run dir>/spec.json (written by the blackbox: the resolved
experiment settings and the point's hyperparameters) and writes, from the main
process, <run dir>/adapter/ and <run dir>/train_result.json. A failure writes
<run dir>/error.json ({"kind": "oom" | "diverged" | "load_model" | ...: core/failures.py Kind}) and exits non-zero.

Read top to bottom, `main` is the run: data, model + LoRA, Trainer, validation loss, save.
A benchmark changes a run through `Seams` (its own base model, more callbacks, a wrapper
around the collator, no validation pass), not by patching this file. Faults for the tests
come from core/faults.py (BBO_FAULT).
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo root: accelerate runs this as a script

from blackbox import tracking  # noqa: E402
from core import faults  # noqa: E402
from core import pruning  # noqa: E402
from core.data import collator_for, load_tokenized  # noqa: E402
from core.failures import Kind  # noqa: E402
from core.model import (cast_lora, half_dtype, load_base, load_tokenizer, resolve_device, run_dtype,  # noqa: E402
                        save_adapter, without_bitsandbytes)
from core.procs import exit_with_blackbox  # noqa: E402
from core.progress import PROGRESS_FILE, progress_record  # noqa: E402
from core.store import write_json  # noqa: E402
from eval.loss import validation_loss  # noqa: E402


@dataclass
class Seams:
    """What a benchmark may change in a run (benchmarks/throughput.py); the blackbox uses none."""

    base_model: Callable | None = None  # (spec, dtype) -> model, instead of loading spec["model"]["path"]
    wrap_collator: Callable | None = None  # collator -> the collator training uses (e.g. one that counts tokens)
    callbacks: list = field(default_factory=list)  # more transformers TrainerCallbacks
    validate: bool = True  # False: no validation pass after training (val_loss is NaN)


class Diverged(RuntimeError):
    """The training loss became NaN, infinite or absurdly large: stop, don't waste the budget."""


# ---------------------------------------------------------------- the parts of a run

def device_and_precision(spec: dict) -> tuple[str, torch.dtype, str]:
    """(device, weights' dtype, compute precision): on a GPU bf16 where it has it, else fp16 (with the
    Trainer's loss scaler); fp32 on CPU, unless the spec says; torch decides."""
    device = resolve_device()
    precision = spec["train"]["precision"]
    if precision == "auto":
        precision = ("bf16" if half_dtype() == torch.bfloat16 else "fp16") if device == "cuda" else "fp32"
    return device, run_dtype(spec), precision


def model_with_lora(spec: dict, dtype: torch.dtype, seams: Seams):
    """The base in its training dtype from the start (never fp32 weights on GPU), then LoRA on it."""
    from peft import LoraConfig, get_peft_model
    from transformers import set_seed

    train_cfg, quantized = spec["train"], bool(spec["model"].get("quantization"))
    if seams.base_model:
        model = seams.base_model(spec, dtype)
    else:
        model = load_base(spec["model"], dtype, gradient_checkpointing=train_cfg["gradient_checkpointing"])
    if train_cfg["gradient_checkpointing"] and not quantized:  # a 4-bit base had it set by load_base
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    hp, lora = spec["hp"], spec["lora"]
    set_seed(train_cfg["seed"])  # LoRA's A matrices are random: seed right before creating them
    config = LoraConfig(r=int(hp["rank"]), lora_alpha=hp["alpha"], lora_dropout=hp["dropout"],
                        target_modules=lora["target_modules"], bias=lora["bias"],
                        use_rslora=lora["use_rslora"], task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def training_arguments(spec: dict, run_dir: Path, device: str, precision: str):
    from transformers import TrainingArguments

    train_cfg = spec["train"]
    return TrainingArguments(
        output_dir=str(run_dir / "trainer"), seed=train_cfg["seed"], data_seed=train_cfg["seed"],
        num_train_epochs=train_cfg["epochs"], max_steps=train_cfg["max_steps"],
        per_device_train_batch_size=train_cfg["per_device_batch_size"],
        gradient_accumulation_steps=train_cfg["grad_accum"],
        learning_rate=spec["hp"]["lr"], lr_scheduler_type=train_cfg["lr_scheduler"],
        # transformers 5 has no warmup_ratio: a warmup_steps below 1 is that fraction of the total
        # steps, and train.warmup_ratio is checked to be below 1
        warmup_steps=train_cfg["warmup_ratio"], weight_decay=train_cfg["weight_decay"],
        max_grad_norm=train_cfg["max_grad_norm"],
        bf16=precision == "bf16", fp16=precision == "fp16", use_cpu=device == "cpu",
        logging_steps=train_cfg["logging_steps"], logging_nan_inf_filter=False,
        save_strategy="no", disable_tqdm=True, remove_unused_columns=False,
        dataloader_num_workers=0, ddp_find_unused_parameters=False,
        ddp_timeout=int(spec.get("launch", {}).get("ddp_timeout_minutes", 10) * 60),
        # trackers (blackbox/tracking.py): the tracked run is named by the run id, grouped by experiment
        report_to=list(train_cfg.get("report_to") or []), run_name=spec["run_id"],
        project=spec.get("experiment", {}).get("name", "huggingface"),
    )


def stop_on_divergence(limit: float):
    """A callback: a logged train loss above `limit` (train.diverge_loss), NaN or infinite stops the run."""
    from transformers import TrainerCallback

    class StopOnDivergence(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            loss = (logs or {}).get("loss")
            if loss is not None and (not math.isfinite(loss) or loss > limit):
                raise Diverged(f"train loss {loss} at step {state.global_step}")

    return StopOnDivergence()


def write_progress(run_dir: Path, every_seconds: float = 2.0):
    """A callback: <run dir>/progress.json (step, max_steps, loss, elapsed, ETA) for whoever waits for this
    run (the blackbox's progress bar, `bbo status`): at each logged loss, every `every_seconds`, at the end."""
    from transformers import TrainerCallback

    class WriteProgress(TrainerCallback):
        def __init__(self):
            self.t0 = self.last = time.time()
            self.loss = None

        def on_train_begin(self, args, state, control, **kwargs):
            self.t0 = time.time()
            self.write(state)

        def on_log(self, args, state, control, logs=None, **kwargs):  # a new loss: shown at once
            if (logs or {}).get("loss") is not None:
                self.loss = logs["loss"]
                self.write(state)

        def on_step_end(self, args, state, control, **kwargs):
            if time.time() - self.last >= every_seconds:
                self.write(state)

        def on_train_end(self, args, state, control, **kwargs):
            self.write(state)

        def write(self, state):
            if state.is_world_process_zero:
                self.last = time.time()
                write_json(run_dir / PROGRESS_FILE,
                           progress_record(state.global_step, state.max_steps, self.loss, self.last - self.t0))

    return WriteProgress()


def checkpoint_curve(spec: dict, run_dir: Path, val_set, collator, fault: dict | None = None):
    """A callback: validation loss at the checkpoints of train.eval_every, written to curve.json as it
    goes (a crashed run keeps its curve), and the stop of a run the pruning rule calls hopeless."""
    from transformers import TrainerCallback

    train_cfg = spec["train"]
    main_process = int(os.environ.get("RANK", "0")) == 0

    class CheckpointCurve(TrainerCallback):
        def __init__(self):
            self.points, self.steps, self.pruned, self.t0 = [], {}, None, time.time()

        def on_train_begin(self, args, state, control, **kwargs):
            self.steps = pruning.checkpoint_steps(train_cfg["eval_every"], state.max_steps)

        def on_step_end(self, args, state, control, model=None, **kwargs):
            fraction = self.steps.get(state.global_step)
            if fraction is None:
                return
            val = validation_loss(model, val_set, collator, train_cfg["per_device_batch_size"])  # every rank
            self.add(fraction, state, val["val_loss"])
            faults.kill_search_at(fault, "checkpoint")
            reason = pruning.prune_reason(fraction, val["val_loss"], spec.get("pruning"))
            if reason:  # every rank sees the same all-reduced loss, so all stop at this step
                self.pruned = dict(val, fraction=fraction, step=state.global_step, reason=reason)
                control.should_training_stop = True

        def add(self, fraction, state, val_loss):
            losses = [e["loss"] for e in state.log_history if "loss" in e]
            self.points.append({"fraction": fraction, "step": state.global_step, "val_loss": val_loss,
                                "train_loss": losses[-1] if losses else None, "seconds": time.time() - self.t0})
            if main_process:
                write_json(run_dir / pruning.CURVE_FILE, {"eval_every": train_cfg["eval_every"],
                                                          "points": self.points})

    return CheckpointCurve()


def write_error(run_dir: Path, kind: Kind, message: str) -> None:
    """Every process that fails says why (error.json from rank 0, error.rank<r>.json from the others):
    an OOM on rank 3 is reported as oom, not as the crash the other ranks see after it."""
    rank = int(os.environ.get("RANK", "0"))
    name = "error.json" if rank == 0 else f"error.rank{rank}.json"
    write_json(run_dir / name, {"kind": Kind(kind).value, "message": message[:2000], "rank": rank, "time": time.time()})


# ---------------------------------------------------------------- main

def main(run_dir: Path, seams: Seams | None = None) -> int:
    seams = seams or Seams()
    spec = json.loads((run_dir / "spec.json").read_text())
    without_bitsandbytes(spec["model"]["quantization"])  # before transformers and peft are imported
    from transformers import Trainer, set_seed

    fault = faults.parse_fault(run_dir)
    exit_with_blackbox()  # the blackbox died (even by SIGKILL): no orphan keeps a GPU busy
    device, dtype, precision = device_and_precision(spec)
    train_cfg, model_spec = spec["train"], spec["model"]
    set_seed(train_cfg["seed"])

    # Every phase names the error kind a plain exception in it gets (the blackbox reports it and
    # `bbo run` names the fix): a model that cannot be loaded is not a bad point.
    phase = Kind.LOAD_TOKENIZER
    try:
        t_start = time.time()
        tokenizer = load_tokenizer(model_spec["path"], model_spec["revision"], model_spec["trust_remote_code"])
        phase = Kind.LOAD_DATA  # the tokenized split is built once per experiment and cached
        faults.kill_search_at(fault, "load_data")
        train_set, val_set = load_tokenized(spec["data"], tokenizer, model_spec["path"], spec["cache_dir"])
        collator = collator_for(tokenizer, spec["data"], model_spec["attn_implementation"])
        collator = seams.wrap_collator(collator) if seams.wrap_collator else collator
        t_data = time.time()

        phase = Kind.LOAD_MODEL
        faults.at_phase(fault, phase)
        model = model_with_lora(spec, dtype, seams)
        t_model = time.time()

        phase = Kind.ERROR
        curve = checkpoint_curve(spec, run_dir, val_set, collator, fault)
        if train_cfg.get("report_to"):  # where the trackers write and how they name the run: set before they set up
            experiment = spec["experiment"]
            os.environ.update(tracking.environment(experiment["name"], Path(experiment["dir"]), spec["run_id"]))
        trainer = Trainer(model=model, args=training_arguments(spec, run_dir, device, precision),
                          train_dataset=train_set, data_collator=collator,
                          callbacks=[stop_on_divergence(train_cfg["diverge_loss"]), faults.step_callback(fault),
                                     curve, write_progress(run_dir)] + list(seams.callbacks))
        trackers = tracking.deferred(trainer, run_dir)  # they end their run after the validation loss is logged
        result = trainer.train()
        t_train = time.time()

        phase = Kind.EVAL_LOSS  # validation loss on the held-out split (all processes take part)
        faults.at_phase(fault, phase)
        if curve.pruned:  # its last checkpoint is its measure; no adapter is kept
            val = {"val_loss": curve.pruned["val_loss"], "val_tokens": curve.pruned["val_tokens"]}
        elif seams.validate:
            # the adapter in the run's dtype (peft trained it in fp32) before it is measured: the validation
            # loss is then the one of the adapter that is saved, scored on MMLU and exported
            cast_lora(trainer.model, dtype)
            val = validation_loss(trainer.model, val_set, collator, train_cfg["per_device_batch_size"])
            curve.add(1.0, trainer.state, val["val_loss"])
        else:
            val = {"val_loss": math.nan, "val_tokens": 0}
        trackers.finish({"val_loss": val["val_loss"]}, spec["hp"])
    except Diverged as e:
        write_error(run_dir, Kind.DIVERGED, str(e))
        return 3
    except torch.OutOfMemoryError as e:
        write_error(run_dir, Kind.OOM, str(e))
        return 4
    except Exception as e:  # noqa: BLE001 - recorded with its type; the blackbox reports a failed point
        write_error(run_dir, phase, f"{type(e).__name__}: {e}")
        raise
    t_eval = time.time()

    if int(os.environ.get("RANK", "0")) != 0:  # save from the main process only, metrics last
        return 0
    if not curve.pruned:
        save_adapter(trainer.model, run_dir / "adapter", dtype)  # in the run's dtype, not peft's fp32
        faults.kill_search_at(fault, "adapter_save")
    tokens = sum(len(ids) for ids in train_set["input_ids"]) * (result.metrics.get("epoch", 1.0) or 1.0)
    metrics = {
        "train_loss": result.training_loss,
        "val_loss": val["val_loss"], "val_tokens": val["val_tokens"],
        "train_seconds": t_train - t_model, "eval_seconds": t_eval - t_train,
        "data_seconds": t_data - t_start, "model_load_seconds": t_model - t_data,
        "steps": result.global_step, "train_examples": len(train_set), "val_examples": len(val_set),
        "tokens_per_second": tokens / max(t_train - t_model, 1e-9),
        "device": device, "dtype": str(dtype).replace("torch.", ""), "precision": precision,
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),
        "log_history": trainer.state.log_history,
        "trained_fraction": result.global_step / max(trainer.state.max_steps, 1),
    }
    if not curve.pruned:  # what a constraint can cap (core/constraints.py): the adapter's disk, the GPU's memory
        metrics["adapter_mb"] = sum(f.stat().st_size for f in (run_dir / "adapter").rglob("*") if f.is_file()) / 2 ** 20
    if device.startswith("cuda"):
        metrics["peak_memory_gb"] = torch.cuda.max_memory_allocated() / 2 ** 30
    if curve.pruned:
        metrics.update(pruned_at=curve.pruned["fraction"], pruned_reason=curve.pruned["reason"])
    if faults.garbles_metrics(fault):
        (run_dir / "train_result.json").write_text("{not json")
    else:
        write_json(run_dir / "train_result.json", metrics)
    return 0


def end_process(code: int) -> None:
    """Exit. A failed process of a distributed run exits at once, without tearing its process group down:
    that teardown can block (NCCL), and torchrun stops the other processes only once this one is gone,
    so they would wait in their next collective until the ddp timeout instead of a moment."""
    sys.stdout.flush()
    sys.stderr.flush()
    if code != 0 and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    try:
        exit_code = main(Path(sys.argv[1]))
    except Exception:  # noqa: BLE001 - already recorded in error.json by main; the traceback goes to the log
        traceback.print_exc()
        exit_code = 1
    end_process(exit_code)
