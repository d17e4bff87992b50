"""ROUGE of a base model plus optional LoRA adapter: greedy generation on held-out instruction/response pairs.

    python -m eval.rouge experiments/demo/runs/<run id>        # a run: its model, adapter, data, objective.generation
    python -m eval.rouge --model PATH [--adapter PATH] --pairs FILE [--format alpaca] [--template alpaca] \
        [--num-examples 64] [--max-new-tokens 128] [--batch-size 8] [--use-stemmer] [--dtype auto] [--device auto] \
        [--out rouge.json] [--generations generations.jsonl]

Each prompt is rendered with the training template without its response ([bos] + core/data.py
format_prompt, exactly the tokens training puts before the response); the model continues it
greedily (do_sample=False, num_beams=1: the same answer every time, no sampling noise between
runs) until eos or max_new_tokens, batched with left padding so that every row's new tokens start
at the same position. The continuation is scored against the reference response with Google's
`rouge-score` package (F-measure of rouge1, rouge2, rougeL, rougeLsum; its tokenizer lower-cases
and keeps ASCII letters and digits only), averaged over the pairs.

Returns {"rouge1", "rouge2", "rougeL", "rougeLsum": mean F-measure in [0, 1], "rouge_n": pairs
scored, "generation": the settings, "rouge_score_version"}. The blackbox runs it as a child
after training (blackbox/work.py), on the first GPU of the evaluation (one process). The
options' rules are core/objective.py's GenerationConfig; torch is imported inside the functions.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from importlib.metadata import version
from pathlib import Path

from core import faults
from core.procs import exit_with_blackbox
from core.config import VALIDATION_SPLIT, ConfigError
from core.objective import ROUGE_METRICS, GenerationConfig
from core.data import FORMATS, TEMPLATES, bos_ids, build_split, format_prompt, load_source
from core.model import (add_loading_arguments, load_adapter, load_base, load_tokenizer, resolve_device,
                        weights_dtype, without_bitsandbytes)

GREEDY = {"do_sample": False, "num_beams": 1}


def score(predictions: list[str], references: list[str], use_stemmer: bool = False) -> dict:
    """{metric: mean F-measure over the pairs} for ROUGE_METRICS, from rouge_score (0.0 for no pairs)."""
    from rouge_score import rouge_scorer

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    scorer = rouge_scorer.RougeScorer(list(ROUGE_METRICS), use_stemmer=use_stemmer)
    totals = dict.fromkeys(ROUGE_METRICS, 0.0)
    for prediction, reference in zip(predictions, references):
        for name, s in scorer.score(reference, prediction).items():  # rouge_score's order: (target, prediction)
            totals[name] += s.fmeasure
    n = len(predictions)
    return {name: total / n if n else 0.0 for name, total in totals.items()}


def held_out_pairs(data: dict, generation: dict) -> list[dict]:
    """The pairs to generate for: the experiment's validation split (as training split it) or a file,
    the first num_examples of them, as {"instruction", "input", "output"} records."""
    if generation["data"] == VALIDATION_SPLIT:
        _, records = build_split(data["sources"], data["val_fraction"], data["split_seed"])
    else:
        records = load_source(generation["data"], generation["format"], key="objective.generation.data")
    return records[:generation["num_examples"]] if generation["num_examples"] else records


def generate(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int) -> list[str]:
    """Greedy continuations of the prompts (the new text only, special tokens dropped)."""
    import torch

    device = next(model.parameters()).device
    bos = bos_ids(tokenizer)  # as training prepended it (core/data.py)
    pad = tokenizer.pad_token_id
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(prompts), batch_size):
        rows = [bos + tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts[start:start + batch_size]]
        width = max(map(len, rows))
        # left padding: the prompts end together, and every row's first new token is at position `width`
        input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)
        attention_mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
        with torch.no_grad():
            generated = model.generate(input_ids=input_ids, attention_mask=attention_mask,
                                       max_new_tokens=max_new_tokens, **GREEDY,
                                       temperature=None, top_p=None, top_k=None,  # not a sampler: no warnings
                                       pad_token_id=pad, eos_token_id=tokenizer.eos_token_id, use_cache=True)
        out += tokenizer.batch_decode(generated[:, width:], skip_special_tokens=True)
    if was_training:
        model.train()
    return [text.strip() for text in out]


def evaluate_rouge(model_spec: dict, adapter_path: str | None, records: list[dict], template: str,
                   generation: dict, device: str = "auto", generations_path: str | None = None) -> dict:
    """Load the base (core/model.py, as training did) + adapter, generate for the records, score.

    model_spec: spec.json's "model" (path, dtype, revision, attn_implementation, trust_remote_code,
    quantization). generation: GenerationConfig's fields. ValueError for bad arguments or data."""
    _check(generation, template)
    if not records:
        raise ValueError("no held-out pairs to generate for")
    device = resolve_device(device)
    tokenizer = load_tokenizer(model_spec["path"], model_spec["revision"], model_spec["trust_remote_code"])
    quantized = model_spec.get("quantization")
    # the dtype training used (core/model.py run_dtype), for the device generation runs on
    dtype = weights_dtype(model_spec["dtype"], quantized, device)
    model = load_base(model_spec, dtype)  # on this process's GPU while loading, when there is one
    if adapter_path:
        model = load_adapter(model, adapter_path, dtype)  # LoRA computed in that dtype, not peft's fp32
    if not quantized:
        model = model.to(device)
    prompts = [format_prompt(r, template) for r in records]
    predictions = generate(model, tokenizer, prompts, generation["max_new_tokens"], generation["batch_size"])
    references = [r["output"] for r in records]
    if generations_path:
        _write_atomic(generations_path, "".join(
            json.dumps({"prompt": p, "reference": ref, "prediction": pred}) + "\n"
            for p, ref, pred in zip(prompts, references, predictions)))
    return score(predictions, references, generation["use_stemmer"]) | {
        "rouge_n": len(records),
        "generation": {k: generation[k] for k in ("max_new_tokens", "batch_size", "use_stemmer")} | GREEDY,
        "rouge_score_version": version("rouge-score"),
    }


def _check(generation: dict, template: str) -> None:
    """The config's rules (GenerationConfig), as ValueError for the command line."""
    try:
        GenerationConfig(**generation).check("ROUGE")
    except (ConfigError, TypeError) as e:
        raise ValueError(str(e)) from None
    if template not in TEMPLATES:
        raise ValueError(f"template {template!r} is not one of {', '.join(TEMPLATES)}")


def _write_atomic(path, text: str) -> None:
    tmp = Path(path).with_name(f".{Path(path).name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)  # a reader never sees half a file


def _from_run(run_dir: Path, args) -> tuple[dict, str, dict, str, dict]:
    """(model spec, adapter, data settings, template, generation) of a run folder; flags given override."""
    spec_path = run_dir / "spec.json"
    if not spec_path.is_file():
        raise ValueError(f"{run_dir} is not a run folder (no spec.json)")
    spec = json.loads(spec_path.read_text())
    generation = dataclasses.asdict(GenerationConfig()) | (spec["objective"].get("generation") or {})
    given = {"num_examples": args.num_examples, "max_new_tokens": args.max_new_tokens,
             "batch_size": args.batch_size, "use_stemmer": args.use_stemmer or None}
    generation |= {k: v for k, v in given.items() if v is not None}
    adapter = None if args.base else str(run_dir / "adapter")  # --base: a baseline folder (blackbox/baseline.py)
    return spec["model"], adapter, spec["data"], spec["data"]["template"], generation


def _from_flags(args) -> tuple[dict, str | None, dict, str, dict]:
    """The same from --model, --adapter and --pairs (a file: the validation split needs a run folder)."""
    if not args.model or not args.pairs or args.pairs == VALIDATION_SPLIT:
        raise ValueError("give a run folder, or --model and --pairs FILE (.json/.jsonl)")
    defaults = GenerationConfig()
    generation = {"data": args.pairs, "format": args.format, "num_examples": args.num_examples,  # None: all
                  "max_new_tokens": defaults.max_new_tokens if args.max_new_tokens is None else args.max_new_tokens,
                  "batch_size": defaults.batch_size if args.batch_size is None else args.batch_size,
                  "use_stemmer": args.use_stemmer}
    model_spec = {"path": args.model, "dtype": args.dtype, "revision": None, "attn_implementation": "sdpa",
                  "trust_remote_code": args.trust_remote_code, "quantization": args.quantization}
    return model_spec, args.adapter, {}, args.template, generation


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.rouge", description=__doc__.split("\n\n")[0])
    parser.add_argument("run", nargs="?", help="a run folder: base model, adapter, data and settings from spec.json")
    parser.add_argument("--model", help="base model folder (or hub id), without a run folder")
    parser.add_argument("--adapter", default=None, help="PEFT/LoRA adapter folder")
    parser.add_argument("--base", action="store_true", help="with a run folder: the base model, not its adapter")
    parser.add_argument("--pairs", help="a .json/.jsonl file of instruction/response pairs, without a run folder")
    parser.add_argument("--format", default="alpaca", help=" or ".join(FORMATS))
    parser.add_argument("--template", default="alpaca", help=" or ".join(TEMPLATES))
    parser.add_argument("--num-examples", type=int, default=None, help="the first N pairs (default: the run's, or all)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: the run's, or 128")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the run's, or 8")
    parser.add_argument("--use-stemmer", action="store_true", help="Porter stemming before matching")
    add_loading_arguments(parser)
    parser.add_argument("--out", default=None, help="also write the result JSON here")
    parser.add_argument("--generations", default=None, help="write prompt, reference, prediction per pair (JSON lines)")
    args = parser.parse_args(argv)
    exit_with_blackbox()  # a run's evaluation ends with the blackbox that asked for it
    if args.run:  # a run's evaluation (blackbox/work.py): the kill tests' hook
        faults.kill_search_at(faults.parse_fault(Path(args.run)), "rouge")
    try:
        model_spec, adapter, data, template, generation = (
            _from_run(Path(args.run), args) if args.run else _from_flags(args))
        _check(generation, template)  # before reading any data
        without_bitsandbytes(model_spec.get("quantization"))  # before transformers and peft are imported
        records = held_out_pairs(data, generation)
        result = evaluate_rouge(model_spec, adapter, records, template, generation, args.device, args.generations)
    except ValueError as e:  # core.data.DataError too
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = json.dumps(result, indent=2)
    if args.out:
        _write_atomic(args.out, text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
