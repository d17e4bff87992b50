"""Dataset loader for the local MMLU tasks (referenced by `!function utils.load_local`).

lm-eval loads this file by path, so it imports nothing from the project.
"""

import functools
import json
import os


@functools.lru_cache(maxsize=4)
def _read_jsonl(path: str, mtime_ns: int) -> tuple:
    # Cached because every subject task reads the same two files.
    with open(path, encoding="utf-8") as f:
        return tuple(json.loads(line) for line in f if line.strip())


def load_local(data_dir: str, subject: str, **_metadata) -> dict:
    """Return {"dev": Dataset, "test": Dataset} with the rows of one subject.

    lm-eval calls this with the task's metadata and dataset_kwargs as keyword
    arguments; only data_dir and subject matter here.
    """
    import datasets

    splits = {}
    for split in ("dev", "test"):
        path = os.path.join(data_dir, f"{split}.jsonl")
        rows = _read_jsonl(path, os.stat(path).st_mtime_ns)
        splits[split] = datasets.Dataset.from_list(
            [
                {
                    "subject": r["subject"],
                    "question": r["question"],
                    "choices": list(r["choices"]),
                    "answer": int(r["answer"]),
                }
                for r in rows
                if r["subject"] == subject
            ]
        )
    return datasets.DatasetDict(splits)
