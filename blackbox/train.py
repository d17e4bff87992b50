"""Train one LoRA adapter, then measure its validation loss. The blackbox runs it as

    accelerate launch [--multi_gpu --num_processes N] blackbox/train.py experiments/<name>/runs/<run id>

It reads everything from <run dir>/spec.json (written by the blackbox: the resolved
experiment settings and the point's hyperparameters) and writes, from the main
process, <run dir>/adapter/ and <run dir>/train_result.json. A failure writes
<run dir>/error.json ({"kind": "oom" | "diverged" | "error" | ...}) and exits non-zero.

Fault injection for tests (docs/failures.md): BBO_FAULT=<kind>@<step>[,match=<text in run id>]
with kind oom | nan | error | hang | crash; or BBO_FAULT=<kind> for eval_error | garbage_metrics.
"""
from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo root, for `blackbox` and `eval`

from bbo.procs import on_death_of  # noqa: E402
from blackbox.data import load_tokenized  # noqa: E402
from eval.loss import validation_loss  # noqa: E402


class Diverged(RuntimeError):
    """The training loss became NaN, infinite or absurdly large: stop, don't waste the budget."""


# ---------------------------------------------------------------- setup helpers

def _read_spec(run_dir: Path) -> dict:
    return json.loads((run_dir / "spec.json").read_text())


def _device_and_dtype(spec: dict) -> tuple[str, torch.dtype, str]:
    """bf16 weights and bf16 compute on GPU; fp32 on CPU (bf16 matmuls are slow there)."""
    on_gpu = torch.cuda.is_available()
    dtype_name = spec["model"]["dtype"]
    if dtype_name == "auto":
        dtype_name = "bfloat16" if on_gpu else "float32"
    precision = spec["train"]["precision"]
    if precision == "auto":
        precision = "bf16" if on_gpu else "fp32"
    return ("cuda" if on_gpu else "cpu"), getattr(torch, dtype_name), precision


def _setup_tokenizer(spec: dict):
    from transformers import AutoTokenizer

    model = spec["model"]
    tokenizer = AutoTokenizer.from_pretrained(model["path"], revision=model["revision"],
                                              trust_remote_code=model["trust_remote_code"])
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    return tokenizer


def _setup_model(spec: dict, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    model = spec["model"]
    loaded = AutoModelForCausalLM.from_pretrained(
        model["path"], revision=model["revision"], dtype=dtype,
        attn_implementation=model["attn_implementation"], trust_remote_code=model["trust_remote_code"])
    # No KV cache: with one, transformers skips its packed-sequence detection and packed examples
    # would attend to each other (measured: a different loss than the same examples padded).
    loaded.config.use_cache = False
    return loaded


def _setup_lora(model, spec: dict):
    from peft import LoraConfig, get_peft_model
    from transformers import set_seed

    hp, lora = spec["hp"], spec["lora"]
    set_seed(spec["train"]["seed"])  # LoRA's A matrices are random: seed right before creating them
    config = LoraConfig(r=int(hp["rank"]), lora_alpha=hp["alpha"], lora_dropout=hp["dropout"],
                        target_modules=lora["target_modules"], bias=lora["bias"],
                        use_rslora=lora["use_rslora"], task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def _collator(tokenizer, spec: dict):
    """Padding-free when packing: examples are concatenated with position ids restarting per example."""
    from transformers import DataCollatorForSeq2Seq, DataCollatorWithFlattening

    if spec["data"]["packing"]:
        return DataCollatorWithFlattening(return_position_ids=True, separator_id=-100)
    pad_to = spec["data"]["max_length"] if spec.get("pad_to_max_length") else None
    return DataCollatorForSeq2Seq(tokenizer, padding="max_length" if pad_to else True, max_length=pad_to,
                                  label_pad_token_id=-100)


def load_for_eval(run_dir: Path):
    """Base model + the run's adapter + the validation split, to recompute a stored number."""
    from peft import PeftModel

    spec = _read_spec(run_dir)
    device, dtype, _ = _device_and_dtype(spec)
    tokenizer = _setup_tokenizer(spec)
    _, val_set = load_tokenized(spec["data"], tokenizer, spec["model"]["path"], spec["cache_dir"])
    model = PeftModel.from_pretrained(_setup_model(spec, dtype), str(run_dir / "adapter")).to(device)
    return model, val_set, _collator(tokenizer, spec), spec


# ---------------------------------------------------------------- safety nets

def _parse_fault(run_dir: Path) -> dict | None:
    text = os.environ.get("BBO_FAULT", "").strip()
    if not text:
        return None
    head, _, option = text.partition(",")
    kind, _, step = head.partition("@")
    if option.startswith("match=") and option[len("match="):] not in run_dir.name:
        return None
    return {"kind": kind, "step": int(step) if step else None}


def _callbacks(spec: dict, fault: dict | None):
    from transformers import TrainerCallback

    limit = spec["train"]["diverge_loss"]

    class StopOnDivergence(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            loss = (logs or {}).get("loss")
            if loss is not None and (not math.isfinite(loss) or loss > limit):
                raise Diverged(f"train loss {loss} at step {state.global_step}")

    class InjectFault(TrainerCallback):
        """Takes the same code path as the real failure (tests only; see docs/failures.md)."""

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if fault is None or fault["step"] is None or state.global_step != fault["step"]:
                return
            kind = fault["kind"]
            if kind == "oom":
                raise torch.OutOfMemoryError("injected fault: CUDA out of memory. Tried to allocate 2.00 GiB")
            if kind == "nan":
                with torch.no_grad():
                    for name, p in model.named_parameters():
                        if p.requires_grad:
                            p.fill_(float("nan"))
            elif kind == "error":
                raise RuntimeError("injected fault: training error")
            elif kind == "hang":
                time.sleep(10_000)
            elif kind == "crash":
                os.kill(os.getpid(), signal.SIGKILL)

    return [StopOnDivergence(), InjectFault()]


def _write_error(run_dir: Path, kind: str, message: str, is_main: bool) -> None:
    if is_main:
        from bbo.store import write_json
        write_json(run_dir / "error.json", {"kind": kind, "message": message[:2000]})


# ---------------------------------------------------------------- main

def main(run_dir: Path) -> int:
    from transformers import Trainer, TrainingArguments, set_seed

    spec = _read_spec(run_dir)
    fault = _parse_fault(run_dir)
    if os.environ.get("BBO_PARENT_PID"):  # the blackbox died (even by SIGKILL): no orphan keeps a GPU busy
        on_death_of(int(os.environ["BBO_PARENT_PID"]), lambda: os._exit(1))
    is_main = int(os.environ.get("RANK", "0")) == 0
    device, dtype, precision = _device_and_dtype(spec)
    train_cfg = spec["train"]
    set_seed(train_cfg["seed"])

    # Phase 1: data. The tokenizer comes first; the tokenized split is cached per experiment.
    t_start = time.time()
    tokenizer = _setup_tokenizer(spec)
    train_set, val_set = load_tokenized(spec["data"], tokenizer, spec["model"]["path"], spec["cache_dir"])
    collator = _collator(tokenizer, spec)
    t_data = time.time()

    # Phase 2: model, in its training dtype from the start (never fp32 weights on GPU), then LoRA.
    model = _setup_model(spec, dtype)
    if train_cfg["gradient_checkpointing"]:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model = _setup_lora(model, spec)
    t_model = time.time()

    # Phase 3: train.
    args = TrainingArguments(
        output_dir=str(run_dir / "trainer"), seed=train_cfg["seed"], data_seed=train_cfg["seed"],
        num_train_epochs=train_cfg["epochs"], max_steps=train_cfg["max_steps"],
        per_device_train_batch_size=train_cfg["per_device_batch_size"],
        gradient_accumulation_steps=train_cfg["grad_accum"],
        learning_rate=spec["hp"]["lr"], lr_scheduler_type=train_cfg["lr_scheduler"],
        warmup_steps=train_cfg["warmup_ratio"], weight_decay=train_cfg["weight_decay"],
        max_grad_norm=train_cfg["max_grad_norm"],
        bf16=precision == "bf16", fp16=precision == "fp16", use_cpu=device == "cpu",
        logging_steps=train_cfg["logging_steps"], logging_nan_inf_filter=False,
        save_strategy="no", report_to=[], disable_tqdm=True, remove_unused_columns=False,
        dataloader_num_workers=0, ddp_find_unused_parameters=False,
    )
    trainer = Trainer(model=model, args=args, train_dataset=train_set, data_collator=collator,
                      callbacks=_callbacks(spec, fault))
    phase = "error"  # the error kind a plain exception gets: training, then evaluation
    try:
        result = trainer.train()
        t_train = time.time()
        phase = "eval"
        if fault and fault["kind"] == "eval_error":
            raise RuntimeError("injected fault: evaluation error")
        # Phase 4: validation loss on the held-out split (all processes take part).
        val = validation_loss(trainer.model, val_set, collator, train_cfg["per_device_batch_size"])
    except Diverged as e:
        _write_error(run_dir, "diverged", str(e), is_main)
        return 3
    except torch.OutOfMemoryError as e:
        _write_error(run_dir, "oom", str(e), is_main)
        return 4
    except Exception as e:  # noqa: BLE001 - recorded with its type; the blackbox reports a failed point
        _write_error(run_dir, phase, f"{type(e).__name__}: {e}", is_main)
        raise
    t_eval = time.time()

    # Phase 5: save (main process only), metrics last.
    if is_main:
        trainer.model.save_pretrained(str(run_dir / "adapter"))
        from bbo.store import write_json
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
        }
        if fault and fault["kind"] == "garbage_metrics":
            (run_dir / "train_result.json").write_text("{not json")
        else:
            write_json(run_dir / "train_result.json", metrics)
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
