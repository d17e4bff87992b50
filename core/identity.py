"""What a run id is made of, besides the point: the settings that change what training computes
(fingerprint), with files by what they hold, not where they live (content_identity).

    content_identity("/data/alpaca.jsonl")   # "3f3a...": the sha256 of the file
    content_identity("/models/llama-2-7b")    # {"config.json": "...", "model.safetensors": "<size>:<sha256>"}
    content_identity("meta-llama/Llama-2-7b-hf")   # {"hub": "meta-llama/Llama-2-7b-hf"}

ExperimentConfig.fingerprint() (core/config.py) is fingerprint(config): a moved or re-cloned checkout
reuses its runs, a data file edited in place gets new run ids. Files up to WHOLE_FILE_BYTES are
hashed whole; larger ones (weights) by their size and the sha256 of their first and last MiB, so
that 13 GB of weights cost milliseconds.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
from pathlib import Path

from core.data import computed_settings, is_inline_template
from core.objective import VALIDATION_SPLIT

WHOLE_FILE_BYTES = 64 * 2 ** 20  # files up to this size are hashed whole; larger ones (weights) by size, head and tail
EDGE_BYTES = 2 ** 20


def fingerprint(config) -> dict:
    """Every setting of an ExperimentConfig that changes what training or evaluation computes.

    The run id hashes this with the point's hyperparameters: change any of it and
    old runs are not reused; change what is not here (budget, encodings, timeout,
    parallelism) and they are.
    """
    def plain(obj):
        return dataclasses.asdict(obj)

    model_path = config.resolve(config.model.path)
    fp = {
        "model": {"identity": content_identity(model_path), "dtype": config.model.dtype,
                  "revision": config.model.revision, "quantization": config.model.quantization},
        "data": computed_settings(plain(config.data)),
        "lora": plain(config.lora),
        # what is measured along the way, not what is trained: the curve's checkpoints and the trackers
        # (train.report_to) leave the run id as it is; so does keep_adapters (which adapters stay on disk)
        "train": {k: v for k, v in plain(config.train).items()
                  if k not in ("logging_steps", "eval_every", "report_to", "keep_adapters")},
        "num_processes": config.launch.num_processes,
    }
    # What the files hold, not where they are: a moved or re-cloned checkout reuses its runs,
    # and a data file edited in place gets new run ids.
    fp["data"]["sources"] = [{k: v for k, v in s.items() if k != "path"} | {"identity": content_identity(
        config.resolve(s["path"]))} for s in fp["data"]["sources"]]
    if "chat_template" in fp["data"] and not is_inline_template(config.data.chat_template):
        fp["data"]["chat_template"] = content_identity(config.resolve(config.data.chat_template))
    if config.objective.needs_mmlu:
        mmlu = plain(config.objective.mmlu)
        mmlu.pop("search_limit")  # the search's runs measured search_questions; finalists' limit is not theirs
        fp["mmlu"] = {k: v for k, v in mmlu.items() if k != "data_dir"} | {
            "data": content_identity(config.resolve(mmlu["data_dir"])), "limit": config.objective.mmlu.search_questions}
    if config.objective.needs_rouge:  # the validation split is in fp["data"]; a file enters by content
        generation = plain(config.objective.generation)
        if generation["data"] == VALIDATION_SPLIT:
            del generation["format"]  # the split's records are already in the common shape
        else:
            generation["data"] = content_identity(config.resolve(generation["data"]))
        fp["generation"] = generation
    return fp


def content_identity(path: str | None):
    """What a model, data file or data folder holds, independent of where it lives.

    A local file: its sha256 (up to WHOLE_FILE_BYTES; above, its size and the sha256 of its first
    and last MiB, so that 13 GB of weights cost milliseconds). A local folder: that of each file
    in it, by relative name. Anything else (a hub id) is itself: its revision is in the config.
    """
    if path is None:
        return None
    target = Path(path)
    if target.is_file():
        return _file_digest(str(target), *_stat_key(target))
    if target.is_dir():
        files = [p for p in sorted(target.rglob("*")) if p.is_file()
                 and not any(part.startswith(".") for part in p.relative_to(target).parts)]  # no .cache/
        return {str(p.relative_to(target)): _file_digest(str(p), *_stat_key(p)) for p in files}
    return {"hub": path}


def _stat_key(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


@functools.lru_cache(maxsize=4096)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    """Keyed by size and mtime too: a file edited in place is hashed again."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if size <= WHOLE_FILE_BYTES:
            for block in iter(lambda: f.read(2 ** 20), b""):
                h.update(block)
            return h.hexdigest()
        h.update(f.read(EDGE_BYTES))
        f.seek(size - EDGE_BYTES)
        h.update(f.read(EDGE_BYTES))
    return f"{size}:{h.hexdigest()}"
