"""The GPU checks of scripts/gpu-smoke.sh: each a function here and a command; each also runs on CPU (tiny model).

    python -m benchmarks.gpu_checks env        [--device cuda|cpu]   # torch, CUDA build, driver, bitsandbytes, flash-attn
    python -m benchmarks.gpu_checks packing    [--device cuda|cpu]   # packed and padded batches give the same loss
    python -m benchmarks.gpu_checks memory     [--device cuda|cpu]   # peak memory of a LoRA step at the largest rank vs bbo plan
    python -m benchmarks.gpu_checks mmlu-time  [--device cuda|cpu]   # seconds of python -m eval.mmlu --limit 20, rank-128 adapter
    python -m benchmarks.gpu_checks runs EXPERIMENT [--since T] [--expect-...]   # what the smoke script's trainings left
    python -m benchmarks.gpu_checks ngpu                             # the number of GPUs torch sees (for the script)

--device defaults to cuda when torch sees a GPU, else cpu. Each check prints one line per figure
and exits 1 when what it checks does not hold (2 for bad arguments). On CPU the checks run on the
tiny fixture model (`python -m fixtures`, .cache/demo/tiny-llama; generated here when missing), so
tests/test_gpu_checks.py runs them without a GPU; figures that only mean something on a GPU say
"not measured on cpu".

- packing: the same examples (the demo's Alpaca data, alpaca template) batched by
  core.data.collator_for with data.packing on (DataCollatorWithFlattening: one row, position ids
  restarting per example, no attention mask; with flash_attention_2 also flash-attention's
  cu_seq_lens) and off (padded to the longest): the mean loss of the counted tokens must agree
  within a tolerance of the dtype (relative 1e-2 in bf16/fp16, 1e-5 in fp32), and the per-token
  losses too (mean absolute difference). A control, the packed row without its position ids (so the
  examples attend to each other, as they would if transformers missed the packing), must differ by
  more than the tolerance: else the check could not tell and says so. On cuda: sdpa, and
  flash_attention_2 when flash-attn imports; the tiny fixture (trained weights) and a 2-layer
  model of LLaMA-2-7B's widths with random weights (head size 128, as the real one).
- memory: one process, the largest rank and dropout of experiments/llama2-7b-valloss's space, its
  batch and max length (one packed row of batch x max_length tokens), on LLaMA-2-7B's shape with
  random weights (bbo/known_models' config.json, as bbo plan reads it) in the training dtype, LoRA
  fp32 (peft), bf16 autocast, fused AdamW and gradient clipping as transformers' Trainer does; the
  second step's torch.cuda.max_memory_allocated after reset_peak_memory_stats (the first step
  creates AdamW's states) beside bbo plan's figure for the same rank, batch and length (bbo.plan.estimate,
  with launch.num_processes=1: no DDP buckets). The plan adds a fixed 1.5 GiB for the CUDA context
  and fragmentation that max_memory_allocated does not see; both figures are printed.
- mmlu-time: a rank-128 LoRA on the tiny model (peft, all linear layers, saved in the run dtype by
  core.model.save_adapter, as training saves one), then `python -m eval.mmlu --model
  .cache/demo/tiny-llama --adapter ... --data-dir .cache/demo/mmlu --limit 20 --device DEVICE`
  timed from outside (process start and lm-eval's import included); --base also times the base alone.
"""
from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import REPO  # noqa: E402  (also sets the offline, single-thread defaults)

WORK = REPO / ".cache" / "gpu-checks"
DEMO = REPO / ".cache" / "demo"
VALLOSS = REPO / "experiments" / "llama2-7b-valloss"
GIB = 2 ** 30

# Relative tolerance of the mean loss, and absolute tolerance of the mean per-token difference, by dtype.
# bf16 keeps 8 bits of mantissa (relative rounding 2^-9 = 0.2%): two kernel paths may round every
# activation differently; fp32 differs only in summation order.
MEAN_RTOL = {"float32": 1e-5, "bfloat16": 1e-2, "float16": 1e-2}
TOKEN_ATOL = {"float32": 1e-4, "bfloat16": 5e-2, "float16": 5e-2}


# ---------------------------------------------------------------- shared

def resolve(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"error: --device {device}: torch sees no GPU (torch {torch.__version__}, "
                         f"CUDA build {torch.version.cuda})")
    return device


def tiny_assets() -> dict:
    """The tiny fixture model, data and MMLU set (generated once into .cache/demo, as the demo does)."""
    from fixtures import make_assets

    return make_assets(DEMO)


def known_llama2_7b(layers: int | None = None) -> dict:
    """LLaMA-2-7B's config.json as bbo plan reads it (bbo/known_models), optionally with fewer layers."""
    from bbo.plan_memory import find_model_config
    from core.config import load_config

    cfg, _ = find_model_config(load_config(VALLOSS))
    cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
    if layers:
        cfg["num_hidden_layers"] = layers
    return cfg


def random_model(cfg: dict, device: str, dtype, attn_implementation: str, seed: int = 0):
    """A LLaMA of this config.json with random weights (seeded: the same weights for every attention
    kind), built on the device, without a KV cache (with one, transformers misses packed rows)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(seed)
    config = LlamaConfig(**{k: v for k, v in cfg.items() if k not in ("architectures", "model_type",
                                                                    "torch_dtype", "transformers_version")})
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn_implementation)
    model.config.use_cache = False
    return model


def tiny_model(device: str, dtype, attn_implementation: str):
    """The tiny fixture LLaMA loaded as training loads a base (core.model.load_model: no KV cache)."""
    from core.model import load_model

    model = load_model(tiny_assets()["model"], dtype=dtype, attn_implementation=attn_implementation)
    return model.to(device)


def collator(tokenizer, data: dict, attn_implementation: str):
    """core.data.collator_for, with the attention kind where it takes one (older versions: two arguments)."""
    from core.data import collator_for

    if "attn_implementation" in inspect.signature(collator_for).parameters:
        return collator_for(tokenizer, data, attn_implementation=attn_implementation)
    return collator_for(tokenizer, data)


def flash_attn_version() -> str | None:
    """flash-attn's version when it imports, else None."""
    try:
        import flash_attn
    except Exception:  # noqa: BLE001 - not installed, or built for another torch/CUDA: both mean "not usable"
        return None
    return getattr(flash_attn, "__version__", "unknown version")


def _gib(n: float) -> str:
    return f"{n / GIB:.1f} GiB"


# ---------------------------------------------------------------- env

def env_check(device: str) -> int:
    """torch, its CUDA build, the driver (nvidia-smi), `python -m bitsandbytes`, flash-attn. 1 when
    bitsandbytes' own diagnostics fail."""
    import accelerate
    import peft
    import torch
    import transformers

    print(f"torch {torch.__version__}, CUDA build {torch.version.cuda or 'none (CPU build)'}, "
          f"cuDNN {torch.backends.cudnn.version() if torch.cuda.is_available() else '-'}; transformers "
          f"{transformers.__version__}, peft {peft.__version__}, accelerate {accelerate.__version__}")
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    print(f"GPUs torch sees: {n}")
    for i in range(n):
        p = torch.cuda.get_device_properties(i)
        print(f"  GPU {i}: {p.name}, {p.total_memory / GIB:.1f} GiB, compute capability {p.major}.{p.minor}, "
              f"bf16 {torch.cuda.is_bf16_supported()}")
    print("driver: " + nvidia_smi())
    rc = bitsandbytes_check()
    version = flash_attn_version()
    print(f"flash-attn: {version}" if version else
          "flash-attn: not installed (flash_attention_2 checks are skipped; sdpa is what the experiments use)")
    if device == "cpu":
        print("device: cpu (the GPU figures above are what this machine has)")
    return rc


def nvidia_smi() -> str:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return "nvidia-smi: not found"
    try:
        proc = subprocess.run([exe, "--query-gpu=index,name,driver_version,memory.total", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20)
        header = subprocess.run([exe], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError) as e:
        return f"nvidia-smi failed: {e}"
    if proc.returncode != 0:
        return f"nvidia-smi exited with {proc.returncode}: {(proc.stderr or proc.stdout).strip()[:300]}"
    cuda = next((part.split(":", 1)[1].strip().split()[0] for part in header.split("|")
                 if "CUDA Version" in part), "unknown")
    gpus = [line.strip() for line in proc.stdout.splitlines() if line.strip()]
    return f"CUDA {cuda} supported by the driver; " + "; ".join(gpus)


def bitsandbytes_check(timeout: int = 120) -> int:
    """`python -m bitsandbytes`: its first lines (versions, the CUDA it found) and whether it works."""
    try:
        proc = subprocess.run([sys.executable, "-m", "bitsandbytes"], capture_output=True, text=True,
                              timeout=timeout, cwd=REPO)
    except subprocess.TimeoutExpired:
        print(f"bitsandbytes: `python -m bitsandbytes` did not finish in {timeout} s")
        return 1
    out = (proc.stdout + proc.stderr).splitlines()
    head = [line for line in out[:8] if line.strip() and not line.startswith("=")]
    print("bitsandbytes (python -m bitsandbytes): " + " | ".join(line.strip() for line in head))
    text = "\n".join(out)
    works = proc.returncode == 0 and ("SUCCESS!" in text or "loaded successfully" in text)
    if works:
        verdict = next(line for line in out if "SUCCESS!" in line or "loaded successfully" in line)
        print(f"bitsandbytes: works ({verdict.strip()})")
        return 0
    print(f"bitsandbytes: FAILS (exit {proc.returncode}); last lines:")
    for line in out[-12:]:
        print("  " + line)
    return 1


# ---------------------------------------------------------------- packing

def example_rows(n: int, max_length: int) -> tuple[list[dict], object]:
    """n tokenized validation examples of the demo's Alpaca data (alpaca template), labels on every token,
    and the tokenizer."""
    from core.data import IGNORE_INDEX, build_split, tokenize
    from core.model import load_tokenizer

    assets = tiny_assets()
    tokenizer = load_tokenizer(assets["model"])
    _, val = build_split([{"path": assets["train"], "format": "alpaca"}], 0.1, 0)
    rows = [r for r in (tokenize(rec, tokenizer, "alpaca", max_length) for rec in val) if r][:n]
    # every token counted (prompt too), not only the response: ~20x more tokens whose context matters;
    # the first is never a target (as bos is not in the training data), so padding on either side counts the same
    return [{"input_ids": r["input_ids"], "labels": [IGNORE_INDEX] + r["input_ids"][1:]} for r in rows], tokenizer


def token_losses(model, batch: dict, device: str):
    """(mean loss as the model computes it, the per-token losses of the counted tokens in example order)."""
    import torch

    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    with torch.no_grad():
        out = model(**batch)
    labels = batch["labels"][:, 1:]
    logits = out.logits[:, :-1].float()
    counted = labels != -100
    losses = torch.nn.functional.cross_entropy(logits[counted], labels[counted], reduction="none")
    return float(out.loss), losses.cpu()


def packing_check(device: str, models: list[str], n_examples: int = 16, max_length: int = 512,
                  dtype_name: str = "auto", layers: int = 2) -> list[dict]:
    """Packed vs padded loss for each model and attention kind; one dict (and one printed line) each."""
    import torch

    from core.model import resolve_dtype

    dtype = resolve_dtype(dtype_name, device)
    dname = str(dtype).replace("torch.", "")
    rows, tokenizer = example_rows(n_examples, max_length)
    kinds = ["sdpa"]
    if device.startswith("cuda"):
        if flash_attn_version():
            kinds.append("flash_attention_2")
        else:
            print("packing, flash_attention_2: skipped (flash-attn does not import)")
    data = {"packing": True, "max_length": max_length}
    results = []
    for name in models:
        for kind in kinds:
            if name == "tiny":
                model, label = tiny_model(device, dtype, kind), "tiny fixture (trained)"
            else:
                model = random_model(known_llama2_7b(layers), device, dtype, kind)
                label = f"LLaMA-2-7B widths, {layers} layers, random weights"
            model.eval()
            packed_collator = collator(tokenizer, data, kind)
            packed = packed_collator(rows)
            padded = collator(tokenizer, dict(data, packing=False), kind)(rows)
            control = {"input_ids": packed["input_ids"], "labels": packed["labels"]}  # no positions: one sequence
            mean_packed, tok_packed = token_losses(model, packed, device)
            mean_padded, tok_padded = token_losses(model, padded, device)
            mean_control, tok_control = token_losses(model, control, device)
            del model
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
            assert len(tok_packed) == len(tok_padded) == len(tok_control), "packed and padded count other tokens"
            rel = abs(mean_packed - mean_padded) / abs(mean_padded)
            mad = float((tok_packed - tok_padded).abs().mean())
            rel_control = abs(mean_control - mean_padded) / abs(mean_padded)
            mad_control = float((tok_control - tok_padded).abs().mean())
            rtol, atol = MEAN_RTOL[dname], TOKEN_ATOL[dname]
            ok = rel <= rtol and mad <= atol
            sensitive = rel_control > rtol or mad_control > atol
            extras = [k for k in ("cu_seq_lens_q", "position_ids") if k in packed]
            r = {"model": name, "attn": kind, "device": device, "dtype": dname, "tokens": len(tok_packed),
                 "examples": len(rows), "packed": mean_packed, "padded": mean_padded, "rel_diff": rel,
                 "token_mad": mad, "control_rel_diff": rel_control, "control_token_mad": mad_control,
                 "rtol": rtol, "atol": atol, "ok": ok, "sensitive": sensitive, "packed_keys": extras}
            results.append(r)
            verdict = "ok" if ok else "FAILED"
            print(f"packing, {label}, {kind}, {device} {dname}, {len(rows)} examples, {len(tok_packed)} tokens "
                  f"({'+'.join(extras) or 'no position ids'}): packed {mean_packed:.5f} vs padded {mean_padded:.5f}, "
                  f"rel diff {rel:.1e} (tol {rtol:.0e}), per-token mean |diff| {mad:.1e} (tol {atol:.0e}): {verdict}; "
                  f"control (examples attending to each other): rel diff {rel_control:.1e}, per-token {mad_control:.1e}"
                  + ("" if sensitive else ": within tolerance, so this check cannot tell here"))
    return results


# ---------------------------------------------------------------- memory

def largest(space, name: str):
    """The largest value a hyperparameter of the space can take (choices, bounds or the fixed value)."""
    var = next(v for v in space.variables if v.name == name)
    return var.value_bounds[1]


def memory_check(device: str, experiment: Path = VALLOSS, layers: int | None = None, steps: int = 2) -> dict:
    """Peak memory of a LoRA training step at the space's largest rank beside bbo plan's figure."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import set_seed

    from bbo.plan import detect_gpus, estimate
    from bbo.plan_memory import load_arch, memory_breakdown
    from core.config import load_config
    from core.model import resolve_dtype

    config = load_config(experiment, ["launch.num_processes=1"])  # one process: what is measured here
    rank, dropout = int(largest(config.space, "rank")), float(largest(config.space, "dropout"))
    batch, length = config.train.per_device_batch_size, config.data.max_length
    checkpointing = config.train.gradient_checkpointing
    on_gpu = device.startswith("cuda")

    # bbo plan's figure for the same rank, batch and length (as `bbo plan` calls it; fewer layers: its formula)
    if layers:
        cfg = known_llama2_7b(layers)
        arch = load_arch(cfg, "bbo/known_models, fewer layers")
        a = 4 if config.train.precision == "fp32" else 2
        predicted = memory_breakdown(arch, arch.adapted(config.lora.target_modules), rank, tokens=batch * length,
                                     dtype_bytes=4 if config.model.dtype == "float32" else 2, a=a,
                                     dropout=dropout > 0, checkpointing=checkpointing)
        plan_rank, verdict = rank, None
    else:
        plan = estimate(config, detect_gpus() if on_gpu else None)
        predicted = plan.memory_checkpointing if checkpointing else plan.memory
        plan_rank, verdict = plan.rank, plan.verdict
    assert plan_rank == rank, (plan_rank, rank)
    fixed = predicted["overhead"]

    # the measured step: LLaMA-2-7B's shape on a GPU, the tiny fixture on CPU
    dtype = resolve_dtype(config.model.dtype, device)
    precision = config.train.precision
    if precision == "auto":  # as training resolves it: the weights' half precision on a GPU, fp32 on CPU
        precision = ("bf16" if dtype == torch.bfloat16 else "fp16") if on_gpu else "fp32"
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
        model = random_model(known_llama2_7b(layers), device, dtype, config.model.attn_implementation)
        label = f"LLaMA-2-7B shape ({layers or 32} layers, random weights)"
    else:
        model = tiny_model(device, dtype, config.model.attn_implementation)
        label = "tiny fixture"
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    set_seed(config.train.seed)
    lora = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=dropout, target_modules=config.lora.target_modules,
                      bias=config.lora.bias, use_rslora=config.lora.use_rslora, task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=config.train.weight_decay,
                                  fused=True)  # transformers' default optim with torch >= 2.8: adamw_torch_fused

    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(0)
    features = []
    for _ in range(batch):
        ids = torch.randint(3, vocab, (length,), generator=gen).tolist()
        features.append({"input_ids": ids, "labels": ids})
    data = dict(config.to_dict()["data"])
    tokenizer = None
    if not data["packing"]:  # padding needs a pad id; the examples are all max_length long anyway
        from core.model import load_tokenizer

        tokenizer = load_tokenizer(tiny_assets()["model"])
    inputs = collator(tokenizer, data, config.model.attn_implementation)(features)
    inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in inputs.items()}
    tokens = int(inputs["input_ids"].numel())

    def step():
        with torch.autocast(device_type="cuda" if on_gpu else "cpu",
                            dtype=torch.float16 if precision == "fp16" else torch.bfloat16,
                            enabled=precision in ("bf16", "fp16")):
            loss = model(**inputs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.train.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    result = {"device": device, "model": label, "rank": rank, "dropout": dropout, "batch": batch, "max_length": length,
              "tokens": tokens, "checkpointing": checkpointing, "predicted_gib": predicted["total"],
              "predicted_fixed_gib": fixed, "verdict": verdict, "measured_gib": None, "reserved_gib": None,
              "oom": False}
    head = (f"memory, {label}, LoRA r={rank} dropout {dropout:g} on {len(config.lora.target_modules)} module kinds, "
            f"batch {batch} x {length} tokens ({tokens} in the step{', packed' if data['packing'] else ''}), "
            f"{str(dtype).replace('torch.', '')} weights, {precision} compute, gradient checkpointing "
            f"{'on' if checkpointing else 'off'}, one process")
    plan_text = (f"bbo plan predicts {predicted['total']:.1f} GiB for LLaMA-2-7B"
                 f"{f' with {layers} layers' if layers else ''} at rank {rank}, batch {batch} x {length} "
                 f"({predicted['total'] - fixed:.1f} GiB + {fixed:.1f} GiB fixed for the CUDA context and fragmentation)"
                 + (f", verdict on this GPU: {verdict}" if verdict else ""))
    try:
        if on_gpu:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        first = step()  # creates AdamW's states
        if on_gpu:
            torch.cuda.synchronize()
            result["first_step_gib"] = torch.cuda.max_memory_allocated() / GIB
            torch.cuda.reset_peak_memory_stats()
        t1 = time.perf_counter()
        for _ in range(max(1, steps - 1)):  # what every later step of a training holds
            step()
        if on_gpu:
            torch.cuda.synchronize()
        t2 = time.perf_counter()
    except torch.OutOfMemoryError as e:
        result["oom"] = True
        print(f"{head}: OUT OF MEMORY ({str(e).splitlines()[0][:200]}); {plan_text}")
        return result
    result.update(first_step_seconds=t1 - t0, step_seconds=(t2 - t1) / max(1, steps - 1), loss=first)
    if on_gpu:
        peak, reserved = torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()
        total = torch.cuda.get_device_properties(torch.device(device)).total_memory
        result.update(measured_gib=peak / GIB, reserved_gib=reserved / GIB, gpu_gib=total / GIB)
        ratio = (peak / GIB) / (predicted["total"] - fixed)
        print(f"{head}: measured peak {_gib(peak)} allocated ({_gib(reserved)} reserved, of {_gib(total)}; "
              f"first step {result['first_step_gib']:.1f} GiB) in a training step (forward + backward + AdamW "
              f"step), {result['step_seconds']:.2f} s a step; {plan_text}; "
              f"measured / predicted without the fixed part: {ratio:.2f}")
    else:
        print(f"{head}: peak memory not measured on cpu (the step ran: {result['first_step_seconds']:.1f} s, "
              f"loss {first:.3f}); {plan_text}")
    return result


# ---------------------------------------------------------------- MMLU timing

def make_adapter(folder: Path, rank: int, device: str) -> Path:
    """A rank-`rank` LoRA on the tiny model's linear layers (peft's init: B = 0), saved as training saves one."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import set_seed

    from core.model import load_model, resolve_dtype, save_adapter

    dtype = resolve_dtype("auto", device)
    model = load_model(tiny_assets()["model"], dtype=torch.float32)
    set_seed(0)
    model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, task_type="CAUSAL_LM",
                                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                             "up_proj", "down_proj"]))
    shutil.rmtree(folder, ignore_errors=True)
    save_adapter(model, folder, dtype)
    return folder


def time_mmlu(device: str, adapter: Path | None, limit: int, out: Path, timeout: int) -> dict:
    """Wall seconds of `python -m eval.mmlu` (a fresh process, as the blackbox runs it) and its result."""
    assets = tiny_assets()
    cmd = [sys.executable, "-m", "eval.mmlu", "--model", assets["model"], "--data-dir", assets["mmlu"],
           "--num-fewshot", "5", "--limit", str(limit), "--device", device, "--out", str(out)]
    if adapter:
        cmd[5:5] = ["--adapter", str(adapter)]
    out.unlink(missing_ok=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    seconds = time.perf_counter() - t0
    if proc.returncode != 0 or not out.exists():
        tail = (proc.stdout + proc.stderr)[-3000:]
        raise RuntimeError(f"python -m eval.mmlu exited with {proc.returncode}:\n{tail}")
    return dict(json.loads(out.read_text()), seconds=seconds, command=" ".join(cmd))


def mmlu_time_check(device: str, rank: int = 128, limit: int = 20, base: bool = False, timeout: int = 400) -> dict:
    WORK.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    adapter = make_adapter(WORK / f"adapter-r{rank}", rank, device)
    made = time.perf_counter() - t0
    r = time_mmlu(device, adapter, limit, WORK / f"mmlu-r{rank}.json", timeout)
    print(f"mmlu-time, tiny model + rank-{rank} adapter (made and saved in {made:.1f} s), --limit {limit} "
          f"({r['mmlu_n']} questions, 5-shot), {device}: {r['seconds']:.1f} s wall for python -m eval.mmlu "
          f"(process start and lm-eval's import included); mmlu {r['mmlu']:.3f}")
    print(f"  $ {r['command']}")
    result = {"device": device, "rank": rank, "limit": limit, "seconds": r["seconds"], "mmlu_n": r["mmlu_n"],
              "mmlu": r["mmlu"]}
    if base:
        b = time_mmlu(device, None, limit, WORK / "mmlu-base.json", timeout)
        print(f"mmlu-time, tiny model alone, the same questions, {device}: {b['seconds']:.1f} s wall; "
              f"the adapter costs {r['seconds'] - b['seconds']:+.1f} s")
        result["base_seconds"] = b["seconds"]
    return result


# ---------------------------------------------------------------- runs the smoke script trained

def expected_mmlu_questions(config) -> int | None:
    """Questions a search's run scores: min(search limit, questions) per subject of the local test set."""
    mmlu = config.objective.mmlu
    if mmlu.task != "mmlu_local" or not mmlu.data_dir:
        return None
    counts: dict = {}
    with open(Path(config.resolve(mmlu.data_dir)) / "test.jsonl") as f:
        for line in f:
            if line.strip():
                subject = json.loads(line)["subject"]
                counts[subject] = counts.get(subject, 0) + 1
    limit = mmlu.search_questions
    return sum(min(c, limit) if limit else c for c in counts.values())


def runs_check(experiment: Path, since: float = 0.0, min_runs: int = 1, cuda_bf16: bool = False,
               world_size: int | None = None, one_mmlu: bool = False, overlap: bool = False) -> int:
    """One line per run finished since `since` (epoch seconds); 1 when an expectation fails."""
    from core.config import load_config

    experiment = Path(experiment)
    runs = []
    for d in sorted((experiment / "runs").iterdir()) if (experiment / "runs").is_dir() else []:
        metrics_file = d / "metrics.json"
        if metrics_file.exists() and metrics_file.stat().st_mtime >= since:
            m = json.loads(metrics_file.read_text())
            prov = d / "provenance.json"
            start = json.loads(prov.read_text()).get("time") if prov.exists() else None
            runs.append((d, m, start, metrics_file.stat().st_mtime))
    problems = []
    if len(runs) < min_runs:
        problems.append(f"{len(runs)} finished run(s) since the step began, expected at least {min_runs}")
    expected_n = expected_mmlu_questions(load_config(experiment)) if one_mmlu else None
    for d, m, start, end in runs:
        mmlu = m.get("mmlu")
        print(f"{d.name}: {m.get('device')} {m.get('dtype')}/{m.get('precision')}, {m.get('world_size', 1)} process(es), "
              f"val_loss {m.get('val_loss', math.nan):.4f}, mmlu "
              + (f"{mmlu:.3f} on {m.get('mmlu_n')} questions ({m.get('mmlu_processes', 1)} process(es), "
                 f"{m.get('mmlu_seconds', 0):.1f} s)" if isinstance(mmlu, (int, float)) else "-")
              + f", train {m.get('train_seconds', 0):.1f} s")
        if cuda_bf16 and (m.get("device") != "cuda" or m.get("dtype") != "bfloat16" or m.get("precision") != "bf16"):
            problems.append(f"{d.name}: trained on {m.get('device')} {m.get('dtype')}/{m.get('precision')}, "
                            "not cuda bfloat16/bf16")
        if world_size and m.get("world_size") != world_size:
            problems.append(f"{d.name}: {m.get('world_size')} training process(es), expected {world_size}")
        if one_mmlu:
            log = d / "mmlu.log"
            printed = sum(1 for line in log.read_text(errors="replace").splitlines()
                          if line.startswith('  "mmlu": ')) if log.exists() else None
            if not isinstance(mmlu, (int, float)):
                problems.append(f"{d.name}: no MMLU result")
            elif expected_n is not None and m.get("mmlu_n") != expected_n:
                problems.append(f"{d.name}: MMLU scored {m.get('mmlu_n')} questions, expected {expected_n}")
            if printed is not None and printed != 1:
                problems.append(f"{d.name}: mmlu.log holds {printed} results (processes that each scored "
                                "everything?), expected one")
    if overlap:
        spans = [(start, end, d.name) for d, m, start, end in runs if start]
        together = any(a[0] < b[1] and b[0] < a[1] for i, a in enumerate(spans) for b in spans[i + 1:])
        if len(spans) >= 2:
            print("side by side: " + ("yes, the runs' times overlap" if together else "NO, they ran one after the other"))
        if not together:
            problems.append("no two runs trained at the same time")
    for p in problems:
        print(f"FAILED: {p}")
    if not problems:
        print(f"ok: {len(runs)} run(s)")
    return 1 if problems else 0


# ---------------------------------------------------------------- main

def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_checks", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="check", required=True)

    def add(name, help_text):
        s = sub.add_parser(name, help=help_text)
        s.add_argument("--device", default="auto", help="cuda or cpu (default: cuda when torch sees a GPU)")
        return s

    add("env", "torch, CUDA build, driver, bitsandbytes, flash-attn")
    s = add("packing", "packed and padded batches give the same loss")
    s.add_argument("--models", default=None, help="comma-separated: tiny, llama2-7b-shape (default: both on cuda, "
                                                  "tiny on cpu)")
    s.add_argument("--layers", type=int, default=2, help="layers of the LLaMA-2-7B-shaped model (default 2)")
    s.add_argument("--examples", type=int, default=16)
    s.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16")
    s = add("memory", "peak memory of a LoRA step at the largest rank vs bbo plan")
    s.add_argument("--experiment", default=str(VALLOSS))
    s.add_argument("--layers", type=int, default=None, help="fewer layers of LLaMA-2-7B (default: all 32)")
    s = add("mmlu-time", "seconds of a limited MMLU with a rank-128 adapter")
    s.add_argument("--rank", type=int, default=128)
    s.add_argument("--limit", type=int, default=20)
    s.add_argument("--base", action="store_true", help="also time the base model alone")
    s = sub.add_parser("runs", help="the runs a smoke step trained, and what they must show")
    s.add_argument("experiment")
    s.add_argument("--since", type=float, default=0.0, help="only runs finished after this time (epoch seconds)")
    s.add_argument("--min-runs", type=int, default=1)
    s.add_argument("--expect-cuda-bf16", action="store_true")
    s.add_argument("--expect-world-size", type=int)
    s.add_argument("--expect-one-mmlu", action="store_true",
                   help="one MMLU result per run, over the questions of the search's limit")
    s.add_argument("--expect-overlap", action="store_true", help="two runs trained at the same time")
    sub.add_parser("ngpu", help="the number of GPUs torch sees")
    args = p.parse_args(argv)

    if args.check == "ngpu":
        import torch

        print(torch.cuda.device_count() if torch.cuda.is_available() else 0)
        return 0
    if args.check == "runs":
        return runs_check(Path(args.experiment), args.since, args.min_runs, args.expect_cuda_bf16,
                          args.expect_world_size, args.expect_one_mmlu, args.expect_overlap)
    device = resolve(args.device)
    if args.check == "env":
        return env_check(device)
    if args.check == "packing":
        models = (args.models.split(",") if args.models else
                  (["tiny", "llama2-7b-shape"] if device.startswith("cuda") else ["tiny"]))
        unknown = [m for m in models if m not in ("tiny", "llama2-7b-shape")]
        if unknown:
            p.error(f"--models: unknown {unknown}")
        results = packing_check(device, models, args.examples, dtype_name=args.dtype, layers=args.layers)
        return 0 if all(r["ok"] for r in results) else 1
    if args.check == "memory":
        r = memory_check(device, Path(args.experiment), args.layers)
        return 1 if r["oom"] and r["verdict"] != "does not fit" else 0  # an OOM the plan foresaw is a figure
    if args.check == "mmlu-time":
        mmlu_time_check(device, args.rank, args.limit, args.base)
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
