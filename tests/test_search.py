"""A search as one call from Python (bbo.search.run_search), as a notebook runs it: no subprocess here."""
import pytest

from bbo.results import load_runs
from bbo.search import run_search
from bbo.summary import best
from core.config import ConfigError


def test_run_search_resumes_a_finished_search_without_training(searched_copy):
    lines = (searched_copy / "evaluations.jsonl").read_text().splitlines()
    seen = []
    result = run_search(searched_copy, echo=seen.append, warn=seen.append)
    assert result.ok and result.exit_code == 0 and result.error is None and result.finished
    assert result.failures == {}
    assert len(result.table) == 3 and result.table.equals(load_runs(searched_copy))
    assert result.best is not None and result.best["run_id"] == best(load_runs(searched_copy))["run_id"]
    assert result.best["objective"] == result.table["objective"].min()
    assert (searched_copy / "evaluations.jsonl").read_text().splitlines() == lines  # nothing evaluated again
    assert any("NOMAD search: demo, budget 3" in line for line in seen)


def test_run_search_raises_a_config_error_before_anything_runs(tmp_path):
    with pytest.raises(ConfigError, match="no experiment config"):
        run_search(tmp_path / "nowhere")
