"""The best adapter out: `bbo export` folders that peft and transformers load and that give the run's
validation loss back; adapters saved in the run's dtype; train.keep_adapters bounding the disk."""
import json
import os
import subprocess

import pytest
import torch
from safetensors import safe_open

from bbo.__main__ import main as bbo_main
from conftest import REPO, make_experiment
from conftest import run_module as run
from core.adapters import REMOVED_FILE, prune
from core.config import ConfigError, load_config
from core.data import collator_for, load_tokenized
from core.model import load_model, load_tokenizer
from core.store import RunStore
from eval.loss import validation_loss

pytestmark = pytest.mark.filterwarnings("ignore")

# NOMAD coordinates of the demo space (rank index, alpha multiple, dropout index, log10 lr): two good points
POINTS = "2 2 1 -2\n3 1 1 -2.5\n"
FAST = dict(train={"max_steps": 2, "logging_steps": 1, "eval_every": None},
            objective={"metric": "val_loss", "extra_outputs": ["train_loss"]})


def export(capsys, *args):
    """`python -m bbo export ...`, its real entry point, in this process (torch is imported once)."""
    capsys.readouterr()
    rc = bbo_main(["export", *map(str, args)])
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, rc, out, err)


def trained(experiment, points=POINTS, env=None):
    """The points trained by the real blackbox, one process; returns {run id: metrics} of the ok runs."""
    (experiment / "points.txt").write_text(points)
    proc = run("blackbox", "-e", experiment, experiment / "points.txt", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = {}
    for run_dir in sorted((experiment / "runs").glob("r*/")):
        status = json.loads((run_dir / "status.json").read_text())
        if status["state"] == "ok":
            out[run_dir.name] = json.loads((run_dir / "metrics.json").read_text())
    return out


def val_loss_of(model, experiment, tokenizer_dir, tmp_path):
    """Validation loss as training measures it: the run's split tokenized (by the exported tokenizer),
    its collator and batch size, eval/loss.py."""
    spec = json.loads(next((experiment / "runs").glob("*/spec.json")).read_text())
    tokenizer = load_tokenizer(str(tokenizer_dir))
    _, val_set = load_tokenized(spec["data"], tokenizer, str(tokenizer_dir), tmp_path / "tokenized")
    return validation_loss(model, val_set, collator_for(tokenizer, spec["data"]),
                           spec["train"]["per_device_batch_size"])["val_loss"]


def adapter_dtypes(folder):
    with safe_open(str(folder / "adapter_model.safetensors"), "pt") as f:
        return {f.get_tensor(k).dtype for k in f.keys()}


def one_line_error(proc, text):
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and text in lines[0], proc.stderr


def test_a_search_rerun_with_keep_best_2_and_their_export_loads_with_peft_and_transformers(
        searched_copy, tmp_path, assets, capsys):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    # A finished search of 3 evaluations (every adapter kept), run again with train.keep_adapters=best:2
    # on the command line: nothing is trained, the setting is applied (keep_adapters is not in the run id)
    experiment = searched_copy
    assert len(list((experiment / "runs").glob("*/adapter"))) == 3
    proc = run("bbo", "run", experiment, "train.keep_adapters=best:2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "budget already spent" in proc.stderr
    runs = {}
    for run_dir in sorted((experiment / "runs").glob("r*/")):
        assert json.loads((run_dir / "status.json").read_text())["state"] == "ok"
        runs[run_dir.name] = json.loads((run_dir / "metrics.json").read_text())
    assert len(runs) == 3
    ranking = sorted(runs, key=lambda r: runs[r]["objective"])
    best_id, other_id, removed_id = ranking
    assert sorted(p.parent.name for p in (experiment / "runs").glob("*/adapter")) == sorted([best_id, other_id])
    reason = json.loads((experiment / "runs" / removed_id / REMOVED_FILE).read_text())["reason"]
    assert "best:2" in reason and "rank 3 of 3" in reason
    base_path = str(assets["model"])
    dtype = getattr(torch, runs[best_id]["dtype"])  # the run's dtype: float32 on CPU

    out = tmp_path / "best"
    proc = export(capsys, experiment, "--best", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert best_id in proc.stdout
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "README.md"} <= {
        p.name for p in out.iterdir()}
    assert adapter_dtypes(out) == {dtype}
    card = (out / "README.md").read_text()
    for text in (best_id, "rank 1 of 3 ok evaluations", "NOMAD 4 (budget", "val_loss", "alpaca.jsonl",
                 base_path, "PeftModel.from_pretrained"):
        assert text in card, text
    model = PeftModel.from_pretrained(load_model(base_path, dtype=dtype), str(out))
    assert val_loss_of(model, experiment, out, tmp_path / "a") == pytest.approx(runs[best_id]["val_loss"], abs=1e-4)

    # An existing OUT is a one-line error and stays as it was; --force replaces it (another run here).
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    one_line_error(run("bbo", "export", experiment, "--best", out), "exists")  # the command itself, exit 2
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    proc = export(capsys, experiment, "--run", other_id, out, "--force")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert other_id in (out / "README.md").read_text() and not list(tmp_path.glob(".best.export-*"))

    merged = tmp_path / "merged"
    proc = export(capsys, experiment, "--best", merged, "--merge")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (merged / "model.safetensors").is_file() and "AutoModelForCausalLM.from_pretrained" in (
        merged / "README.md").read_text()
    model = AutoModelForCausalLM.from_pretrained(str(merged))
    assert model.dtype == dtype and not hasattr(model, "peft_config")
    model.config.use_cache = False  # as core.model.load_model: packed examples must not attend to each other
    assert val_loss_of(model, experiment, merged, tmp_path / "m") == pytest.approx(runs[best_id]["val_loss"],
                                                                                   abs=1e-4)

    one_line_error(export(capsys, experiment, "--run", "r4-nope", tmp_path / "x"), "unknown run id")
    with RunStore(experiment).lock(best_id):  # as a blackbox training it again holds it
        one_line_error(export(capsys, experiment, "--best", tmp_path / "x"), "in use by another process")
    one_line_error(export(capsys, experiment, "--run", removed_id, tmp_path / "x"), "was removed")
    assert not (tmp_path / "x").exists() and not list(tmp_path.glob(".x.export-*"))


@pytest.mark.slow  # over 40 s: CI runs it (.ci/run), ./test.sh -m slow by hand
def test_keep_best_1_and_adapters_in_the_run_dtype(tmp_path, assets, capsys):
    from peft import PeftModel

    from bbo.results import load_runs

    experiment = make_experiment(tmp_path, assets, model={"dtype": "bfloat16"},
                                 train=dict(FAST["train"], keep_adapters="best:1"), objective=FAST["objective"])
    env = dict(os.environ, BBO_FAULT="load_model,match=r16-")  # a third point fails to load
    runs = trained(experiment, POINTS + "4 1 1 -2\n", env=env)
    assert len(runs) == 2
    best_id = min(runs, key=lambda r: runs[r]["objective"])
    other_id = next(r for r in runs if r != best_id)

    adapters = sorted(p.parent.name for p in (experiment / "runs").glob("*/adapter"))
    assert adapters == [best_id]  # exactly one adapter left, the best run's
    removed = json.loads((experiment / "runs" / other_id / REMOVED_FILE).read_text())
    assert "best:1" in removed["reason"] and "rank 2 of 2" in removed["reason"] and removed["time"] > 0
    assert runs[best_id]["dtype"] == "bfloat16"
    assert adapter_dtypes(experiment / "runs" / best_id / "adapter") == {torch.bfloat16}  # not peft's fp32
    df = load_runs(experiment).set_index("run_id")
    assert df.loc[best_id, "adapter"] == "kept" and df.loc[other_id, "adapter"] == "removed"
    assert df.loc[other_id, "status"] == "ok" and df.loc[other_id, "objective"] == runs[other_id]["objective"]
    (failed_id,) = [r for r in df.index if r.startswith("r16-")]
    assert df.loc[failed_id, "status"] == "failed"

    one_line_error(export(capsys, experiment, "--run", other_id, tmp_path / "x"), "was removed")
    one_line_error(export(capsys, experiment, "--run", failed_id, tmp_path / "x"), "is failed")
    assert not (tmp_path / "x").exists()

    out = tmp_path / "best"
    proc = export(capsys, experiment, "--best", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert adapter_dtypes(out) == {torch.bfloat16}
    model = PeftModel.from_pretrained(load_model(str(assets["model"]), dtype=torch.bfloat16), str(out))
    # the trained fp32 adapter weights were rounded to bf16 when saved: close to the recorded loss, not equal
    assert val_loss_of(model, experiment, out, tmp_path / "b") == pytest.approx(runs[best_id]["val_loss"], abs=2e-3)

    # keep_adapters none: the last adapter goes too, the metrics stay
    assert prune(experiment, 0, "none") == [best_id]
    assert not list((experiment / "runs").glob("*/adapter"))
    assert "none" in json.loads((experiment / "runs" / best_id / REMOVED_FILE).read_text())["reason"]
    assert set(load_runs(experiment)["adapter"].dropna()) <= {"removed", "None"}


def test_keep_adapters_config_rules():
    demo = REPO / "experiments" / "demo"
    base = load_config(demo)
    assert base.train.adapters_kept is None
    assert load_config(demo, ["train.keep_adapters=best:3"]).train.adapters_kept == 3
    assert load_config(demo, ["train.keep_adapters=none"]).train.adapters_kept == 0
    # which adapters stay on disk does not change what is computed: the run ids stay
    assert load_config(demo, ["train.keep_adapters=none"]).fingerprint() == base.fingerprint()
    for bad in ("best:0", "best", "some"):
        with pytest.raises(ConfigError, match="train.keep_adapters"):
            load_config(demo, [f"train.keep_adapters={bad}"])
    # the finalists' MMLU needs their adapters
    for keep in ("none", "best:1"):
        with pytest.raises(ConfigError, match="train.keep_adapters.*objective.finalists"):
            load_config(demo, ["objective.finalists=2", f"train.keep_adapters={keep}"])
    assert load_config(demo, ["objective.finalists=2", "train.keep_adapters=best:2"]).objective.finalists == 2
