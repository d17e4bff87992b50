"""Child processes: this checkout's code in every child, no evaluation outlives the search that asked for it,
and which search a blackbox process serves."""
from __future__ import annotations

import ctypes
import os
import signal
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def checkout_env(base: dict | None = None, **extra: str) -> dict:
    """The environment for a `python -m ...` child of this project: PYTHONPATH starts with this checkout,
    so the child runs this code whatever its working folder and whatever an installed copy points to."""
    env = dict(os.environ if base is None else base, **extra)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def alive(pid: int) -> bool:
    """True while pid runs (a zombie, dead but not yet reaped, counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def search_alive() -> bool:
    """False once the search that started this process is gone: its driver (`bbo run`, `bbo.nomad`,
    `bbo confirm`: BBO_DRIVER_PID) died. True when there is none (a plain `nomad`, by hand)."""
    driver = os.environ.get("BBO_DRIVER_PID")
    return not driver or alive(int(driver))


def on_death_of(pid: int, action, interval: float = 1.0) -> None:
    """Call action() (from a daemon thread) as soon as pid is gone, even if it was SIGKILLed."""
    def watch():
        while alive(pid):
            time.sleep(interval)
        action()
    threading.Thread(target=watch, daemon=True).start()


def exit_with_blackbox() -> None:
    """In a child of the blackbox (blackbox/work.py sets BBO_PARENT_PID): exit as soon as the blackbox is gone,
    even SIGKILLed, so no orphaned training or evaluation keeps a GPU busy. By hand (no variable): nothing."""
    parent = os.environ.get("BBO_PARENT_PID")
    if parent:
        on_death_of(int(parent), lambda: os._exit(1))


def die_with_parent() -> None:
    """For Popen(preexec_fn=...): the kernel sends SIGTERM to the child when its parent dies (Linux)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
    except OSError:
        pass


def search_id() -> str:
    """Which search an evaluation belongs to: set by `bbo run` / `bbo.nomad` (BBO_SEARCH_ID); under a plain
    `nomad` binary, the NOMAD process that started this blackbox (the nearest ancestor that is not a shell)."""
    given = os.environ.get("BBO_SEARCH_ID")
    if given:
        return given
    pid = os.getppid()
    for _ in range(5):
        try:
            comm, rest = Path(f"/proc/{pid}/stat").read_text().split("(", 1)[1].rsplit(")", 1)
        except (OSError, ValueError, IndexError):
            return f"nomad-{pid}"
        fields = rest.split()
        if comm not in ("sh", "bash", "dash", "bb.sh"):
            return f"nomad-{pid}-{fields[19]}"  # field 22 of stat: start time, so a reused pid differs
        pid = int(fields[1])
    return f"nomad-{pid}"
