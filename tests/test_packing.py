"""Padding-free packing must compute exactly what padding computes (examples never see each other)."""
import pytest
import torch

pytestmark = pytest.mark.xdist_group("test_packing")  # its module fixture is made once: one worker


@pytest.fixture(scope="module")
def model_and_data(assets):
    from transformers import AutoTokenizer

    from core.data import build_split, tokenize
    from core.model import load_base

    spec = {"model": {"path": assets["model"], "revision": None, "attn_implementation": "sdpa",
                      "trust_remote_code": False}}
    tokenizer = AutoTokenizer.from_pretrained(assets["model"])
    _, val = build_split([{"path": assets["train"], "format": "alpaca"}], 0.05, 0)
    rows = [tokenize(r, tokenizer, "plain", 96) for r in val[:40]]
    return load_base(spec["model"], torch.float32), [r for r in rows if r], tokenizer


def test_packed_and_padded_validation_loss_agree(model_and_data):
    from transformers import DataCollatorForSeq2Seq, DataCollatorWithFlattening

    from eval.loss import validation_loss

    model, rows, tokenizer = model_and_data
    packed = validation_loss(model, rows, DataCollatorWithFlattening(return_position_ids=True, separator_id=-100), 8)
    padded = validation_loss(model, rows, DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100), 8)
    assert packed["val_tokens"] == padded["val_tokens"] > 0
    assert packed["val_loss"] == pytest.approx(padded["val_loss"], rel=1e-5)


def test_labels_cover_only_the_response(assets):
    from transformers import AutoTokenizer

    from core.data import IGNORE_INDEX, format_prompt, tokenize

    tokenizer = AutoTokenizer.from_pretrained(assets["model"])
    record = {"instruction": "Reverse the word.", "input": "cat", "output": "tac"}
    row = tokenize(record, tokenizer, "alpaca", 512)
    n_prompt = 1 + len(tokenizer(format_prompt(record, "alpaca"), add_special_tokens=False)["input_ids"])
    assert all(label == IGNORE_INDEX for label in row["labels"][:n_prompt])
    assert row["labels"][n_prompt:] == row["input_ids"][n_prompt:]
    assert row["input_ids"][-1] == tokenizer.eos_token_id
