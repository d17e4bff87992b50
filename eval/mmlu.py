"""MMLU accuracy of a base model plus optional LoRA adapter, through lm-eval, offline.

    python -m eval.mmlu --model PATH [--adapter PATH] [--task mmlu_local] [--data-dir DIR] \
        [--num-fewshot 5] [--limit N] [--batch-size 8] [--dtype auto] [--device auto] [--out metrics.json]
    accelerate launch --multi_gpu --num_processes 4 -m eval.mmlu ...   # data-parallel over 4 GPUs

`--device auto` / `--dtype auto` are resolved by torch here: the first GPU torch sees and
bfloat16 (float16 on a GPU without bf16), else CPU and float32; the adapter's LoRA weights are
computed in that dtype too, as in training. Under `accelerate launch` lm-eval shards the questions
over the processes (one per GPU) and only the main process writes the result; a 4-bit base runs
in one process.

task="mmlu_local" (default) reads `data_dir/dev.jsonl` (few-shot examples) and
`data_dir/test.jsonl`, one cais/mmlu-style object per line
({"subject", "question", "choices": [4 strings], "answer": 0..3}), with the stock
MMLU prompt (see eval/tasks/mmlu_local/_mmlu_local_template_yaml). Because the
data folder is only known at call time, one task YAML per subject plus a group
YAML are written to a temporary (or the given work) folder and handed to lm-eval
as its include path; the stock task index is not loaded, so nothing needs the hub.

task="mmlu" runs the stock lm-eval task, which downloads cais/mmlu from the hub.

Both return {"mmlu": acc, "mmlu_stderr", "mmlu_subjects": {subject: acc},
"mmlu_n": examples scored, "lm_eval_version"}; "mmlu" is the mean over all scored
examples (subjects weighted by size), as lm-eval's stock group reports it.
The blackbox runs it as a child process after training (blackbox/evaluate.py), so lm-eval's
memory goes when it ends. lm-eval and torch are imported inside the functions: `--help` and
the checks stay light. The options' rules are core/objective.py's MmluConfig.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

from core import faults
from core.procs import exit_with_blackbox
from core.objective import MMLU_TASKS, MmluConfig
from core.model import (add_loading_arguments, cast_lora, load_adapter, load_model, load_tokenizer, resolve_device,
                        weights_dtype, without_bitsandbytes)

TEMPLATE = Path(__file__).resolve().parent / "tasks" / "mmlu_local" / "_mmlu_local_template_yaml"
_SUBJECT_RE = re.compile(r"^[A-Za-z0-9_-]+$")


def evaluate_mmlu(model_path: str, adapter_path: str | None, *, task: str = "mmlu_local", data_dir: str | None = None,
                  num_fewshot: int = 5, limit: int | None = None, batch_size: int = 8, dtype: str = "auto",
                  device: str = "auto", quantization: str | None = None, trust_remote_code: bool = False,
                  work_dir: str | None = None) -> dict | None:
    """returns {"mmlu": float acc in [0,1], "mmlu_stderr": float|None, "mmlu_subjects": {subject: acc}, "mmlu_n": int, "lm_eval_version": str}

    `limit` caps the examples per subject. ValueError for bad arguments or data.
    None on the other processes of a data-parallel run (only the main one gets the result).
    """
    summary, _ = evaluate_with_samples(model_path, adapter_path, task=task, data_dir=data_dir, num_fewshot=num_fewshot,
                           limit=limit, batch_size=batch_size, dtype=dtype, device=device, quantization=quantization,
                           trust_remote_code=trust_remote_code, work_dir=work_dir, log_samples=False)
    return summary


def evaluate_with_samples(model_path, adapter_path, *, task, data_dir, num_fewshot, limit, batch_size, dtype,
                          device, trust_remote_code, work_dir, log_samples,
                          quantization=None) -> tuple[dict | None, dict | None]:
    """(summary, raw lm-eval results); tests use log_samples=True to see per-example log-likelihoods."""
    MmluConfig(task=task, data_dir=data_dir, num_fewshot=num_fewshot, limit=limit,
               batch_size=batch_size).check_values()  # the config's rules, as ValueError
    subjects = validate_data(data_dir, num_fewshot) if task == "mmlu_local" else None

    with tempfile.TemporaryDirectory(prefix="mmlu_tasks_") as tmp:
        import lm_eval
        from lm_eval.tasks import TaskManager

        if task == "mmlu_local":
            tasks_dir = Path(work_dir) / "mmlu_local_tasks" if work_dir else Path(tmp)
            write_task_yamls(tasks_dir, data_dir, subjects, num_fewshot)
            task_manager = TaskManager(include_path=str(tasks_dir), include_defaults=False)
            fewshot_arg = None  # set in each YAML; passing it would log an override warning per subject
        else:
            task_manager = TaskManager()
            fewshot_arg = num_fewshot

        hint_filter = _DropLogLines("Custom kwargs can be passed")  # one warning per subject; our kwargs are in the YAML
        logging.getLogger("lm_eval.api.task").addFilter(hint_filter)
        lm = language_model(model_path, adapter_path, dtype=dtype, device=device, quantization=quantization,
                            batch_size=batch_size, trust_remote_code=trust_remote_code)
        try:
            raw = lm_eval.simple_evaluate(
                model=lm, tasks=[task], num_fewshot=fewshot_arg, limit=limit, batch_size=batch_size,
                task_manager=task_manager, log_samples=log_samples,
            )
        finally:
            logging.getLogger("lm_eval.api.task").removeFilter(hint_filter)
    if raw is None:  # not the main process of a data-parallel run
        return None, None
    return summarize(raw, task, lm_eval.__version__), raw


def language_model(model_path: str, adapter_path: str | None, *, dtype: str = "auto", device: str = "auto",
                   quantization: str | None = None, batch_size: int = 8, trust_remote_code: bool = False):
    """lm-eval's HF model of base + adapter, with the LoRA weights in the run's dtype.

    A plain base is loaded by lm-eval, straight onto this process's GPU (one per process under
    `accelerate launch`, which lm-eval shards over). A 4-bit base is built by core/model.py, as for
    training (lm-eval's own `load_in_4bit` no longer reaches the pinned transformers): lm-eval then
    treats it as one process (rank 0 of 1), so it is never run data-parallel."""
    from lm_eval.api.registry import get_model

    device = resolve_device(device)
    torch_dtype = weights_dtype(dtype, quantization, device)
    if quantization:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ValueError("a 4-bit base is scored in one process: run python -m eval.mmlu without "
                             "accelerate launch (every process would score every question and write --out)")
        from lm_eval.models.huggingface import HFLM

        model = load_model(model_path, dtype=torch_dtype, quantization=quantization,
                           trust_remote_code=trust_remote_code, device=device)
        if adapter_path:
            model = load_adapter(model, adapter_path, torch_dtype)
        model.eval()
        return HFLM(pretrained=model, tokenizer=load_tokenizer(model_path, trust_remote_code=trust_remote_code),
                    batch_size=batch_size)
    args = {"pretrained": model_path, "dtype": str(torch_dtype).replace("torch.", ""),
            "trust_remote_code": trust_remote_code}
    if adapter_path:
        args["peft"] = adapter_path
    lm = get_model("hf").create_from_arg_obj(args, {"batch_size": batch_size, "device": device})
    if adapter_path:
        cast_lora(lm.model, torch_dtype)  # lm-eval loads the adapter with peft's default: LoRA in fp32
    return lm


def validate_data(data_dir: str | None, num_fewshot: int) -> list[str]:
    """Check the local JSONL files up front, so bad data fails with one clear line, not deep in lm-eval.

    Returns the sorted subjects of test.jsonl.
    """
    if not data_dir:
        raise ValueError("task 'mmlu_local' needs data_dir (a folder with dev.jsonl and test.jsonl)")
    folder = Path(data_dir)
    if not folder.is_dir():
        raise ValueError(f"data_dir {str(folder)!r} is not a directory")
    counts = {}
    for split in ("dev", "test"):
        path = folder / f"{split}.jsonl"
        if not path.is_file():
            raise ValueError(f"missing {path}")
        counts[split] = {}
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{path}:{lineno}"
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{where}: invalid JSON ({e.msg})") from None
                subject = _check_row(row, where)
                counts[split][subject] = counts[split].get(subject, 0) + 1
    if not counts["test"]:
        raise ValueError(f"{folder / 'test.jsonl'} has no rows")
    subjects = sorted(counts["test"])
    for subject in subjects:
        have = counts["dev"].get(subject, 0)
        if have < num_fewshot:
            raise ValueError(f"subject {subject!r} has {have} dev examples, fewer than num_fewshot={num_fewshot}")
    return subjects


def _check_row(row, where: str) -> str:
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a JSON object")
    missing = [k for k in ("subject", "question", "choices", "answer") if k not in row]
    if missing:
        raise ValueError(f"{where}: missing field(s) {', '.join(missing)}")
    subject = row["subject"]
    if not isinstance(subject, str) or not _SUBJECT_RE.match(subject):
        raise ValueError(f"{where}: subject must be a non-empty name of letters, digits, '_' or '-', got {subject!r}")
    if not isinstance(row["question"], str):
        raise ValueError(f"{where}: question must be a string")
    choices = row["choices"]
    if not isinstance(choices, list) or len(choices) != 4 or not all(isinstance(c, str) for c in choices):
        raise ValueError(f"{where}: choices must be a list of 4 strings")
    answer = row["answer"]
    if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer <= 3:
        raise ValueError(f"{where}: answer must be an integer in 0..3, got {answer!r}")
    return subject


def write_task_yamls(tasks_dir: Path, data_dir: str, subjects: list[str], num_fewshot: int) -> None:
    """One task per subject (including the committed template) and the group `mmlu_local` over them."""
    import yaml

    if tasks_dir.exists():
        shutil.rmtree(tasks_dir)  # stale subjects from an earlier call would still be indexed
    tasks_dir.mkdir(parents=True)
    data_dir = str(Path(data_dir).resolve())
    names = []
    for subject in subjects:
        name = f"mmlu_local_{subject}"
        names.append(name)
        config = {
            "include": str(TEMPLATE),
            "task": name,
            "task_alias": subject,
            "description": f"The following are multiple choice questions (with answers) about "
                           f"{subject.replace('_', ' ')}.\n\n",
            "dataset_kwargs": {"data_dir": data_dir, "subject": subject},
            "num_fewshot": num_fewshot,
        }
        (tasks_dir / f"{name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    group = {
        "group": "mmlu_local",
        "task": names,
        "aggregate_metric_list": [{"metric": "acc", "weight_by_size": True}],
        "metadata": {"version": 1},
    }
    (tasks_dir / "_mmlu_local.yaml").write_text(yaml.safe_dump(group, sort_keys=False))


def summarize(raw: dict, task: str, version: str) -> dict:
    """Reduce lm-eval's results to the project's metric dict.

    Subjects are the leaf tasks under the group (the stock task nests them under
    stem/humanities/...); their names lose the `mmlu_` / `mmlu_local_` prefix.
    `raw` needs only "results" and "n-samples".
    """
    leaves = list(raw["n-samples"])  # only tasks, not groups, have sample counts
    prefix = f"{task}_"
    subjects = {name[len(prefix):] if name.startswith(prefix) else name: float(raw["results"][name]["acc,none"])
                for name in sorted(leaves)}
    n = sum(int(raw["n-samples"][name]["effective"]) for name in leaves)
    group = raw["results"][task]
    return {
        "mmlu": float(group["acc,none"]),
        "mmlu_stderr": _number_or_none(group.get("acc_stderr,none")),
        "mmlu_subjects": subjects,
        "mmlu_n": n,
        "lm_eval_version": version,
    }


class _DropLogLines(logging.Filter):
    """Drops log records containing a fixed text."""

    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def _number_or_none(value) -> float | None:
    # lm-eval writes "N/A" where it could not compute a stderr
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.mmlu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="base model folder (or hub id)")
    parser.add_argument("--adapter", default=None, help="PEFT/LoRA adapter folder")
    parser.add_argument("--task", default="mmlu_local", help=" or ".join(MMLU_TASKS))
    parser.add_argument("--data-dir", default=None, help="folder with dev.jsonl and test.jsonl (mmlu_local)")
    parser.add_argument("--num-fewshot", type=int, default=5)
    parser.add_argument("--limit", type=int, default=None, help="max examples per subject")
    parser.add_argument("--batch-size", type=int, default=8)
    add_loading_arguments(parser)
    parser.add_argument("--work-dir", default=None, help="where to write the generated task YAMLs (default: temp)")
    parser.add_argument("--out", default=None, help="also write the result JSON here")
    args = parser.parse_args(argv)
    exit_with_blackbox()  # a run's evaluation ends with the blackbox that asked for it
    without_bitsandbytes(args.quantization)  # before lm-eval, transformers and peft are imported
    if args.adapter:  # a run's evaluation (blackbox/work.py): the kill tests' hook
        faults.kill_search_at(faults.parse_fault(Path(args.adapter).parent), "mmlu")
    try:
        result = evaluate_mmlu(args.model, args.adapter, task=args.task, data_dir=args.data_dir,
                               num_fewshot=args.num_fewshot, limit=args.limit, batch_size=args.batch_size,
                               dtype=args.dtype, device=args.device, quantization=args.quantization,
                               trust_remote_code=args.trust_remote_code, work_dir=args.work_dir)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if result is None:  # another process of a data-parallel run: the main one writes the result
        return 0
    text = json.dumps(result, indent=2)
    if args.out:
        tmp = Path(args.out).with_name(f".{Path(args.out).name}.{os.getpid()}.tmp")  # one writer per file
        tmp.write_text(text + "\n")
        tmp.replace(args.out)  # atomic: a reader never sees half a result
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
