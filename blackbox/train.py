"""Train one LoRA adapter, then measure its validation loss. The blackbox runs it as

    accelerate launch [--multi_gpu --num_processes N] blackbox/train.py experiments/<name>/runs/<run id>

It reads everything from <run dir>/spec.json (written by the blackbox: the resolved
experiment settings and the point's hyperparameters) and writes, from the main
process, <run dir>/adapter/ and <run dir>/train_result.json. A failure writes
<run dir>/error.json ({"kind": "oom" | "diverged" | "error" | ...}) and exits non-zero.

Fault injection for tests (docs/failures.md): BBO_FAULT=<kind>@<step>[,match=<text in run id>][,rank=<r>]
with kind oom | nan | error | hang | crash; or BBO_FAULT=<kind> for eval_error | garbage_metrics | load_model.
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
from blackbox.model import load_model, load_tokenizer, resolve_dtype  # noqa: E402
from eval.loss import validation_loss  # noqa: E402


class Diverged(RuntimeError):
    """The training loss became NaN, infinite or absurdly large: stop, don't waste the budget."""


# ---------------------------------------------------------------- setup helpers

def _read_spec(run_dir: Path) -> dict:
    return json.loads((run_dir / "spec.json").read_text())


def _device_and_dtype(spec: dict) -> tuple[str, torch.dtype, str]:
    """bf16 weights and bf16 compute on GPU; fp32 on CPU (bf16 matmuls are slow there); torch decides."""
    on_gpu = torch.cuda.is_available()
    dtype = resolve_dtype("bfloat16" if spec["model"].get("quantization") else spec["model"]["dtype"])
    precision = spec["train"]["precision"]
    if precision == "auto":
        precision = "bf16" if on_gpu else "fp32"
    return ("cuda" if on_gpu else "cpu"), dtype, precision


def _setup_tokenizer(spec: dict):
    model = spec["model"]
    return load_tokenizer(model["path"], model["revision"], model["trust_remote_code"])


def _setup_model(spec: dict, dtype: torch.dtype):
    model = spec["model"]
    device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if torch.cuda.is_available() else "cpu"
    loaded = load_model(model["path"], dtype=dtype, revision=model["revision"],
                        attn_implementation=model["attn_implementation"],
                        trust_remote_code=model["trust_remote_code"], quantization=model.get("quantization"),
                        device=device)
    if model.get("quantization"):  # QLoRA: norms in fp32, inputs that need grads, as peft recommends
        from peft import prepare_model_for_kbit_training

        loaded = prepare_model_for_kbit_training(
            loaded, use_gradient_checkpointing=spec["train"]["gradient_checkpointing"],
            gradient_checkpointing_kwargs={"use_reentrant": False})
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
    head, _, options = text.partition(",")
    kind, _, step = head.partition("@")
    for option in filter(None, options.split(",")):
        name, _, value = option.partition("=")
        if name == "match" and value not in run_dir.name:
            return None
        if name == "rank" and value != os.environ.get("RANK", "0"):
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


def _write_error(run_dir: Path, kind: str, message: str) -> None:
    """Every process that fails says why (error.json from rank 0, error.rank<r>.json from the others):
    an OOM on rank 3 is reported as oom, not as the crash the other ranks see after it."""
    from bbo.store import write_json

    rank = int(os.environ.get("RANK", "0"))
    name = "error.json" if rank == 0 else f"error.rank{rank}.json"
    write_json(run_dir / name, {"kind": kind, "message": message[:2000], "rank": rank})


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

    # Every phase names the error kind a plain exception in it gets (the blackbox reports it and
    # `bbo run` names the fix): a model that cannot be loaded is not a bad point.
    phase = "load_tokenizer"
    try:
        # Phase 1: data. The tokenizer comes first; the tokenized split is cached per experiment.
        t_start = time.time()
        tokenizer = _setup_tokenizer(spec)
        phase = "load_data"
        train_set, val_set = load_tokenized(spec["data"], tokenizer, spec["model"]["path"], spec["cache_dir"])
        collator = _collator(tokenizer, spec)
        t_data = time.time()

        # Phase 2: model, in its training dtype from the start (never fp32 weights on GPU), then LoRA.
        phase = "load_model"
        if fault and fault["kind"] == "load_model":
            raise OSError("injected fault: cannot load the model")
        model = _setup_model(spec, dtype)
        if train_cfg["gradient_checkpointing"] and not spec["model"].get("quantization"):  # 4-bit: done above
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
        model = _setup_lora(model, spec)
        t_model = time.time()

        # Phase 3: train.
        phase = "error"
        args = TrainingArguments(
            output_dir=str(run_dir / "trainer"), seed=train_cfg["seed"], data_seed=train_cfg["seed"],
            num_train_epochs=train_cfg["epochs"], max_steps=train_cfg["max_steps"],
            per_device_train_batch_size=train_cfg["per_device_batch_size"],
            gradient_accumulation_steps=train_cfg["grad_accum"],
            learning_rate=spec["hp"]["lr"], lr_scheduler_type=train_cfg["lr_scheduler"],
            # a float below 1 is a ratio of the total steps in the pinned transformers (warmup_ratio is gone)
            warmup_steps=train_cfg["warmup_ratio"], weight_decay=train_cfg["weight_decay"],
            max_grad_norm=train_cfg["max_grad_norm"],
            bf16=precision == "bf16", fp16=precision == "fp16", use_cpu=device == "cpu",
            logging_steps=train_cfg["logging_steps"], logging_nan_inf_filter=False,
            save_strategy="no", report_to=[], disable_tqdm=True, remove_unused_columns=False,
            dataloader_num_workers=0, ddp_find_unused_parameters=False,
        )
        trainer = Trainer(model=model, args=args, train_dataset=train_set, data_collator=collator,
                          callbacks=_callbacks(spec, fault))
        result = trainer.train()
        t_train = time.time()
        phase = "eval"
        if fault and fault["kind"] == "eval_error":
            raise RuntimeError("injected fault: evaluation error")
        # Phase 4: validation loss on the held-out split (all processes take part).
        val = validation_loss(trainer.model, val_set, collator, train_cfg["per_device_batch_size"])
    except Diverged as e:
        _write_error(run_dir, "diverged", str(e))
        return 3
    except torch.OutOfMemoryError as e:
        _write_error(run_dir, "oom", str(e))
        return 4
    except Exception as e:  # noqa: BLE001 - recorded with its type; the blackbox reports a failed point
        _write_error(run_dir, phase, f"{type(e).__name__}: {e}")
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
