"""The NVIDIA driver as nvidia-smi reports it, and the torch CUDA wheel that fits it.

    python3 scripts/torch_wheel.py            # the pip command scripts/setup.sh runs for torch here
    TORCH_CUDA=cu126 python3 scripts/torch_wheel.py

Why: torch sees no GPU when its CUDA build is newer than the driver supports (or when it is a CPU
build), and a search with launch.device auto would then train a 7B model on CPU for hours per point.
nvidia-smi tells the two apart: it lists the machine's GPUs whatever torch can do with them.
core/preflight.py stops a search there (one line with the versions and the fix); scripts/setup.sh
installs torch from PyTorch's own wheel index for the driver's CUDA version.

Stdlib only, no import of torch: setup.sh runs it with the system python3 before .venv exists, and a
CPU machine (no nvidia-smi) pays one PATH lookup.

The wheel tag: the highest of CUDA_TAGS (the one list of the CUDA builds PyTorch publishes wheel
indexes for, https://download.pytorch.org/whl/<tag>) not above the CUDA version in nvidia-smi's
header ("CUDA Version: 12.4" -> cu124; 13.1 -> cu130); TORCH_CUDA=<tag> (any cuXYZ, or cpu) wins.
A driver older than the oldest tag is an error that says to upgrade the driver. Each torch release is
published for a few of these tags only (2.9: cu126, cu128, cu130): when the chosen index lacks the
pinned version, pip finds no matching distribution and setup.sh says so; the fix is a newer driver.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

CUDA_TAGS = ("cu130", "cu128", "cu126", "cu124", "cu121", "cu118")  # highest first; add new ones at the top
WHEEL_INDEX = "https://download.pytorch.org/whl/{tag}"
SMI_TIMEOUT = 10  # seconds for one nvidia-smi call (a hung driver must not hang a search's start)
TORCH_CUDA_ENV = "TORCH_CUDA"
SETUP = "bash scripts/setup.sh --reinstall-torch"
REQUIREMENTS = Path(__file__).resolve().parent.parent / "requirements.txt"


class WheelError(ValueError):
    """No torch wheel tag can be chosen; the message says why and what to do."""


@dataclass(frozen=True)
class Driver:
    """What nvidia-smi says: the GPUs it lists (all of the machine's: it ignores CUDA_VISIBLE_DEVICES)."""
    gpus: int
    cuda: str | None  # the newest CUDA version the driver supports, "12.4" (None: not in the header)
    version: str | None  # the driver's version, "550.54.15"

    def __str__(self):
        return f"driver {self.version or 'unknown'}, CUDA {self.cuda or 'unknown'}"


def _smi(exe: str, *args: str) -> str | None:
    try:
        proc = subprocess.run([exe, *args], capture_output=True, text=True, timeout=SMI_TIMEOUT)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def read_driver() -> Driver | None:
    """The driver nvidia-smi (on PATH) reports; None without nvidia-smi, or when it fails or hangs
    (no driver to use). Costs one PATH lookup on a machine without it."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    header = _smi(exe)
    if header is None:
        return None
    listing = _smi(exe, "-L") or ""
    gpus = sum(1 for line in listing.splitlines() if re.match(r"\s*GPU \d+\s*:", line))
    cuda = re.search(r"CUDA Version\s*:\s*(\d+\.\d+)", header)
    version = re.search(r"Driver Version\s*:\s*([0-9][0-9.]*)", header)
    version = version.group(1) if version else None
    if version is None:
        query = _smi(exe, "--query-gpu=driver_version", "--format=csv,noheader") or ""
        version = next((line.strip() for line in query.splitlines() if line.strip()), None)
    return Driver(gpus, cuda.group(1) if cuda else None, version)


def tag_version(tag: str) -> tuple[int, int]:
    """cu124 -> (12, 4), cu130 -> (13, 0)."""
    digits = tag[2:]
    return int(digits[:-1]), int(digits[-1])


def _version(text: str) -> tuple[int, int]:
    major, minor = text.split(".")[:2]
    return int(major), int(minor)


def wheel_tag(cuda: str | None, override: str | None = None) -> str:
    """PyTorch's wheel index tag for a driver that supports CUDA `cuda` ("12.4"): the highest of
    CUDA_TAGS not above it. override (TORCH_CUDA: cuXYZ or cpu) wins. Raises WheelError."""
    known = ", ".join(CUDA_TAGS)
    if override and override.strip():
        tag = override.strip().lower()
        if not re.fullmatch(r"cu\d{3,}|cpu", tag):
            raise WheelError(f"{TORCH_CUDA_ENV}={override} is not a PyTorch wheel tag: give cuXYZ ({known}) or cpu")
        return tag
    if not cuda:
        raise WheelError(f"nvidia-smi does not say which CUDA version the driver supports (no 'CUDA Version' in "
                         f"its output): set {TORCH_CUDA_ENV} to the tag of that version or below ({known})")
    have = _version(cuda)
    for tag in CUDA_TAGS:
        if tag_version(tag) <= have:
            return tag
    oldest = CUDA_TAGS[-1]
    raise WheelError(f"the NVIDIA driver supports CUDA {cuda} only, older than the oldest CUDA build of torch known "
                     f"here ({oldest}, CUDA {'.'.join(map(str, tag_version(oldest)))}): upgrade the NVIDIA driver")


def chosen_tag(driver: Driver | None, override: str | None = None) -> str | None:
    """The tag setup.sh installs torch from; None = pip's default index (a machine without a working
    nvidia-smi that lists GPUs: the CPU path)."""
    if override and override.strip():
        return wheel_tag(None, override)
    if driver is None or driver.gpus == 0:
        return None
    return wheel_tag(driver.cuda)


def torch_pin(requirements: Path = REQUIREMENTS) -> str:
    """requirements.txt's torch line, e.g. torch==2.13.0."""
    for line in requirements.read_text().splitlines():
        if re.match(r"torch\s*==", line):
            return line.split("#")[0].strip().replace(" ", "")
    raise WheelError(f"{requirements} pins no torch (a line torch==VERSION)")


def pip_command(pin: str, tag: str | None, *, force: bool = False) -> str:
    """The pip line that installs torch `pin` from the wheel index of `tag` (None: pip's default index)."""
    words = ["pip", "install"] + (["--force-reinstall"] if force else []) + [pin]
    if tag is not None:
        words += ["--index-url", WHEEL_INDEX.format(tag=tag)]
    return " ".join(words)


def torch_build(torch_cuda: str | None) -> str:
    """torch.version.cuda in words."""
    return "a CPU build" if not torch_cuda else f"built for CUDA {torch_cuda}"


def no_gpu_message(driver: Driver, torch_version: str, torch_cuda: str | None, visible: str | None = None) -> str:
    """One line for "nvidia-smi lists GPUs but torch sees none": the versions, the cause, the fix."""
    release = torch_version.split("+")[0]
    line = f"nvidia-smi lists {driver.gpus} GPU{'s' if driver.gpus != 1 else ''} ({driver}) but torch sees no GPU: " \
           f"torch {torch_version} is {torch_build(torch_cuda)}"
    fits = bool(torch_cuda and driver.cuda) and _version(torch_cuda) <= _version(driver.cuda)
    if torch_cuda and driver.cuda:
        line += ", which the driver supports" if fits else f", newer than the driver's CUDA {driver.cuda}"
    if visible is not None:
        line += f" (CUDA_VISIBLE_DEVICES={visible!r})"
    line += ", so every point would train on CPU"
    if fits:  # not the build: hidden GPUs, device permissions, a broken driver install
        fix = ("check CUDA_VISIBLE_DEVICES, that this user may open /dev/nvidia*, and "
               "`python -c 'import torch; torch.cuda.init()'` for the cause")
    else:
        try:
            tag = wheel_tag(driver.cuda)
        except WheelError as e:
            fix = f"{e}, then {SETUP}"
        else:
            fix = (f"install the torch build for the driver: {TORCH_CUDA_ENV}={tag} {SETUP} "
                   f"(or {pip_command(f'torch=={release}', tag, force=True)})")
    return f"{line}: {fix}; or set launch.device=cpu to train on CPU"


def main(argv: list[str] | None = None) -> int:
    """scripts/torch_wheel.py: print the torch install command for this machine, its index URL, or
    check (in .venv, with torch) that torch sees the GPUs nvidia-smi lists."""
    import argparse
    import os
    import sys

    p = argparse.ArgumentParser(prog="python3 scripts/torch_wheel.py", description=main.__doc__)
    what = p.add_mutually_exclusive_group()
    what.add_argument("--index-url", action="store_true",
                      help="print only the wheel index URL (an empty line: pip's default index, the CPU path)")
    what.add_argument("--tag", action="store_true", help="print only the tag (an empty line: the CPU path)")
    what.add_argument("--check", action="store_true",
                      help="(with torch installed) exit 1 with one line if nvidia-smi lists GPUs and torch sees none")
    p.add_argument("--requirements", type=Path, default=REQUIREMENTS, help="where the torch pin is read")
    args = p.parse_args(argv)
    driver = read_driver()
    try:
        if args.check:
            return _check(driver, sys.stdout, sys.stderr)
        tag = chosen_tag(driver, os.environ.get(TORCH_CUDA_ENV))
        if args.tag:
            print(tag or "")
        elif args.index_url:
            print(WHEEL_INDEX.format(tag=tag) if tag else "")
        else:
            why = (f"{TORCH_CUDA_ENV}={os.environ[TORCH_CUDA_ENV]}" if os.environ.get(TORCH_CUDA_ENV, "").strip()
                   else "no nvidia-smi on PATH: pip's default index" if driver is None
                   else "nvidia-smi lists no GPU: pip's default index" if tag is None
                   else f"nvidia-smi: {driver.gpus} GPUs, {driver}: the highest of {' '.join(CUDA_TAGS)} "
                        f"not above CUDA {driver.cuda}")
            print(f"# {why}", file=sys.stderr)
            print(pip_command(torch_pin(args.requirements), tag))
    except WheelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def _check(driver: Driver | None, out, err) -> int:
    import os

    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    build = torch_build(torch.version.cuda)
    if count:
        print(f"torch {torch.__version__} ({build}) sees {count} GPU{'s' if count != 1 else ''}", file=out)
        return 0
    if driver is None or driver.gpus == 0:
        print(f"torch {torch.__version__} ({build}); no GPU listed by nvidia-smi", file=out)
        return 0
    line = no_gpu_message(driver, torch.__version__, torch.version.cuda, os.environ.get("CUDA_VISIBLE_DEVICES"))
    print(f"error: {line}", file=err)
    return 1
