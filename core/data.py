"""Instruction data: the formats and templates, load, split without overlap, tokenize with
response-only labels, and batch (the collator) for training and evaluation alike.

The tokenized train/validation split is built once per experiment (keyed by the
data settings and the tokenizer) under experiments/<name>/cache/ and reused by
every evaluation, so a point never pays for tokenization again. core/config.py
validates data.sources[].format and data.template against FORMATS and TEMPLATES here.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import random
import shutil
from pathlib import Path

IGNORE_INDEX = -100  # label value the loss skips: prompt tokens, padding, and the seams between packed examples

TEMPLATES = {
    # The Alpaca template the original experiments used.
    "alpaca": {
        "with_input": (
            "Below is an instruction that describes a task, paired with an input that provides further context. "
            "Write a response that appropriately completes the request.\n\n"
            "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
        ),
        "no_input": (
            "Below is an instruction that describes a task. "
            "Write a response that appropriately completes the request.\n\n"
            "### Instruction:\n{instruction}\n\n### Response:\n"
        ),
    },
    # A short template for small models, where the Alpaca preamble would dominate the sequence.
    "plain": {
        "with_input": "### Instruction:\n{instruction}\n### Input:\n{input}\n### Response:\n",
        "no_input": "### Instruction:\n{instruction}\n### Response:\n",
    },
}

# Field names of each supported format -> (instruction, input, output)
FORMATS = {
    "alpaca": ("instruction", "input", "output"),
    "dolly": ("instruction", "context", "response"),
}


class DataError(ValueError):
    """A data source that cannot be used; the message names the source."""


def is_local(path: str) -> bool:
    """A file or folder path (else a hub id)."""
    return path.endswith((".json", ".jsonl")) or path.startswith((".", "/")) or os.path.exists(path)


def load_source(path: str, fmt: str, split: str = "train", key: str = "data") -> list[dict]:
    """Read one source into {"instruction", "input", "output"} records."""
    instruction_key, input_key, output_key = FORMATS[fmt]
    if is_local(path):
        if not os.path.isfile(path):
            raise DataError(f"{key}.path: no such file {path}")
        rows = _read_json_rows(path, key)
    else:
        import datasets  # a hub dataset; needs the network (HF_DATASETS_OFFLINE=1 makes this fail fast)

        try:
            rows = list(datasets.load_dataset(path, split=split))
        except Exception as e:  # noqa: BLE001 - any loading failure is a bad source for the user
            raise DataError(f"{key}.path: cannot load dataset {path!r} ({type(e).__name__})") from None
    records = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or instruction_key not in row or output_key not in row:
            raise DataError(f"{key}: row {i + 1} of {path} lacks the {fmt} fields "
                            f"{instruction_key!r} and {output_key!r}")
        records.append({
            "instruction": str(row[instruction_key]).strip(),
            "input": str(row.get(input_key) or "").strip(),
            "output": str(row[output_key]).strip(),
        })
    if not records:
        raise DataError(f"{key}.path: {path} holds no examples")
    return records


def _read_json_rows(path: str, key: str) -> list:
    text = Path(path).read_text()
    try:
        if path.endswith(".jsonl"):
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        data = json.loads(text)
    except ValueError as e:
        raise DataError(f"{key}.path: {path} is not valid JSON ({e})") from None
    if not isinstance(data, list):
        raise DataError(f"{key}.path: {path} must hold a list of examples")
    return data


def build_split(sources: list[dict], val_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Mix sources (without resampling), drop duplicate prompts, then split: no example is in both sides."""
    rng = random.Random(seed)
    pool = []
    for i, source in enumerate(sources):
        records = load_source(source["path"], source["format"], source.get("split", "train"), f"data.sources[{i}]")
        rng.shuffle(records)
        if source.get("max_samples"):
            records = records[: source["max_samples"]]
        pool.extend(records)
    seen, unique = set(), []
    for record in pool:
        key = (record["instruction"], record["input"])
        if key not in seen:
            seen.add(key)
            unique.append(record)
    rng.shuffle(unique)
    n_val = max(1, int(round(len(unique) * val_fraction)))
    if n_val >= len(unique):
        raise DataError(f"data: {len(unique)} unique examples are too few to hold out {val_fraction:.0%}")
    return unique[n_val:], unique[:n_val]


def format_prompt(record: dict, template: str) -> str:
    parts = TEMPLATES[template]
    form = parts["with_input"] if record["input"] else parts["no_input"]
    return form.format(instruction=record["instruction"], input=record["input"])


def tokenize(record: dict, tokenizer, template: str, max_length: int) -> dict | None:
    """[bos] prompt response [eos], labels only on the response (and eos); None if nothing is left to learn."""
    prompt_ids = tokenizer(format_prompt(record, template), add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(record["output"], add_special_tokens=False)["input_ids"]
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    input_ids = (bos + prompt_ids + response_ids + [tokenizer.eos_token_id])[:max_length]
    n_prompt = len(bos) + len(prompt_ids)
    labels = [IGNORE_INDEX] * min(n_prompt, len(input_ids)) + input_ids[n_prompt:]
    if all(label == IGNORE_INDEX for label in labels):
        return None
    return {"input_ids": input_ids, "labels": labels}


def data_key(data: dict, tokenizer_path: str) -> str:
    """Changes with the data settings and with the tokenizer's files (a tokenizer replaced at the
    same path must not reuse token ids made by the old one)."""
    files = {}
    folder = Path(tokenizer_path)
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            if path.is_file() and path.name.startswith(("tokenizer", "special_tokens", "vocab", "merges")):
                files[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
    blob = json.dumps({"data": data, "tokenizer": tokenizer_path, "files": files}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def load_tokenized(data: dict, tokenizer, tokenizer_path: str, cache_root: str | Path):
    """(train, validation) as datasets.Dataset, built once under cache_root/<key>/ and reused."""
    import datasets

    cache_root = Path(cache_root)
    target = cache_root / f"tokenized-{data_key(data, tokenizer_path)}"
    cache_root.mkdir(parents=True, exist_ok=True)
    with open(cache_root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder; the others wait, then read
        if not (target / "DONE").exists():
            train, val = build_split(data["sources"], data["val_fraction"], data["split_seed"])
            tmp = target.with_name(target.name + f".tmp{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            for name, records in (("train", train), ("validation", val)):
                rows = [t for t in (tokenize(r, tokenizer, data["template"], data["max_length"]) for r in records) if t]
                if not rows:
                    raise DataError(f"data: no {name} example has response tokens within max_length")
                datasets.Dataset.from_list(rows).save_to_disk(str(tmp / name))
            (tmp / "DONE").write_text(json.dumps({"train": len(train), "validation": len(val)}))
            shutil.rmtree(target, ignore_errors=True)
            os.replace(tmp, target)
    return (datasets.load_from_disk(str(target / "train")), datasets.load_from_disk(str(target / "validation")))


def collator_for(tokenizer, data: dict):
    """Batches for training and validation. Packing (data.packing): padding-free rows, examples
    concatenated with position ids restarting per example; else each batch padded to its longest
    example (or to max_length with data["pad_to_max_length"], which only the throughput benchmark sets)."""
    from transformers import DataCollatorForSeq2Seq, DataCollatorWithFlattening

    if data["packing"]:
        return DataCollatorWithFlattening(return_position_ids=True, separator_id=IGNORE_INDEX)
    pad_to = data["max_length"] if data.get("pad_to_max_length") else None
    return DataCollatorForSeq2Seq(tokenizer, padding="max_length" if pad_to else True, max_length=pad_to,
                                  label_pad_token_id=IGNORE_INDEX)
