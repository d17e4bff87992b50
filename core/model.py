"""Loading the base model, its tokenizer and a trained adapter: the one place training and evaluation share.

Why one place: the device, the dtype, the attention implementation and the 4-bit (QLoRA) base
must be the same when an adapter is trained (blackbox/train.py), when its validation loss is
recomputed (eval/loss.py) and when it is scored on MMLU (eval/mmlu.py; lm-eval loads a
non-quantized base itself, with the dtype resolved here). torch is imported inside the functions.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def add_loading_arguments(parser) -> None:
    """The model-loading options of the evaluation commands (python -m eval.mmlu, eval.rouge)."""
    parser.add_argument("--dtype", default="auto", help="auto (bfloat16 on a GPU that supports it, else float16; "
                                                        "float32 on CPU), float32, bfloat16, float16")
    parser.add_argument("--device", default="auto", help="auto (a GPU if torch sees one), cuda, cuda:N or cpu")
    parser.add_argument("--quantization", default=None, choices=["4bit"], help="4bit: NF4 base weights (QLoRA)")
    parser.add_argument("--trust-remote-code", action="store_true")


def without_bitsandbytes(quantization: str | None) -> None:
    """Without a 4-bit base, keep bitsandbytes out of this process: peft (and transformers' checks) import it
    whenever it is installed, 1.5-3 s of every training and evaluation start, and nothing else uses it.
    A None in sys.modules makes `import bitsandbytes` fail and importlib.util.find_spec answer None, which
    is how those libraries ask whether it is there. Call before transformers or peft is imported."""
    if not quantization and "bitsandbytes" not in sys.modules:
        sys.modules["bitsandbytes"] = None


def resolve_device(device: str = "auto") -> str:
    """`auto` = cuda when torch sees a GPU, else cpu; anything else as given (cuda:1, cpu)."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(name: str, device: str = "auto"):
    """torch dtype for model.dtype; `auto` = the GPU's half precision (half_dtype), float32 on CPU
    (bf16 matmuls are slow there)."""
    import torch

    if name == "auto":
        return half_dtype() if resolve_device(device).startswith("cuda") else torch.float32
    return getattr(torch, name)


def half_dtype():
    """bfloat16 where it is computed natively (Ampere and newer GPUs, and on CPU), else float16 (a V100 or
    T4 has no bf16: there training uses fp16 with a loss scaler)."""
    import torch

    if torch.cuda.is_available() and not torch.cuda.is_bf16_supported(including_emulation=False):
        return torch.float16
    return torch.bfloat16


def quantization_config(quantization: str | None, compute_dtype=None):
    """bitsandbytes NF4 with double quantization and half-precision compute (the QLoRA recipe), or None."""
    if quantization is None:
        return None
    if quantization != "4bit":
        raise ValueError(f"model.quantization: {quantization!r} is not one of 4bit")
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype or half_dtype())


def load_tokenizer(path: str, revision: str | None = None, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    return tokenizer


def load_model(path: str, *, dtype, revision: str | None = None, attn_implementation: str = "sdpa",
               trust_remote_code: bool = False, quantization: str | None = None, device: str | None = None):
    """The base model in its training dtype from the start (never fp32 weights on GPU).

    Loaded straight onto `device` when it is a GPU (device_map: each rank's weights go from the files to
    its own GPU, not through a full copy in host memory per process); a 4-bit base is always placed
    while loading (bitsandbytes quantizes on the way in). Without a device the model stays on CPU.
    """
    from transformers import AutoModelForCausalLM

    extra = {}
    if quantization:
        extra = {"quantization_config": quantization_config(quantization, dtype), "device_map": {"": device or "cpu"}}
    elif device and device.startswith("cuda"):
        extra = {"device_map": {"": device}}
    model = AutoModelForCausalLM.from_pretrained(
        path, revision=revision, dtype=dtype, attn_implementation=attn_implementation,
        trust_remote_code=trust_remote_code, **extra)
    # No KV cache: with one, transformers skips its packed-sequence detection and packed examples
    # would attend to each other (measured: a different loss than the same examples padded).
    model.config.use_cache = False
    if quantization and (device or "cpu") == "cpu":
        _no_packed_cpu_kernel_for_odd_layers(model)
    return model


CPU_PACK_BLOCK = 64  # bitsandbytes' packed 4-bit CPU kernel: both widths of a layer multiples of this


def _no_packed_cpu_kernel_for_odd_layers(model) -> None:
    """On a CPU with AVX512-BF16, bitsandbytes 0.50 repacks a 4-bit layer's weights for inference
    (eval mode, no grad) in blocks of 32 outputs and 64 inputs: a layer of another width (the tiny
    test model's 172) crashes the validation pass. Such layers keep the plain 4-bit kernel.
    LLaMA's widths (4096, 11008, 13824) are multiples of 64 and keep the fast one."""
    for module in model.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False) and (
                module.in_features % CPU_PACK_BLOCK or module.out_features % CPU_PACK_BLOCK):
            module.support_avx512bf16_for_cpu = False


def load_base(model_spec: dict, dtype, gradient_checkpointing: bool = False):
    """The base model of a run (spec.json's "model"), on this process's GPU when there is one, ready for
    LoRA: a 4-bit base gets peft's k-bit preparation (norms in fp32, inputs that need grads)."""
    import torch

    device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if torch.cuda.is_available() else "cpu"
    model = load_model(model_spec["path"], dtype=dtype, revision=model_spec["revision"],
                       attn_implementation=model_spec["attn_implementation"],
                       trust_remote_code=model_spec["trust_remote_code"],
                       quantization=model_spec.get("quantization"), device=device)
    if model_spec.get("quantization"):
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def weights_dtype(name: str, quantization: str | None, device: str = "auto"):
    """The dtype a run computes in: half precision for a 4-bit base, else model.dtype (auto from torch)."""
    return half_dtype() if quantization else resolve_dtype(name, device)


def run_dtype(spec: dict):
    """The weights' dtype of a run (spec.json's "model")."""
    return weights_dtype(spec["model"]["dtype"], spec["model"].get("quantization"))


def load_adapter(model, folder: str | Path, dtype):
    """A run's saved adapter on its base, computed in the run's dtype (what training computed and what
    its validation loss measured): peft's default would turn a bf16 adapter back into fp32."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(model, str(folder), autocast_adapter_dtype=False)
    cast_lora(model, dtype)
    return model


def cast_lora(model, dtype) -> None:
    """The LoRA weights of a peft model in `dtype`, in place. peft keeps them in fp32 during training;
    cast after training, the adapter that is measured, saved, scored on MMLU and exported is one."""
    for name, param in model.named_parameters():
        if "lora_" in name and param.is_floating_point() and param.dtype != dtype:
            param.data = param.data.to(dtype)


def load_for_eval(run_dir: str | Path, with_adapter: bool = True):
    """Base model + the run's adapter (with_adapter=False: the base model alone, for the baseline) + its
    validation split and collator, from the run folder alone (python -m eval.loss <run dir>)."""
    from core.data import collator_for, load_tokenized

    run_dir = Path(run_dir)
    spec = json.loads((run_dir / "spec.json").read_text())
    model_spec = spec["model"]
    tokenizer = load_tokenizer(model_spec["path"], model_spec["revision"], model_spec["trust_remote_code"])
    _, val_set = load_tokenized(spec["data"], tokenizer, model_spec["path"], spec["cache_dir"])
    dtype = run_dtype(spec)
    model = load_base(model_spec, dtype)
    if with_adapter:
        model = load_adapter(model, run_dir / "adapter", dtype)
    collator = collator_for(tokenizer, spec["data"], model_spec["attn_implementation"])
    return model.to(resolve_device()), val_set, collator, spec


ADAPTER_WEIGHTS = "adapter_model.safetensors"  # what peft's save_pretrained writes (safetensors)


def save_adapter(model, folder: str | Path, dtype) -> None:
    """Save a run's LoRA adapter in the run's weights dtype (bf16 for a bf16 base), not in peft's fp32.

    peft keeps adapter weights in fp32 whatever the base's dtype; cast_adapter casts the saved file,
    so an adapter of a bf16 run takes half the disk and loads onto its base as trained."""
    model.save_pretrained(str(folder))
    cast_adapter(folder, dtype)


def cast_adapter(folder: str | Path, dtype) -> None:
    """The floating-point tensors of a saved adapter, cast to `dtype` in place (no-op when they are)."""
    from safetensors.torch import load_file, save_file

    path = Path(folder) / ADAPTER_WEIGHTS
    tensors = load_file(str(path))
    if all(t.dtype == dtype or not t.is_floating_point() for t in tensors.values()):
        return
    cast = {k: t.to(dtype) if t.is_floating_point() else t for k, t in tensors.items()}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(cast, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, path)  # a reader sees the old file or the new one
