"""Never fall back to CPU silently: nvidia-smi lists GPUs that torch cannot see (a torch built for a newer
CUDA than the driver's, or a CPU build) stops `bbo run`, `bbo plan` and the blackbox with one line;
scripts/setup.sh installs torch from PyTorch's wheel index for the driver's CUDA version.

A fake nvidia-smi (first on PATH) plays a 4-GPU server whose driver supports CUDA 12.4; torch here
sees no GPU (a CPU build; on a GPU machine, CUDA_VISIBLE_DEVICES="" hides them).
"""
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, make_experiment
from core import nvidia
from core.config import load_config
from core.nvidia import Driver, WheelError, chosen_tag, no_gpu_message, wheel_tag

pytestmark = pytest.mark.xdist_group("test_cuda_setup")  # its module fixture is made once: one worker

FAST = dict(train={"max_steps": 3, "logging_steps": 1}, objective={"metric": "val_loss", "extra_outputs": []})
DRIVER = Driver(4, "12.4", "550.54.15")
PIN = nvidia.torch_pin()  # requirements.txt's torch==VERSION


def fake_smi(folder: Path, cuda: str = "12.4", gpus: int = 4, rc: int = 0) -> Path:
    """A bin folder whose nvidia-smi answers as a server with `gpus` GPUs and a driver for CUDA `cuda`."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "nvidia-smi"
    listing = "".join(f'echo "GPU {i}: NVIDIA A100-SXM4-80GB (UUID: GPU-{i}f0c1d2e-0000-0000-0000-00000000000{i})"\n'
                      for i in range(gpus))
    versions = "".join('echo "550.54.15"\n' for _ in range(gpus))
    header = ["Tue Dec  8 10:00:00 2026",
              "+-----------------------------------------------------------------------------------------+",
              f"| NVIDIA-SMI 550.54.15              Driver Version: 550.54.15      CUDA Version: {cuda}     |",
              "|-----------------------------------------+------------------------+----------------------+",
              "| GPU  Name                 Persistence-M | Bus-Id          Disp.A | Volatile Uncorr. ECC |",
              "|   0  NVIDIA A100-SXM4-80GB          On  |   00000000:07:00.0 Off |                    0 |"]
    header = "".join(f"echo '{line}'\n" for line in header)  # echo only (a builtin): no PATH needed
    script.write_text(f"""#!/bin/sh
[ {rc} = 0 ] || {{ echo "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."; exit {rc}; }}
case "$1" in
  -L) {listing or ':'} ;;
  --query-gpu=*) {versions or ':'} ;;
  *) {header} ;;
esac
""")
    script.chmod(0o755)
    return folder


@pytest.fixture(scope="module")
def torch_info():
    import torch

    return torch.__version__, torch.version.cuda


def smi_env(bin_dir: Path, torch_info) -> dict:
    """PATH with the fake nvidia-smi first; torch's own GPUs, if any, hidden."""
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", PYTHONPATH=str(REPO))
    env.pop("CUDA_VISIBLE_DEVICES", None)
    if torch_info[1]:  # a CUDA build (a GPU machine): make torch see none
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def expected_line(torch_info, env) -> str:
    return "error: " + no_gpu_message(DRIVER, *torch_info, env.get("CUDA_VISIBLE_DEVICES"))


def py(*args, env, cwd=REPO, timeout=300):
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=timeout)


def no_runs(experiment: Path) -> bool:
    runs = experiment / "runs"
    return not (experiment / "evaluations.jsonl").exists() and (
        not runs.exists() or not [p for p in runs.iterdir() if not p.name.startswith(".")])


# ---------------------------------------------------------------- the check, from every entry point

def test_run_plan_and_blackbox_stop_with_one_line_before_training(tmp_path, assets, torch_info):
    experiment = make_experiment(tmp_path, assets, **FAST)
    env = smi_env(fake_smi(tmp_path / "bin"), torch_info)
    line = expected_line(torch_info, env)
    assert "nvidia-smi lists 4 GPUs (driver 550.54.15, CUDA 12.4) but torch sees no GPU" in line
    assert f"torch {torch_info[0]} is " in line and line.endswith("or set launch.device=cpu to train on CPU")

    run = py("-m", "bbo", "run", experiment, env=env)
    assert run.returncode == 2, run.stderr[-2000:]
    assert run.stderr.strip().splitlines() == [line] and run.stdout == ""

    by_hand = py("-m", "blackbox", "-e", experiment, "--rank", "8", "--alpha", "16", "--dropout", "0.05",
                 "--lr", "3e-4", env=env)
    assert by_hand.returncode == 2, by_hand.stderr[-2000:]
    assert by_hand.stderr.strip().splitlines() == [line] and by_hand.stdout == ""
    if not torch_info[1]:  # this CPU build, word for word: both CUDA versions and the fix
        release = torch_info[0].split("+")[0]
        assert line == (
            f"error: nvidia-smi lists 4 GPUs (driver 550.54.15, CUDA 12.4) but torch sees no GPU: torch "
            f"{torch_info[0]} is a CPU build, so every point would train on CPU: install the torch build for the "
            f"driver: TORCH_CUDA=cu124 bash scripts/setup.sh --reinstall-torch (or pip install --force-reinstall "
            f"torch=={release} --index-url https://download.pytorch.org/whl/cu124); or set launch.device=cpu to "
            f"train on CPU")

    assert py("-m", "bbo", "paramfile", experiment, env=env).returncode == 0
    nomad = py("-m", "bbo.nomad", experiment / "param.txt", env=env)  # a search started without `bbo run`
    assert nomad.returncode == 2 and nomad.stderr.strip().splitlines() == [line]
    assert no_runs(experiment)

    plan = py("-m", "bbo", "plan", experiment, env=env)
    assert plan.returncode == 1, plan.stdout[-2000:] + plan.stderr[-2000:]
    assert f"  {line}" in plan.stdout.splitlines() and "checks for demo: 1 failed" in plan.stdout
    # the machine, first: torch and its build, the driver, the GPUs torch sees
    head = plan.stdout.split("checks for")[0]
    assert f"torch                 {torch_info[0]} (" in head
    assert "NVIDIA driver         550.54.15, CUDA 12.4 (4 GPUs listed by nvidia-smi)" in head
    assert "GPUs torch sees       0" in head
    assert no_runs(experiment)


def test_the_line_for_a_torch_built_for_a_newer_cuda_than_the_driver():
    line = no_gpu_message(DRIVER, "2.13.0+cu130", "13.0")
    assert ("torch 2.13.0+cu130 is built for CUDA 13.0, newer than the driver's CUDA 12.4, so every point would "
            "train on CPU: install the torch build for the driver: TORCH_CUDA=cu124 bash scripts/setup.sh "
            "--reinstall-torch (or pip install --force-reinstall torch==2.13.0 --index-url "
            "https://download.pytorch.org/whl/cu124)") in line
    old = no_gpu_message(Driver(2, "11.2", "460.32.03"), "2.13.0+cu130", "13.0")
    assert "CUDA 11.2 only" in old and "upgrade the NVIDIA driver" in old and "TORCH_CUDA=cu" not in old
    # the build fits the driver: not the build's fault (hidden GPUs, permissions)
    fits = no_gpu_message(DRIVER, "2.13.0+cu124", "12.4", visible="")
    assert "which the driver supports (CUDA_VISIBLE_DEVICES='')" in fits and "check CUDA_VISIBLE_DEVICES" in fits
    assert "\n" not in line + old + fits


def test_launch_device_cpu_does_not_fire_and_auto_does(tmp_path, assets, monkeypatch):
    from core.preflight import PreflightError, check_before_training, gpu_slots

    monkeypatch.setenv("PATH", f"{fake_smi(tmp_path / 'bin')}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # torch sees no GPU, whatever this machine has
    monkeypatch.delenv("BBO_GPU_SLOTS", raising=False)
    cpu = load_config(make_experiment(tmp_path / "cpu", assets, launch={"device": "cpu", "parallel": 2}, **FAST))
    assert gpu_slots(cpu) == [[], []]
    assert check_before_training(cpu)[0] == [[], []]
    auto = load_config(make_experiment(tmp_path / "auto", assets, **FAST))
    with pytest.raises(PreflightError, match=r"nvidia-smi lists 4 GPUs .* but torch sees no GPU"):
        check_before_training(auto)
    assert gpu_slots(auto, visible=[]) == [None]  # GPUs given by the caller (tests, plans): no nvidia-smi asked


def test_without_nvidia_smi_the_check_costs_no_torch_import(tmp_path):
    env = dict(os.environ, PATH=str(tmp_path), PYTHONPATH=str(REPO))  # no nvidia-smi on PATH
    code = ("import sys; from core.preflight import check_torch_sees_gpus; check_torch_sees_gpus(); "
            "print('torch' in sys.modules)")
    proc = py("-c", code, env=env)
    assert proc.returncode == 0 and proc.stdout.strip() == "False", proc.stderr


def test_nvidia_smi_that_fails_lists_none_and_one_that_hangs_is_given_up(tmp_path, monkeypatch):
    sleep = shutil.which("sleep")
    monkeypatch.setenv("PATH", str(fake_smi(tmp_path / "broken", rc=9)))
    assert nvidia.read_driver() is None
    monkeypatch.setenv("PATH", str(fake_smi(tmp_path / "none", gpus=0)))
    assert nvidia.read_driver() == Driver(0, "12.4", "550.54.15") and chosen_tag(nvidia.read_driver()) is None
    hang = tmp_path / "hang"
    hang.mkdir()
    (hang / "nvidia-smi").write_text(f"#!/bin/sh\nexec {sleep} 30\n")
    (hang / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", str(hang))
    monkeypatch.setattr(nvidia, "SMI_TIMEOUT", 1)
    started = time.monotonic()
    assert nvidia.read_driver() is None and time.monotonic() - started < 10


# ---------------------------------------------------------------- the wheel: which index for which driver

@pytest.mark.parametrize("cuda,tag", [("12.4", "cu124"), ("13.1", "cu130"), ("13.0", "cu130"), ("12.9", "cu128"),
                                      ("12.5", "cu124"), ("12.1", "cu121"), ("12.0", "cu118"), ("11.8", "cu118"),
                                      ("14.2", "cu130")])
def test_wheel_tag_is_the_highest_known_not_above_the_drivers_cuda(cuda, tag):
    assert wheel_tag(cuda) == tag


def test_wheel_tag_errors_and_the_torch_cuda_override():
    with pytest.raises(WheelError, match=r"supports CUDA 11\.2 only, older than .*cu118.*: upgrade the NVIDIA driver"):
        wheel_tag("11.2")
    with pytest.raises(WheelError, match="nvidia-smi does not say which CUDA version"):
        wheel_tag(None)
    assert wheel_tag("12.4", "cu126") == "cu126" and wheel_tag("11.2", " CU118 ") == "cu118"
    assert wheel_tag(None, "cpu") == "cpu"
    with pytest.raises(WheelError, match="TORCH_CUDA=12.6 is not a PyTorch wheel tag"):
        wheel_tag("12.4", "12.6")
    assert chosen_tag(None) is None and chosen_tag(DRIVER) == "cu124" and chosen_tag(None, "cu126") == "cu126"
    assert chosen_tag(Driver(1, "11.2", None), "cu118") == "cu118"  # the user's word, also for an old driver


def wheel_script(*args, bin_dir: Path | None, tmp_path: Path, torch_cuda: str | None = None, stdlib_only=True):
    """scripts/torch_wheel.py as setup.sh runs it (-S: no site-packages, as the system python3 before .venv)."""
    env = dict(os.environ, PATH=str(bin_dir or tmp_path))  # only the fake nvidia-smi (or none) on PATH
    env.pop("TORCH_CUDA", None)
    env.pop("PYTHONPATH", None)
    if torch_cuda is not None:
        env["TORCH_CUDA"] = torch_cuda
    return py(*(["-S"] if stdlib_only else []), REPO / "scripts" / "torch_wheel.py", *args, env=env, cwd=tmp_path)


def test_torch_wheel_prints_the_command_without_installing(tmp_path):
    server = fake_smi(tmp_path / "bin")
    proc = wheel_script(bin_dir=server, tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"pip install {PIN} --index-url https://download.pytorch.org/whl/cu124\n"
    assert "CUDA 12.4" in proc.stderr
    assert wheel_script("--index-url", bin_dir=server, tmp_path=tmp_path).stdout == \
        "https://download.pytorch.org/whl/cu124\n"
    assert wheel_script("--tag", bin_dir=server, tmp_path=tmp_path, torch_cuda="cu126").stdout == "cu126\n"
    new = wheel_script(bin_dir=fake_smi(tmp_path / "new", cuda="13.1"), tmp_path=tmp_path)
    assert new.stdout.endswith("--index-url https://download.pytorch.org/whl/cu130\n")
    old = wheel_script(bin_dir=fake_smi(tmp_path / "old", cuda="11.2"), tmp_path=tmp_path)
    assert old.returncode == 1 and old.stdout == ""
    assert old.stderr.strip().splitlines() == [
        "error: the NVIDIA driver supports CUDA 11.2 only, older than the oldest CUDA build of torch known here "
        "(cu118, CUDA 11.8): upgrade the NVIDIA driver"]
    cpu = wheel_script(bin_dir=None, tmp_path=tmp_path)  # no nvidia-smi: pip's default index, as always
    assert cpu.returncode == 0 and cpu.stdout == f"pip install {PIN}\n"
    assert wheel_script("--index-url", bin_dir=None, tmp_path=tmp_path).stdout == "\n"


def test_torch_wheel_check_fails_with_the_line_when_torch_sees_no_gpu(tmp_path, torch_info):
    env_visible = None if not torch_info[1] else ""
    server = fake_smi(tmp_path / "bin")
    env = dict(os.environ, PATH=f"{server}{os.pathsep}{os.environ['PATH']}")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    if env_visible is not None:
        env["CUDA_VISIBLE_DEVICES"] = env_visible
    proc = py(REPO / "scripts" / "torch_wheel.py", "--check", env=env, cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == ["error: " + no_gpu_message(DRIVER, *torch_info, env_visible)]


# ---------------------------------------------------------------- scripts/setup.sh, with a fake .venv

FAKE_VENV_PYTHON = """#!/bin/sh
echo "$*" >> "$(dirname "$0")/../calls.log"
case "$1" in
  -m) exit 0 ;;                                  # pip: only logged
  -c) echo "${FAKE_TORCH_BUILD:-cpu}" ;;         # the torch build installed now
  scripts/torch_wheel.py) [ "${FAKE_CHECK:-}" = ok ] && exit 0; exec "$REAL_PYTHON" "$@" ;;
esac
"""


@pytest.fixture
def checkout(tmp_path):
    """setup.sh and what it reads, with a .venv whose python logs its calls instead of installing."""
    root = tmp_path / "checkout"
    for rel in ("scripts/setup.sh", "scripts/torch_wheel.py", "core/__init__.py", "core/nvidia.py",
                "requirements.txt", "requirements-nodeps.txt", "pyproject.toml"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / rel, root / rel)
    (root / ".venv" / "bin").mkdir(parents=True)
    (root / ".venv" / "bin" / "python").write_text(FAKE_VENV_PYTHON)
    (root / ".venv" / "bin" / "python").chmod(0o755)
    return root


def setup_sh(root: Path, bin_dir: Path, *args, **env_vars):
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", PYTHON=sys.executable,
               REAL_PYTHON=sys.executable, PYTHONPATH=str(REPO), **env_vars)
    for name in ("TORCH_CUDA", "CUDA_VISIBLE_DEVICES"):
        if name not in env_vars:
            env.pop(name, None)
    log = root / ".venv" / "calls.log"
    log.unlink(missing_ok=True)
    proc = subprocess.run(["bash", str(root / "scripts" / "setup.sh"), *args], capture_output=True, text=True,
                          env=env, timeout=300)
    return proc, log.read_text().splitlines() if log.exists() else []


def pip_torch(calls):
    return [c for c in calls if c.startswith("-m pip install") and " torch==" in f" {c}"]


def test_setup_on_a_gpu_server_takes_the_drivers_wheel_and_fails_loudly_if_torch_sees_no_gpu(checkout, tmp_path,
                                                                                            torch_info):
    server = fake_smi(tmp_path / "bin")
    stamp = checkout / ".venv" / ".requirements.sha256"
    hide = {"CUDA_VISIBLE_DEVICES": ""} if torch_info[1] else {}
    proc, calls = setup_sh(checkout, server, **hide)  # the real check: torch (a CPU build here) sees no GPU
    assert proc.returncode == 1, proc.stderr
    assert pip_torch(calls) == [f"-m pip install -q --force-reinstall {PIN} --index-url "
                                "https://download.pytorch.org/whl/cu124"]  # a CPU build installed: replaced
    assert proc.stderr.strip().splitlines()[-1].startswith("error: nvidia-smi lists 4 GPUs (driver 550.54.15, "
                                                          "CUDA 12.4) but torch sees no GPU")
    assert not stamp.exists()  # the next run tries again

    proc, calls = setup_sh(checkout, server, FAKE_CHECK="ok", FAKE_TORCH_BUILD="cu124")
    assert proc.returncode == 0, proc.stderr
    assert pip_torch(calls) == [f"-m pip install -q {PIN} --index-url https://download.pytorch.org/whl/cu124"]
    assert "scripts/torch_wheel.py --check" in calls and stamp.exists()
    assert setup_sh(checkout, server, FAKE_CHECK="ok")[1] == []  # a second run: nothing to do

    proc, calls = setup_sh(checkout, server, FAKE_CHECK="ok", FAKE_TORCH_BUILD="cu124", TORCH_CUDA="cu126")
    assert proc.returncode == 0, proc.stderr  # another TORCH_CUDA: torch again, from its index
    assert pip_torch(calls) == [f"-m pip install -q --force-reinstall {PIN} --index-url "
                                "https://download.pytorch.org/whl/cu126"]
    proc, calls = setup_sh(checkout, server, "--reinstall-torch", FAKE_CHECK="ok", FAKE_TORCH_BUILD="cu124")
    assert pip_torch(calls) == [f"-m pip install -q --force-reinstall {PIN} --index-url "
                                "https://download.pytorch.org/whl/cu124"]

    proc, calls = setup_sh(checkout, fake_smi(tmp_path / "old", cuda="11.2"))
    assert proc.returncode == 1 and calls == []  # nothing installed
    assert proc.stderr.strip().splitlines() == [
        "error: the NVIDIA driver supports CUDA 11.2 only, older than the oldest CUDA build of torch known here "
        "(cu118, CUDA 11.8): upgrade the NVIDIA driver"]


def test_setup_on_a_cpu_machine_is_as_before(checkout, tmp_path):
    no_driver = fake_smi(tmp_path / "bin", rc=9)  # an nvidia-smi that fails: no usable GPU (hides a real one)
    proc, calls = setup_sh(checkout, no_driver)
    assert proc.returncode == 0, proc.stderr
    assert pip_torch(calls) == [f"-m pip install -q {PIN}"]  # pip's default index: the local CPU build
    assert not any("--check" in c for c in calls)
    before = hashlib.sha256(b"".join((REPO / name).read_bytes()
                                     for name in ("requirements.txt", "requirements-nodeps.txt", "pyproject.toml")))
    assert (checkout / ".venv" / ".requirements.sha256").read_text().strip() == before.hexdigest()  # the stamp as ever
    assert setup_sh(checkout, no_driver)[1] == []  # a second run: nothing to do
