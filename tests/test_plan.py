"""bbo.plan: memory, time and disk estimates before any GPU time (offline, CPU, meta device)."""
import math
import subprocess
import sys

import pytest

from bbo.plan import GpuSpec, estimate, parse_gpus
from conftest import REPO, make_experiment
from core.config import load_config

GIB = 2 ** 30


def _llama2_7b_hand(rank: int, tokens: int, *, dropout: bool, ddp: bool, checkpointing: bool) -> dict:
    """LLaMA-2-7B (h 4096, i 11008, 32 layers, 32 heads, vocab 32000) by hand, in GiB."""
    h, i, layers, heads, vocab = 4096, 11008, 32, 32, 32000
    params = 6.74e9
    weights = params * 2  # bf16
    # LoRA r*(in+out) per adapted module: q,k,v,o are 4096 -> 4096; gate, up 4096 -> 11008; down 11008 -> 4096
    per_layer = 4 * rank * (4096 + 4096) + 2 * rank * (4096 + 11008) + rank * (11008 + 4096)
    lora = per_layer * layers
    lora_bytes = lora * (4 + 4 + 8 + (4 if ddp else 0))  # fp32 weights, grads, AdamW x2, DDP buckets
    # saved activations per token per layer, bytes (bf16 = 2; RMSNorm input kept in fp32 = 4)
    attention = 4 * h + 2 * h + 2 * (h + h + h) + 2 * h + 4 * heads  # norm in, normed, q k v, attn out, lse
    mlp = 4 * h + 2 * h + 4 * 2 * i  # norm in, normed, gate, up, act(gate), product
    lora_act = 7 * 2 * rank  # A's output in each of the 7 adapted modules
    drop = 3 * (6 * h + i) if dropout else 0  # dropout output (2) + mask (1) of each module's input
    per_token_layer = attention + mlp + lora_act + drop
    if checkpointing:
        activations = tokens * layers * 2 * h + tokens * per_token_layer
    else:
        activations = tokens * layers * per_token_layer
    logits = tokens * vocab * (2 + 4 + 4)
    total = (weights + lora_bytes + activations + logits) / GIB + 1.5
    return {"weights": weights / GIB, "lora_params": lora, "activations": activations / GIB, "total": total}


def test_llama2_7b_memory_matches_a_hand_calculation():
    config = load_config(REPO / "experiments" / "llama2-7b-bbo3")
    plan = estimate(config, parse_gpus("4xA100-80GB"))
    assert plan.rank == 64 and plan.dropout == 0.1
    assert plan.params == pytest.approx(6.74e9, rel=0.001)
    tokens = 4 * 512  # per_device_batch_size x max_length
    for checkpointing, memory in ((False, plan.memory), (True, plan.memory_checkpointing)):
        hand = _llama2_7b_hand(64, tokens, dropout=True, ddp=True, checkpointing=checkpointing)
        assert memory["weights"] == pytest.approx(hand["weights"], rel=0.10)
        assert memory["activations"] == pytest.approx(hand["activations"], rel=0.10)
        assert memory["total"] == pytest.approx(hand["total"], rel=0.10)
    hand = _llama2_7b_hand(64, tokens, dropout=True, ddp=True, checkpointing=False)
    assert plan.lora_params == hand["lora_params"] == 159_907_840
    assert plan.lora_params_by_module["q_proj"] == 32 * 64 * (4096 + 4096)
    # 12.6 GiB of bf16 weights; ~34.6 GiB without and ~18.7 GiB with checkpointing
    assert 12 < plan.memory["weights"] < 13
    assert plan.memory_checkpointing["total"] < plan.memory["total"]
    assert plan.verdict == "fits"
    assert plan.adapter_bytes == 159_907_840 * 2 and plan.disk_bytes == 159_907_840 * 2 * 50  # bf16 adapters
    text = plan.text()
    assert "fits" in text and "GiB" in text and "known_models/meta-llama--Llama-2-7b-hf.json" in text
    # train.keep_adapters best:3: the 3 kept + the one trained but not yet ranked (launch.parallel 1)
    kept = estimate(load_config(REPO / "experiments" / "llama2-7b-bbo3", ["train.keep_adapters=best:3"]),
                    parse_gpus("4xA100-80GB"))
    assert kept.disk_bytes == 159_907_840 * 2 * 4 and "for 4 adapters" in kept.text()


def test_4bit_base_stores_the_decoder_linears_at_about_half_a_byte():
    config = load_config(REPO / "experiments" / "llama2-7b-bbo3")
    plan = estimate(config, parse_gpus("1xA100-40GB"), quantization="4bit")
    linear = 32 * (4 * 4096 * 4096 + 3 * 4096 * 11008)
    rest = 6_738_415_616 - linear  # embeddings, lm_head, norms: fp32 after prepare_model_for_kbit_training
    hand = (linear * (4 + 0.127) / 8 + rest * 4) / GIB
    assert plan.memory["weights"] == pytest.approx(hand, rel=0.01)
    assert 3.5 < plan.memory["weights"] < 4.5


def test_verdicts_for_ranks_up_to_512():
    config = load_config(REPO / "experiments" / "llama2-7b-valloss")
    big = estimate(config, parse_gpus("4xA100-80GB"))
    assert big.rank == 512
    # rank 512: 1.28e9 LoRA parameters, 16 bytes each + DDP buckets = 23.8 GiB before any activation
    assert big.memory["lora_weights"] + big.memory["lora_grads"] + big.memory["optimizer"] \
        + big.memory["ddp_buckets"] == pytest.approx(1_279_262_720 * 20 / GIB, rel=1e-6)
    assert big.verdict == "fits"  # ~55.8 GiB of 72 usable

    small = estimate(config, parse_gpus("1xA100-40GB"))  # ~39.5 GiB even with checkpointing, 36 usable
    assert small.verdict == "does not fit"
    assert any("model.quantization=4bit" in a for a in small.advice)
    assert any("ranks up to 256" in a for a in small.advice)
    assert any("needs 4 GPUs" in w for w in small.warnings)
    qlora = estimate(config, parse_gpus("1xA100-40GB"), quantization="4bit")  # ~31.1 GiB with checkpointing
    assert qlora.verdict == "fits with gradient checkpointing"

    tiny = estimate(config, parse_gpus("1xRTX4090-24GB"))
    assert tiny.verdict == "does not fit"
    # the LoRA states of rank 512 alone take 23.8 GiB: 4-bit does not save it
    assert estimate(config, parse_gpus("1xRTX4090-24GB"), quantization="4bit").verdict == "does not fit"
    assert not any("model.quantization=4bit" in a for a in tiny.advice)
    assert "does not fit" in tiny.text()


def test_verdicts_for_rank_64():
    config = load_config(REPO / "experiments" / "llama2-7b-bbo3")
    assert estimate(config, parse_gpus("1xRTX4090-24GB")).verdict == "fits with gradient checkpointing"
    plan = estimate(config, parse_gpus("1xT4-16GB"))  # bf16 7B: ~18.7 GiB even with checkpointing
    assert plan.verdict == "does not fit"
    assert any("model.quantization=4bit" in a for a in plan.advice)
    assert estimate(config, parse_gpus("1xT4-16GB"), quantization="4bit").verdict == "fits with gradient checkpointing"
    on = estimate(config, parse_gpus("4xA100-80GB"), gradient_checkpointing=True)
    assert on.verdict == "fits" and any("gradient_checkpointing=false" in a for a in on.advice)
    assert on.total_gib == on.memory_checkpointing["total"]
    unknown = estimate(config)  # no GPU: memory only
    assert unknown.verdict is None and unknown.memory["total"] > 30


def test_time_with_train_tokens_and_default_throughput():
    config = load_config(REPO / "experiments" / "llama2-7b-bbo3")
    plan = estimate(config, parse_gpus("4xA100-80GB"), train_tokens=10_000_000)
    assert plan.train_tokens == 30_000_000  # x 3 epochs
    assert plan.val_tokens == 2_500_000  # val_fraction 0.2 of the whole
    rate = 2400 * 4
    assert plan.val_passes == 4  # train.eval_every 0.25: at 25, 50, 75% and the end
    assert plan.seconds_per_eval == pytest.approx(30e6 / rate + 4 * 2.5e6 / rate / 3)
    assert plan.seconds_per_search == pytest.approx(plan.seconds_per_eval * 50)
    assert "LLaMA-Factory" in plan.text() and "days" in plan.text()
    screened = load_config(REPO / "experiments" / "llama2-7b-bbo3",
                           ["nomad.start_points=10", "nomad.screen_fraction=0.25", "nomad.screen_keep=3"])
    with_start = estimate(screened, parse_gpus("4xA100-80GB"), train_tokens=10_000_000)
    design = len(screened.space.start_design(10, screened.nomad.seed))  # X0 and 10 points, at a quarter, then 3
    assert with_start.seconds_screen == pytest.approx(plan.seconds_per_eval * (design * 0.25 + 3))
    assert with_start.seconds_per_search == pytest.approx(plan.seconds_per_eval * 50 + with_start.seconds_screen)
    assert "+ the low-fidelity start" in with_start.text()
    h100 = estimate(config, parse_gpus("8xH100-80GB"), train_tokens=10_000_000)
    assert h100.tokens_per_second == 4800 and "not measured" in h100.text()
    assert any("launch.parallel=2" in w for w in h100.warnings)
    slow = estimate(config, parse_gpus("4xA100-80GB"), train_tokens=10_000_000, tokens_per_second=100)
    assert any("launch.timeout_minutes" in w for w in slow.warnings)
    hub = estimate(config, parse_gpus("4xA100-80GB"))  # hub data, no --train-tokens
    assert hub.train_tokens is None and hub.seconds_per_eval is None
    assert "--train-tokens" in hub.text()


@pytest.mark.parametrize("text, expected", [
    ("4xA100-80GB", GpuSpec(4, "A100", 80.0)),
    ("1xA100-40GB", GpuSpec(1, "A100", 40.0)),
    ("8xH100-80GB", GpuSpec(8, "H100", 80.0)),
    ("H100-80GB", GpuSpec(1, "H100", 80.0)),
    ("2XA100-40gb", GpuSpec(2, "A100", 40.0)),
    ("1xRTX4090-24GB", GpuSpec(1, "RTX4090", 24.0)),
])
def test_parse_gpus(text, expected):
    assert parse_gpus(text) == expected


@pytest.mark.parametrize("text", ["", "A100", "4xA100", "80GB", "0xA100-80GB", "A100-0GB", "4x-80GB", "four A100s"])
def test_parse_gpus_rejects_garbage(text):
    with pytest.raises(ValueError, match="--gpus"):
        parse_gpus(text)


def test_demo_counts_real_tokens(tmp_path, assets):
    from core.data import load_tokenized
    from core.model import load_tokenizer

    config = load_config(make_experiment(tmp_path, assets))
    plan = estimate(config, tokens_per_second=1000.0)
    tokenizer = load_tokenizer(assets["model"])
    data = config.to_dict()["data"]
    for source in data["sources"]:
        source["path"] = config.resolve(source["path"])
    train, val = load_tokenized(data, tokenizer, assets["model"], str(config.dir / "cache"))
    assert plan.train_tokens == sum(len(ids) for ids in train["input_ids"]) > 0  # 1 epoch
    assert plan.val_tokens == sum(len(ids) for ids in val["input_ids"]) > 0
    assert plan.val_passes == 4  # the default train.eval_every 0.25
    assert plan.seconds_per_eval == pytest.approx(plan.train_tokens / 1000 + 4 * plan.val_tokens / 1000 / 3)
    assert plan.seconds_per_search == pytest.approx(plan.seconds_per_eval * 10)
    assert plan.verdict is None and plan.memory["total"] > 1.5  # memory from the local config.json
    assert plan.params == sum(p.numel() for p in __import__("transformers").AutoModelForCausalLM
                              .from_pretrained(assets["model"]).parameters())
    text = plan.text()
    assert "counted in the tokenised local data" in text and "time per search" in text

    capped = estimate(load_config(make_experiment(tmp_path / "steps", assets, train={"max_steps": 4})),
                      tokens_per_second=1000.0)
    assert capped.train_tokens == 4 * 16 * 1 * 1 * 96  # steps x batch x accum x processes x max_length
    assert math.isclose(capped.seconds_per_eval, capped.train_tokens / 1000 + 4 * capped.val_tokens / 3000)


def test_unknown_hub_model(tmp_path, assets):
    config = load_config(make_experiment(tmp_path, assets, model={"path": "no-such-org/no-such-model"}))
    plan = estimate(config, parse_gpus("1xA100-80GB"), tokens_per_second=1000.0)
    assert plan.memory is None and plan.verdict is None and plan.params is None
    assert "unknown model size" in plan.text()
    assert plan.train_tokens is None  # no local tokenizer


def test_import_stays_light():
    code = "import sys, bbo.plan; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
