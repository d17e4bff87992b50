"""Data as people have it: chat turns (format messages) through a chat template, trained on the
assistant turns only; custom column names (fields); bad rows stopped before training."""
import json
import math
import shutil
import subprocess
import sys

import pytest
import yaml

from conftest import REPO, labelled_runs, make_experiment, run_env

from core.config import ConfigError, from_dict, load_config
from core.data import IGNORE_INDEX, DataError, build_split, data_key, render_chat, tokenize
from core.preflight import PreflightError, check_inputs, has_chat_template

pytestmark = pytest.mark.xdist_group("test_data_formats")  # its module fixture is made once: one worker

TEMPLATE_FILE = REPO / "experiments" / "demo" / "chat_template.jinja"
CONVERSATION = [{"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": "Reverse the word.\ncat"},
                {"role": "assistant", "content": "tac"},
                {"role": "user", "content": "And this one?\ndog"},
                {"role": "assistant", "content": "god"}]


@pytest.fixture(scope="module")
def tokenizer(assets):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(assets["model"])


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def experiment(tmp_path, assets, sources, **data):
    return load_config(make_experiment(tmp_path, assets, data={"sources": sources, **data}))


# ---------------------------------------------------------------- rendering and labels, token by token

def test_chat_labels_are_the_assistant_turns_only(tokenizer):
    template = TEMPLATE_FILE.read_text()
    row = tokenize({"messages": CONVERSATION}, tokenizer, "plain", 512, template)
    text = tokenizer.apply_chat_template(CONVERSATION, chat_template=template, tokenize=False)
    assert row["input_ids"] == tokenizer(text, add_special_tokens=False)["input_ids"]  # one text, as at inference
    assert row["input_ids"][0] == tokenizer.bos_token_id and row["input_ids"][-1] == tokenizer.eos_token_id

    # Labels: exactly the tokens of each answer and its </s>, in two runs; everything else -100.
    assert labelled_runs(row, tokenizer) == ["tac</s>", "god</s>"]
    prompt = [t for t, label in zip(row["input_ids"], row["labels"]) if label == IGNORE_INDEX]
    masked_text = tokenizer.decode(prompt)
    for turn in CONVERSATION:
        if turn["role"] != "assistant":
            assert turn["content"] in masked_text  # system and user turns are masked
    # Each answer starts right after the generation prompt the model is given at inference.
    before = tokenizer.apply_chat_template(CONVERSATION[:2], chat_template=template, tokenize=False,
                                           add_generation_prompt=True)
    n_before = len(tokenizer(before, add_special_tokens=False)["input_ids"])
    assert row["labels"][n_before - 1] == IGNORE_INDEX and row["labels"][n_before] == row["input_ids"][n_before]

    # Truncation keeps what fits; a conversation cut before its first answer has nothing to learn.
    assert tokenize({"messages": CONVERSATION}, tokenizer, "plain", 8, template) is None


def test_the_tokenizers_own_template_and_the_configs_override(tmp_path, assets, tokenizer):
    from transformers import AutoTokenizer

    own = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% if m.role == 'assistant' %}{{ eos_token }}{% endif %}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
    model = tmp_path / "tiny-chat"
    shutil.copytree(assets["model"], model)
    copy = AutoTokenizer.from_pretrained(model)
    copy.chat_template = own
    copy.save_pretrained(model)
    assert has_chat_template(str(model)) and not has_chat_template(assets["model"])
    chatty = AutoTokenizer.from_pretrained(model)
    text, spans = render_chat(CONVERSATION, chatty)
    assert text.startswith("<system>Answer briefly.") and [text[a:b] for a, b in spans] == ["tac</s>", "god</s>"]
    overridden, _ = render_chat(CONVERSATION, chatty, TEMPLATE_FILE.read_text())
    assert overridden.startswith("<s>### System:")

    # With neither: a clear error before training (local model) and when tokenizing.
    sources = [{"path": assets["chat"], "format": "messages"}]
    with pytest.raises(PreflightError, match=r"^data.sources\[0\]: format messages needs a chat template"):
        check_inputs(experiment(tmp_path / "none", assets, sources))
    from core.data import load_tokenized
    with pytest.raises(DataError, match="needs a chat template"):
        load_tokenized({"sources": sources, "val_fraction": 0.1, "split_seed": 0, "template": "plain",
                        "max_length": 96}, tokenizer, assets["model"], tmp_path / "cache")
    config = load_config(make_experiment(tmp_path / "own", assets, data={"sources": sources},
                                         model={"path": str(model)}))
    check_inputs(config)  # the tokenizer's own template will do


def test_a_template_that_cannot_be_split_is_an_error_naming_the_row(tokenizer, tmp_path):
    last_only = "{{ messages[-1].content }}"  # rewrites the conversation as it grows
    with pytest.raises(DataError, match=r"^data.sources\[0\]: row 7 of x.jsonl: the chat template does not render turn 3"):
        tokenize({"messages": CONVERSATION, "origin": "data.sources[0]: row 7 of x.jsonl"}, tokenizer, "plain", 512,
                 last_only)
    with pytest.raises(DataError, match="the chat template fails on it"):
        tokenize({"messages": CONVERSATION}, tokenizer, "plain", 512, "{{ raise_exception('roles must alternate') }}")


# ---------------------------------------------------------------- custom columns

def test_field_mapped_files_load(tmp_path, assets):
    qa = write_jsonl(tmp_path / "qa.jsonl", [{"my_q": f"Add {i} and 1.", "my_ctx": "" if i % 2 else f"{i} + 1",
                                              "my_answer": str(i + 1)} for i in range(30)])
    chats = write_jsonl(tmp_path / "chats.jsonl", [{"conversation": [
        {"role": "user", "content": f"Count to {i}."}, {"role": "assistant", "content": " ".join(map(str, range(1, i + 1)))}]}
        for i in range(1, 21)])
    sources = [{"path": qa, "format": "alpaca", "fields": {"instruction": "my_q", "input": "my_ctx", "output": "my_answer"}},
               {"path": chats, "format": "messages", "fields": {"messages": "conversation"}}]
    config = experiment(tmp_path, assets, sources, chat_template=str(TEMPLATE_FILE))
    check_inputs(config)
    data = config.to_dict()["data"]
    train, val = build_split(data["sources"], 0.2, 0)
    records = train + val
    assert len(records) == 50
    assert {"instruction": "Add 4 and 1.", "input": "4 + 1", "output": "5"} in records
    assert {"instruction": "Add 3 and 1.", "input": "", "output": "4"} in records
    chat = [r for r in records if "messages" in r]
    assert len(chat) == 20 and all(r["messages"][0]["role"] == "user" for r in chat)


# ---------------------------------------------------------------- bad input: one line, before training

GOOD_CHAT = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


@pytest.mark.parametrize("fmt, fields, bad_row, message", [
    ("alpaca", {"output": "my_answer"}, {"instruction": "q", "output": "a"},
     r"row 3 of .*qa.jsonl has no field 'my_answer' \(fields.output\)"),
    ("dolly", None, {"instruction": "q", "output": "a"}, r"row 3 of .* has no field 'response' \(fields.output\)"),
    ("messages", None, {"messages": "hi"}, r"row 3 of .* field 'messages' must be a non-empty list"),
    ("messages", {"messages": "turns"}, GOOD_CHAT, r"row 3 of .* has no field 'turns' \(fields.messages\)"),
    ("messages", None, {"messages": [{"role": "user", "content": "hi"}]}, r"row 3 of .* has no assistant turn"),
    ("messages", None, {"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "x"}]},
     r"row 3 of .* turn 1 must be \{role: str, content: str\}"),
])
def test_bad_rows_fail_before_training_with_one_line(tmp_path, assets, fmt, fields, bad_row, message):
    good = GOOD_CHAT if fmt == "messages" else {"instruction": "q", "input": "", "output": "a", "response": "a",
                                                "my_answer": "a"}
    if fields and fmt == "messages":
        good = {"turns": GOOD_CHAT["messages"]}
    path = write_jsonl(tmp_path / "qa.jsonl", [good, good, bad_row, good])
    source = {"path": path, "format": fmt} | ({"fields": fields} if fields else {})
    config = experiment(tmp_path, assets, [source], chat_template=str(TEMPLATE_FILE))
    with pytest.raises(PreflightError, match=r"^data.sources\[0\]: " + message) as info:
        check_inputs(config)
    assert "\n" not in str(info.value)
    with pytest.raises(DataError, match=message):  # the same rule when the data is loaded
        build_split(config.to_dict()["data"]["sources"], 0.2, 0)


def test_bad_mappings_and_templates_are_config_errors(tmp_path, assets):
    def raw(source, **data):
        out = yaml.safe_load((REPO / "experiments" / "demo" / "experiment.yaml").read_text())
        out["data"].update(sources=[source], **data)
        return out

    for source, message in [
        ({"path": "x.jsonl", "format": "alpaca", "fields": {"messages": "turns"}},
         r"data.sources\[0\].fields.messages: not a field of format alpaca \(it maps instruction, input, output\)"),
        ({"path": "x.jsonl", "format": "messages", "fields": {"output": "a"}}, "fields.output: not a field of format messages"),
        ({"path": "x.jsonl", "fields": {"outptu": "a"}}, r"data.sources\[0\].fields.outptu: unknown key"),
        ({"path": "x.jsonl", "fields": {"output": " "}}, "fields.output: must name a column"),
    ]:
        with pytest.raises(ConfigError, match=message):
            from_dict(raw(source))
    with pytest.raises(ConfigError, match="data.chat_template: empty"):
        from_dict(raw({"path": "x.jsonl"}, chat_template=""))

    # A template file that is not there, and the CLI's answer to a bad row: one line, exit 1.
    config = experiment(tmp_path, assets, [{"path": assets["chat"], "format": "messages"}], chat_template="nope.jinja")
    with pytest.raises(PreflightError, match=r"^data.chat_template: .*nope.jinja does not exist"):
        check_inputs(config)
    path = write_jsonl(tmp_path / "bad.jsonl", [{"q": "x", "a": "y"}, {"q": "x2"}])
    folder = make_experiment(tmp_path / "cli", assets, data={"sources": [
        {"path": path, "fields": {"instruction": "q", "output": "a"}}]})
    proc = subprocess.run([sys.executable, "-m", "bbo", "check", str(folder)], capture_output=True, text=True,
                          env=run_env(), cwd=REPO, timeout=120)
    assert proc.returncode != 0 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        f"error: data.sources[0]: row 2 of {path} has no field 'a' (fields.output)"]


# ---------------------------------------------------------------- cache key and run id

def test_format_fields_and_template_change_the_cache_key_and_the_run_id(tmp_path, assets):
    def both(config):
        data = config.to_dict()["data"]
        from core.data import chat_template_text
        data["chat_template"] = chat_template_text(config.data.chat_template, config.dir)
        return config.fingerprint(), data_key(data, assets["model"])

    alpaca = [{"path": assets["train"], "format": "alpaca"}]
    base = both(experiment(tmp_path / "a", assets, alpaca))
    assert "chat_template" not in base[0]["data"] and "fields" not in base[0]["data"]["sources"][0]  # ids as before
    # What computes the same keeps both: the default columns spelled out, a template no source uses.
    same = [{"path": assets["train"], "format": "alpaca", "fields": {"instruction": "instruction", "output": "output"}}]
    assert both(experiment(tmp_path / "b", assets, same, chat_template="{{ x }}")) == base
    renamed = [{"path": assets["train"], "format": "alpaca", "fields": {"input": "context"}}]
    changed = both(experiment(tmp_path / "c", assets, renamed))
    assert changed[0] != base[0] and changed[1] != base[1]

    chat = [{"path": assets["chat"], "format": "messages"}]
    template = TEMPLATE_FILE.read_text()
    inline = both(experiment(tmp_path / "d", assets, chat, chat_template=template))
    other = both(experiment(tmp_path / "e", assets, chat, chat_template=template.replace("### User", "### Human")))
    assert inline[0] != other[0] and inline[1] != other[1]
    # A file: what it holds counts, not where it is.
    (tmp_path / "t1.jinja").write_text(template)
    from_file = experiment(tmp_path / "f", assets, chat, chat_template=str(tmp_path / "t1.jinja"))
    first = both(from_file)
    assert first[1] == inline[1]  # the same text, the same tokenized split
    (tmp_path / "t1.jinja").write_text(template.replace("### User", "### Human"))
    edited = both(from_file)
    assert edited[0] != first[0] and edited[1] == other[1]


# ---------------------------------------------------------------- a chat data set trains

def test_a_chat_data_set_trains_through_the_blackbox(tmp_path, assets):
    folder = make_experiment(tmp_path, assets, train={"max_steps": 4, "logging_steps": 2},
                             data={"sources": [{"path": assets["chat"], "format": "messages"}],
                                   "chat_template": str(TEMPLATE_FILE)},
                             objective={"metric": "val_loss", "extra_outputs": ["val_loss", "train_loss"]})
    proc = subprocess.run([sys.executable, "-m", "blackbox", "--experiment", str(folder), "--rank", "4",
                           "--lr", "0.003"], capture_output=True, text=True, env=run_env(), cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    objective, val_loss, train_loss = map(float, proc.stdout.split())
    assert objective == val_loss and math.isfinite(val_loss) and 0 < val_loss < 10 and math.isfinite(train_loss)
    (run,) = (folder / "runs").glob("r4-*")
    spec = json.loads((run / "spec.json").read_text())
    assert spec["data"]["chat_template"] == TEMPLATE_FILE.read_text()  # the run folder holds the template itself
    (cache,) = (folder / "cache").glob("tokenized-*")
    counts = json.loads((cache / "DONE").read_text())
    assert counts == {"train": 360, "validation": 40}
