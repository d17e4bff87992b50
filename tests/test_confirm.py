"""Is the winner real? The finalists trained again with other seeds, beside the search, never inside it."""
import json
import math

import pandas as pd
import pytest

from bbo.confirm import finalist_stats, margin_sentence, t95
from bbo.results import load_confirm_runs, load_runs
from conftest import run_module as run


@pytest.mark.slow  # about 30 s or more: CI runs it (.ci/run), ./test.sh -m slow by hand
def test_a_search_then_confirm_keeps_the_extra_runs_beside_nomads_view(searched_copy):
    experiment = searched_copy  # a finished search of 3 points (conftest.SEARCH)
    nomad_files = {p.name: p.read_bytes() for p in (experiment / "nomad").iterdir() if p.is_file()}
    searched = load_runs(experiment)
    assert len(searched) == 3

    proc = run("bbo", "confirm", str(experiment), "--top", "2", "--seeds", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "finalists by mean objective over seeds" in proc.stdout
    assert "within the noise" in proc.stdout or "beyond the noise" in proc.stdout or "one seed" in proc.stdout

    # NOMAD's files are untouched: the confirmation runs are not points of the search.
    assert {p.name: p.read_bytes() for p in (experiment / "nomad").iterdir() if p.is_file()} == nomad_files
    # Two more run folders, seed 43 in their ids, marked as confirmations of the two best points.
    top2 = searched[searched["status"] == "ok"].sort_values("objective")["run_id"].head(2).tolist()
    extra = sorted(p.name for p in (experiment / "runs").iterdir() if p.is_dir() and "-s43-" in p.name)
    assert len(extra) == 2
    params = [json.loads((experiment / "runs" / rid / "params.json").read_text()) for rid in extra]
    assert sorted(p["confirms"] for p in params) == sorted(top2) and {p["seed"] for p in params} == {43}

    df = load_runs(experiment)
    assert len(df) == 3 and df["order"].tolist() == [1, 2, 3]  # still the search's rows, in its order
    confirmed = df[df["run_id"].isin(top2)]
    assert confirmed["seeds_n"].tolist() == [2, 2]
    for _, row in confirmed.iterrows():
        runs = load_confirm_runs(experiment)
        values = runs.loc[runs["confirms"] == row["run_id"], "objective"].tolist()
        assert row["seeds_mean"] == pytest.approx(sum(values) / 2)
        assert row["seeds_std"] == pytest.approx(pd.Series(values).std())
    assert df.loc[~df["run_id"].isin(top2), "seeds_n"].isna().all()

    # Asked again: answered from the run folders, nothing trained.
    lines = (experiment / "evaluations.jsonl").read_text().splitlines()
    proc = run("bbo", "confirm", str(experiment), "--top", "2", "--seeds", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = [json.loads(line) for line in (experiment / "evaluations.jsonl").read_text().splitlines()[len(lines):]]
    assert len(again) == 2 and all(e["cached"] and e["source"] == "confirm" for e in again)
    assert {p.name: p.read_bytes() for p in (experiment / "nomad").iterdir() if p.is_file()} == nomad_files

    # The table and the report show the finalists' mean and std.
    table = run("bbo", "results", str(experiment))
    assert table.returncode == 0 and "seeds_mean" in table.stdout and "seeds_std" in table.stdout
    report = run("bbo", "report", str(experiment))
    assert report.returncode == 0, report.stderr[-2000:]
    text = (experiment / "report" / "report.md").read_text()
    assert "Finalists re-trained with other seeds" in text and "confirm_seeds.png" in text
    assert (experiment / "report" / "confirm_seeds.png").stat().st_size > 0


def test_confirm_seed_by_hand_is_its_own_run_and_not_the_search_seed(tiny_experiment):
    proc = run("blackbox", "-e", str(tiny_experiment), "--rank", "4", "--confirm-seed", "42")
    assert proc.returncode == 2 and "train.seed itself" in proc.stderr


def test_the_margin_sentence_uses_the_noise():
    def frame(rows):
        return pd.DataFrame(rows, columns=["run_id", "rank", "alpha", "dropout", "lr", "objective",
                                           "seeds_n", "seeds_mean", "seeds_std"])

    clear = finalist_stats(frame([["a", 8, 16, 0.0, 1e-4, 1.00, 3, 1.00, 0.001],
                                  ["b", 8, 8, 0.0, 1e-4, 1.10, 3, 1.10, 0.001]]))
    assert "beyond the noise" in margin_sentence(clear)
    assert clear["seeds_half_width"].iloc[0] == pytest.approx(t95(2) * 0.001 / math.sqrt(3))
    close = finalist_stats(frame([["a", 8, 16, 0.0, 1e-4, 1.00, 3, 1.000, 0.01],
                                  ["b", 8, 8, 0.0, 1e-4, 1.01, 3, 1.005, 0.01]]))
    assert "within the noise" in margin_sentence(close)
    assert list(close["run_id"]) == ["a", "b"]  # ranked by mean, not by the search's seed
