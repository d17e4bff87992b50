"""ROUGE objectives (objective.metric: rougeL ...): the scorer, greedy batched generation on the tiny model,
the config and preflight rules, and a real `bbo run` whose objective is -rougeL."""
import json
import subprocess
import sys

import pytest
from rouge_score import rouge_scorer

from conftest import make_experiment
from core.config import ConfigError, load_config
from core.objective import ROUGE_METRICS
from core.data import format_prompt
from core.nomadtext import read_history
from core.preflight import PreflightError, check_inputs
from eval import rouge

pytestmark = pytest.mark.filterwarnings("ignore")

PREDICTIONS = ["the cat sat on the mat", "A quick brown fox.", "", "75", "first line\nsecond line here"]
REFERENCES = ["the cat was on the mat", "the quick brown fox jumps", "nothing", "75", "second line\nfirst line"]


def run(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("stem", [False, True])
def test_scores_are_rouge_score_means(stem):
    scorer = rouge_scorer.RougeScorer(list(ROUGE_METRICS), use_stemmer=stem)
    per_pair = [scorer.score(ref, pred) for pred, ref in zip(PREDICTIONS, REFERENCES)]
    expected = {m: sum(s[m].fmeasure for s in per_pair) / len(per_pair) for m in ROUGE_METRICS}
    assert rouge.score(PREDICTIONS, REFERENCES, use_stemmer=stem) == pytest.approx(expected, abs=1e-12)
    # known values: identical texts score 1, disjoint ones 0; 5 of 6 unigrams shared -> F = 5/6
    assert rouge.score(["3 4 7"], ["3 4 7"]) == dict.fromkeys(ROUGE_METRICS, 1.0)
    assert rouge.score(["yes"], ["no"]) == dict.fromkeys(ROUGE_METRICS, 0.0)
    assert rouge.score(["the cat sat on the mat"], ["the cat was on the mat"])["rouge1"] == pytest.approx(5 / 6)
    # rougeLsum matches per line ("\n" splits sentences), rougeL over the whole text
    swapped = rouge.score(["b c\na"], ["a\nb c"])
    assert swapped["rougeLsum"] == 1.0 and swapped["rougeL"] < 1.0


def test_batched_left_padded_generation_is_the_unbatched_one(assets):
    from core.data import load_source
    from core.model import load_base, load_tokenizer, resolve_dtype

    spec = {"path": str(assets["model"]), "dtype": "float32", "revision": None, "attn_implementation": "sdpa",
            "trust_remote_code": False, "quantization": None}
    model, tokenizer = load_base(spec, resolve_dtype("float32")), load_tokenizer(spec["path"])
    records = load_source(str(assets["train"]), "alpaca")[:6]
    prompts = [format_prompt(r, "plain") for r in records]  # the demo's template, as training renders it
    assert "### Response:\n" in prompts[0] and records[0]["output"] not in prompts[0].split("### Response:")[1]
    one = rouge.generate(model, tokenizer, prompts, max_new_tokens=10, batch_size=1)
    batched = rouge.generate(model, tokenizer, prompts, max_new_tokens=10, batch_size=4)  # rows of unequal length
    assert len({len(tokenizer(p)["input_ids"]) for p in prompts}) > 1
    assert batched == one and all(isinstance(t, str) for t in one)
    assert not any(p.strip() in t for p, t in zip(prompts, one))  # the new text only, not the prompt again


def test_config_rules_sign_and_fingerprint(tmp_path, assets):
    experiment = make_experiment(tmp_path, assets)
    config = load_config(experiment, ["objective.metric=rougeL"])
    assert config.objective.to_objective({"rougeL": 0.25}) == -0.25  # maximised: NOMAD minimises -rougeL
    assert config.objective.generation.data == "validation"
    for bad, message in [("objective.generation.data=null", "objective.generation.data: rougeL is measured on held-out"),
                         ("objective.generation.max_new_tokens=0", "objective.generation.max_new_tokens: must be > 0"),
                         ("objective.generation.max_new_tokens=many", "max_new_tokens: expected an integer"),
                         ("objective.generation.data=pairs.csv", "neither validation nor a .json/.jsonl file"),
                         ("objective.generation.batch_size=-1", "objective.generation.batch_size: must be > 0")]:
        with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
            load_config(experiment, ["objective.metric=rougeL", bad])
    with pytest.raises(ConfigError, match="objective.generation.max_new_tokens"):  # also as an extra output
        load_config(experiment, ["objective.extra_outputs=[rouge2]", "objective.generation.max_new_tokens=0"])
    chat = ["objective.metric=rougeL", "data.sources=[{path: chat.jsonl, format: messages}]", "data.chat_template={{x}}"]
    with pytest.raises(ConfigError, match=r"data\.sources\[0\] is chat data"):  # pairs, not chats: a file of pairs
        load_config(experiment, chat)

    # what changes the generations changes the run id; without a ROUGE metric they are not in it
    base = load_config(experiment).fingerprint()
    assert "generation" not in base and base == load_config(experiment, ["objective.generation.max_new_tokens=7"]).fingerprint()
    fp = config.fingerprint()
    assert fp["generation"]["max_new_tokens"] == 128
    assert fp != load_config(experiment, ["objective.metric=rougeL", "objective.generation.max_new_tokens=7"]).fingerprint()
    assert fp == load_config(experiment, ["objective.metric=rouge1"]).fingerprint()  # same generations, other number

    # a file of pairs enters by content; preflight checks that it exists and has its format's fields
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"instruction": "Add 1 and 2.", "context": "", "response": "3"}) + "\n")
    on_file = ["objective.metric=rougeL", f"objective.generation.data={pairs}", "objective.generation.format=dolly"]
    check_inputs(load_config(experiment, on_file))
    before = load_config(experiment, on_file).fingerprint()
    pairs.write_text(pairs.read_text() + json.dumps({"instruction": "Add 2 and 2.", "context": "", "response": "4"}) + "\n")
    assert load_config(experiment, on_file).fingerprint() != before
    with pytest.raises(PreflightError, match="objective.generation.data: .* has no field 'output'"):
        check_inputs(load_config(experiment, on_file[:2]))  # alpaca needs instruction/output: it is dolly
    with pytest.raises(PreflightError, match="objective.generation.data: .*missing.jsonl does not exist"):
        check_inputs(load_config(experiment, ["objective.metric=rougeL",
                                              f"objective.generation.data={tmp_path / 'missing.jsonl'}"]))


def test_validation_pairs_are_the_held_out_split(tmp_path, assets):
    from blackbox.work import train_spec
    from core.data import build_split

    config = load_config(make_experiment(tmp_path, assets), ["objective.metric=rougeL"])
    spec = train_spec(config, "r", {})
    train, val = build_split(spec["data"]["sources"], config.data.val_fraction, config.data.split_seed)
    pairs = rouge.held_out_pairs(spec["data"], spec["objective"]["generation"])
    assert pairs == val[:64] and len(pairs) == 64
    seen = {(r["instruction"], r["input"]) for r in train}
    assert not any((r["instruction"], r["input"]) in seen for r in pairs)
    everything = rouge.held_out_pairs(spec["data"], spec["objective"]["generation"] | {"num_examples": None})
    assert everything == val


# What the tiny model says to any prompt looks like "Q: What is 99 minus": references in that style
# give ROUGE above 0, so that the numbers NOMAD sees are not all zeros.
QUESTIONS = [("Ask an addition question.", "Q: What is 9 plus 9? A: 18"),
             ("Ask a subtraction question.", "Q: What is 99 minus 2? A: 97"),
             ("Ask about 11.", "Q: What is 11 plus 10? A: 21"),
             ("Say something.", "What is it?")]


@pytest.mark.slow  # over 40 s: CI runs it (.ci/run), ./test.sh -m slow by hand
def test_bbo_run_with_rougeL_objective(tmp_path, assets):
    experiment = make_experiment(tmp_path, assets)
    (experiment / "questions.jsonl").write_text("".join(  # relative to the experiment folder
        json.dumps({"instruction": i, "input": "", "output": o}) + "\n" for i, o in QUESTIONS))
    overrides = ["objective.metric=rougeL", "objective.extra_outputs=[rouge1, val_loss]", "nomad.budget=2",
                 "train.max_steps=4", "train.logging_steps=2", "objective.generation.data=questions.jsonl",
                 "objective.generation.max_new_tokens=8"]
    proc = run("bbo", "run", str(experiment), *overrides)
    assert proc.returncode == 0, proc.stderr[-3000:]

    table = run("bbo", "results", str(experiment), *overrides)
    assert table.returncode == 0, table.stderr[-3000:]
    header = table.stdout.splitlines()[0]
    assert "objective (min) = -rougeL" in header and "rougeL" in header.replace("-rougeL", "")

    from bbo.results import load_runs

    df = load_runs(experiment, overrides)
    ok = df[df["status"] == "ok"]
    assert len(ok) == 2
    for name in ROUGE_METRICS:
        assert ok[name].between(0.0, 1.0).all()
    assert (ok["rougeL"] > 0).all() and (ok["rouge_n"] == len(QUESTIONS)).all()
    assert (ok["objective"] == -ok["rougeL"]).all()

    # the run folder: rouge.json, the generations, eval_seconds with the generation time; NOMAD saw -rougeL, rouge1
    run_dir = experiment / "runs" / ok["run_id"].iloc[0]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    stored = json.loads((run_dir / "rouge.json").read_text())
    assert stored["rougeL"] == metrics["rougeL"] and stored["generation"]["do_sample"] is False
    assert metrics["eval_seconds"] >= metrics["rouge_seconds"] > 0
    lines = [json.loads(line) for line in (run_dir / "generations.jsonl").read_text().splitlines()]
    assert [(line["prompt"], line["reference"]) for line in lines] == [
        (f"### Instruction:\n{i}\n### Response:\n", o) for i, o in QUESTIONS]  # the plain template, no response
    history = read_history(experiment / "nomad" / "history.txt", 4)
    assert sorted(tuple(h["outputs"][:2]) for h in history) == sorted(
        (pytest.approx(-r.rougeL), pytest.approx(r.rouge1)) for r in ok.itertuples())

    # reproduced from the folder alone, as the blackbox computed it (the CLI's main, in this process: no torch start-up)
    assert rouge.main([str(run_dir), "--out", str(tmp_path / "again.json")]) == 0
    assert json.loads((tmp_path / "again.json").read_text())["rougeL"] == pytest.approx(metrics["rougeL"], abs=1e-9)


def test_cli_errors_are_one_line(tmp_path, assets):
    proc = run("eval.rouge", str(tmp_path))
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: {tmp_path} is not a run folder (no spec.json)"
    proc = run("eval.rouge", "--model", str(assets["model"]), "--pairs", str(assets["train"]), "--max-new-tokens", "0")
    assert proc.returncode == 2 and proc.stderr.strip() == "error: objective.generation.max_new_tokens: must be > 0, got 0"
    proc = run("eval.rouge", "--model", str(assets["model"]))
    assert proc.returncode == 2 and "--pairs FILE" in proc.stderr


def test_cli_on_a_base_model_and_a_pairs_file(tmp_path, assets, capsys):
    pairs = tmp_path / "questions.jsonl"
    pairs.write_text("".join(json.dumps({"instruction": i, "input": "", "output": o}) + "\n" for i, o in QUESTIONS))
    out = tmp_path / "rouge.json"
    assert rouge.main(["--model", str(assets["model"]), "--pairs", str(pairs), "--template", "plain", "--num-examples", "3",
                       "--max-new-tokens", "6", "--batch-size", "2", "--device", "cpu", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["rouge_n"] == 3 and result["generation"] == {"max_new_tokens": 6, "batch_size": 2, "use_stemmer": False,
                                                               "do_sample": False, "num_beams": 1}
    assert 0.0 < result["rougeL"] <= 1.0 and json.loads(capsys.readouterr().out) == result
