"""Loading the base model and its tokenizer: the one place training and evaluation share.

Why one place: the dtype, the attention implementation and the 4-bit (QLoRA) base must be
the same when an adapter is trained (blackbox/train.py) and when it is scored (eval/mmlu.py
for a 4-bit base; lm-eval loads the others itself with the same dtype).
"""
from __future__ import annotations


def resolve_dtype(name: str):
    """torch dtype for model.dtype; `auto` = bfloat16 when torch sees a GPU, float32 on CPU."""
    import torch

    if name == "auto":
        name = "bfloat16" if torch.cuda.is_available() else "float32"
    return getattr(torch, name)


def quantization_config(quantization: str | None):
    """bitsandbytes NF4 with double quantization and bf16 compute (the QLoRA recipe), or None."""
    if quantization is None:
        return None
    if quantization != "4bit":
        raise ValueError(f"model.quantization: {quantization!r} is not one of 4bit")
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16)


def load_tokenizer(path: str, revision: str | None = None, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    return tokenizer


def load_model(path: str, *, dtype, revision: str | None = None, attn_implementation: str = "sdpa",
               trust_remote_code: bool = False, quantization: str | None = None, device: str | None = None):
    """The base model in its training dtype from the start (never fp32 weights on GPU).

    A 4-bit base is placed on `device` while loading (bitsandbytes quantizes on the way in);
    other models load on CPU and the caller (Trainer, lm-eval) moves them.
    """
    from transformers import AutoModelForCausalLM

    extra = {}
    if quantization:
        extra = {"quantization_config": quantization_config(quantization), "device_map": {"": device or "cpu"}}
    model = AutoModelForCausalLM.from_pretrained(
        path, revision=revision, dtype=dtype, attn_implementation=attn_implementation,
        trust_remote_code=trust_remote_code, **extra)
    # No KV cache: with one, transformers skips its packed-sequence detection and packed examples
    # would attend to each other (measured: a different loss than the same examples padded).
    model.config.use_cache = False
    return model
