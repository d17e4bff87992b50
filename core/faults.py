"""Fault injection, for the tests of docs/failures.md: a real failure, on the real code path.

    BBO_FAULT=<kind>@<step>[,match=<text in run id>][,rank=<r>]   kind: oom | nan | error | hang | crash
    BBO_FAULT=<kind>[,match=...]                                    kind: load_model | eval_error | garbage_metrics
    BBO_FAULT=kill_search@<phase>[,match=...]                       phase: one of KILL_PHASES
    BBO_FAULT=model_step                                            the model-guided step's model raises

Each kind raises (or does) in training what the real failure would: an OOM is torch's
OutOfMemoryError, a NaN fills the trainable weights, a crash is SIGKILL. kill_search kills the search
(the driver, BBO_DRIVER_PID, with SIGKILL) when the evaluation reaches the phase, then sends its own
process the SIGTERM a teardown sends, as if that arrived before the blackbox saw the search die
(docs/failures.md: an interrupted point). Unset, nothing happens.
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from core.failures import Kind

AT_PHASE = {"load_model": Kind.LOAD_MODEL, "eval_error": Kind.EVAL_LOSS}  # faults raised when a phase starts
# Where kill_search can strike, in the order an evaluation reaches them (the process that reaches each: train.py,
# eval/mmlu.py, eval/rouge.py, the blackbox itself for "results").
KILL_PHASES = ("load_data", "train", "checkpoint", "adapter_save", "mmlu", "rouge", "results")


def parse_fault(run_dir: Path) -> dict | None:
    """The fault BBO_FAULT asks for in this run (and on this rank), or None."""
    text = os.environ.get("BBO_FAULT", "").strip()
    if not text:
        return None
    head, _, options = text.partition(",")
    kind, _, step = head.partition("@")
    for option in filter(None, options.split(",")):
        name, _, value = option.partition("=")
        if name == "match" and value not in run_dir.name:
            return None
        if name == "rank" and value != os.environ.get("RANK", "0"):
            return None
    if kind == "kill_search":
        return {"kind": kind, "step": None, "phase": step}
    return {"kind": kind, "step": int(step) if step else None}


def kill_search_at(fault: dict | None, phase: str) -> None:
    """kill_search@<phase>: SIGKILL the search's driver, then SIGTERM this process (the teardown's signal, here
    before the blackbox has seen the driver die); this process then ends as the signal ends it."""
    if not fault or fault["kind"] != "kill_search" or fault["phase"] != phase:
        return
    os.kill(int(os.environ["BBO_DRIVER_PID"]), signal.SIGKILL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(60)  # the signal ends the process before this does


def at_phase(fault: dict | None, phase: str) -> None:
    """Raise the fault meant for the start of this phase (a model that cannot load, a failing evaluation)."""
    if fault and AT_PHASE.get(fault["kind"]) == phase:
        if phase == Kind.LOAD_MODEL:
            raise OSError("injected fault: cannot load the model")
        raise RuntimeError("injected fault: evaluation error")


def garbles_metrics(fault: dict | None) -> bool:
    """train_result.json is to be written as garbage (a crash mid-write, as the blackbox would see it)."""
    return bool(fault) and fault["kind"] == "garbage_metrics"


def step_callback(fault: dict | None):
    """A TrainerCallback that injects a step fault at its step (does nothing for other faults)."""
    import torch
    from transformers import TrainerCallback

    class InjectFault(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step == 1:
                kill_search_at(fault, "train")  # in the middle of training: after its first step
            if fault is None or fault["step"] is None or state.global_step != fault["step"]:
                return
            kind = fault["kind"]
            if kind == "oom":
                raise torch.OutOfMemoryError("injected fault: CUDA out of memory. Tried to allocate 2.00 GiB")
            if kind == "nan":
                with torch.no_grad():
                    for _, p in model.named_parameters():
                        if p.requires_grad:
                            p.fill_(float("nan"))
            elif kind == "error":
                raise RuntimeError("injected fault: training error")
            elif kind == "hang":
                time.sleep(10_000)
            elif kind == "crash":
                os.kill(os.getpid(), signal.SIGKILL)

    return InjectFault()


def fails_model_step() -> None:
    """BBO_FAULT=model_step: the model of the model-guided step (bbo/model_step.py) raises, as a failed fit would."""
    if os.environ.get("BBO_FAULT", "").strip() == "model_step":
        raise FloatingPointError("injected fault: the model could not be fitted")
