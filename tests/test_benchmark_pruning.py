"""benchmarks/pruning.py: the replay of measured learning curves counts training-hours right, prunes by the
project's own rule (core/pruning.py), and the script runs end to end (--quick).

    OMP_NUM_THREADS=1 python -m pytest tests/test_benchmark_pruning.py      # ~15 s
"""
import csv
import subprocess
import sys

import pytest

from conftest import REPO, run_env

sys.path.insert(0, str(REPO))
from benchmarks import pruning as bench  # noqa: E402
from core import pruning  # noqa: E402

pytestmark = pytest.mark.xdist_group("test_benchmark_pruning")  # its module fixture is made once: one worker


@pytest.fixture(scope="module")
def curves():
    return bench.Curves()


def test_optimum_is_the_table_minimum_and_curves_end_at_it(curves):
    lines = [line for line in bench.CURVES_CSV.read_text().splitlines() if not line.startswith("#")]
    rows = [r for r in csv.DictReader(lines) if r["state"] == "ok"]
    assert len(curves.curves) == len(rows) == 48
    assert curves.optimum == min(float(r["val_loss"]) for r in rows)
    assert curves.fractions == [0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0]
    assert all(c[1.0] == curves.table[p] for p, c in curves.curves.items())  # the last checkpoint is the result
    assert curves.step(0.25) == 2 and curves.step(1.0) == 8  # Optuna's steps: the checkpoint's number


def test_templates_settings_are_read_from_the_paper_experiments():
    settings, variant = bench.template_settings()
    assert settings == {"eval_every": 0.25, "warmup": 0.5, "percentile": 50.0, "min_runs": 3}
    assert variant["nomad"] == {"start_points": 6}  # rendered by nomad_lines as `bbo run` renders it


def test_replay_prunes_by_the_project_rule_and_counts_hours(curves):
    settings = {"eval_every": 0.25, "warmup": 0.25, "percentile": 50.0, "min_runs": 5}
    replay = bench.Replay(curves, settings["eval_every"])
    grid = sorted(curves.curves)
    runs = []
    for rank, alpha, dropout, log_lr in grid:
        hp = {"rank": rank, "alpha": alpha, "dropout": dropout, "lr": 10 ** log_lr}
        finished = replay.finished_curves()
        rule = pruning.thresholds(finished, 0.25, 0.25, 50.0, 5)
        run, cached = replay.train(hp, bench.project_stop(replay, settings))
        assert not cached
        curve = curves.curves[(rank, alpha, dropout, log_lr)]
        if run.state == "pruned":
            assert len(finished) >= 5 and 0.25 <= run.fraction < 1.0  # min_runs and warmup hold
            assert run.objective == curve[run.fraction] > rule[pruning.key(run.fraction)]  # its last val loss
        else:
            assert run.fraction == 1.0 and run.objective == curve[1.0]
        runs.append(run)
    assert [r.state for r in runs[:5]] == ["ok"] * 5 and any(r.state == "pruned" for r in runs)
    # the hours are the trained fractions; a point asked again is free and answers the same
    assert sum(h for h, *_ in replay.log) == pytest.approx(sum(r.fraction for r in runs))
    assert all(0 < h < 1 for h, state, _ in replay.log if state == "pruned")
    again, cached = replay.train({"rank": grid[0][0], "alpha": grid[0][1], "dropout": grid[0][2],
                                  "lr": 10 ** (grid[0][3] + 0.1)}, bench.never)  # snapped to the same point
    assert cached and again is runs[0] and replay.log[-1][0] == 0.0
    hours, reached, trainings = bench.hours_to_target(replay.log, curves.optimum)
    best = grid.index(min(curves.curves, key=lambda p: curves.curves[p][1.0]))
    if runs[best].state == "ok":
        assert reached and trainings == best + 1
        assert hours == pytest.approx(sum(r.fraction for r in runs[:best + 1]))


def test_an_eval_every_off_the_table_is_a_clear_error(curves):
    with pytest.raises(SystemExit, match="not among"):
        bench.Replay(curves, 0.3)


def test_nomad_and_tpe_logs_are_consistent(curves):
    settings, variant = bench.template_settings()
    # X0 at the optimum: NOMAD evaluates it with the 6 start points (nomad.start_points), the first 7 evaluations
    start = {"rank": 16, "alpha": 2, "dropout": 0.0, "lr": 0.01}
    hours, reached, trainings = bench.hours_to_target(bench.run_nomad(variant, None, 100, 7, start), curves.optimum)
    assert reached and hours == trainings <= 7
    for log in (bench.run_nomad(variant, settings, 100, 20), bench.run_tpe(settings, 100, 20)):
        assert log
        for hours, state, objective in log:
            assert hours == 0.0 or hours in pruning.checkpoints(0.25)
            assert (state == "pruned") == (0 < hours < 1) or hours == 0.0
        total, reached, _ = bench.hours_to_target(log, curves.optimum)
        assert total <= sum(h for h, *_ in log) <= 20
        assert reached == any(s == "ok" and o <= curves.optimum * 1.01 for _, s, o in log)
    assert all(h == 1.0 or h == 0.0 for h, *_ in bench.run_nomad(variant, None, 100, 20))  # off: full runs only


def test_script_quick():
    proc = subprocess.run([sys.executable, "-m", "benchmarks.pruning", "--quick"], cwd=REPO, env=run_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = proc.stdout
    assert "paper templates' settings: eval_every 0.25, warmup 0.5, percentile 50, min_runs 3" in out
    templates = "eval_every 0.25, warmup 0.5, percentile 50, min_runs 3"
    for row in ("| NOMAD | off |", f"| NOMAD | {templates} |", "| Optuna TPE | off |", f"| Optuna TPE | {templates} |"):
        assert row in out
    assert "ratio pruned / unpruned" in out and out.count("/2 |") == 4  # runs reaching 1% of 2 seeds, 4 rows


def test_grid_starts_are_the_grid(curves):
    starts = bench.grid_starts(curves)
    assert len(starts) == 48 and {"rank": 4, "alpha": 1, "dropout": 0.0, "lr": 10 ** -3.0} in starts
    from core.space import SearchSpace

    space = SearchSpace.from_dict(curves.space)
    # each start, as NOMAD's X0 (SearchSpace's encoding), decodes to its own grid point
    assert len({curves.point(space.decode(SearchSpace.from_dict(
        {k: dict(v, x0=x0[k]) for k, v in curves.space.items()}).x0)) for x0 in starts}) == 48


def test_the_low_fidelity_start_replay_screens_the_design_and_trains_its_best_in_full(curves, tmp_path):
    """screen_design, as bbo/screen.py runs it: each design point costs the fraction and is pruned there, the best
    `keep` by their loss there cost a full run each, and NOMAD's X0 file becomes those points, best first."""
    from core.nomadtext import point_file, point_lines
    from core.space import SearchSpace

    space = SearchSpace.from_dict(curves.space)
    design = space.start_design(6, 0)
    x0_file = tmp_path / "x0.txt"
    x0_file.write_text(point_file(design))
    replay, sent = bench.Replay(curves, 0.25), []

    class Conn:
        send = sent.append

    bench.screen_design(replay, space, x0_file, 0.25, 2, None, Conn())
    screened, full = sent[:len(design)], sent[len(design):]
    assert [(cost, state) for cost, state, _ in screened] == [(0.25, "pruned")] * len(design)
    assert [(cost, state) for cost, state, _ in full] == [(1.0, "ok")] * 2
    at = sorted((curves.curves[curves.point(space.decode(p))][0.25], p) for p in design)
    best = [p for _, p in at[:2]]
    assert [space.parse_point(t) for t in point_lines(x0_file.read_text())] == best
    assert [objective for *_, objective in full] == [curves.curves[curves.point(space.decode(p))][1.0] for p in best]
    with pytest.raises(SystemExit, match="not a checkpoint"):
        bench.screen_design(bench.Replay(curves, 0.25), space, x0_file, 0.125, 2, None, Conn())
