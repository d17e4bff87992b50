"""The traps of a first real run on a GPU server, each checked on CPU before any GPU time is spent.

A hub model without access, fewer GPUs than the launch needs, a cause that fails every point,
an OOM on another rank, a moved checkout, an edited data file, NOMAD's folder on a fresh clone.
"""
import json
import math
import os
import shutil
import subprocess

import pytest
import yaml

from conftest import REPO, SEARCH, make_experiment
from conftest import blackbox, run_module
from core.config import load_config
from core.preflight import PreflightError, gpu_slots, visible_gpus
from core.store import run_id

FAST = dict(train={"max_steps": 3, "logging_steps": 1}, objective={"metric": "val_loss", "extra_outputs": []})
HP = {"rank": 4, "alpha": 4, "dropout": 0.0, "lr": 1e-3}


def bbo(*args, env=None, timeout=600):
    return run_module("bbo", *args, env=env, timeout=timeout)


def entries(experiment):
    index = experiment / "evaluations.jsonl"
    return [json.loads(line) for line in index.read_text().splitlines()] if index.exists() else []


def run_folders(experiment):
    runs = experiment / "runs"
    return sorted(p.name for p in runs.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))) \
        if runs.exists() else []


# ---------------------------------------------------------------- the hub

def test_hub_model_offline_stops_the_search_before_any_training(tmp_path, assets):
    experiment = make_experiment(tmp_path, assets, model={"path": "meta-llama/Llama-2-7b-hf"}, **FAST)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf-home"))
    proc = bbo("run", experiment, env=env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    (line,) = proc.stderr.strip().splitlines()  # one line, naming the model and the fix
    assert line.startswith("error: model.path:") and "meta-llama/Llama-2-7b-hf" in line and "hf auth login" in line
    assert run_folders(experiment) == [] and entries(experiment) == []

    by_hand = blackbox(experiment, "--rank", "4", "--lr", "1e-3", env=env)
    assert by_hand.returncode == 2 and "meta-llama/Llama-2-7b-hf" in by_hand.stderr
    assert run_folders(experiment) == []

    plan = bbo("plan", experiment, "--gpus", "4xA100-80GB", env=env)
    assert plan.returncode == 1 and "error: model.path:" in plan.stdout
    assert "6.74e9 parameters" in plan.stdout  # the memory plan still comes, from the shipped config.json


# ---------------------------------------------------------------- GPUs

def _config(tmp_path, assets, **launch):
    return load_config(make_experiment(tmp_path, assets, launch=launch))


def test_more_gpus_asked_than_visible_is_one_clear_error(tmp_path, assets):
    config = _config(tmp_path, assets, parallel=2, num_processes=2)
    with pytest.raises(PreflightError, match=r"2 x 2 = 4 GPUs needed, but torch sees 3 \(0, 1, 2\)"):
        gpu_slots(config, visible=["0", "1", "2"])
    assert gpu_slots(config, visible=["0", "1", "2", "3"]) == [["0", "1"], ["2", "3"]]
    uuids = ["GPU-8f0c", "GPU-1a2b"]
    assert gpu_slots(_config(tmp_path / "u", assets, parallel=2), visible=uuids) == [["GPU-8f0c"], ["GPU-1a2b"]]
    shared = _config(tmp_path / "s", assets, parallel=2, gpus=[0, 0])  # two slots share GPU 0
    assert gpu_slots(shared, visible=uuids) == [["GPU-8f0c"], ["GPU-8f0c"]]
    with pytest.raises(PreflightError, match="launch.gpus: GPU 5 is not among the 2 GPUs"):
        gpu_slots(_config(tmp_path / "b", assets, gpus=[5]), visible=uuids)
    assert gpu_slots(_config(tmp_path / "c", assets, parallel=2, device="cpu"), visible=uuids) == [[], []]


def test_visible_gpus_come_from_torch_and_take_uuids(monkeypatch):
    import torch

    from core import preflight

    assert preflight.cuda_driver_present() or visible_gpus() == []  # no CUDA driver: no GPU, without torch
    monkeypatch.setattr(preflight, "cuda_driver_present", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-8f0c1d2e, MIG-5b6c")
    assert visible_gpus() == ["GPU-8f0c1d2e", "MIG-5b6c"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert visible_gpus() == ["0", "1"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert visible_gpus() == []


def test_a_fake_nvidia_smi_does_not_make_gpus(tmp_path, assets):
    """nvidia-smi lists 8 GPUs and CUDA_VISIBLE_DEVICES names two; torch sees none: the search stops."""
    experiment = make_experiment(tmp_path, assets, launch={"device": "cuda", "parallel": 2, "num_processes": 2}, **FAST)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "nvidia-smi"
    fake.write_text("#!/bin/sh\nfor i in 0 1 2 3 4 5 6 7; do echo \"GPU $i: NVIDIA A100-SXM4-80GB (UUID: GPU-$i)\"; "
                    "done\n")
    fake.chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", CUDA_VISIBLE_DEVICES="0,1")
    proc = bbo("run", experiment, env=env)
    assert proc.returncode == 2
    assert "nvidia-smi lists 8 GPUs" in proc.stderr and "torch sees no GPU" in proc.stderr  # tests/test_cuda_setup.py
    assert run_folders(experiment) == []
    plan = bbo("plan", experiment, env=env)
    assert plan.returncode == 1 and "torch sees no GPU" in plan.stdout


# ---------------------------------------------------------------- fail fast, resume cleanly

@pytest.mark.slow  # over 40 s: CI runs it (.ci/run), ./test.sh -m slow by hand
def test_search_whose_first_three_points_time_out_stops_then_retry_failed_trains_them(searched_copy):
    experiment = searched_copy  # a search whose 3 points trained fine
    assert [e["state"] for e in entries(experiment)] == ["ok"] * 3

    # Every training now hangs (as with a lost file system): each point runs into the timeout.
    env = dict(os.environ, BBO_FAULT="hang@1")
    stopped = bbo("run", experiment, "nomad.budget=8", "launch.timeout_minutes=0.12", env=env)
    assert stopped.returncode != 0
    failed = [e for e in entries(experiment)[3:]]
    assert len(failed) == 3 and {e["state"] for e in failed} == {"failed"}  # the other 2 of the budget unspent
    assert {e["error_kind"] for e in failed} == {"timeout"}
    assert "the first 3 evaluations all failed with timeout" in stopped.stderr
    assert "launch.timeout_minutes" in stopped.stderr and "--retry-failed" in stopped.stderr

    retried = bbo("run", experiment, "nomad.budget=6", "--retry-failed")
    assert retried.returncode == 0, retried.stderr[-3000:]
    assert "removed from NOMAD's cache" in retried.stderr
    statuses = {name: json.loads((experiment / "runs" / name / "status.json").read_text())
                for name in run_folders(experiment)}
    retrained = [s for s in statuses.values() if s.get("attempt", 1) >= 2]
    assert retrained and all(s["state"] == "ok" for s in retrained)  # failed points trained again, now ok
    # a resumed search does not count failed points against the budget: 6 successful evaluations
    assert sum(s["state"] == "ok" for s in statuses.values()) >= 6


def test_oom_on_another_rank_is_oom(tmp_path, assets):
    experiment = make_experiment(tmp_path, assets, launch={"num_processes": 2}, **FAST)
    env = dict(os.environ, BBO_FAULT="oom@1,rank=1")
    proc = blackbox(experiment, "--rank", "4", "--lr", "1e-3", env=env)
    assert proc.returncode == 1 and proc.stdout.strip() == "FAILED"
    (name,) = run_folders(experiment)
    status = json.loads((experiment / "runs" / name / "status.json").read_text())
    assert status["error_kind"] == "oom" and "(rank 1)" in status["reason"]


# ---------------------------------------------------------------- runs keyed by content

def _relocatable(root, assets, settings=FAST):
    """A checkout-like tree: assets and an experiment that names them by relative paths."""
    shutil.copytree(assets["model"], root / "assets" / "model")
    shutil.copytree(assets["mmlu"], root / "assets" / "mmlu")
    (root / "assets" / "data").mkdir()
    shutil.copy(assets["train"], root / "assets" / "data" / "alpaca.jsonl")
    shutil.copy(assets["dolly"], root / "assets" / "data" / "dolly.jsonl")
    experiment = make_experiment(root / "experiments", assets, **settings)
    raw = yaml.safe_load((experiment / "experiment.yaml").read_text())
    raw["model"]["path"] = "../../assets/model"
    raw["data"]["sources"] = [{"path": "../../assets/data/alpaca.jsonl", "format": "alpaca"},
                              {"path": "../../assets/data/dolly.jsonl", "format": "dolly"}]
    raw["objective"]["mmlu"]["data_dir"] = "../../assets/mmlu"
    (experiment / "experiment.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return experiment


def test_a_copied_checkout_answers_every_finished_point_without_training(tmp_path, assets, searched):
    """The session's search (absolute asset paths) in a checkout that names its assets by relative paths, then
    that checkout moved: every finished point is answered from its folder, nothing trained."""
    reference, _ = searched
    experiment = _relocatable(tmp_path / "here", assets, SEARCH)
    shutil.copytree(reference / "runs", experiment / "runs")
    before = run_folders(experiment)
    points = [[f"--{k}={v}" for k, v in json.loads((experiment / "runs" / rid / "params.json").read_text())["hp"].items()]
              for rid in before]
    assert len(points) == 3
    proc = blackbox(experiment, *points[0])
    assert proc.returncode == 0 and "[cached]" in proc.stderr, proc.stderr[-2000:]

    shutil.copytree(tmp_path / "here", tmp_path / "elsewhere")
    shutil.rmtree(tmp_path / "here")  # the old path is gone, as after a move
    moved = tmp_path / "elsewhere" / "experiments" / experiment.name
    for point in points:
        proc = blackbox(moved, *point)
        assert proc.returncode == 0 and "[cached]" in proc.stderr, proc.stderr[-2000:]
    assert run_folders(moved) == before


def test_run_id_follows_the_data_not_its_path(tmp_path, assets):
    experiment = _relocatable(tmp_path / "a", assets)
    rid = run_id(HP, load_config(experiment).fingerprint())
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    copy = tmp_path / "b" / "experiments" / experiment.name
    assert run_id(HP, load_config(copy).fingerprint()) == rid

    data = tmp_path / "b" / "assets" / "data" / "dolly.jsonl"
    lines = data.read_text().splitlines(keepends=True)
    data.write_text("".join(lines[:-1]))  # one example fewer, same path
    edited = run_id(HP, load_config(copy).fingerprint())
    assert edited != rid
    model_config = tmp_path / "b" / "assets" / "model" / "config.json"
    model_config.write_text(model_config.read_text().replace('"rms_norm_eps"', '"rms_norm_eps" ', 1))
    assert run_id(HP, load_config(copy).fingerprint()) not in (rid, edited)  # another model: new ids too


# ---------------------------------------------------------------- NOMAD's folder on a fresh clone

def test_nomad_folder_is_in_git_for_every_experiment():
    tracked = subprocess.run(["git", "ls-files", "experiments"], capture_output=True, text=True, cwd=REPO,
                             check=True).stdout.split()
    experiments = sorted(p.parent.name for p in (REPO / "experiments").glob("*/experiment.yaml")
                         if not p.parent.name.startswith("_"))
    assert experiments and all(f"experiments/{name}/nomad/.gitkeep" in tracked for name in experiments)


def test_paramfile_makes_the_nomad_folder_and_rotation_keeps_it(tmp_path, assets):
    from bbo import paramfile
    from bbo.nomad import rotate_stale_nomad_files

    experiment = make_experiment(tmp_path, assets, **FAST)
    paramfile.write(load_config(experiment))
    assert (experiment / "nomad" / ".gitkeep").is_file()
    rotate_stale_nomad_files(load_config(experiment))
    (experiment / "nomad" / "cache.txt").write_text("old\n")
    rotate_stale_nomad_files(load_config(experiment, ["train.seed=7"]))  # another problem: old files aside
    assert (experiment / "nomad" / ".gitkeep").is_file() and not (experiment / "nomad" / "cache.txt").exists()
    (aside,) = experiment.glob("nomad.old-*")
    assert (aside / "cache.txt").read_text() == "old\n"


# ---------------------------------------------------------------- QLoRA

def test_4bit_base_trains_on_cpu_with_its_own_run_id(searched_copy):
    """bitsandbytes 0.50 runs NF4 on CPU: the 4-bit path (load, prepare for k-bit training, LoRA) runs here."""
    import bitsandbytes  # noqa: F401 - pinned in requirements.txt
    experiment = searched_copy  # its 3 points trained on the plain base
    first = json.loads((experiment / "evaluations.jsonl").read_text().splitlines()[0])
    point = [f"--{name}={value}" for name, value in first["hp"].items()]
    plain = blackbox(experiment, *point)
    quantized = blackbox(experiment, *point, "--set", "model.quantization=4bit")
    assert plain.returncode == 0 and quantized.returncode == 0, quantized.stderr[-2000:]
    assert "[cached]" in plain.stderr and "[cached]" not in quantized.stderr and len(run_folders(experiment)) == 4
    (run,) = [name for name in run_folders(experiment)
              if json.loads((experiment / "runs" / name / "spec.json").read_text())["model"]["quantization"] == "4bit"]
    metrics = json.loads((experiment / "runs" / run / "metrics.json").read_text())
    assert math.isfinite(metrics["val_loss"]) and metrics["val_loss"] != float(plain.stdout.split()[0])
