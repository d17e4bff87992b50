"""Shared test set-up: offline, single-threaded, and the generated tiny assets."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from filelock import FileLock  # noqa: E402
import yaml  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: longer checks (minutes); run with -m slow")


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """Under ./test.sh (--dist loadgroup) an xdist_group must stay on one worker: one Slurm node, module
    fixtures made once. pytest-xdist marks a grouped test in its node id, which pytest 9 no longer reads: the
    groups then fall apart without a word, so say it."""
    if getattr(config.option, "loadgroup", False):
        lost = [item.nodeid for item in items if any(item.iter_markers("xdist_group")) and "@" not in item.nodeid]
        if lost:
            raise pytest.UsageError(f"--dist loadgroup does not group {lost[0]} under pytest {pytest.__version__}: "
                                    "install the versions requirements.txt pins (bash scripts/setup.sh)")


@pytest.fixture(scope="session")
def assets():
    """The tiny LLaMA, data and MMLU-format set, generated once into .cache/demo (as the demo does)."""
    from fixtures import make_assets

    return make_assets(REPO / ".cache" / "demo")


def make_experiment(root: Path, assets: dict, **changes) -> Path:
    """A copy of experiments/demo under root, with absolute asset paths and the given section changes.

    changes: section -> dict merged into that section, e.g. train={"max_steps": 4}.
    """
    raw = yaml.safe_load((REPO / "experiments" / "demo" / "experiment.yaml").read_text())
    raw["model"]["path"] = str(assets["model"])
    raw["data"]["sources"] = [{"path": str(assets["train"]), "format": "alpaca"},
                              {"path": str(assets["dolly"]), "format": "dolly"}]
    raw["objective"]["mmlu"]["data_dir"] = str(assets["mmlu"])
    for section, values in changes.items():
        if isinstance(values, dict) and isinstance(raw.get(section), dict):
            raw[section].update(values)
        else:
            raw[section] = values
    folder = root / raw.get("name", "demo")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "experiment.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return folder


@pytest.fixture
def tiny_experiment(tmp_path, assets):
    """A fast demo copy: few training steps, validation loss only."""
    return make_experiment(tmp_path, assets, train={"max_steps": 4, "logging_steps": 2},
                           objective={"metric": "val_loss", "extra_outputs": ["val_loss", "train_loss"]})


def run_env():
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return env


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# ---------------------------------------------------------------- the commands, as a user runs them

def run_module(*args, env: dict | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    """`python -m <args>` (paths may be Path objects), output captured as text; env: variables added to
    this process's environment."""
    return subprocess.run([sys.executable, "-m", *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, **(env or {})))


def blackbox(experiment, *args, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python -m blackbox --experiment <experiment> <args>`: one point (or a point file), as NOMAD calls it."""
    return run_module("blackbox", "--experiment", experiment, *args, env=env, timeout=timeout)


def run_dirs(experiment: Path) -> list[Path]:
    """The run folders of an experiment (not _incomplete/ or other bookkeeping folders)."""
    runs = experiment / "runs"
    return sorted(p for p in runs.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))) if runs.exists() else []


def processes_mentioning(text) -> list[str]:
    """The command lines of the live processes that mention text (an experiment or run folder): an orphan check."""
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if text in line and "ps -eo" not in line]


# ---------------------------------------------------------------- what a tokenized row trains on

def labelled_runs(row, tokenizer) -> list[str]:
    """The labelled stretches of a row, decoded (special tokens kept)."""
    from core.data import IGNORE_INDEX

    runs, current = [], []
    for token, label in zip(row["input_ids"], row["labels"]):
        assert label in (token, IGNORE_INDEX)
        if label == IGNORE_INDEX:
            runs, current = (runs + [current], []) if current else (runs, current)
        else:
            current.append(token)
    runs += [current] if current else []
    return [tokenizer.decode(r) for r in runs]


# ---------------------------------------------------------------- a search trained once per session

SEARCH = {"train": {"max_steps": 3, "logging_steps": 1},
          "objective": {"metric": "val_loss", "extra_outputs": ["train_loss"]},
          "nomad": {"budget": 3, "seed": 0}}


def shared_root(tmp_path_factory, worker_id: str) -> Path:
    """A folder every pytest-xdist worker of this session sees (the session's own temp folder without xdist)."""
    root = tmp_path_factory.getbasetemp()
    return root if worker_id == "master" else root.parent


def shared_search(tmp_path_factory, worker_id: str, assets: dict, folder: str, settings: dict):
    """A finished demo search with the given settings, run once per pytest session with `bbo run` (the first
    xdist worker to ask runs it, the others wait and take it): (its experiment folder, that command's
    CompletedProcess)."""
    root = shared_root(tmp_path_factory, worker_id) / folder
    root.mkdir(exist_ok=True)
    record = root / "bbo-run.json"
    with FileLock(str(root / ".lock")):
        if not record.exists():
            experiment = make_experiment(root, assets, **settings)
            proc = run_module("bbo", "run", experiment)
            record.write_text(json.dumps({"experiment": str(experiment), "args": proc.args,
                                          "returncode": proc.returncode, "stdout": proc.stdout,
                                          "stderr": proc.stderr}))
    saved = json.loads(record.read_text())
    proc = subprocess.CompletedProcess(saved["args"], saved["returncode"], saved["stdout"], saved["stderr"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return Path(saved["experiment"]), proc


@pytest.fixture(scope="session")
def searched(tmp_path_factory, worker_id, assets):
    """A finished demo search of 3 points (SEARCH's settings), run once per pytest session (shared_search).
    Tests that change it take `searched_copy`."""
    return shared_search(tmp_path_factory, worker_id, assets, "searched", SEARCH)


@pytest.fixture
def searched_copy(searched, tmp_path):
    """A copy of the session's finished search (run folders, NOMAD's files, evaluations.jsonl) to change:
    its runs are found again by content, so nothing is trained twice."""
    experiment, _ = searched
    return copy_tree(experiment, tmp_path / experiment.name)
