"""Memory of one training process at the largest point, from config.json alone (`bbo plan`).

No weights are downloaded and nothing is allocated: the architecture is built on the meta device
and counted; the bytes follow from the formula below. bbo/plan.py puts the result in the plan,
bbo/plan_text.py prints it.

Parameter counts
----------------
The architecture is built from config.json on the meta device (no memory, no weights)
and counted. config.json comes from the local model folder (model.path), else from the
hub cache, else from a copy shipped in bbo/known_models/<org>--<name>.json (LLaMA-2-7B).
An unknown hub id without a local copy gives "unknown model size", never a guess.
LoRA adds r * (in_features + out_features) parameters per adapted linear module (A is
r x in, B is out x r), for every module named by lora.target_modules (peft's matching:
the module's name or its last dotted parts).

Memory model (bytes, one process, N = parameters, P = LoRA parameters at the largest rank)
-----------------------------------------------------------------------------------------
(a) base weights: N x 2 (model.dtype auto = bfloat16 on GPU; float32 = 4).
    model.quantization=4bit (bitsandbytes NF4, double quantisation): every linear layer of
    the decoder stores 4 bits/param + 0.127 bit/param of block scales (one 8-bit absmax per
    64-element block = 0.125, one fp32 scale per 256 of those = 0.002), i.e. ~0.516 byte;
    embeddings, lm_head and norms are not quantised, and train.py's
    peft.prepare_model_for_kbit_training casts them to float32 (4 bytes/param).
(b) LoRA: peft keeps adapter weights in float32 when the base is bf16/fp16
    (autocast_adapter_dtype): P x 4 weights + P x 4 gradients + P x 8 AdamW (exp_avg and
    exp_avg_sq, fp32) + P x 4 DDP gradient buckets when launch.num_processes > 1 (DDP keeps
    a flat copy of the gradients to all-reduce). The optimizer step's temporaries are
    allocated after backward has freed the activations and are not counted.
(c) activations of train.per_device_batch_size x data.max_length tokens (T; packing puts the
    examples of a batch in one row of at most that many tokens), a = 2 bytes (bf16 autocast;
    4 when train.precision=fp32). Saved for backward, per token and per LLaMA-style
    decoder layer (h = hidden_size, i = intermediate_size, q = heads x head_dim,
    kv = key/value heads x head_dim, n = heads):
      attention  4h  norm input (RMSNorm upcasts its input to fp32 and keeps it)
               + a*h normed (the input LoRA's A matrices of q/k/v need for their gradients)
               + a*(q + 2kv)  q, k, v (after rotary; SDPA keeps them)
               + a*q attention output (o_proj's input) + 4n  SDPA's log-sum-exp (fp32)
      MLP        4h  norm input (fp32) + a*h normed
               + 4a*i  gate, up, act(gate), act(gate)*up (down_proj's input)
      LoRA       a * sum(r) over the layer's adapted modules (A's output, B's input)
      dropout    (a + 1) * sum(in_features) over the layer's adapted modules when the space
                 allows lora dropout > 0: each adapted module draws its own dropout, whose
                 output (a bytes) and mask (1 byte) are kept. The normed inputs above are still
                 counted, so this slightly overstates. With dropout 0 peft skips the dropout.
    Without checkpointing: T x layers x (attention + MLP + LoRA + dropout).
    With gradient checkpointing (one checkpoint per decoder layer, as transformers does):
    T x layers x a*h (each layer's input) + T x (attention + MLP + LoRA + dropout): one
    layer is recomputed at a time during backward.
    Logits: T x vocab x (a bf16 logits + 4 fp32 upcast for the loss, kept by log-softmax
    + 4 fp32 gradient); not affected by checkpointing.
(d) 1.5 GiB for the CUDA context, cuBLAS workspaces and allocator fragmentation.
Verdict: compared with 90% of the GPU's memory ("80GB" is read as 80 GiB, as nvidia-smi
shows it); the rest is headroom for what the model above leaves out.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

GIB = 2 ** 30
USABLE_FRACTION = 0.90  # of the GPU's memory; the rest is headroom for what the model leaves out
OVERHEAD_GIB = 1.5  # CUDA context + cuBLAS workspaces + allocator fragmentation
NF4_BITS = 4 + 8 / 64 + 32 / (64 * 256)  # 4-bit codes + double-quantised block scales: ~4.127 bits/param
KNOWN_MODELS = Path(__file__).resolve().parent / "known_models"


# ---------------------------------------------------------------- the architecture

@dataclass
class Arch:
    """What the estimate needs from config.json (counted on the meta device)."""
    source: str  # where config.json came from
    params: int
    quantizable: int  # linear-layer parameters bitsandbytes quantises (all but lm_head)
    layers: int
    hidden: int
    intermediate: int
    heads: int
    q_dim: int
    kv_dim: int
    vocab: int
    linears: list[tuple[str, int, int]]  # (module name, in_features, out_features)

    def adapted(self, target_modules: list[str]) -> list[tuple[str, int, int]]:
        """The linear modules peft adapts: name == target or name ends with '.' + target."""
        return [m for m in self.linears if any(m[0] == t or m[0].endswith("." + t) for t in target_modules)]


def find_model_config(config) -> tuple[dict, str] | None:
    """(config.json as a dict, where it came from), or None when the model's size is unknown."""
    path = config.resolve(config.model.path)
    folder = Path(path)
    if folder.is_dir():
        file = folder / "config.json"
        return (json.loads(file.read_text()), str(file)) if file.is_file() else None
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(path, "config.json", revision=config.model.revision)
        if isinstance(cached, str):
            return json.loads(Path(cached).read_text()), f"{cached} (hub cache)"
    except Exception:  # noqa: BLE001 - not a valid repo id, no hub library: fall through
        pass
    shipped = KNOWN_MODELS / (path.replace("/", "--") + ".json")
    if shipped.is_file():
        where = f"bbo/known_models/{shipped.name} (shipped copy of {path}'s config.json)"
        return json.loads(shipped.read_text()), where
    return None


def load_arch(cfg: dict, source: str) -> Arch:
    """Instantiate the architecture on the meta device and count."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
    try:
        model_config = AutoConfig.for_model(**cfg)
    except (KeyError, ValueError):
        from transformers import LlamaConfig

        model_config = LlamaConfig(**cfg)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config)
    params = sum(p.numel() for p in model.parameters())
    output = model.get_output_embeddings()
    linears, quantizable = [], 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            linears.append((name, module.in_features, module.out_features))
            if module is not output:
                quantizable += sum(p.numel() for p in module.parameters())
    c = model_config
    hidden = c.hidden_size
    heads = c.num_attention_heads
    head_dim = getattr(c, "head_dim", None) or hidden // heads
    kv_heads = getattr(c, "num_key_value_heads", None) or heads
    return Arch(source=source, params=params, quantizable=quantizable, layers=c.num_hidden_layers, hidden=hidden,
                intermediate=getattr(c, "intermediate_size", None) or 4 * hidden, heads=heads,
                q_dim=heads * head_dim, kv_dim=kv_heads * head_dim, vocab=c.vocab_size, linears=linears)


# ---------------------------------------------------------------- memory

def activation_bytes_per_token_layer(arch: Arch, adapted: list, rank: int, dropout: bool, a: int = 2) -> dict:
    """The documented formula (module docstring, (c)), term by term, in bytes per token per layer."""
    h, i, n = arch.hidden, arch.intermediate, arch.heads
    per_layer = len(adapted) / arch.layers
    in_features = sum(m[1] for m in adapted) / arch.layers
    return {
        "attention": 4 * h + a * h + a * (arch.q_dim + 2 * arch.kv_dim) + a * arch.q_dim + 4 * n,
        "mlp": 4 * h + a * h + 4 * a * i,
        "lora": a * rank * per_layer,
        "dropout": (a + 1) * in_features if dropout else 0,
    }


def memory_breakdown(arch: Arch, adapted: list, rank: int, *, tokens: int, dtype_bytes: float = 2, a: int = 2,
                     quantization: str | None = None, ddp: bool = False, dropout: bool = False,
                     checkpointing: bool = False) -> dict:
    """GiB per item of one training process; see the module docstring for each term."""
    if quantization == "4bit":
        weights = arch.quantizable * NF4_BITS / 8 + (arch.params - arch.quantizable) * 4
    else:
        weights = arch.params * dtype_bytes
    lora = rank * sum(m[1] + m[2] for m in adapted)
    per = sum(activation_bytes_per_token_layer(arch, adapted, rank, dropout, a).values())
    if checkpointing:
        activations = tokens * arch.layers * a * arch.hidden + tokens * per
    else:
        activations = tokens * arch.layers * per
    out = {
        "weights": weights,
        "lora_weights": lora * 4,
        "lora_grads": lora * 4,
        "optimizer": lora * 8,
        "ddp_buckets": lora * 4 if ddp else 0,
        "activations": activations,
        "logits": tokens * arch.vocab * (a + 4 + 4),
    }
    out = {k: v / GIB for k, v in out.items()}
    out["overhead"] = OVERHEAD_GIB
    out["total"] = sum(out.values())
    return out


# ---------------------------------------------------------------- the verdict

def memory_verdict(plan, config, mem) -> tuple[str, list[str]]:
    """(fits | fits with gradient checkpointing | does not fit, what to change) for a bbo.plan.Plan whose
    memory is filled in; mem(r=, batch=, quant=, ddp=, gc=) is memory_breakdown of another setting."""
    usable = plan.usable_gib
    train = config.train
    without, with_gc = plan.memory["total"], plan.memory_checkpointing["total"]
    advice = []
    if without <= usable:
        if plan.gradient_checkpointing:
            advice.append(f"it fits without gradient checkpointing ({without:.1f} GiB): "
                          f"train.gradient_checkpointing=false saves ~1/3 of the compute")
        elif without > 0.9 * usable:
            advice.append(f"tight: {without / usable:.0%} of the usable memory; train.gradient_checkpointing=true "
                          f"would need {with_gc:.1f} GiB")
        return "fits", advice
    if with_gc <= usable:
        verdict = "fits with gradient checkpointing"
        if not plan.gradient_checkpointing:
            advice.append(f"train.gradient_checkpointing=true ({with_gc:.1f} GiB; ~1/3 more compute per step)")
    else:
        verdict = "does not fit"
    # a smaller batch per GPU, the same effective batch (without checkpointing first: no recompute)
    batch = train.per_device_batch_size
    options = (False,) if verdict != "does not fit" else (False, True)
    found = False
    for gc in options:
        for smaller in (b for b in range(batch - 1, 0, -1) if batch % b == 0):
            total = mem(batch=smaller, gc=gc)["total"]
            if total <= usable:
                how = " train.gradient_checkpointing=true" if gc else ""
                accum = train.grad_accum * batch // smaller
                advice.append(f"train.per_device_batch_size={smaller} train.grad_accum={accum}{how} "
                              f"(same effective batch): {total:.1f} GiB")
                found = True
                break
        if found:
            break
    if plan.quantization != "4bit":
        q_without, q_gc = mem(quant="4bit")["total"], mem(quant="4bit", gc=True)["total"]
        if q_gc <= usable:
            how = "" if q_without <= usable else " train.gradient_checkpointing=true"
            advice.append(f"model.quantization=4bit{how} (QLoRA base): {q_without:.1f} GiB without / "
                          f"{q_gc:.1f} GiB with gradient checkpointing")
    if verdict == "does not fit":
        single = mem(ddp=False, gc=True)["total"]
        if config.launch.num_processes > 1 and single <= usable:
            advice.append(f"launch.num_processes=1 train.gradient_checkpointing=true: no DDP gradient buckets, "
                          f"{single:.1f} GiB (one GPU per evaluation)")
        fitting = [r for r in plan.ranks if r < plan.rank and mem(r=r, gc=True)["total"] <= usable]
        if fitting:
            advice.append(f"ranks up to {max(fitting)} fit with gradient checkpointing: drop the larger ones "
                          f"from space.rank")
    if verdict == "does not fit":
        advice.append(f"a larger GPU: at least {math.ceil(with_gc / USABLE_FRACTION)} GiB with gradient "
                      f"checkpointing, {math.ceil(without / USABLE_FRACTION)} GiB without")
    else:
        advice.append(f"without gradient checkpointing it needs a GPU of at least "
                      f"{math.ceil(without / USABLE_FRACTION)} GiB")
    return verdict, advice
