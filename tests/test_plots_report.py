"""Figures and the Markdown report: every PNG is a real, non-empty image; the report says what was found and spent."""
import os
import re
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import matplotlib.image

from bbo.plots import plot_experiments
from bbo.report import markdown_table, write_report
from test_results import DEMO, copy_experiment, make_experiment, run_cli  # the shared experiment builders

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FIGURES = ["best_so_far", "objective_vs_rank", "objective_vs_alpha", "objective_vs_alpha_over_rank",
           "objective_vs_dropout", "objective_vs_lr", "parallel_coordinates"]


def assert_png(path: Path):
    data = Path(path).read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    assert len(data) > 1000, path
    height, width = matplotlib.image.imread(path).shape[:2]
    assert height > 100 and width > 100


def test_plots_of_two_experiments(tmp_path):
    a = make_experiment(tmp_path / "a", name="exp-a")
    b = make_experiment(tmp_path / "b", name="exp-b", metric="mmlu")
    paths = plot_experiments([a, b], out_dir=tmp_path / "figs")
    assert [p.stem for p in paths] == FIGURES
    for path in paths:
        assert path.parent == tmp_path / "figs"
        assert_png(path)


def test_plots_default_folder_and_empty_experiment(tmp_path):
    exp = make_experiment(tmp_path / "a")
    empty = copy_experiment(DEMO, tmp_path / "empty")
    paths = plot_experiments([exp, empty])
    assert all(p.parent == exp / "report" for p in paths)
    for path in paths:
        assert_png(path)
    for path in plot_experiments([empty]):  # nothing evaluated: still valid, if empty, figures
        assert_png(path)


def test_report(tmp_path):
    exp = make_experiment(tmp_path / "a")
    path = write_report(exp)
    assert path == exp / "report" / "report.md"
    text = path.read_text()
    for heading in ["# HPO report: fake", "## Best point", "## X0 versus best (before / after)", "## Top 5",
                    "## Budget spent", "## Spread of the objective", "## Figures"]:
        assert heading in text
    assert "rank 8, alpha 16 (2 x rank), dropout 0.05, lr 0.001" in text  # the best point
    assert re.search(r"\| objective \(min\) \| 2\.5 \| 2\.1 \| -0\.4 \| -16\.00% \|", text)  # X0 before / after
    top = text.split("## Top 5")[1].split("##")[0]
    assert len([line for line in top.splitlines() if line.startswith("| ")]) == 2 + 4  # header, rule, 4 ok runs
    assert "- evaluations answered: 5" in text
    assert "- cached hits (answered from a finished run, no training): 1" in text
    assert "- new trainings: 5" in text and "- failures: 1 (oom 1)" in text
    assert "CPU-hours" in text
    assert "| 4 | 2.1 | 2.4 | 2.9 |" in text  # ok runs: n, min, median, max
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert sorted(Path(link).stem for link in links) == sorted(FIGURES)
    for link in links:
        assert not Path(link).is_absolute()
        assert_png(path.parent / link)


def test_report_gpu_hours(tmp_path):
    exp = make_experiment(tmp_path / "a")
    for metrics_path in (exp / "runs").glob("*/metrics.json"):
        metrics_path.write_text(metrics_path.read_text().replace('"cpu"', '"cuda"'))
    text = write_report(exp).read_text()
    # 4 ok runs x 40 s wall + the failed run's 40 s (finished - started) = 200 s, one process each
    assert "- GPU-hours: 0.0556" in text


def test_report_cli_and_empty(tmp_path):
    empty = copy_experiment(DEMO, tmp_path / "empty")
    proc = run_cli("bbo", "report", str(empty))
    assert proc.returncode == 0, proc.stderr
    text = (empty / "report" / "report.md").read_text()
    assert "No evaluation succeeded yet" in text and "was not evaluated" in text
    proc = run_cli("bbo", "plot", str(empty))
    assert proc.returncode == 0 and proc.stdout.count("wrote ") == len(FIGURES)


def test_markdown_table_escapes():
    import pandas as pd

    lines = markdown_table(pd.DataFrame({"a": ["x|y", None], "b": [1, 2]}))
    assert lines == ["| a | b |", "| --- | --- |", "| x\\|y | 1 |", "|  | 2 |"]

