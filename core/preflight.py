"""Checks before any training: one place that `bbo run`, `bbo plan`, `bbo.nomad` and the blackbox share.

    python -m bbo plan experiments/llama2-7b-bbo3        # prints these checks and the memory/time plan

Why: a wrong path, a hub model without access, or fewer GPUs than the launch
settings need would otherwise fail every point of a search, one expensive
launch at a time. Each check raises PreflightError (a ConfigError) with one line
that names the setting and the fix; nothing is trained and no run folder is made.

- `check_inputs`: local model, data, MMLU and ROUGE pair files exist; every row of local JSON/JSON lines
  data (and ROUGE pairs) has its format's fields (after data.sources[].fields); a messages source has a
  chat template. Cheap (no heavy imports; ~0.3 s for 50k rows): the blackbox runs it on every call.
- `check_hub`: hub ids (model, datasets, the stock MMLU task) are in the local cache when
  HF_HUB_OFFLINE=1, or reachable with the current token otherwise.
- `visible_gpus` / `gpu_slots`: the GPUs torch sees (CUDA_VISIBLE_DEVICES entries: indices,
  UUIDs or MIG ids), split into `launch.parallel` slots of `launch.num_processes`.
- `check_torch_sees_gpus` (in `gpu_slots`, unless launch.device is cpu): nvidia-smi lists GPUs but torch
  sees none (a torch built for a newer CUDA than the driver's, or a CPU build): stop, rather than train
  every point on CPU; the line names both CUDA versions and the reinstall (core/nvidia.py). Without
  nvidia-smi on PATH it costs a PATH lookup.
- `slurm_slots`: with launch.executor=slurm, `launch.parallel` jobs in flight; sbatch must be on PATH.
- `check_model_runtime` (check_attention, check_bf16): flash_attention_2 needs flash-attn and a GPU;
  bf16 needs a GPU that has it.
- `check_trackers`: the package of each tracker in train.report_to is importable; wandb can log
  (WANDB_API_KEY, or WANDB_MODE=offline).
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from core.config import VALIDATION_SPLIT, ConfigError, ExperimentConfig
from core.data import DataError, columns, is_inline_template, is_local, read_json_rows, row_problem


class PreflightError(ConfigError):
    """A check that failed before any training; the message names the setting and the fix."""


# ---------------------------------------------------------------- local inputs

def check_inputs(config: ExperimentConfig) -> None:
    """Model, data, MMLU and ROUGE pair paths must exist, and local data must have its format's fields,
    before any run folder is made for them (a bad source is a config error, not a failed point)."""
    checks = [("model.path", config.model.path)] + [
        (f"data.sources[{i}].path", s.path) for i, s in enumerate(config.data.sources)]
    if config.objective.needs_mmlu and config.objective.mmlu.data_dir:
        checks.append(("objective.mmlu.data_dir", config.objective.mmlu.data_dir))
    generation = config.objective.generation
    pairs = [] if not config.objective.needs_rouge or generation.data == VALIDATION_SPLIT else [
        ("objective.generation.data", generation.data, generation.format)]
    checks += [(key, path) for key, path, _ in pairs]
    for key, path in checks:
        resolved = config.resolve(path)
        if is_local(path) and not Path(resolved).exists():
            raise PreflightError(f"{key}: {resolved} does not exist")
    if config.data.chat_template and not is_inline_template(config.data.chat_template):
        path = config.dir / config.data.chat_template
        if not path.is_file():
            raise PreflightError(f"data.chat_template: {path} does not exist (an inline template contains {{{{ or {{%)")
    files = [(f"data.sources[{i}]", s.path, s.format, dataclasses.asdict(s.fields) if s.fields else None)
             for i, s in enumerate(config.data.sources)] + [(key, path, fmt, None) for key, path, fmt in pairs]
    for key, path, fmt, fields in files:
        path = config.resolve(path)
        if is_local(path) and Path(path).is_file():
            try:
                rows = read_json_rows(path, f"{key}.path")
            except DataError as e:
                raise PreflightError(str(e)) from None
            cols = columns(fmt, fields)
            for n, row in enumerate(rows):
                problem = row_problem(row, cols)
                if problem:
                    raise PreflightError(f"{key}: row {n + 1} of {path} {problem}")
    for i, source in enumerate(config.data.sources):
        key = f"data.sources[{i}]"
        if source.format == "messages" and not config.data.chat_template:
            model = config.resolve(config.model.path)
            if is_local(model) and not has_chat_template(model):
                raise PreflightError(f"{key}: format messages needs a chat template, and the tokenizer in {model} "
                                     "has none: set data.chat_template (a Jinja template or a file)")


def has_chat_template(model_dir: str) -> bool:
    """Whether a local tokenizer folder has its own chat template (read from its files: no transformers)."""
    folder = Path(model_dir)
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    try:
        return bool(json.loads((folder / "tokenizer_config.json").read_text()).get("chat_template"))
    except (OSError, ValueError, AttributeError):
        return False


# ---------------------------------------------------------------- the Hugging Face hub

def hub_ids(config: ExperimentConfig) -> list[tuple[str, str, str, str | None]]:
    """(config key, repo id, repo type, revision) of everything the experiment loads from the hub."""
    ids = []
    if not is_local(config.model.path):
        ids.append(("model.path", config.model.path, "model", config.model.revision))
    for i, source in enumerate(config.data.sources):
        if not is_local(source.path):
            ids.append((f"data.sources[{i}].path", source.path, "dataset", None))
    if config.objective.needs_mmlu and config.objective.mmlu.task == "mmlu":
        ids.append(("objective.mmlu.task", "cais/mmlu", "dataset", None))
    return ids


def check_hub(config: ExperimentConfig) -> list[str]:
    """Raise for a hub id that cannot be loaded; return warnings for what could not be checked."""
    warnings = []
    for key, repo_id, repo_type, revision in hub_ids(config):
        problem, warning = _hub_problem(key, repo_id, repo_type, revision)
        if problem:
            raise PreflightError(problem)
        if warning:
            warnings.append(warning)
    return warnings


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _hub_problem(key: str, repo_id: str, repo_type: str, revision: str | None) -> tuple[str | None, str | None]:
    """(error, warning) for one hub id; no weights are downloaded."""
    from huggingface_hub import auth_check, snapshot_download
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError

    what = "model" if repo_type == "model" else "dataset"
    local_fix = ("or download it on a machine with access (`hf download {id}{flag} --local-dir DIR`) and set "
                 f"{key} to DIR").format(id=repo_id, flag="" if repo_type == "model" else " --repo-type dataset")
    if _hub_offline():
        try:
            snapshot_download(repo_id, repo_type=repo_type, revision=revision, local_files_only=True)
        except (LocalEntryNotFoundError, OSError, ValueError):
            return (f"{key}: the {what} {repo_id} is a hub id that is not in the local Hugging Face cache, and "
                    f"HF_HUB_OFFLINE=1 forbids downloading it: unset HF_HUB_OFFLINE and run `hf auth login`, "
                    f"{local_fix}"), None
        return None, None
    try:
        auth_check(repo_id, repo_type=repo_type)
    except GatedRepoError:
        return (f"{key}: no access to the gated {what} {repo_id} with the current token: accept its license on "
                f"its Hub page, then `hf auth login` with that account's token, {local_fix}"), None
    except RepositoryNotFoundError:
        return (f"{key}: the {what} {repo_id} was not found on the hub (wrong id, or private and no token): "
                f"check the id, `hf auth login`, {local_fix}"), None
    except Exception as e:  # noqa: BLE001 - no network here is not a reason to stop: warn
        return None, f"{key}: could not check {repo_id} on the hub ({type(e).__name__}); loading it may fail"
    return None, None


# ---------------------------------------------------------------- trackers (train.report_to)

# tracker -> (the module transformers looks for, the pip package that provides it)
TRACKER_PACKAGES = {
    "tensorboard": ("tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow-skinny"),
    "trackio": ("trackio", "trackio"), "wandb": ("wandb", "wandb"), "comet_ml": ("comet_ml", "comet-ml"),
    "clearml": ("clearml", "clearml"), "neptune": ("neptune", "neptune"), "dvclive": ("dvclive", "dvclive"),
    "swanlab": ("swanlab", "swanlab"), "codecarbon": ("codecarbon", "codecarbon"), "dagshub": ("dagshub", "dagshub"),
    "azure_ml": ("azureml.core", "azureml-core"), "flyte": ("flytekit", "flytekit"), "kubeflow": ("kubeflow", "kubeflow"),
}


def check_trackers(config: ExperimentConfig) -> None:
    """Every tracker of train.report_to can be used, before a training that would crash on it at its
    first step. Cheap: packages are found, not imported."""
    import importlib.util

    for name in config.train.report_to:
        module, package = TRACKER_PACKAGES[name]
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a parent package missing (azureml) or broken
            found = False
        if not found:
            raise PreflightError(f"train.report_to: {name} needs the {package} package: pip install {package} "
                                 f"(or remove {name} from train.report_to)")
        if name == "wandb" and not _wandb_can_log():
            raise PreflightError("train.report_to: wandb has no API key: set WANDB_API_KEY or run `wandb login`, "
                                 "or set WANDB_MODE=offline to log to local files only (`wandb sync` later)")


def _wandb_can_log() -> bool:
    """An API key in the environment or from `wandb login` (~/.netrc), or a mode that needs none."""
    import netrc

    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE", "").lower() in ("offline", "disabled"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


# ---------------------------------------------------------------- GPUs

def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries (indices, UUIDs or MIG ids).

    torch counts them (not nvidia-smi: it ignores CUDA_VISIBLE_DEVICES and may be missing).
    Without the CUDA driver library torch cannot see a GPU either: then there is no need to
    import torch (seconds, on every blackbox call of a CPU machine).
    """
    if not cuda_driver_present():
        return []
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        return []
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is None:
        return [str(i) for i in range(count)]
    return [entry.strip() for entry in env.split(",") if entry.strip()][:count]


def cuda_driver_present() -> bool:
    import ctypes

    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


def check_torch_sees_gpus() -> None:
    """Raise PreflightError when nvidia-smi (on PATH) lists GPUs and torch sees none: with launch.device
    auto every point would silently train on CPU. Imports torch only when nvidia-smi lists GPUs (and
    also when libcuda.so.1 cannot be loaded: a driver torch cannot use is this very case)."""
    from core.nvidia import no_gpu_message, read_driver

    driver = read_driver()
    if driver is None or driver.gpus == 0:
        return
    import torch

    if torch.cuda.is_available() and torch.cuda.device_count() > 0:
        return
    raise PreflightError(no_gpu_message(driver, torch.__version__, torch.version.cuda,
                                        os.environ.get("CUDA_VISIBLE_DEVICES")))


def gpu_slots(config: ExperimentConfig, visible: list[str] | None = None) -> list[list[str] | None]:
    """launch.parallel groups of launch.num_processes GPUs, each evaluation's CUDA_VISIBLE_DEVICES;
    None = the evaluation runs on CPU. Raises PreflightError when the GPUs do not suffice, or when
    nvidia-smi lists GPUs that torch cannot see (visible not given: this machine's)."""
    launch = config.launch
    n, k = launch.num_processes, launch.parallel
    if launch.device == "cpu":
        return [[] for _ in range(k)]  # an empty CUDA_VISIBLE_DEVICES hides the GPUs from the children
    if visible is None:
        check_torch_sees_gpus()
        visible = visible_gpus()
    if launch.gpus is not None:
        bad = [i for i in launch.gpus if not 0 <= i < len(visible)]
        if bad:
            raise PreflightError(f"launch.gpus: GPU {bad[0]} is not among the {len(visible)} GPUs torch sees "
                                 f"({', '.join(visible) or 'none'}); indices count from 0 in CUDA_VISIBLE_DEVICES order")
        pool = [visible[i] for i in launch.gpus]
    else:
        pool = list(visible)
    if not pool:
        if launch.device == "cuda":
            raise PreflightError("launch.device is cuda but torch sees no GPU (torch.cuda.device_count() = 0): "
                                 "check the driver, CUDA_VISIBLE_DEVICES and that torch was installed with CUDA, "
                                 "or set launch.device=auto to allow CPU")
        return [None] * k
    need = n * k
    if len(pool) < need:
        source = "launch.gpus lists" if launch.gpus is not None else "torch sees"
        raise PreflightError(
            f"launch.parallel x launch.num_processes = {k} x {n} = {need} GPUs needed, but {source} {len(pool)} "
            f"({', '.join(pool)}): lower launch.parallel or launch.num_processes (the effective batch is "
            f"num_processes x per_device_batch_size x grad_accum), or make more GPUs visible")
    slots = [pool[i * n:(i + 1) * n] for i in range(k)]
    for slot in slots:
        if len(set(slot)) != len(slot):
            raise PreflightError(f"launch.gpus: one evaluation would get GPU {slot[0]} twice ({slot}); "
                                 "a GPU may be shared between evaluations, not within one")
    return slots


# ---------------------------------------------------------------- all of it

GPU_SLOTS_ENV = "BBO_GPU_SLOTS"  # set by a driver that ran these checks for the blackboxes it starts


def check_before_training(config: ExperimentConfig) -> tuple[list[list[str] | None], list[str]]:
    """Everything a training launch needs: (GPU slots, warnings). Imports torch: call it only
    when something will be trained, so that cached answers stay cheap. Under `bbo run` or
    `bbo.nomad`, which checked the same config, the blackbox takes their slots (GPU_SLOTS_ENV)."""
    given = os.environ.get(GPU_SLOTS_ENV)
    if given:
        return json.loads(given), []
    check_inputs(config)
    check_trackers(config)
    warnings = check_hub(config)
    slots = slurm_slots(config) if config.launch.executor == "slurm" else gpu_slots(config)
    check_model_runtime(config, slots)
    if config.launch.executor == "local" and not any(slots) and any(
            c.metric == "peak_memory_gb" for c in config.objective.constraints):
        raise ConfigError("objective.constraints: peak_memory_gb is measured on a GPU only, and this machine "
                          "trains on CPU")
    return slots, warnings


def check_model_runtime(config: ExperimentConfig, slots: list[list[str] | None]) -> None:
    """What the model settings need from the machine that runs them (check_attention, check_bf16).
    slots: gpu_slots' answer (GPUs of this machine) or slurm_slots' (the job's GPUs are not seen here)."""
    on_gpu = config.launch.executor == "slurm" or any(slots)
    check_attention(config, on_gpu)
    if config.launch.executor == "local" and any(slots):
        check_bf16(config)


def check_attention(config: ExperimentConfig, on_gpu: bool) -> None:
    """flash_attention_2 needs the flash-attn package and a GPU: without them every point would fail
    while its model loads."""
    import importlib.util

    if config.model.attn_implementation != "flash_attention_2":
        return
    if importlib.util.find_spec("flash_attn") is None:
        raise PreflightError("model.attn_implementation: flash_attention_2 needs the flash-attn package, which is "
                             "not installed: pip install flash-attn --no-build-isolation (on the GPU server, "
                             "built for its torch and CUDA), or set model.attn_implementation=sdpa")
    if not on_gpu:
        raise PreflightError("model.attn_implementation: flash_attention_2 runs on a GPU only, and these "
                             "evaluations would run on CPU: set model.attn_implementation=sdpa, or make a GPU "
                             "visible (launch.device=cuda)")


def check_bf16(config: ExperimentConfig) -> None:
    """bf16 asked for explicitly needs a GPU that computes it (a V100 or T4 does not: there `auto` is fp16)."""
    key = ("train.precision" if config.train.precision == "bf16"
           else "model.dtype" if config.model.dtype == "bfloat16" else None)
    if key is None:
        return
    import torch

    if not torch.cuda.is_bf16_supported(including_emulation=False):
        major, minor = torch.cuda.get_device_capability(0)
        raise PreflightError(f"{key}: bf16, but the {torch.cuda.get_device_name(0)} (compute capability "
                             f"{major}.{minor}) does not compute bfloat16: set {key}=auto (fp16 with loss "
                             f"scaling on this GPU) or fp16")


def slurm_slots(config: ExperimentConfig) -> list[None]:
    """launch.parallel jobs in flight; each job gets its GPUs from Slurm, not from this machine (a login
    node has none). Raises PreflightError when this machine cannot submit jobs."""
    import shutil

    missing = [cmd for cmd in ("sbatch", "squeue", "scancel") if shutil.which(cmd) is None]
    if missing:
        raise PreflightError(f"launch.executor is slurm but {missing[0]} is not on PATH: run the search on a "
                             "login node (or in a job) of the cluster, or set launch.executor=local")
    try:
        import submitit  # noqa: F401
    except ImportError:
        raise PreflightError("launch.executor is slurm but submitit is not installed: "
                             "pip install -r requirements.txt") from None
    return [None] * config.launch.parallel
