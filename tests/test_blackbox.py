"""The blackbox end to end on the tiny model: both entry points, the run folder, caching, reproducibility."""
import json

import pytest

from conftest import SEARCH, make_experiment
import conftest
from conftest import run_dirs

pytestmark = pytest.mark.filterwarnings("ignore")


def blackbox(experiment, *args, check=True):
    proc = conftest.blackbox(experiment, *args)
    if check and proc.returncode != 0:
        raise AssertionError(f"blackbox failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def numbers(line):
    return [float(v) for v in line.split()]


def test_hand_form_trains_writes_the_run_folder_and_then_reuses_it(tiny_experiment):
    first = blackbox(tiny_experiment, "--rank", "4", "--alpha", "8", "--dropout", "0.05", "--lr", "0.003")
    objective, val_loss, train_loss = numbers(first.stdout.strip())
    assert objective == val_loss and 0 < val_loss < 10 and 0 < train_loss < 10
    (run_dir,) = (tiny_experiment / "runs").glob("r4-a8-d0.05-lr0.003-*")
    for name in ("params.json", "status.json", "metrics.json", "provenance.json", "spec.json", "train.log",
                 "adapter/adapter_config.json"):
        assert (run_dir / name).exists(), name
    status = json.loads((run_dir / "status.json").read_text())
    params = json.loads((run_dir / "params.json").read_text())
    adapter = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    provenance = json.loads((run_dir / "provenance.json").read_text())
    assert status["state"] == "ok"
    assert provenance["versions"]["peft"] and isinstance(provenance["git_dirty"], (bool, type(None)))
    assert params["hp"] == {"rank": 4, "alpha": 8, "dropout": 0.05, "lr": 0.003}
    assert params["point"] == [2, 2, 2, -2.52288]  # rank index 2, alpha 2 x rank, dropout index 2, log10(lr)
    assert adapter["r"] == 4 and adapter["lora_alpha"] == 8 and adapter["lora_dropout"] == 0.05
    assert sorted(adapter["target_modules"]) == sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    log_mtime = (run_dir / "train.log").stat().st_mtime

    again = blackbox(tiny_experiment, "--rank", "4", "--alpha", "8", "--dropout", "0.05", "--lr", "0.003")
    assert again.stdout == first.stdout
    assert "[cached]" in again.stderr
    assert (run_dir / "train.log").stat().st_mtime == log_mtime  # nothing retrained
    entries = [json.loads(line) for line in (tiny_experiment / "evaluations.jsonl").read_text().splitlines()]
    assert [e["cached"] for e in entries] == [False, True] and entries[0]["run_id"] == entries[1]["run_id"]


@pytest.mark.slow  # about 30 s or more: CI runs it (.ci/run), ./test.sh -m slow by hand
def test_point_file_form_is_the_same_run_as_the_hand_form(tiny_experiment, tmp_path):
    by_hand = blackbox(tiny_experiment, "--rank", "4", "--alpha", "4", "--dropout", "0", "--lr", "0.001")
    points = tmp_path / "points.txt"
    points.write_text("2 1 1 -3\n2 2 1 -3\n")  # NOMAD's format: one point per line
    by_nomad = blackbox(tiny_experiment, str(points))
    lines = by_nomad.stdout.strip().splitlines()
    assert len(lines) == 2
    assert lines[0] == by_hand.stdout.strip()  # same hyperparameters -> same run, not trained twice
    assert len(list((tiny_experiment / "runs").glob("r4-*"))) == 2


def test_same_point_and_seed_give_the_same_validation_loss(tmp_path, assets, searched):
    """A point of the session's search trained again in another folder: the same numbers, bit for bit."""
    reference, _ = searched
    (first, *_) = run_dirs(reference)
    hp = json.loads((first / "params.json").read_text())["hp"]
    experiment = make_experiment(tmp_path, assets, **SEARCH)
    again = blackbox(experiment, *[f"--{k}={v}" for k, v in hp.items()])
    assert "[cached]" not in again.stderr  # trained here
    (run_dir,) = run_dirs(experiment)
    assert run_dir.name == first.name
    metrics, reference_metrics = (json.loads((d / "metrics.json").read_text()) for d in (run_dir, first))
    assert numbers(again.stdout) == pytest.approx([reference_metrics["objective"], reference_metrics["train_loss"]],
                                                  rel=1e-9)  # printed with 10 digits
    assert metrics["val_loss"] == reference_metrics["val_loss"] and metrics["train_loss"] == reference_metrics["train_loss"]


def test_mmlu_objective_is_negated_accuracy(tmp_path, assets):
    experiment = make_experiment(tmp_path, assets, train={"max_steps": 2},
                                 objective={"metric": "mmlu", "extra_outputs": ["mmlu", "val_loss"],
                                            "mmlu": {"task": "mmlu_local", "data_dir": assets["mmlu"],
                                                     "num_fewshot": 1, "limit": 2, "batch_size": 8}})
    objective, mmlu, val_loss = numbers(blackbox(experiment, "--rank", "4", "--lr", "0.001").stdout)
    assert objective == -mmlu and 0 <= mmlu <= 1 and val_loss > 0
    (run_dir,) = run_dirs(experiment)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics["mmlu_subjects"]) and metrics["mmlu_n"] == 2 * len(metrics["mmlu_subjects"])


def test_two_process_ddp_on_cpu(tmp_path, assets):
    experiment = make_experiment(tmp_path, assets, train={"max_steps": 3},
                                 launch={"num_processes": 2},
                                 objective={"metric": "val_loss", "extra_outputs": []})
    blackbox(experiment, "--rank", "4", "--lr", "0.001")
    (run_dir,) = run_dirs(experiment)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    log = (run_dir / "train.log").read_text()
    assert "--multi_gpu" in log and "--num_processes 2" in log
