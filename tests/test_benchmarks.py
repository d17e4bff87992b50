"""The benchmark scripts run end to end (--quick) and print their figures; timings are not checked.

    OMP_NUM_THREADS=1 python -m pytest tests/test_benchmarks.py          # ~1-2 minutes
    OMP_NUM_THREADS=1 python -m pytest tests/test_benchmarks.py -m slow  # + the LLaMA-2-7B-shaped smoke test
"""
import math
import subprocess
import sys

import pytest

from conftest import REPO, run_env


def run_module(module: str, *args: str, timeout: int = 300) -> str:
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=run_env(), capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout


def test_analytic_landscapes_and_fit_check():
    sys.path.insert(0, str(REPO))
    from benchmarks.landscapes import exp1_like, exp3_like, spearman

    exp3, exp1 = exp3_like(), exp1_like()
    # the documented optima: r=64, alpha=20*64 (exp3-like); r=32, alpha=64, lr=1e-4 (exp1-like)
    assert exp3.argmin["rank"] == 64 and exp3.argmin["alpha"] == 1280
    assert exp1.argmin["rank"] == 32 and exp1.argmin["alpha"] == 64 and math.isclose(exp1.argmin["lr"], 1e-4)
    hp = {"rank": 8, "alpha": 64, "dropout": 0.0, "lr": 3.1622777e-4}
    assert exp3(hp) == exp3(dict(hp))  # noise is fixed per point
    assert abs(exp3(hp) - exp3.noise_free(hp)) < 0.01
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)


def test_new_landscapes_have_the_optima_they_describe():
    sys.path.insert(0, str(REPO))
    from benchmarks.landscapes import analytic_landscapes, cliff_like, flat_rank, rslora_like

    assert [ls.name for ls in analytic_landscapes()][:2] == ["exp3-like", "exp1-like"]
    cliff = cliff_like()
    assert cliff.argmin["rank"] == 4  # the lowest rank ...
    hp = dict(cliff.argmin)
    assert cliff.noise_free(hp | {"lr": hp["lr"] * 0.8}) < cliff.optimum * 1.01  # ... a smaller lr costs little
    assert cliff.noise_free(hp | {"lr": hp["lr"] * 1.4}) > cliff.optimum * 1.5  # ... 1.4x diverges (the cliff)
    flat = flat_rank()
    assert flat.argmin["dropout"] == 0.1
    at = dict(flat.argmin)
    m = flat.model  # rank barely matters, with the lr retuned for it (its best step lr * alpha / r)
    at4 = at | {"rank": 4, "alpha": 12, "lr": m.s_ref * math.sqrt(m.r_ref / 4) * 4 / 12}
    assert abs(flat.noise_free(at4) - flat.optimum) < 0.005
    assert flat.noise_free(at | {"dropout": 0.0}) > flat.optimum * 1.015  # dropout does
    rs = rslora_like()
    best_alpha = {}
    for r in (16, 64):  # at the optimum's lr, the best alpha per rank: grows with sqrt(rank)
        best_alpha[r] = min(range(1, 129), key=lambda a: rs.noise_free(dict(rs.argmin) | {"rank": r, "alpha": a}))
    assert 1.6 < best_alpha[64] / best_alpha[16] < 2.5


def test_benchmark_nomad_starts_again_as_the_driver_does():
    """exp3-like is all-integer: NOMAD's mesh bottoms out early, the driver's restarts spend the whole budget."""
    sys.path.insert(0, str(REPO))
    from benchmarks.search_efficiency import run_nomad

    histories, crashes = run_nomad("exp3-like", {"label": "default"}, [0], 40)
    assert crashes == 0 and len(histories[0]) == 40


def test_search_efficiency_quick():
    out = run_module("benchmarks.search_efficiency", "--quick", "--noise", "0.0045")
    assert "fit check" in out and "Spearman" in out
    assert "### exp3-like" in out
    for row in ("| NOMAD default |", "| Optuna TPE |", "| random |", "| ratio NOMAD default / Optuna TPE |",
                "| ratio NOMAD default / random |"):
        assert row in out
    assert "median evals to 1%" in out and "final choice truly within 1%" in out
    noisy = out.split("every evaluation with 0.45% relative noise", 1)
    assert len(noisy) == 2 and "| Optuna TPE |" in noisy[1]  # the same tables again, with seed noise


def test_parallelism_quick():
    out = run_module("benchmarks.parallelism", "--quick")
    assert "| 4 | NOMAD |" in out and "| 4 | Optuna TPE |" in out and "rounds vs k=1" in out
    assert "## Goal: with k = 4" in out


def test_noise_is_fixed_per_point_and_seed_and_judged_by_the_true_value():
    from benchmarks.landscapes import Noisy, exp3_like

    exp3 = exp3_like()
    hp = {"rank": 8, "alpha": 64, "dropout": 0.0, "lr": 3.1622777e-4}
    a, b = Noisy(exp3, 0.0045, 0), Noisy(exp3, 0.0045, 1)
    assert a(hp) == a(dict(hp)) != b(hp)  # a stored run is not retrained; another seed is another draw
    assert a.truth(hp) == b.truth(hp) == exp3.noise_free(hp)
    assert abs(a(hp) / a.truth(hp) - 1) < 5 * 0.0045


@pytest.mark.slow  # over 30 s of trainings: CI runs it (.ci/run), ./test.sh -m slow by hand
def test_make_landscape_quick(tmp_path):
    out_csv = tmp_path / "landscape.csv"
    run_module("benchmarks.make_landscape", "--quick", "--out", str(out_csv))
    sys.path.insert(0, str(REPO))
    from benchmarks.landscapes import Tabulated

    table = Tabulated(out_csv)  # a complete grid, with its provenance and space in the header
    assert len(table.table) == 2 and all(math.isfinite(v) for v in table.table.values())
    assert any(line.startswith("command:") for line in table.provenance)
    # lr snaps to the nearest grid value in log10
    assert table({"rank": 4, "alpha": 4, "dropout": 0.0, "lr": 2.5e-3}) == table.table[(4, 4, 0.0, -3.0)]
    assert table({"rank": 4, "alpha": 4, "dropout": 0.0, "lr": 4e-3}) == table.table[(4, 4, 0.0, -2.0)]


@pytest.mark.slow  # over 40 s: CI runs it (.ci/run), ./test.sh -m slow by hand
def test_throughput_quick():
    out = run_module("benchmarks.throughput", "--quick")
    for row in ("| project |", "| original |", "| original-pad512 |"):
        assert row in out
    assert "ratio project / original:" in out and "ratio project / original-pad512:" in out
    project_row = [line for line in out.splitlines() if line.startswith("| project |")][0]
    assert "| 0.0% |" in project_row  # packing: no padding


@pytest.mark.slow  # over 40 s: CI runs it (.ci/run), ./test.sh -m slow by hand
def test_overhead_quick():
    out = run_module("benchmarks.overhead", "--quick", "--repeats", "2")
    for phase in ("process start", "data preparation", "model load", "training", "validation loss", "wall"):
        assert phase in out
    assert "same output line as the first call: True" in out
    assert "torch no, transformers no" in out
    assert "through `accelerate launch`" in out  # the training's start beside the launcher's


@pytest.mark.slow
def test_throughput_llama2_7b_shape_two_layers():
    out = run_module("benchmarks.throughput", "--model-config", "llama2-7b", "--layers", "2", "--quick",
                     "--steps", "3", "--batch-size", "1", "--setups", "project,original", timeout=900)
    assert "LLaMA-2-7B shape, 2 layers" in out and "MFU" in out and "ratio project / original:" in out


def test_constraints_quick():
    """NOMAD with BB_OUTPUT_TYPE OBJ PB and Optuna TPE with set_constraint, on each measured table."""
    out = run_module("benchmarks.constraints", "--quick")
    assert "| landscape_full |" in out and "| NOMAD (PB) |" in out and "| Optuna TPE |" in out
    nomad = [line for line in out.splitlines() if "| NOMAD (PB) |" in line]
    assert nomad and all(not line.endswith("| 0% |") for line in nomad)  # NOMAD evaluated feasible points
    sys.path.insert(0, str(REPO))
    from benchmarks.constraints import cap

    assert cap({"rank": 4}) == 0 and cap({"rank": 8}) > 0
