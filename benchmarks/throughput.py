"""Training throughput: the project's training path vs the original's setup, same model, data, batch and steps.

    OMP_NUM_THREADS=1 python -m benchmarks.throughput                           # tiny fixture LLaMA, CPU
    python -m benchmarks.throughput --model-config llama2-7b --steps 30         # a GPU: LLaMA-2-7B shape, random weights
    OMP_NUM_THREADS=1 python -m benchmarks.throughput --model-config llama2-7b --layers 2 --quick   # CPU smoke test
    python -m benchmarks.throughput --quick                                     # a few steps: checks the figures print

Why: every NOMAD evaluation is a training run, so tokens/s is evaluations/day.
Each setup runs `blackbox/train.py`'s own `main` (the exact code the blackbox
launches) in a fresh process, on a spec.json that differs only where the setups
differ; the script only instruments it through train.Seams: a counting wrapper
around the collator train.py builds (real = non-padding tokens, processed = every
position the model computes), a step timer (the first --warmup steps are left out),
no validation pass after training, and with --model-config a random-weight base.

Setups (per-device batch --batch-size, grad accum 1, LoRA r=8 alpha=16 on all linear layers, alpaca template,
max length 512, the demo's synthetic Alpaca+Dolly data):
  project              packing (DataCollatorWithFlattening, no padding), sdpa, weights in bf16 on GPU (fp32 on CPU)
  original             what the original's train script did: fp32 weights (+ --bf16 autocast on GPU), no packing,
                       each batch padded to its longest example (Stanford-Alpaca collator)
  original-pad512      the same, every example padded to max length 512
Attention is sdpa in all three (conservative: the original's 2023 transformers may have run the slower eager one).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from benchmarks import REPO  # noqa: E402  (also sets the offline, single-thread defaults)

WORK = REPO / ".cache" / "benchmarks" / "throughput"

SETUPS = ["project", "original", "original-pad512"]
LLAMA2_7B = {"hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
             "intermediate_size": 11008, "vocab_size": 32000, "max_position_embeddings": 4096,
             "rms_norm_eps": 1e-5}
H100_BF16_DENSE = 989e12


# ---------------------------------------------------------------- the spec each setup trains with

def make_spec(setup: str, args, on_gpu: bool) -> dict:
    """The demo experiment's resolved spec (as the blackbox writes it), changed only where the setups differ."""
    from blackbox.work import train_spec
    from core.config import load_config

    config = load_config(REPO / "experiments" / "demo")
    spec = train_spec(config, f"throughput-{setup}", {"rank": 8, "alpha": 16, "dropout": 0.0, "lr": 2e-4})
    spec["cache_dir"] = str(WORK / "cache")
    spec["data"].update(template="alpaca", max_length=512)
    spec["train"].update(max_steps=args.steps, per_device_batch_size=args.batch_size, grad_accum=1,
                         logging_steps=max(1, args.steps), gradient_checkpointing=False,
                         eval_every=None)  # no validation at checkpoints: inside the timed steps, and counted
    spec["model"]["attn_implementation"] = "sdpa"
    if setup == "project":
        spec["data"]["packing"] = True
        spec["model"]["dtype"], spec["train"]["precision"] = "auto", "auto"
    else:
        spec["data"]["packing"] = False
        spec["data"]["pad_to_max_length"] = setup == "original-pad512"
        spec["model"]["dtype"] = "float32"  # the original loaded the base weights in fp32 ...
        spec["train"]["precision"] = "bf16" if on_gpu else "fp32"  # ... and trained with --bf16 (autocast) on GPU
    if args.model_config:
        spec["model_config"] = dict(LLAMA2_7B, num_hidden_layers=args.layers or 32)
    return spec


# ---------------------------------------------------------------- instrumentation of blackbox/train.py

class CountingCollator:
    """Wraps the collator train.py built: counts real (non-padding) and processed tokens of every batch."""

    def __init__(self, inner):
        self.inner, self.active, self.batches = inner, True, []

    def __call__(self, features):
        batch = self.inner(features)
        if self.active:
            processed = batch["input_ids"].numel()
            mask = batch.get("attention_mask")
            real = int(mask.sum()) if mask is not None else processed  # packed rows have no padding
            self.batches.append((real, processed))
        return batch


def child(setup: str, args) -> dict:
    """Run train.main on this setup's spec in this process; return the measured figures."""
    import torch
    from transformers import TrainerCallback

    from blackbox import train

    on_gpu = torch.cuda.is_available()
    spec = make_spec(setup, args, on_gpu)
    run_dir = WORK / setup
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in ("train_result.json", "error.json"):
        (run_dir / name).unlink(missing_ok=True)
    (run_dir / "spec.json").write_text(json.dumps(spec, indent=2))

    counter, step_ends = None, []

    def counting_collator(collator):
        nonlocal counter
        counter = CountingCollator(collator)
        return counter

    class StepTimer(TrainerCallback):
        def on_step_end(self, targs, state, control, **kwargs):
            if on_gpu:
                torch.cuda.synchronize()
            step_ends.append((time.perf_counter(), len(counter.batches)))

        def on_train_end(self, targs, state, control, **kwargs):
            counter.active = False  # the validation pass that follows is not training

    def random_llama(spec, dtype):
        """LLaMA-2-7B's shape (or fewer layers) with random weights, built on the GPU when there is one."""
        from transformers import AutoModelForCausalLM, LlamaConfig

        config = LlamaConfig(**spec["model_config"])
        with torch.device("cuda" if on_gpu else "cpu"):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype,
                                                     attn_implementation=spec["model"]["attn_implementation"])
        # as core.model.load_model: with a KV cache transformers does not see the packed rows (it builds a
        # plain causal mask, so packed examples would attend to each other, and faster than training does)
        model.config.use_cache = False
        return model

    seams = train.Seams(base_model=random_llama if args.model_config else None, wrap_collator=counting_collator,
                        callbacks=[StepTimer()], validate=False)  # training throughput only: no validation pass
    rc = train.main(run_dir, seams)
    if rc != 0:
        raise SystemExit(f"{setup}: train.py failed with {rc}: {(run_dir / 'error.json').read_text()}")

    result = json.loads((run_dir / "train_result.json").read_text())
    first, last = step_ends[args.warmup - 1], step_ends[-1]
    seconds = last[0] - first[0]
    window = counter.batches[first[1]:last[1]]
    real, processed = sum(b[0] for b in window), sum(b[1] for b in window)
    n_params = sum(p.numel() for n, p in _base_params(spec, args)) if args.model_config else None
    return {"setup": setup, "steps_timed": len(step_ends) - args.warmup, "seconds": seconds,
            "real_tokens": real, "processed_tokens": processed,
            "tokens_per_second": real / seconds, "padding_share": 1 - real / processed,
            "device": torch.cuda.get_device_name() if on_gpu else "cpu",
            "dtype": result["dtype"], "precision": result["precision"], "params": n_params}


def _base_params(spec, args):
    """Parameter count of the base model (LoRA adds ~0.1-0.3%, left out), from the config on the meta device."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(LlamaConfig(**spec["model_config"]))
    return list(model.named_parameters())


# ---------------------------------------------------------------- main

def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="4 timed steps after 1 warm-up (smoke test)")
    p.add_argument("--steps", type=int, default=40, help="training steps per setup (default 40)")
    p.add_argument("--warmup", type=int, default=5, help="first steps left out of the timing (default 5)")
    p.add_argument("--batch-size", type=int, default=4, help="per-device batch, as the original's (default 4)")
    p.add_argument("--model-config", choices=["llama2-7b"], help="random-weight LLaMA-2-7B shape instead of the tiny model")
    p.add_argument("--layers", type=int, help="with --model-config: keep only this many decoder layers (CPU smoke test)")
    p.add_argument("--peak-flops", type=float, default=H100_BF16_DENSE,
                   help="peak bf16 FLOP/s per device for MFU (default H100 dense 989e12)")
    p.add_argument("--setups", default=",".join(SETUPS), help="comma-separated subset of: " + "; ".join(SETUPS))
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.warmup = min(args.steps, 5), 1
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args)), flush=True)
        return 0

    results = []
    for setup in args.setups.split(","):
        setup = setup.strip()
        cmd = [sys.executable, "-m", "benchmarks.throughput", "--child", setup] + (argv if argv is not None else sys.argv[1:])
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                              env=dict(os.environ, PYTHONPATH=str(REPO)))
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            print(proc.stdout[-3000:] + proc.stderr[-3000:], file=sys.stderr)
            print(f"error: setup {setup!r} failed", file=sys.stderr)
            return 1
        results.append(json.loads(lines[-1][len("RESULT "):]))

    model = f"LLaMA-2-7B shape, {args.layers or 32} layers, random weights" if args.model_config else "tiny fixture LLaMA"
    print(f"# Training throughput: {model}; {results[0]['device']}; batch {args.batch_size}, "
          f"{args.steps} steps ({args.warmup} warm-up left out), max length 512, LoRA r=8 on all linear layers\n")
    show_mfu = bool(args.model_config)
    head = "| setup | weights / compute | real tokens/s | padding share of processed tokens | real tokens timed |"
    print(head + (" MFU (4N FLOPs per real token) |" if show_mfu else ""))
    print("|---" * (5 + show_mfu) + "|")
    for r in results:
        row = (f"| {r['setup']} | {r['dtype']} / {r['precision']} | {r['tokens_per_second']:.1f} | "
               f"{r['padding_share']:.1%} | {r['real_tokens']} |")
        if show_mfu:
            row += f" {r['tokens_per_second'] * 4 * r['params'] / args.peak_flops:.1%} |"
        print(row)
    base = results[0]
    for r in results[1:]:
        print(f"\nratio {base['setup']} / {r['setup']}: {base['tokens_per_second'] / r['tokens_per_second']:.2f}x "
              "real tokens/s")
    if show_mfu:
        print(f"\nN = {results[0]['params'] / 1e9:.2f}e9 base parameters; peak {args.peak_flops:.3g} FLOP/s per device; "
              "tokens/s is per device (one process)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
