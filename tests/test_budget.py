"""A rerun never spends a second budget, whichever entry point: `python -m bbo.nomad param.txt` resumes,
and under a plain `nomad` the blackbox trains nothing past nomad.budget (the session's finished search,
conftest.searched: budget 3, 3 points; nothing is trained here)."""
import json
import os
import subprocess
import sys

from conftest import REPO, run_dirs
from conftest import run_module as run
from core.nomadtext import read_cache

BUDGET_LINE = "budget: nomad.budget=3 is used"


def bare_env(**extra) -> dict:
    """The environment of a `nomad` binary started by hand: no driver around it."""
    env = {k: v for k, v in os.environ.items() if k not in ("BBO_SEARCH_ID", "BBO_DRIVER_PID", "BBO_EXTEND")}
    return dict(env, PYTHONPATH=str(REPO), **extra)


def snapshot(experiment):
    return run_dirs(experiment), (experiment / "evaluations.jsonl").read_text()


def test_bbo_nomad_on_the_param_file_resumes_to_the_budget(searched_copy):
    before = snapshot(searched_copy)
    for args in ((), ("--resume",)):  # the default, and the flag `bbo run` passes
        proc = run("bbo.nomad", searched_copy / "param.txt", *args)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "budget already spent" in proc.stderr
    assert snapshot(searched_copy) == before

    from bbo.nomad import prepare_lines  # --no-resume hands NOMAD MAX_BB_EVAL as written, as `nomad` does

    text, folder = (searched_copy / "param.txt").read_text(), searched_copy
    assert prepare_lines(text, folder) is None
    assert "MAX_BB_EVAL 3" in prepare_lines(text, folder, resume=False)


def test_a_plain_nomad_rerun_trains_nothing_past_the_budget(searched_copy):
    experiment = searched_copy
    before = snapshot(experiment)
    # NOMAD on the param file as the binary runs it: MAX_BB_EVAL anew, no BBO_SEARCH_ID for the blackboxes
    nomad = ("import sys, PyNomad; from pathlib import Path; from bbo.nomad import prepare_lines; "
             "p = Path(sys.argv[1]); "
             "PyNomad.optimizeWithMainStep(prepare_lines(p.read_text(), p.parent, resume=False))")
    proc = subprocess.run([sys.executable, "-c", nomad, str(experiment / "param.txt")], capture_output=True,
                          text=True, timeout=600, cwd=experiment / "nomad", env=bare_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert snapshot(experiment) == before  # no run folder, no answer recorded
    lines = [line for line in proc.stderr.splitlines() if line.startswith("budget:")]
    assert len(lines) == 1 and lines[0].startswith(BUDGET_LINE), proc.stderr[-3000:]
    assert "nomad.budget=N" in lines[0] and "BBO_EXTEND=1" in lines[0]
    stop = json.loads((experiment / "nomad" / "stop.json").read_text())
    assert stop["kind"] == "budget" and stop["search"].startswith("nomad-")
    refused = (experiment / "nomad" / "refused.txt").read_text().splitlines()
    cache = read_cache(experiment / "nomad" / "cache.txt")
    failed = [c for c in cache if c["status"] != "BB_EVAL_OK"]
    assert refused and len(failed) == len(refused) and len(cache) == 3 + len(refused)

    # The driver resumes: the refused points leave NOMAD's cache (nothing ran), the budget is spent.
    again = run("bbo.nomad", experiment / "param.txt")
    assert again.returncode == 0 and "budget already spent" in again.stderr, again.stderr[-3000:]
    assert len(read_cache(experiment / "nomad" / "cache.txt")) == 3
    assert not (experiment / "nomad" / "refused.txt").exists()
    assert snapshot(experiment) == before


def test_the_blackbox_answers_stored_points_and_refuses_new_ones(searched_copy, tmp_path):
    experiment = searched_copy
    before = snapshot(experiment)
    stored = json.loads((before[0][0] / "params.json").read_text())["point"]
    points = tmp_path / "points.txt"
    points.write_text(" ".join(f"{v:g}" for v in stored) + "\n4 16 3 -1\n")  # a stored point, then a new one
    proc = subprocess.run([sys.executable, "-m", "blackbox", "--experiment", str(experiment), str(points)],
                          capture_output=True, text=True, timeout=300, env=bare_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    answers = proc.stdout.splitlines()
    assert len(answers) == 2 and answers[0] != "FAILED" and answers[1] == "FAILED"
    assert sum(line.startswith(BUDGET_LINE) for line in proc.stderr.splitlines()) == 1
    folders, index = snapshot(experiment)
    assert folders == before[0]
    assert [json.loads(line)["cached"] for line in index.splitlines()[3:]] == [True]  # only the stored answer


def test_extend_or_a_raised_budget_lets_a_plain_nomad_train(searched_copy, monkeypatch):
    from blackbox.blocks import past_budget
    from core.config import load_config

    monkeypatch.delenv("BBO_SEARCH_ID", raising=False)
    config = load_config(searched_copy)
    fingerprint = config.fingerprint()
    assert past_budget(config, fingerprint, 1, "nomad") == 1  # 3 of 3 used: a new point is refused
    assert past_budget(config, fingerprint, 1, "nomad", extend=True) == 0
    assert past_budget(config, fingerprint, 1, "hand") == 0  # by hand: never refused, never counted
    raised = load_config(searched_copy, ["nomad.budget=4"])
    assert past_budget(raised, fingerprint, 1, "nomad") == 0 and past_budget(raised, fingerprint, 2, "nomad") == 1
    monkeypatch.setenv("BBO_SEARCH_ID", "a-driven-search")  # `bbo run` / `bbo.nomad`: MAX_BB_EVAL counts
    assert past_budget(config, fingerprint, 1, "nomad") == 0


def test_status_says_why_more_than_the_budget_is_used(searched_copy):
    from bbo.status import search_status, status_text
    from core.config import load_config

    shown = run("bbo", "status", searched_copy, "nomad.budget=2")
    assert shown.returncode == 0, shown.stderr
    assert "budget: 3 of 2 used, 0 left (1 beyond it: trained by a search that spent a budget of its own" \
        in shown.stdout

    index = searched_copy / "evaluations.jsonl"  # one of the points as if only ever asked by hand
    entries = [json.loads(line) for line in index.read_text().splitlines()]
    entries[0]["source"] = "hand"
    index.write_text("".join(json.dumps(e) + "\n" for e in entries))
    text = status_text(search_status(load_config(searched_copy)))
    assert "budget: 2 of 3 used, 1 left; 1 more evaluated by hand, not counted" in text
