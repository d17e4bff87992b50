"""Instruction data: the formats and templates, load, split without overlap, tokenize with
response-only labels, and batch (the collator) for training and evaluation alike.

The tokenized train/validation split is built once per experiment (keyed by the
data settings and the tokenizer) under experiments/<name>/cache/ and reused by
every evaluation, so a point never pays for tokenization again. core/config.py
validates data.sources[].format and data.template against FORMATS and TEMPLATES here.

Chat data (format messages: `messages: [{role, content}, ...]`, the HF/OpenAI shape) is
rendered with a chat template (data.chat_template, else the tokenizer's own) and trained on
the assistant turns only, as the instruction formats are trained on the response only.
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

# Each format's columns: what a record needs -> the row's field holding it by default.
# data.sources[].fields renames them for a file with other column names.
FORMATS = {
    "alpaca": {"instruction": "instruction", "input": "input", "output": "output"},
    "dolly": {"instruction": "instruction", "input": "context", "output": "response"},
    "messages": {"messages": "messages"},  # chat turns [{role, content}, ...]; assistant turns are trained on
}
OPTIONAL = {"input"}  # a row without it has no input


def columns(fmt: str, fields: dict | None = None) -> dict:
    """The row fields a source of format `fmt` is read from, after its `fields` mapping."""
    return FORMATS[fmt] | {k: v for k, v in (fields or {}).items() if v}


class DataError(ValueError):
    """A data source that cannot be used; the message names the source."""


def is_local(path: str) -> bool:
    """A file or folder path (else a hub id)."""
    return path.endswith((".json", ".jsonl")) or path.startswith((".", "/")) or os.path.exists(path)


def load_source(path: str, fmt: str, split: str = "train", key: str = "data",
                fields: dict | None = None) -> list[dict]:
    """Read one source into {"instruction", "input", "output"} records, or {"messages", "origin"}
    records for format messages (origin names the row in errors raised while rendering it)."""
    if is_local(path):
        if not os.path.isfile(path):
            raise DataError(f"{key}.path: no such file {path}")
        rows = read_json_rows(path, key)
    else:
        import datasets  # a hub dataset; needs the network (HF_DATASETS_OFFLINE=1 makes this fail fast)

        try:
            rows = list(datasets.load_dataset(path, split=split))
        except Exception as e:  # noqa: BLE001 - any loading failure is a bad source for the user
            raise DataError(f"{key}.path: cannot load dataset {path!r} ({type(e).__name__})") from None
    cols = columns(fmt, fields)
    records = []
    for i, row in enumerate(rows):
        problem = row_problem(row, cols)
        if problem:
            raise DataError(f"{key}: row {i + 1} of {path} {problem}")
        if fmt == "messages":
            messages = [{"role": m["role"], "content": m["content"]} for m in row[cols["messages"]]]
            records.append({"messages": messages, "origin": f"{key}: row {i + 1} of {path}"})
            continue
        records.append({
            "instruction": str(row[cols["instruction"]]).strip(),
            "input": str(row.get(cols["input"]) or "").strip(),
            "output": str(row[cols["output"]]).strip(),
        })
    if not records:
        raise DataError(f"{key}.path: {path} holds no examples")
    return records


def row_problem(row, cols: dict) -> str | None:
    """What keeps one row from being an example, in words ("has no field 'answer' (fields.output)"), or None.
    The one rule for load_source and for the checks before training (core/preflight.py)."""
    if not isinstance(row, dict):
        return f"is not a JSON object (got {type(row).__name__})"
    for name, field_name in cols.items():
        if name not in OPTIONAL and field_name not in row:
            return f"has no field {field_name!r} (fields.{name})"
    if "messages" not in cols:
        return None
    field_name, turns = cols["messages"], row[cols["messages"]]
    if not isinstance(turns, list) or not turns:
        return f"field {field_name!r} must be a non-empty list of {{role, content}} turns"
    for j, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get("role"), str) or not isinstance(turn.get("content"), str):
            return f"field {field_name!r}: turn {j + 1} must be {{role: str, content: str}}, got {str(turn)[:80]!r}"
    if not any(turn["role"] == "assistant" for turn in turns):
        return f"field {field_name!r} has no assistant turn (nothing to train on)"
    return None


def read_json_rows(path: str, key: str) -> list:
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
        records = load_source(source["path"], source["format"], source.get("split", "train"), f"data.sources[{i}]",
                              source.get("fields"))
        rng.shuffle(records)
        if source.get("max_samples"):
            records = records[: source["max_samples"]]
        pool.extend(records)
    seen, unique = set(), []
    for record in pool:
        key = prompt_key(record)
        if key not in seen:
            seen.add(key)
            unique.append(record)
    rng.shuffle(unique)
    n_val = max(1, int(round(len(unique) * val_fraction)))
    if n_val >= len(unique):
        raise DataError(f"data: {len(unique)} unique examples are too few to hold out {val_fraction:.0%}")
    return unique[n_val:], unique[:n_val]


def prompt_key(record: dict) -> tuple:
    """What makes two examples duplicates: the same prompt (a conversation: the same turns before its last answer)."""
    if "messages" in record:
        last = max(j for j, turn in enumerate(record["messages"]) if turn["role"] == "assistant")
        return ("messages", json.dumps(record["messages"][:last], sort_keys=True))
    return (record["instruction"], record["input"])


def format_prompt(record: dict, template: str) -> str:
    parts = TEMPLATES[template]
    form = parts["with_input"] if record["input"] else parts["no_input"]
    return form.format(instruction=record["instruction"], input=record["input"])


def tokenize(record: dict, tokenizer, template: str, max_length: int, chat_template: str | None = None) -> dict | None:
    """[bos] prompt response [eos], labels only on the response (and eos); None if nothing is left to learn.
    bos only where the tokenizer adds one itself (bos_ids).
    A conversation (format messages) goes to tokenize_chat: labels only on its assistant turns."""
    if "messages" in record:
        return tokenize_chat(record, tokenizer, chat_template, max_length)
    prompt_ids = tokenizer(format_prompt(record, template), add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(record["output"], add_special_tokens=False)["input_ids"]
    bos = bos_ids(tokenizer)
    input_ids = (bos + prompt_ids + response_ids + [tokenizer.eos_token_id])[:max_length]
    n_prompt = len(bos) + len(prompt_ids)
    labels = [IGNORE_INDEX] * min(n_prompt, len(input_ids)) + input_ids[n_prompt:]
    if all(label == IGNORE_INDEX for label in labels):
        return None
    return {"input_ids": input_ids, "labels": labels}


def bos_ids(tokenizer) -> list[int]:
    """[bos] if the tokenizer itself starts a text with it (LLaMA's and the demo's <s>), else []: a
    GPT-2-style BPE such as SmolLM2's has bos_token <|im_start|> but never adds it (only its chat
    template writes it), so a prompt is trained on as the tokenizer encodes it at inference."""
    bos = tokenizer.bos_token_id
    return [bos] if bos is not None and tokenizer("a")["input_ids"][:1] == [bos] else []


def render_chat(messages: list[dict], tokenizer, chat_template: str | None = None) -> tuple[str, list[tuple[int, int]]]:
    """(text, assistant spans): the conversation rendered by the chat template (None: the tokenizer's own),
    and the character spans of its assistant turns as the template writes them (end-of-turn tokens included).

    An assistant turn's span runs from the end of the conversation before it, rendered with the
    generation prompt (what the model is given at inference), to the end of the conversation up to
    and including it. A template that renders a conversation's start differently once more turns
    follow cannot be split this way: DataError.
    """
    def render(turns, prompt=False):
        try:
            return tokenizer.apply_chat_template(turns, chat_template=chat_template, tokenize=False,
                                                 add_generation_prompt=prompt)
        except Exception as e:  # noqa: BLE001 - jinja errors and raise_exception() in the template
            raise DataError(f"the chat template fails on it ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None

    text = render(messages)
    spans = []
    for j, turn in enumerate(messages):
        if turn["role"] != "assistant":
            continue
        before, through = render(messages[:j], prompt=True), render(messages[: j + 1])
        if not (through.startswith(before) and text.startswith(through)):
            raise DataError(f"the chat template does not render turn {j + 1} as a continuation of the turns before "
                            "it, so the assistant tokens cannot be told apart; use a template that does "
                            "(data.chat_template)")
        spans.append((len(before), len(through)))
    return text, spans


def tokenize_chat(record: dict, tokenizer, chat_template: str | None, max_length: int) -> dict | None:
    """The rendered conversation tokenized as one text (as at inference), labels on the tokens that
    start inside an assistant turn; the template writes bos/eos itself."""
    try:
        text, spans = render_chat(record["messages"], tokenizer, chat_template)
    except DataError as e:
        raise DataError(f"{record.get('origin', 'data')}: {e}") from None
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids = encoded["input_ids"][:max_length]
    labels = [token if any(start <= offset[0] < end for start, end in spans) else IGNORE_INDEX
              for token, offset in zip(input_ids, encoded["offset_mapping"])]
    if all(label == IGNORE_INDEX for label in labels):
        return None
    return {"input_ids": input_ids, "labels": labels}


def is_inline_template(value: str) -> bool:
    """data.chat_template holds a Jinja template itself (it has {{ or {%), else it names a file."""
    return "{{" in value or "{%" in value


def chat_template_text(value: str | None, folder: str | Path) -> str | None:
    """The Jinja text of data.chat_template: the value itself, or the file it names (relative to the
    experiment folder). Train specs hold the text, so a run folder is reproducible on its own."""
    if value is None or is_inline_template(value):
        return value
    path = Path(folder) / value
    if not path.is_file():
        raise DataError(f"data.chat_template: no such file {path} (an inline template contains {{{{ or {{%)")
    return path.read_text()


def computed_settings(data: dict) -> dict:
    """The data settings as they decide the tokenized split: a source's fields only where they rename
    a column, chat_template only where a messages source uses it. Settings left at what they did
    before these options existed keep their old cache key and run ids."""
    out = dict(data)
    sources = []
    for source in data["sources"]:
        source = dict(source)
        cols = columns(source["format"], source.get("fields"))
        if cols == FORMATS[source["format"]]:
            source.pop("fields", None)
        else:
            source["fields"] = cols
        sources.append(source)
    out["sources"] = sources
    if out.get("chat_template") is None or not any(s["format"] == "messages" for s in sources):
        out.pop("chat_template", None)
    return out


def data_key(data: dict, tokenizer_path: str) -> str:
    """Changes with the data settings and with the tokenizer's files (a tokenizer replaced at the
    same path must not reuse token ids made by the old one)."""
    files = {}
    folder = Path(tokenizer_path)
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            if path.is_file() and path.name.startswith(("tokenizer", "special_tokens", "vocab", "merges", "chat_template")):
                files[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
    blob = json.dumps({"data": computed_settings(data), "tokenizer": tokenizer_path, "files": files}, sort_keys=True)
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
            chat_template = _chat_template_for(data, tokenizer, tokenizer_path)
            train, val = build_split(data["sources"], data["val_fraction"], data["split_seed"])
            tmp = target.with_name(target.name + f".tmp{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            for name, records in (("train", train), ("validation", val)):
                rows = [t for t in (tokenize(r, tokenizer, data["template"], data["max_length"], chat_template)
                                    for r in records) if t]
                if not rows:
                    raise DataError(f"data: no {name} example has response tokens within max_length")
                datasets.Dataset.from_list(rows).save_to_disk(str(tmp / name))
            (tmp / "DONE").write_text(json.dumps({"train": len(train), "validation": len(val)}))
            shutil.rmtree(target, ignore_errors=True)
            os.replace(tmp, target)
    return (datasets.load_from_disk(str(target / "train")), datasets.load_from_disk(str(target / "validation")))


def _chat_template_for(data: dict, tokenizer, tokenizer_path: str) -> str | None:
    """data.chat_template (its text, as train specs hold it), else None = the tokenizer's own; a messages
    source with neither is a DataError."""
    if data.get("chat_template"):
        return data["chat_template"]
    for i, source in enumerate(data["sources"]):
        if source["format"] == "messages" and not getattr(tokenizer, "chat_template", None):
            raise DataError(f"data.sources[{i}]: format messages needs a chat template, and the tokenizer of "
                            f"{tokenizer_path} has none: set data.chat_template (a Jinja template or a file)")
    return None


def collator_for(tokenizer, data: dict, attn_implementation: str = "sdpa"):
    """Batches for training and validation. Packing (data.packing): padding-free rows, examples
    concatenated with position ids restarting per example; else each batch padded to its longest
    example (or to max_length with data["pad_to_max_length"], which only the throughput benchmark sets).

    With flash_attention_2, packed rows also carry flash-attention's sequence boundaries
    (cu_seq_lens, max_length: HF's padding-free recipe), so the varlen kernel runs on them; sdpa
    and eager build their block mask from the position ids (correct, but a dense [T, T] mask)."""
    from transformers import DataCollatorForSeq2Seq, DataCollatorWithFlattening

    if data["packing"]:
        return DataCollatorWithFlattening(return_position_ids=True, separator_id=IGNORE_INDEX,
                                          return_flash_attn_kwargs=attn_implementation == "flash_attention_2")
    pad_to = data["max_length"] if data.get("pad_to_max_length") else None
    return DataCollatorForSeq2Seq(tokenizer, padding="max_length" if pad_to else True, max_length=pad_to,
                                  label_pad_token_id=IGNORE_INDEX)
