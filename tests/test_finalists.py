"""objective.finalists: a cheap MMLU during the search (mmlu.search_limit), the k best on the full one after,
on their kept adapters, never trained again."""
import json
import shutil
from pathlib import Path

import pytest

from bbo.results import load_runs
from conftest import make_experiment
from conftest import run_module as run


def snapshot(experiment):
    """Every run folder with its train.log and adapter files' mtimes: a retraining would change them."""
    out = {}
    for run_dir in sorted((experiment / "runs").iterdir()):
        if run_dir.is_dir():
            files = [run_dir / "train.log", *sorted((run_dir / "adapter").glob("*"))]
            out[run_dir.name] = {str(p.relative_to(run_dir)): p.stat().st_mtime_ns for p in files if p.exists()}
    return out


@pytest.mark.slow  # over 40 s: CI runs it (.ci/run), ./test.sh -m slow by hand
def test_search_limit_then_finalists_on_the_full_mmlu(tmp_path, assets):
    experiment = make_experiment(
        tmp_path, assets, train={"max_steps": 2, "logging_steps": 1},
        objective={"metric": "mmlu", "extra_outputs": ["val_loss"], "finalists": 2,
                   "mmlu": {"task": "mmlu_local", "data_dir": str(assets["mmlu"]), "num_fewshot": 0,
                            "limit": 2, "search_limit": 1, "batch_size": 16}},
        nomad={"budget": 3, "seed": 0})
    proc = run("bbo", "run", str(experiment))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "finalists on the full MMLU" in proc.stdout

    df = load_runs(experiment)
    ok = df[df["status"] == "ok"].sort_values("objective", kind="stable")
    assert len(ok) >= 2
    # During the search: one question per subject, recorded in each run's mmlu.json.
    for rid in df["run_id"]:
        assert json.loads((experiment / "runs" / rid / "mmlu.json").read_text())["mmlu_limit"] == 1
    # After it: the 2 best by objective have mmlu_full.json with mmlu.limit; the others none.
    best2 = ok["run_id"].head(2).tolist()
    for rid in df["run_id"]:
        full = experiment / "runs" / rid / "mmlu_full.json"
        assert full.exists() == (rid in best2), rid
        if rid in best2:
            result = json.loads(full.read_text())
            assert result["mmlu_limit"] == 2 and result["mmlu_n"] > ok.set_index("run_id").loc[rid, "mmlu_n"]
    # The table has both numbers per finalist; the others have no mmlu_full.
    finalists = df.set_index("run_id").loc[best2]
    assert finalists["mmlu"].notna().all() and finalists["mmlu_full"].notna().all()
    assert df[~df["run_id"].isin(best2)]["mmlu_full"].isna().all()
    shown = run("bbo", "results", str(experiment))
    assert shown.returncode == 0 and "mmlu_full" in shown.stdout

    # The report's section gives both numbers and says whether the ranking changed.
    assert run("bbo", "report", str(experiment)).returncode == 0
    report = (experiment / "report" / "report.md").read_text()
    assert "## Finalists on the full MMLU" in report and "ranking" in report
    assert f"{finalists['mmlu_full'].iloc[0]:.4f}" in report

    # Asked again: answered from the folders; nothing trained, nothing measured again.
    before, full_mtimes = snapshot(experiment), {rid: (experiment / "runs" / rid / "mmlu_full.json").stat().st_mtime_ns
                                                 for rid in best2}
    proc = run("bbo", "finalists", str(experiment))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "(stored)" in proc.stderr
    assert snapshot(experiment) == before
    assert {rid: (experiment / "runs" / rid / "mmlu_full.json").stat().st_mtime_ns for rid in best2} == full_mtimes

    # A finalist without its adapter: a one-line error, the other is still answered, nothing else touched.
    (experiment / "runs" / best2[1] / "mmlu_full.json").unlink()
    shutil.rmtree(experiment / "runs" / best2[1] / "adapter")
    proc = run("bbo", "finalists", str(experiment))
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and best2[1] in errors[0] and "no adapter" in errors[0], proc.stderr
    assert not (experiment / "runs" / best2[1] / "mmlu_full.json").exists()
    assert sorted(p.name for p in (experiment / "runs").iterdir() if p.is_dir()) == sorted(before)  # no new run folder


def test_finalists_off_or_without_mmlu_is_a_one_line_error(tmp_path, assets):
    experiment = make_experiment(tmp_path, assets)
    proc = run("bbo", "finalists", str(experiment))
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: objective.finalists")
    proc = run("bbo", "finalists", str(experiment), "objective.finalists=2", "objective.extra_outputs=[val_loss]")
    assert proc.returncode == 2 and "measures no MMLU" in proc.stderr
    assert not (experiment / "runs").exists()


def test_plan_counts_the_finalists_mmlu(tmp_path, assets):
    experiment = make_experiment(tmp_path, assets)
    proc = run("bbo", "plan", str(experiment), "objective.mmlu.search_limit=1", "objective.mmlu.limit=2",
               "objective.finalists=3", "nomad.budget=4")
    assert proc.returncode == 0, proc.stderr[-2000:]
    subjects = len({json.loads(line)["subject"] for line in (Path(assets["mmlu"]) / "test.jsonl").read_text().splitlines()
                    if line.strip()})
    line = next(line for line in proc.stdout.splitlines() if "MMLU questions" in line)
    assert f"{subjects} questions per evaluation x 4 = {4 * subjects}" in line
    assert f"finalists 3 x {2 * subjects} = {6 * subjects} more" in line
