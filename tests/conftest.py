"""Shared test set-up: offline, single-threaded, and the generated tiny assets."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import yaml  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: longer checks (minutes); run with -m slow")


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
