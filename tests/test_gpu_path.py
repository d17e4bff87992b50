"""The GPU path as far as a CPU shows it (issue: the defects only a GPU would show).

Each test takes the real code path: the command a run's MMLU gets, the dtypes of the model that
lm-eval and eval.loss score, the arguments the base model is loaded with, a 2-process gloo training
whose rank 1 dies, two launches that rendezvous at the same moment, the GPUs a Slurm job hands MMLU.
"""
import json
import os
import subprocess
import sys
import time

import pytest
import torch

from blackbox.executors import JobWork
from blackbox.work import mmlu_command
from conftest import REPO, blackbox, make_experiment, run_dirs, run_module
from core.config import load_config

pytestmark = pytest.mark.filterwarnings("ignore")

FAST = {"train": {"max_steps": 4, "logging_steps": 2},
        "objective": {"metric": "val_loss", "extra_outputs": ["train_loss"]}}


def only_run(experiment):
    (run_dir,) = run_dirs(experiment)
    return run_dir


# ---------------------------------------------------------------- MMLU on a multi-GPU slot

def test_4bit_mmlu_runs_in_one_process_on_the_first_gpu(tmp_path, assets):
    experiment = make_experiment(tmp_path, assets, model={"quantization": "4bit"}, launch={"num_processes": 2})
    config = load_config(experiment)
    cmd, gpus = mmlu_command(config, experiment / "runs" / "x", ["2", "3"], limit=5)
    assert gpus == ["2"]
    assert cmd[:3] == [sys.executable, "-m", "eval.mmlu"] and "--quantization" in cmd


def test_plain_mmlu_is_data_parallel_over_the_slot(tmp_path, assets):
    config = load_config(make_experiment(tmp_path, assets, launch={"num_processes": 2}))
    cmd, gpus = mmlu_command(config, tmp_path / "run", ["2", "3"], limit=5)
    assert gpus == ["2", "3"]
    assert cmd[cmd.index("--num_processes") + 1] == "2" and "--multi_gpu" in cmd
    assert cmd[1:3] == ["-m", "blackbox.launch"] and "--main_process_port" not in cmd


def test_4bit_mmlu_refuses_several_processes(monkeypatch):
    from eval.mmlu import language_model

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="one process"):
        language_model("unused", None, quantization="4bit", device="cpu")


def test_slurm_job_hands_its_gpus_to_the_work(monkeypatch, tmp_path, assets):
    """A 4-GPU job's MMLU is data-parallel over the 4 GPUs Slurm gave it (CUDA_VISIBLE_DEVICES)."""
    seen = []

    def task(config, run_dir, gpus):
        seen.append(gpus)
        return {"val_loss": 1.0}

    config = load_config(make_experiment(tmp_path, assets, launch={"num_processes": 4}))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    assert JobWork(task)(config, str(tmp_path))["metrics"] == {"val_loss": 1.0}
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    JobWork(task)(config, str(tmp_path))
    assert seen == [["0", "1", "2", "3"], None]
    cmd, _ = mmlu_command(config, tmp_path, seen[0], limit=None)
    assert cmd[cmd.index("--num_processes") + 1] == "4"


# ---------------------------------------------------------------- LoRA in the training precision

def test_bf16_run_is_measured_and_scored_with_bf16_lora(tmp_path, assets):
    """The validation loss is the one of the saved bf16 adapter (recomputed from the folder, it is the same),
    and eval.loss and lm-eval compute LoRA in bf16, not in peft's fp32."""
    from core.model import load_for_eval
    from eval.loss import validation_loss
    from eval.mmlu import language_model

    experiment = make_experiment(tmp_path, assets, model={"dtype": "bfloat16"},
                                 train={"max_steps": 4, "logging_steps": 2, "precision": "bf16"},
                                 objective={"metric": "val_loss", "extra_outputs": []})
    proc = blackbox(experiment, "--rank", "4", "--lr", "0.003")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = only_run(experiment)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert (metrics["dtype"], metrics["precision"]) == ("bfloat16", "bf16")

    model, val_set, collator, spec = load_for_eval(run_dir)
    lora = {p.dtype for n, p in model.named_parameters() if "lora_" in n}
    assert lora == {torch.bfloat16}
    again = validation_loss(model, val_set, collator, spec["train"]["per_device_batch_size"])["val_loss"]
    assert again == pytest.approx(metrics["val_loss"], rel=1e-6)

    lm = language_model(str(assets["model"]), str(run_dir / "adapter"), dtype="bfloat16", device="cpu")
    lora = {p.dtype for n, p in lm.model.named_parameters() if "lora_" in n}
    assert lora == {torch.bfloat16}


# ---------------------------------------------------------------- loading and precision on a GPU

def test_base_model_loads_straight_onto_the_ranks_gpu(monkeypatch):
    from transformers import AutoModelForCausalLM

    from core import model as core_model

    calls = []

    class Loaded:
        config = type("Config", (), {"use_cache": True})()

    def from_pretrained(path, **kwargs):
        calls.append(kwargs)
        return Loaded()

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", from_pretrained)
    monkeypatch.setenv("LOCAL_RANK", "1")
    spec = {"path": "base", "revision": None, "attn_implementation": "sdpa", "trust_remote_code": False,
            "quantization": None}
    core_model.load_base(spec, torch.bfloat16)
    assert calls[0]["device_map"] == {"": "cuda:1"} and calls[0]["dtype"] == torch.bfloat16


def test_auto_precision_is_fp16_on_a_gpu_without_bf16(monkeypatch):
    from blackbox.train import device_and_precision

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    spec = {"train": {"precision": "auto"}, "model": {"dtype": "auto", "quantization": None}}
    assert device_and_precision(spec) == ("cuda", torch.float16, "fp16")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert device_and_precision(spec) == ("cuda", torch.bfloat16, "bf16")
    spec["model"]["quantization"] = "4bit"  # QLoRA's compute dtype follows the GPU too
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    assert device_and_precision(spec)[1] == torch.float16


# ---------------------------------------------------------------- distributed training

def test_a_dying_rank_ends_the_training_at_once(tmp_path, assets):
    """Rank 1 fails at step 2 of a 2-process gloo training: the run fails within a minute (not after
    launch.ddp_timeout_minutes), with rank 1's error."""
    experiment = make_experiment(tmp_path, assets, train={"max_steps": 40, "logging_steps": 1},
                                 launch={"num_processes": 2, "ddp_timeout_minutes": 30},
                                 objective={"metric": "val_loss", "extra_outputs": []})
    started = time.time()
    proc = blackbox(experiment, "--rank", "4", "--lr", "1e-3", env={"BBO_FAULT": "error@2,rank=1"})
    elapsed = time.time() - started
    assert proc.returncode == 1 and proc.stdout.strip() == "FAILED"
    assert elapsed < 60, f"{elapsed:.0f} s"
    status = json.loads((only_run(experiment) / "status.json").read_text())
    assert status["error_kind"] == "error"
    assert "injected fault: training error (rank 1)" in status["reason"]


RENDEZVOUS = """
import os, torch, torch.distributed as dist
dist.init_process_group("gloo")
x = torch.ones(1) * (dist.get_rank() + 1)
dist.all_reduce(x)
if dist.get_rank() == 0:
    print("sum", int(x.item()), "agent_store", os.environ.get("TORCHELASTIC_USE_AGENT_STORE"), flush=True)
dist.destroy_process_group()
"""


def test_launches_at_the_same_moment_each_get_their_rendezvous(tmp_path):
    """Two 2-process launches started together (two parallel slots) both run: torchrun's standalone
    rendezvous holds its port from the start (the processes join the agent's store)."""
    from blackbox.work import accelerate_command

    script = tmp_path / "rendezvous.py"
    script.write_text(RENDEZVOUS)
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    procs = [subprocess.Popen(accelerate_command(2) + [str(script)], cwd=str(REPO), env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    outs = [p.communicate(timeout=180) for p in procs]
    for proc, (out, err) in zip(procs, outs):
        assert proc.returncode == 0, err[-2000:]
        assert "sum 3 agent_store True" in out


# ---------------------------------------------------------------- checks before training

FLASH_LINE = "model.attn_implementation: flash_attention_2 needs the flash-attn package"


def test_flash_attention_without_flash_attn_fails_before_training(tmp_path, assets):
    experiment = make_experiment(tmp_path, assets, model={"attn_implementation": "flash_attention_2"}, **FAST)
    proc = blackbox(experiment, "--rank", "4", "--lr", "1e-3")
    assert proc.returncode != 0 and proc.stdout.strip() == ""
    (line,) = [line for line in proc.stderr.splitlines() if line.strip()]
    assert FLASH_LINE in line and "pip install flash-attn" in line
    assert not (experiment / "runs").exists() or not any((experiment / "runs").iterdir())
    plan = run_module("bbo", "plan", experiment, "--gpus", "4xA100-80GB", timeout=300)
    assert plan.returncode == 1 and FLASH_LINE in plan.stdout


def test_explicit_bf16_on_a_gpu_without_it_is_refused(monkeypatch, tmp_path, assets):
    from core.preflight import PreflightError, check_model_runtime

    config = load_config(make_experiment(tmp_path, assets, train={"precision": "bf16"}))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100-SXM2-32GB")
    with pytest.raises(PreflightError, match=r"train.precision: bf16, but the Tesla V100-SXM2-32GB \(compute "
                                             r"capability 7.0\) does not compute bfloat16: set train.precision=auto"):
        check_model_runtime(config, [["0"]])
    check_model_runtime(config, [None])  # on CPU bf16 is computed (slowly): no GPU to ask
