"""MMLU through lm-eval on the tiny fixture model, offline: shape of the result, LoRA loading, input errors.

`assets` (the tiny LLaMA and the MMLU-format set) and the offline environment come from conftest.py.
"""
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from eval import mmlu

pytestmark = pytest.mark.xdist_group("test_mmlu")  # its module fixture is made once: one worker

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def rows(assets):
    """{"dev": [...], "test": [...]} as read from the fixture's MMLU files."""
    return {split: [json.loads(line) for line in open(Path(assets["mmlu"]) / f"{split}.jsonl") if line.strip()]
            for split in ("dev", "test")}


def _run(assets, adapter=None, **kw):
    args = dict(task="mmlu_local", data_dir=assets["mmlu"], num_fewshot=2, limit=3, batch_size=8, dtype="float32",
                device="cpu", trust_remote_code=False, work_dir=None, log_samples=True)
    args.update(kw)
    return mmlu.evaluate_with_samples(assets["model"], adapter, **args)


@pytest.fixture(scope="module")
def base_run(assets):
    return _run(assets)


def _check_shape(result, subjects, n):
    assert set(result) == {"mmlu", "mmlu_stderr", "mmlu_subjects", "mmlu_n", "lm_eval_version"}
    assert 0.0 <= result["mmlu"] <= 1.0
    assert result["mmlu_stderr"] is None or result["mmlu_stderr"] >= 0.0
    assert set(result["mmlu_subjects"]) == set(subjects)
    assert all(0.0 <= acc <= 1.0 for acc in result["mmlu_subjects"].values())
    assert result["mmlu_n"] == n
    assert result["lm_eval_version"].startswith("0.4")
    json.dumps(result)  # plain types only


def test_local_task_limit(base_run, rows):
    result, _ = base_run
    counts = Counter(r["subject"] for r in rows["test"])
    _check_shape(result, counts, sum(min(3, c) for c in counts.values()))
    # the overall number is the size-weighted mean of the subjects
    sizes = {s: min(3, c) for s, c in counts.items()}
    weighted = sum(result["mmlu_subjects"][s] * k for s, k in sizes.items()) / sum(sizes.values())
    assert result["mmlu"] == pytest.approx(weighted)


def test_prompt_is_stock_mmlu_format(base_run, rows):
    _, raw = base_run
    subject = sorted({r["subject"] for r in rows["test"]})[0]
    sample = raw["samples"][f"mmlu_local_{subject}"][0]
    context, continuation = sample["arguments"][0]
    dev = [r for r in rows["dev"] if r["subject"] == subject][:2]
    test = [r for r in rows["test"] if r["subject"] == subject][0]

    def block(r):
        return r["question"].strip() + "".join(f"\n{k}. {c}" for k, c in zip("ABCD", r["choices"])) + "\nAnswer:"

    expected = (f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
                + "".join(block(r) + " " + "ABCD"[r["answer"]] + "\n\n" for r in dev) + block(test))
    assert context == expected
    assert continuation == " A"


def test_all_test_rows_zero_shot(assets, rows):
    result, _ = _run(assets, num_fewshot=0, limit=None, log_samples=False)
    counts = Counter(r["subject"] for r in rows["test"])
    _check_shape(result, counts, len(rows["test"]))


def test_lora_adapter_changes_loglikelihoods(assets, base_run, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(assets["model"])
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False,
                        task_type="CAUSAL_LM")
    get_peft_model(model, config).save_pretrained(tmp_path / "adapter")

    result, raw = _run(assets, adapter=str(tmp_path / "adapter"))
    base_result, base_raw = base_run
    assert set(result["mmlu_subjects"]) == set(base_result["mmlu_subjects"])
    assert result["mmlu_n"] == base_result["mmlu_n"]

    def loglikelihoods(r):
        return [ll for task in sorted(r["samples"]) for s in r["samples"][task] for ll, _ in s["filtered_resps"]]

    base_ll, lora_ll = loglikelihoods(base_raw), loglikelihoods(raw)
    assert len(base_ll) == len(lora_ll) == 4 * base_result["mmlu_n"]
    assert max(abs(a - b) for a, b in zip(base_ll, lora_ll)) > 1e-4


def test_default_five_shot_cli(assets, rows, tmp_path, capsys):
    out = tmp_path / "metrics.json"
    work = tmp_path / "work"
    code = mmlu.main(["--model", assets["model"], "--data-dir", assets["mmlu"], "--limit", "2",
                      "--work-dir", str(work), "--out", str(out)])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert json.loads(out.read_text()) == printed
    subjects = {r["subject"] for r in rows["test"]}
    _check_shape(printed, subjects, 2 * len(subjects))
    written = sorted(p.name for p in (work / "mmlu_local_tasks").iterdir())
    assert written == sorted(["_mmlu_local.yaml"] + [f"mmlu_local_{s}.yaml" for s in subjects])
    assert "num_fewshot: 5" in (work / "mmlu_local_tasks" / written[1]).read_text()


# ---- input errors: all raised before lm-eval is imported or the model is loaded ----

def _write(folder: Path, dev, test):
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in (("dev", dev), ("test", test)):
        if data is not None:
            (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data))
    return str(folder)


def test_unknown_task():
    with pytest.raises(ValueError, match="unknown task 'mmlu_pro'"):
        mmlu.evaluate_mmlu("m", None, task="mmlu_pro")


def test_missing_data_dir(tmp_path):
    with pytest.raises(ValueError, match="needs data_dir"):
        mmlu.evaluate_mmlu("m", None)
    with pytest.raises(ValueError, match="is not a directory"):
        mmlu.evaluate_mmlu("m", None, data_dir=str(tmp_path / "nope"))


@pytest.mark.parametrize("missing", ["dev", "test"])
def test_missing_split_file(tmp_path, rows, missing):
    data = {"dev": rows["dev"], "test": rows["test"]}
    data[missing] = None
    with pytest.raises(ValueError, match=rf"missing .*{missing}\.jsonl"):
        mmlu.evaluate_mmlu("m", None, data_dir=_write(tmp_path, data["dev"], data["test"]))


@pytest.mark.parametrize("change, message", [
    ({"answer": None}, "missing field"),
    ({"answer": 4}, r"answer must be an integer in 0\.\.3, got 4"),
    ({"answer": "B"}, "answer must be an integer"),
    ({"answer": True}, "answer must be an integer"),
    ({"choices": ["a", "b", "c"]}, "choices must be a list of 4 strings"),
    ({"subject": "bad subject!"}, "subject must be"),
])
def test_bad_rows(tmp_path, rows, change, message):
    bad = dict(rows["test"][0])
    for key, value in change.items():
        if value is None:
            del bad[key]
        else:
            bad[key] = value
    data_dir = _write(tmp_path, rows["dev"], rows["test"][:3] + [bad])
    with pytest.raises(ValueError, match=message) as info:
        mmlu.evaluate_mmlu("m", None, data_dir=data_dir)
    assert "test.jsonl:4" in str(info.value)  # points at the offending line


def test_invalid_json_line(tmp_path, rows):
    data_dir = _write(tmp_path, rows["dev"], rows["test"][:2])
    with open(Path(data_dir) / "test.jsonl", "a") as f:
        f.write("{not json\n")
    with pytest.raises(ValueError, match=r"test\.jsonl:3: invalid JSON"):
        mmlu.evaluate_mmlu("m", None, data_dir=data_dir)


def test_too_few_dev_examples(tmp_path, rows):
    subject = rows["test"][0]["subject"]
    dev = [r for r in rows["dev"] if r["subject"] != subject] + [r for r in rows["dev"] if r["subject"] == subject][:1]
    data_dir = _write(tmp_path, dev, rows["test"])
    with pytest.raises(ValueError, match=rf"subject '{subject}' has 1 dev examples, fewer than num_fewshot=2"):
        mmlu.evaluate_mmlu("m", None, data_dir=data_dir, num_fewshot=2)


def test_bad_numbers(assets):
    with pytest.raises(ValueError, match="num_fewshot"):
        mmlu.evaluate_mmlu("m", None, data_dir=assets["mmlu"], num_fewshot=-1)
    with pytest.raises(ValueError, match="limit"):
        mmlu.evaluate_mmlu("m", None, data_dir=assets["mmlu"], limit=0)


def test_cli_error_exit_code(capsys, tmp_path):
    code = mmlu.main(["--model", "m", "--data-dir", str(tmp_path / "nope")])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: data_dir") and err.count("\n") == 1


def test_summarize_stock_layout():
    """The stock task nests subjects under stem/humanities/...: only leaf tasks become subjects."""
    raw = {
        "results": {
            "mmlu": {"acc,none": 0.5, "acc_stderr,none": 0.1},
            "mmlu_stem": {"acc,none": 0.25, "acc_stderr,none": 0.2},
            "mmlu_humanities": {"acc,none": 0.75, "acc_stderr,none": "N/A"},
            "mmlu_anatomy": {"acc,none": 0.25, "acc_stderr,none": 0.2},
            "mmlu_world_religions": {"acc,none": 0.75, "acc_stderr,none": 0.2},
        },
        "n-samples": {"mmlu_anatomy": {"original": 135, "effective": 4},
                      "mmlu_world_religions": {"original": 171, "effective": 4}},
    }
    assert mmlu.summarize(raw, "mmlu", "0.4.13") == {
        "mmlu": 0.5, "mmlu_stderr": 0.1, "mmlu_subjects": {"anatomy": 0.25, "world_religions": 0.75},
        "mmlu_n": 8, "lm_eval_version": "0.4.13"}
    raw["results"]["mmlu"]["acc_stderr,none"] = "N/A"
    assert mmlu.summarize(raw, "mmlu", "0.4.13")["mmlu_stderr"] is None


def test_import_stays_light():
    code = "import sys, eval.mmlu; heavy = {'lm_eval', 'torch', 'transformers'} & set(sys.modules); assert not heavy, heavy"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_stock_task_offline_with_patched_download(assets, rows, monkeypatch):
    """task="mmlu" resolves lm-eval's own 57-subject tree; its hub download is swapped for the fixture rows."""
    import datasets

    def fake_load_dataset(path, name=None, **kwargs):
        assert path == "cais/mmlu"
        return datasets.DatasetDict({split: datasets.Dataset.from_list(
            [dict(r, subject=name) for r in rows[split][:3]]) for split in ("dev", "test")})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    result = mmlu.evaluate_mmlu(assets["model"], None, task="mmlu", num_fewshot=1, limit=1)
    assert len(result["mmlu_subjects"]) == 57
    assert {"abstract_algebra", "world_religions", "high_school_biology"} <= set(result["mmlu_subjects"])
    assert result["mmlu_n"] == 57
    assert 0.0 <= result["mmlu"] <= 1.0
