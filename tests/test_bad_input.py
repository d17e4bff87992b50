"""Bad input: a one-line error naming the problem, exit status 2, and nothing recorded as a result."""
import json
import subprocess
import sys

import pytest
from conftest import blackbox

BAD_DATA = '{"question": "2+2?", "answer": "4"}\n'


CASES = {
    # name: (point file text or None, extra args, expected words in the message)
    "empty point file": ("", [], "is empty"),
    "non-numeric point": ("2 1 x -3\n", [], "'x' is not a number"),
    "wrong dimension": ("2 1 1\n", [], "has 3 values, the space has 4"),
    "out of bounds": ("9 1 1 -3\n", [], "rank: 9 is outside its bounds"),
    "real where integer": ("2 1.5 1 -3\n", [], "alpha: '1.5' must be an integer"),
    "nan in point": ("2 1 1 nan\n", [], "lr: 'nan' is not finite"),
    "second line bad": ("2 1 1 -3\n2 1 1\n", [], "line 2"),
    "unknown config key": (None, ["--set", "train.epochz=1"], "train.epochz: unknown key"),
    "wrong type": (None, ["--set", "train.epochs=abc"], "train.epochs: expected a number"),
    "inverted bounds": (None, ["--set", "space.alpha={times_rank: [16, 1]}"], "lower bound 16 must be below"),
    "empty choice list": (None, ["--set", "space.rank={choices: []}"], "space.rank.choices: must be a non-empty list"),
    "unknown hyperparameter": (None, ["--set", "space.beta=1"], "space.beta: unknown hyperparameter"),
    "missing model": (None, ["--set", "model.path=./no-such-model"], "model.path"),
    "missing data file": (None, ["--set", "data.sources=[{path: ./no-such.jsonl}]"], "does not exist"),
    "unknown objective": (None, ["--set", "objective.metric=bleu"], "objective.metric: 'bleu'"),
    "unknown lm-eval task": (None, ["--set", "objective.metric=mmlu", "--set", "objective.mmlu.task=mmlu_pro"],
                             "objective.mmlu.task"),
    "bad override syntax": (None, ["--set", "train.epochs"], "expected key=value"),
    "dropout out of range by hand": (None, ["--dropout", "1.5"], "dropout: must be in [0, 1)"),
    "rank not an integer by hand": (None, ["--rank", "4.5"], "rank: must be an integer"),
    "point file and flags": ("2 1 1 -3\n", ["--rank", "4"], "not both"),
    "data without its fields": (None, ["BAD_DATA"], "has no field 'instruction'"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, tiny_experiment, tmp_path):
    text, args, expected = CASES[name]
    args = list(args)
    if args == ["BAD_DATA"]:
        bad = tmp_path / "bad.jsonl"
        bad.write_text(BAD_DATA)
        args = ["--set", f"data.sources=[{{path: {bad}, format: alpaca}}]"]
    if text is not None:
        points = tmp_path / "points.txt"
        points.write_text(text)
        args.insert(0, str(points))
    proc = blackbox(tiny_experiment, *args)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], proc.stderr
    assert not (tiny_experiment / "runs").exists() or not any(
        p.is_dir() for p in (tiny_experiment / "runs").iterdir())
    assert not (tiny_experiment / "evaluations.jsonl").exists()


def test_missing_point_file_and_experiment(tiny_experiment, tmp_path):
    proc = blackbox(tiny_experiment, str(tmp_path / "nope.txt"))
    assert proc.returncode == 2 and "cannot read point file" in proc.stderr
    proc = blackbox(tmp_path / "no-experiment", "--rank", "4")
    assert proc.returncode == 2 and "no experiment config" in proc.stderr


def test_bbo_run_rejects_a_bad_budget_before_nomad_starts(tiny_experiment):
    proc = subprocess.run([sys.executable, "-m", "bbo", "run", str(tiny_experiment), "nomad.budget=abc"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.strip() == "error: nomad.budget: expected an integer, got 'abc'"
    assert not (tiny_experiment / "nomad").exists()


def test_secrets_never_reach_the_run_folder(tiny_experiment):
    import os

    env = dict(os.environ, HF_TOKEN="hf_topsecret_123", HUGGING_FACE_HUB_TOKEN="hf_topsecret_123")
    proc = blackbox(tiny_experiment, "--rank", "4", "--lr", "1e-3", env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for path in (tiny_experiment / "runs").rglob("*"):
        if path.is_file() and path.suffix in (".json", ".log", ".txt", ""):
            assert "hf_topsecret_123" not in path.read_text(errors="replace"), path
    spec = json.loads(next((tiny_experiment / "runs").glob("r4-*/spec.json")).read_text())
    assert spec["model"]["trust_remote_code"] is False
