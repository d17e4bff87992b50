"""`bbo export`: the adapter a search found, out of its run folder, ready to load elsewhere.

    python -m bbo export experiments/demo --best out/demo-best            # adapter folder (peft)
    python -m bbo export experiments/demo --run <run id> out/r8 --merge   # full model folder (transformers)

Without --merge, OUT is an adapter folder: the run's adapter files (in the run's dtype), the
tokenizer training used, and a model card README.md; `PeftModel.from_pretrained(base, OUT)` loads
it. With --merge, OUT is a whole model: the base in the run's dtype with the adapter merged in
(merge_and_unload), saved as safetensors with the tokenizer and the card;
`AutoModelForCausalLM.from_pretrained(OUT)` loads it. OUT is written beside itself first and
renamed at the end: a failed export leaves no half folder, and --force replaces OUT only then.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pandas as pd

from bbo.results import load_runs
from bbo.summary import best as best_row
from bbo.summary import describe_point, ranked
from core.adapters import ADAPTER_DIR, REMOVED_FILE
from core.config import ExperimentConfig, load_config
from core.objective import objective_label
from core.data import TEMPLATES
from core.store import RunStore, State, read_json

ADAPTER_README = "README.md"  # peft writes an empty model card template there: ours replaces it


class ExportError(ValueError):
    """Nothing can be exported as asked; the message says why (one line)."""


def export(experiment: str | Path, out: str | Path, *, run_id: str | None = None, best: bool = False,
           merge: bool = False, force: bool = False) -> dict:
    """Write the adapter (or the merged model) of one ok run to `out`; returns what was exported."""
    config = load_config(experiment)
    runs = load_runs(config.dir)
    rid = _chosen_run(config, runs, run_id, best)
    store = RunStore(config.dir)
    # The run's lock while its files are read: train.keep_adapters cannot delete the adapter mid-copy.
    with store.try_lock(rid) as free:
        if not free:
            raise ExportError(f"run {rid} is in use by another process (a blackbox training it again or "
                              "pruning adapters): try again when it is done")
        return _export(config, runs, store, rid, Path(out).absolute(), merge, force)


def _export(config: ExperimentConfig, runs: pd.DataFrame, store: RunStore, rid: str, out: Path, merge: bool,
            force: bool) -> dict:
    run_dir = store.run_dir(rid)
    adapter = _adapter_of(store, rid)
    _check_out(out, run_dir, force)  # out is absolute: the card's load command works from any folder

    spec = json.loads((run_dir / "spec.json").read_text())
    metrics = store.metrics(rid) or {}
    tmp = out.parent / f".{out.name}.export-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    try:
        dtype = _run_dtype(spec, metrics)
        if merge:
            _write_merged(spec, adapter, dtype, tmp)
        else:
            _write_adapter(adapter, dtype, tmp)
        _write_tokenizer(spec, tmp)
        (tmp / ADAPTER_README).write_text(model_card(config, runs, rid, spec, metrics, merge, out, dtype))
        if out.is_dir() and not out.is_symlink():
            shutil.rmtree(out)
        elif out.exists() or out.is_symlink():
            out.unlink()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"run_id": rid, "out": out, "merged": merge, "objective": metrics.get("objective"),
            "dtype": str(dtype).replace("torch.", "")}


# ---------------------------------------------------------------- which run, and may it be exported

def _chosen_run(config: ExperimentConfig, runs: pd.DataFrame, run_id: str | None, best: bool) -> str:
    if best == (run_id is not None):
        raise ExportError("export: give either --best or --run <run id>")
    if best:
        row = best_row(runs)
        if row is None:
            raise ExportError(f"no ok run in {config.dir / 'runs'} to export (python -m bbo results {config.dir})")
        return row["run_id"]
    if run_id not in RunStore(config.dir).run_ids():
        raise ExportError(f"unknown run id {run_id!r} in {config.dir / 'runs'} "
                          f"(the run ids: python -m bbo results {config.dir})")
    return run_id


def _adapter_of(store: RunStore, rid: str) -> Path:
    """The run's adapter folder, or the one-line reason there is none to export."""
    run_dir = store.run_dir(rid)
    status = store.finished(rid) or store.status(rid) or {}
    state = status.get("state") or State.INCOMPLETE.value
    if state != State.OK:
        why = f" ({status['reason']})" if status.get("reason") else ""
        raise ExportError(f"run {rid} is {state}{why}: only an ok run has an adapter to export")
    adapter = run_dir / ADAPTER_DIR
    if adapter.is_dir():
        return adapter
    removed = read_json(run_dir / REMOVED_FILE)
    if isinstance(removed, dict):
        raise ExportError(f"the adapter of run {rid} was removed at {removed.get('time_utc')} "
                          f"({removed.get('reason')}): nothing to export")
    raise ExportError(f"run {rid} has no {ADAPTER_DIR}/ folder: nothing to export")


def _check_out(out: Path, run_dir: Path, force: bool) -> None:
    if out.exists() or out.is_symlink():
        if not force:
            raise ExportError(f"{out} exists: choose another folder, or --force to replace it")
    target, run = out.resolve(), run_dir.resolve()
    if target == run or run in target.parents or target in run.parents:
        raise ExportError(f"{out}: must be outside the run folder {run_dir} (it would be overwritten)")


def _run_dtype(spec: dict, metrics: dict):
    """The dtype the run trained in, as it recorded it (an export on a CPU-only machine of a run trained
    in bf16 on a GPU stays bf16; model.dtype auto would resolve to float32 here)."""
    import torch

    from core.model import run_dtype

    name = metrics.get("dtype")
    return getattr(torch, name) if isinstance(name, str) and hasattr(torch, name) else run_dtype(spec)


# ---------------------------------------------------------------- the files

def _write_adapter(adapter: Path, dtype, out: Path) -> None:
    """The run's adapter files, in the run's dtype (cast_adapter: older runs saved peft's fp32)."""
    from core.model import cast_adapter

    out.mkdir()
    for path in sorted(adapter.iterdir()):
        if path.is_file() and path.name != ADAPTER_README:
            shutil.copy2(path, out / path.name)
    cast_adapter(out, dtype)


def _write_merged(spec: dict, adapter: Path, dtype, out: Path) -> None:
    """The base in the run's dtype (never 4-bit: a merged model is a plain one) + the adapter, merged."""
    from peft import PeftModel
    from transformers import AutoConfig

    from core.model import load_model

    model_spec = spec["model"]
    base = load_model(model_spec["path"], dtype=dtype, revision=model_spec["revision"],
                      attn_implementation=model_spec["attn_implementation"],
                      trust_remote_code=model_spec["trust_remote_code"])
    merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    # load_model turns the KV cache off for packed training; a model for generation wants it as its base had it
    merged.config.use_cache = getattr(AutoConfig.from_pretrained(
        model_spec["path"], revision=model_spec["revision"], trust_remote_code=model_spec["trust_remote_code"]),
        "use_cache", True)
    merged.save_pretrained(str(out))  # safetensors (transformers 5 writes nothing else)


def _write_tokenizer(spec: dict, out: Path) -> None:
    from core.model import load_tokenizer

    model_spec = spec["model"]
    load_tokenizer(model_spec["path"], model_spec["revision"], model_spec["trust_remote_code"]).save_pretrained(
        str(out))


# ---------------------------------------------------------------- the model card

def model_card(config: ExperimentConfig, runs: pd.DataFrame, rid: str, spec: dict, metrics: dict, merged: bool,
               out: Path, dtype) -> str:
    """README.md of the export: what it is, how it was found, its numbers and settings, how to load it."""
    model, data, train, lora, hp = spec["model"], spec["data"], spec["train"], spec["lora"], spec["hp"]
    params = read_json(config.dir / "runs" / rid / "params.json") or {}
    provenance = read_json(config.dir / "runs" / rid / "provenance.json") or {}
    dtype_name = str(dtype).replace("torch.", "")
    kind = "merged model (base + LoRA adapter, merge_and_unload)" if merged else "LoRA adapter"
    lines = [
        "---",
        f"base_model: {model['path']}",
        f"library_name: {'transformers' if merged else 'peft'}",
        "tags: [lora, nomad, hyperparameter-search]",
        "---",
        "",
        f"# {config.name}: {kind} of run {rid}",
        "",
        f"Exported by `python -m bbo export` from `{config.dir}`.",
        "",
        *([config.description, ""] if config.description else []),
        "## How it was found",
        "",
        *_found_lines(config, runs, rid, params, provenance),
        "",
        "## Objective and metrics",
        "",
        f"- {config.objective.sense}",
        *[f"- {objective_label(config.objective.metric) if name == 'objective' else name}: "
          f"{_number(metrics[name])}" for name in ("objective", "val_loss", "train_loss", "mmlu", "mmlu_full", "val_tokens", "steps", "train_seconds")
          if isinstance(metrics.get(name), (int, float))],
        "",
        "## Hyperparameters",
        "",
        f"- searched: rank {hp['rank']}, alpha {hp['alpha']:g}, dropout {hp['dropout']:g}, lr {hp['lr']:.6g}",
        f"- LoRA: target_modules {', '.join(lora['target_modules'])}; bias {lora['bias']}; "
        f"use_rslora {lora['use_rslora']}",
        "- training: " + ", ".join(f"{k} {train[k]}" for k in (
            "epochs", "max_steps", "per_device_batch_size", "grad_accum", "lr_scheduler", "warmup_ratio",
            "weight_decay", "max_grad_norm", "precision", "gradient_checkpointing", "seed") if k in train),
        f"- processes: {metrics.get('world_size', 1)} ({metrics.get('device', '?')}), weights {dtype_name}",
        "",
        "## Base model",
        "",
        f"- {model['path']}" + (f" (revision {model['revision']})" if model.get("revision") else ""),
        f"- dtype {model['dtype']} (this run: {dtype_name}); quantization {model.get('quantization')}",
    ]
    if merged and model.get("quantization"):
        lines.append(f"- merged into the unquantized base in {dtype_name}: the run trained on a 4-bit base, so "
                     "this model's numbers differ slightly from the run's")
    lines += ["", "## Data", ""]
    lines += [f"- {s['path']} (format {s['format']}" + (f", at most {s['max_samples']}" if s.get("max_samples")
                                                          else "") + ")" for s in data["sources"]]
    lines += [f"- template {data['template']}, max_length {data['max_length']}, packing {data['packing']}; "
              f"validation: {data['val_fraction']:g} held out (split_seed {data['split_seed']}), after dropping "
              "duplicate prompts", "",
              "Prompts as in training (the response follows):", "", "```",
              TEMPLATES[data["template"]]["no_input"].rstrip("\n"), "```", "", "## Load it", "", "```python"]
    if merged:
        lines += ["from transformers import AutoModelForCausalLM, AutoTokenizer",
                  f"model = AutoModelForCausalLM.from_pretrained({str(out)!r})",
                  f"tokenizer = AutoTokenizer.from_pretrained({str(out)!r})"]
    else:
        lines += ["from peft import PeftModel", "from transformers import AutoModelForCausalLM, AutoTokenizer",
                  f"base = AutoModelForCausalLM.from_pretrained({model['path']!r}, dtype={dtype_name!r})",
                  f"model = PeftModel.from_pretrained(base, {str(out)!r})",
                  f"tokenizer = AutoTokenizer.from_pretrained({str(out)!r})"]
    lines += ["```", ""]
    return "\n".join(lines)


def _found_lines(config: ExperimentConfig, runs: pd.DataFrame, rid: str, params: dict, provenance: dict) -> list:
    ok = ranked(runs)
    ok = ok[ok["status"].eq(State.OK) & ok["objective"].notna()]
    label = objective_label(config.objective.metric)
    lines = [f"- experiment: {config.name} (`{config.dir}`), run id `{rid}`",
             f"- search: NOMAD 4 (budget {config.nomad.budget}, seed {config.nomad.seed}) over "
             f"{', '.join(config.space.names())}; evaluated points: {len(runs)} ({len(ok)} ok)"]
    if params.get("confirms"):
        lines.append(f"- a confirmation run (seed {params.get('seed')}) of point `{params['confirms']}` (bbo confirm)")
    elif rid in set(ok["run_id"]):
        position = list(ok["run_id"]).index(rid) + 1
        row = ok[ok["run_id"] == rid].iloc[0]
        lines.append(f"- rank {position} of {len(ok)} ok evaluations by {label}; "
                     f"asked by {row['source']} as evaluation {row['order']}: {describe_point(row)}")
    if provenance.get("git_commit"):
        dirty = " (with local edits)" if provenance.get("git_dirty") else ""
        lines.append(f"- code: git commit {provenance['git_commit']}{dirty}")
    return lines


def _number(value) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)
