"""The generated demo assets: loadable offline, well-formed, and byte-for-byte reproducible.

One full generation here (~15 s on one core) dominates the run time; it is compared with the one every
test session makes (.cache/demo, conftest's `assets`).
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import collections  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

import fixtures  # noqa: E402
from fixtures import make_assets  # noqa: E402

pytestmark = pytest.mark.xdist_group("test_fixtures")  # its module fixture is made once: one worker

REPO = Path(__file__).resolve().parent.parent
LLAMA_LINEAR = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A generation of its own, in a folder of its own."""
    out = tmp_path_factory.mktemp("fixtures") / "demo"
    return make_assets(out, log=None)


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def file_hashes(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_paths_and_stamp(assets):
    out = Path(assets["model"]).parent
    assert set(assets) == {"model", "train", "dolly", "mmlu", "chat"}
    assert assets == fixtures.asset_paths(out)
    assert Path(assets["train"]) == out / "data" / "alpaca.jsonl"
    for name in ("train", "dolly", "chat"):
        assert Path(assets[name]).is_file()
    assert (Path(assets["mmlu"]) / "dev.jsonl").is_file() and (Path(assets["mmlu"]) / "test.jsonl").is_file()
    assert (out / "STAMP").read_text() == fixtures.stamp()
    assert f"fixtures {fixtures.GENERATOR_VERSION} " in fixtures.stamp()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")], "temporary folders left behind"


def test_second_call_is_a_no_op(assets):
    out = Path(assets["model"]).parent
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    started = time.perf_counter()
    again = make_assets(out, log=None)
    assert time.perf_counter() - started < 1.0
    assert again == assets
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    # In a fresh process the up-to-date check does not even import torch.
    check = f"import sys, fixtures; fixtures.make_assets({str(out)!r}, log=None); assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", check], cwd=REPO, check=True, timeout=60)


def test_tokenizer(assets):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(assets["model"])
    assert len(tok) == 1024
    assert tok.convert_ids_to_tokens([0, 1, 2]) == ["<unk>", "<s>", "</s>"]
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 2, 0)
    assert tok.convert_ids_to_tokens([3, 258]) == ["<0x00>", "<0xFF>"]
    for text in ["Add the two numbers.\n41 + 19", "Reverse the letters of the word.\nzebra",
                 "Which is larger, 85 or 21?", "Hello, Wörld! ~ {x} 😀 tab\tend"]:
        ids = tok(text)["input_ids"]
        assert ids[0] == 1 and 2 not in ids and 0 not in ids  # <s> added, no </s>, no <unk> (byte fallback)
        assert tok.decode(ids, skip_special_tokens=True) == text
    pieces = tok.convert_ids_to_tokens(tok("12345 + 678", add_special_tokens=False)["input_ids"])
    assert [p for p in pieces if any(c.isdigit() for c in p)] == list("12345678")  # one token per digit
    # The Alpaca scaffolding was in the tokenizer's training text, so it is cheap.
    assert len(tok(fixtures.ALPACA_PROMPT_INPUT.format(instruction="", input=""))["input_ids"]) < 45


def test_model(assets):
    import torch
    from transformers import AutoModelForCausalLM, LlamaForCausalLM
    model = AutoModelForCausalLM.from_pretrained(assets["model"])
    assert isinstance(model, LlamaForCausalLM)
    cfg = model.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size, cfg.tie_word_embeddings) == (64, 2, 1024, False)
    linear = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
    assert LLAMA_LINEAR <= linear and linear - LLAMA_LINEAR == {"lm_head"}
    assert (Path(assets["model"]) / "model.safetensors").is_file()
    with torch.no_grad():
        logits = model(torch.tensor([[1, 300, 301, 302]])).logits
    assert logits.shape == (1, 4, 1024) and torch.isfinite(logits).all()


def test_base_model_was_pretrained(assets):
    """The base model knows the skills' plain-text form: far better than a uniform guess (ln 1024 = 6.93)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(assets["model"])
    model = AutoModelForCausalLM.from_pretrained(assets["model"])
    batch = tok(["41 + 19 = 60\nsalt reversed is tlas\nthe larger of 12 and 75 is 75"], return_tensors="pt")
    with torch.no_grad():
        loss = model(**batch, labels=batch["input_ids"]).loss.item()
    assert loss < 4.0
    info = json.loads((Path(assets["model"]).parent / "info.json").read_text())
    assert info["pretrain"]["final_loss"] < info["pretrain"]["first_loss"] / 3


def test_two_generations_are_identical(assets):
    """This module's generation and the session's (.cache/demo, made by another process, maybe the demo's
    `python -m fixtures`), in two folders, give the same bytes; the CLI on an up-to-date folder prints its paths."""
    session = Path(make_assets(REPO / ".cache" / "demo", log=None)["model"]).parent
    out = Path(assets["model"]).parent
    first = file_hashes(out)
    assert {"STAMP", "tiny-llama/model.safetensors", "tiny-llama/tokenizer.json", "mmlu/test.jsonl"} <= set(first)
    assert first == file_hashes(session)
    proc = subprocess.run([sys.executable, "-m", "fixtures", "--out", str(out)], cwd=out.parent, capture_output=True,
                          text=True, env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [f"{name}: {path}" for name, path in fixtures.asset_paths(out).items()]


def test_alpaca(assets):
    from transformers import AutoTokenizer
    rows = read_jsonl(assets["train"])
    assert 2800 <= len(rows) <= 3200
    assert all(set(r) == {"instruction", "input", "output"} for r in rows)
    assert all(r["instruction"] and r["output"] for r in rows)
    assert len({(r["instruction"], r["input"]) for r in rows}) == len(rows)
    empty = sum(r["input"] == "" for r in rows)
    assert 0.2 * len(rows) < empty < 0.8 * len(rows)
    # Real structure: spot-check answers of two skills.
    for r in rows:
        if r["instruction"] == "Add the two numbers.":
            a, b = map(int, r["input"].split(" + "))
            assert r["output"] == str(a + b)
        if r["instruction"] == "Reverse the letters of the word.":
            assert r["output"] == r["input"][::-1]
    tok = AutoTokenizer.from_pretrained(assets["model"])
    lengths = [len(tok(f"{r['instruction']}\n{r['input']}\n{r['output']}")["input_ids"]) for r in rows]
    assert max(lengths) < 64


def test_dolly(assets):
    rows = read_jsonl(assets["dolly"])
    assert len(rows) == 300
    assert all(set(r) == {"instruction", "context", "response", "category"} for r in rows)
    assert all(r["category"] == ("closed_qa" if r["context"] else "open_qa") for r in rows)
    assert len({(r["instruction"], r["context"]) for r in rows}) == len(rows)
    alpaca = {(r["instruction"], r["input"]) for r in read_jsonl(assets["train"])}
    assert not alpaca & {(r["instruction"], r["context"]) for r in rows}


def test_mmlu(assets):
    dev = read_jsonl(Path(assets["mmlu"]) / "dev.jsonl")
    test = read_jsonl(Path(assets["mmlu"]) / "test.jsonl")
    for row in dev + test:
        assert set(row) == {"subject", "question", "choices", "answer"}
        assert re.fullmatch(r"[a-z]+(_[a-z]+)*", row["subject"])
        assert len(row["choices"]) == 4 and len(set(row["choices"])) == 4
        assert isinstance(row["answer"], int) and 0 <= row["answer"] <= 3
        if row["question"].startswith("What is") and "+" in row["question"]:
            a, b = map(int, re.findall(r"\d+", row["question"]))
            assert row["choices"][row["answer"]] == str(a + b)
        if "written backwards" in row["question"]:
            word = re.search(r"'(\w+)'", row["question"]).group(1)
            assert row["choices"][row["answer"]] == word[::-1]
    subjects = collections.Counter(r["subject"] for r in test)
    assert 4 <= len(subjects) <= 6 and set(subjects.values()) == {40}
    assert collections.Counter(r["subject"] for r in dev) == {s: 5 for s in subjects}
    for subject in subjects:  # the correct letter is A, B, C, D equally often
        answers = collections.Counter(r["answer"] for r in test if r["subject"] == subject)
        assert answers == {0: 10, 1: 10, 2: 10, 3: 10}
    assert len({r["question"] for r in test}) == len(test)
    # No question repeats a training example verbatim, and no held-out word appears in training.
    train = read_jsonl(assets["train"])
    train_text = {r["instruction"] for r in train} | {f"{r['instruction']} {r['input']}".strip() for r in train}
    assert not train_text & {r["question"] for r in dev + test}
    train_words = {r["input"] for r in train if r["input"].isalpha()}
    train_words |= {w for r in train for w in re.findall(r"'(\w+)'", r["instruction"])}
    assert len(train_words) > 300
    asked = {re.search(r"'(\w+)'", r["question"]).group(1) for r in test if "'" in r["question"]}
    assert asked and not asked & train_words


def test_default_out_is_relative_to_the_repo():
    assert fixtures.DEFAULT_OUT == REPO / ".cache" / "demo"


def test_crash_leaves_no_asset_folder(tmp_path, monkeypatch):
    def crash(out, log):
        (out / "data").mkdir()
        (out / "data" / "alpaca.jsonl").write_text("half\n")
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(fixtures, "_generate", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        make_assets(tmp_path / "demo", log=None)
    assert list(tmp_path.iterdir()) == []


def test_stale_folder_is_replaced(tmp_path):
    out, fresh = tmp_path / "demo", tmp_path / "fresh"
    out.mkdir()
    (out / "STAMP").write_text("fixtures 0 (old)\n")
    (out / "leftover.txt").write_text("old")
    fresh.mkdir()
    (fresh / "STAMP").write_text(fixtures.stamp())
    fixtures.move_into_place(fresh, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]
    assert sorted(p.name for p in out.iterdir()) == ["STAMP"]
