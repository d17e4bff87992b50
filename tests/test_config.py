"""Experiment config validation: one-line errors that name the key; overrides; fingerprints."""
from pathlib import Path

import pytest
import yaml

from core.config import ConfigError, from_dict, load_config

REPO = Path(__file__).resolve().parent.parent
EXPERIMENTS = ["demo", "llama2-7b-mmlu", "llama2-7b-valloss", "llama2-7b-bbo3"]


def demo_raw():
    return yaml.safe_load((REPO / "experiments" / "demo" / "experiment.yaml").read_text())


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_shipped_experiments_load(name):
    config = load_config(REPO / "experiments" / name)
    assert config.name == name
    assert config.lora.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def test_paper_settings_are_kept():
    bbo3 = load_config(REPO / "experiments" / "llama2-7b-bbo3")
    assert (bbo3.train.per_device_batch_size, bbo3.train.grad_accum, bbo3.launch.num_processes) == (4, 8, 4)
    assert bbo3.train.lr_scheduler == "cosine" and bbo3.train.warmup_ratio == 0.03 and bbo3.data.max_length == 512
    assert bbo3.objective.outputs == ["objective", "eval_seconds", "train_loss", "train_seconds"]
    mmlu = load_config(REPO / "experiments" / "llama2-7b-mmlu")
    assert mmlu.objective.metric == "mmlu" and mmlu.objective.mmlu.num_fewshot == 5 and mmlu.nomad.budget == 50
    assert mmlu.objective.to_objective({"mmlu": 0.46}) == -0.46  # maximised metric, minimised objective


def mutate(path, value):
    raw = demo_raw()
    node = raw
    *parents, last = path
    for p in parents:
        node = node[p]
    if value is KeyError:
        del node[last]
    else:
        node[last] = value
    return raw


@pytest.mark.parametrize("path, value, message", [
    (["train", "epochz"], 3, "train.epochz: unknown key"),
    (["bogus"], 1, "bogus: unknown key"),
    (["train", "per_device_batch_size"], "four", "train.per_device_batch_size: expected an integer"),
    (["train", "per_device_batch_size"], 0, "train.per_device_batch_size: must be > 0"),
    (["train", "epochs"], "3", "train.epochs: expected a number"),
    (["data", "val_fraction"], 1.5, r"data.val_fraction: must be in \(0, 1\)"),
    (["data", "sources"], [], "data.sources: needs at least one source"),
    (["data", "sources"], [{"path": "x.jsonl", "format": "sharegpt"}], "data.sources\\[0\\].format"),
    (["model"], KeyError, "model: missing"),
    (["model", "dtype"], "int8", "model.dtype"),
    (["model", "trust_remote_code"], "yes", "model.trust_remote_code: expected true or false"),
    (["objective", "metric"], "bleu", "objective.metric: 'bleu' is not one of"),
    (["objective", "mmlu", "task"], "mmlu_pro", "objective.mmlu.task"),
    (["objective", "extra_outputs"], ["val_loss", "f1"], "objective.extra_outputs: 'f1'"),
    (["lora", "target_modules"], [], "lora.target_modules"),
    (["nomad", "budget"], "abc", "nomad.budget: expected an integer"),
    (["nomad", "budget"], 0, "nomad.budget: must be > 0"),
    (["nomad", "initial_frame"], 1.5, r"nomad.initial_frame: must be a fraction in \(0, 1\]"),
    (["launch", "timeout_minutes"], -1, "launch.timeout_minutes"),
    (["space", "alpha"], {"times_rank": [16, 1]}, "lower bound 16 must be below"),
    (["name"], "../evil", "name: use letters"),
])
def test_config_errors_name_the_key(path, value, message):
    with pytest.raises(ConfigError, match=message) as info:
        from_dict(mutate(path, value))
    assert "\n" not in str(info.value)


def test_overrides(tmp_path):
    (tmp_path / "experiment.yaml").write_text(yaml.safe_dump(demo_raw()))
    config = load_config(tmp_path, ["train.epochs=2", "launch.num_processes=2", "nomad.extra_lines=[VNS_MADS_SEARCH yes]"])
    assert config.train.epochs == 2.0 and config.launch.num_processes == 2
    assert config.nomad.extra_lines == ["VNS_MADS_SEARCH yes"]
    with pytest.raises(ConfigError, match="train.epochz: unknown key"):
        load_config(tmp_path, ["train.epochz=2"])
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(tmp_path, ["train.epochs"])


def test_fingerprint_tracks_training_settings_only(tmp_path):
    (tmp_path / "experiment.yaml").write_text(yaml.safe_dump(demo_raw()))
    base = load_config(tmp_path).fingerprint()
    assert load_config(tmp_path, ["nomad.budget=99", "launch.timeout_minutes=5"]).fingerprint() == base
    assert load_config(tmp_path, ["train.seed=1"]).fingerprint() != base
    assert load_config(tmp_path, ["lora.target_modules=[q_proj]"]).fingerprint() != base


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="no experiment config"):
        load_config(tmp_path)
    (tmp_path / "experiment.yaml").write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path)
