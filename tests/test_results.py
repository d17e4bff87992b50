"""Results tables: values against the run folders and NOMAD's own files, the original system's
history file, compare(), an empty experiment, CSV/Parquet through the CLI, and one real search."""
import math
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pandas as pd
import pytest
import yaml

from bbo.history import load_history_file, load_nomad_history
from bbo.results import compare, load_runs
from bbo.summary import best, summary_text, table_text, x0_row
from core.config import load_config
from core.nomadtext import CACHE_FILE, HISTORY_FILE
from core.store import RunStore, read_json, run_id, write_json

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "experiments" / "demo"
ORIGINAL = REPO / "tests" / "data" / "original-bbo3"  # the original code's real experiment-3 run
SUBJECTS = {"arithmetic": 0.4, "word_reversal": 0.3}


def copy_experiment(src: Path, dest: Path, **changes) -> Path:
    """experiment.yaml copied into dest, relative model/data paths made absolute; changes: {"train.max_steps": 5}."""
    raw = yaml.safe_load((src / "experiment.yaml").read_text())

    def absolute(path):
        return str((src / path).resolve()) if path.startswith(".") else path

    raw["model"]["path"] = absolute(raw["model"]["path"])
    for source in raw["data"]["sources"]:
        source["path"] = absolute(source["path"])
    mmlu = raw.get("objective", {}).get("mmlu", {})
    if mmlu.get("data_dir"):
        mmlu["data_dir"] = absolute(mmlu["data_dir"])
    for key, value in changes.items():
        section, name = key.split(".")
        raw.setdefault(section, {})[name] = value
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "experiment.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))  # order = NOMAD's variable order
    return dest


def make_experiment(dest: Path, name: str = "fake", metric: str = "val_loss") -> Path:
    """A finished experiment without training: run folders and evaluations.jsonl written through RunStore.

    X0 ok (answered twice, the second from the cache), a better point ok, an OOM failure,
    a point given by hand, and a run that crashed before its answer was recorded.
    NOMAD's history and cache files are written as NOMAD 4.5 writes them.
    """
    extra = ["val_loss", "mmlu", "train_loss"] if metric == "mmlu" else ["mmlu", "train_loss", "train_seconds"]
    copy_experiment(DEMO, dest, **{"objective.metric": metric, "objective.extra_outputs": extra})
    raw = yaml.safe_load((dest / "experiment.yaml").read_text())
    raw["name"] = name
    (dest / "experiment.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    config = load_config(dest)
    store = RunStore(dest)
    fp = config.fingerprint()
    x0 = config.space.x0  # demo: (2 1 1 -4) = rank 4, alpha 4, dropout 0, lr 1e-4
    plan = [  # (point, hp for hand points, outcome, val_loss, source, answers)
        (x0, None, "ok", 2.5, "nomad", [False, True]),
        ([3, 2, 2, -3.0], None, "ok", 2.1, "nomad", [False]),
        ([4, 16, 1, -1.5], None, "oom", None, "nomad", [False]),
        (None, {"rank": 8, "alpha": 24, "dropout": 0.05, "lr": 3e-4}, "ok", 2.3, "hand", [False]),
        ([1, 1, 3, -5.0], None, "crash-before-record", 2.9, None, []),
    ]
    history, cache = [], []
    t = 1_700_000_000.0
    for point, hand_hp, outcome, val, source, answers in plan:
        hp = hand_hp or config.space.decode(point)
        if point is None:
            point = config.space.encode(hp)
        rid = run_id(hp, fp)
        with store.lock(rid):
            store.begin(rid, {"run_id": rid, "hp": hp, "point": None if hand_hp else point,
                              "experiment": name, "fixed": fp})
            if outcome == "oom":
                store.finish(rid, "failed", reason="CUDA out of memory", error_kind="oom")
                metrics = None
            else:
                mmlu = 0.5 - val / 10
                metrics = {"val_loss": val, "train_loss": val - 0.2, "mmlu": mmlu, "mmlu_subjects": dict(SUBJECTS),
                           "mmlu_n": 20, "train_seconds": 30.0, "eval_seconds": 5.0, "tokens_per_second": 900.0,
                           "device": "cpu", "world_size": 1, "log_history": [{"loss": 1.0}]}
                metrics["objective"] = config.objective.to_objective(metrics)
                metrics["wall_seconds"] = 40.0
                store.finish(rid, "ok", metrics=metrics)
        status = store.status(rid)
        status.update(started=t, finished=t + 40.0)  # fixed times, to check the datetime columns
        write_json(store.run_dir(rid) / "status.json", status)
        t += 100
        for cached in answers:
            store.record({"run_id": rid, "point": point if source == "nomad" else None, "hp": hp,
                          "state": "ok" if metrics else "failed",
                          "objective": metrics["objective"] if metrics else None, "cached": cached,
                          "source": source, "reason": None if metrics else "oom: CUDA out of memory",
                          "time": time.time()})
        if source == "nomad":
            coords = " ".join(str(v) if isinstance(v, int) else f"{v:g}" for v in point)
            if metrics:
                outs = " ".join(f"{metrics[o]:.10g}" for o in config.objective.outputs)
                history.append(f"  {coords}    {outs}")
                cache.append(f"( {coords} ) BB_EVAL_OK ( {outs} ) SURROGATE_EVAL_NOT_STARTED ( )")
            else:
                history.append(f"  {coords}    FAILED")
                cache.append(f"( {coords} ) BB_EVAL_FAILED ( FAILED ) SURROGATE_EVAL_NOT_STARTED ( )")
    (dest / "nomad").mkdir(exist_ok=True)
    (dest / HISTORY_FILE).write_text("\n".join(history) + "\n")
    (dest / CACHE_FILE).write_text("CACHE_HITS 0\nBB_OUTPUT_TYPE OBJ" + " BBO_UNDEFINED" * len(extra) + "\n"
                                   + "\n".join(cache))
    return dest


@pytest.fixture
def fake(tmp_path):
    return make_experiment(tmp_path / "fake")


# ---------------------------------------------------------------- the table vs the run folders

def test_columns_and_dtypes(fake):
    df = load_runs(fake)
    names = ["rank", "alpha", "dropout", "lr"]
    expected = (["run_id", "order", "status", "reason", "error_kind", "cached", "n_answers", "cached_hits", "source"]
                + [f"x_{n}" for n in names] + ["rank", "alpha", "alpha_over_rank", "dropout", "lr",
                                                "objective", "val_loss", "mmlu", "mmlu_arithmetic",
                                                "mmlu_word_reversal", "mmlu_full", "train_loss", "train_seconds", "eval_seconds",
                                                "wall_seconds", "tokens_per_second", "started", "finished"])
    assert list(df.columns[:len(expected)]) == expected
    assert "mmlu_n" in df and "log_history" not in df and "mmlu_subjects" not in df
    for col in ["order", "rank", "alpha", "n_answers", "cached_hits", "x_rank", "x_alpha", "x_dropout"]:
        assert str(df[col].dtype) == "Int64", col
    for col in ["x_lr", "alpha_over_rank", "dropout", "lr", "objective", "val_loss", "mmlu", "mmlu_arithmetic"]:
        assert df[col].dtype == "float64", col
    assert str(df["cached"].dtype) == "boolean"
    assert isinstance(df["started"].dtype, pd.DatetimeTZDtype)


def test_values_match_run_folders(fake):
    df = load_runs(fake)
    store = RunStore(fake)
    assert sorted(df["run_id"]) == store.run_ids()
    for _, row in df.iterrows():
        run_dir = store.run_dir(row["run_id"])
        params, status = read_json(run_dir / "params.json"), read_json(run_dir / "status.json")
        metrics = read_json(run_dir / "metrics.json") or {}
        assert row["status"] == status["state"]
        for name in ["rank", "alpha", "dropout", "lr"]:
            assert row[name] == pytest.approx(params["hp"][name])
        assert row["alpha_over_rank"] == pytest.approx(params["hp"]["alpha"] / params["hp"]["rank"])
        for name in ["objective", "val_loss", "mmlu", "train_loss", "train_seconds", "wall_seconds"]:
            if name in metrics:
                assert row[name] == pytest.approx(metrics[name]), name
            else:
                assert pd.isna(row[name]), name
        for subject, acc in (metrics.get("mmlu_subjects") or {}).items():
            assert row[f"mmlu_{subject}"] == pytest.approx(acc)
        assert row["started"] == pd.Timestamp(status["started"], unit="s", tz="UTC")
        assert row["finished"] == pd.Timestamp(status["finished"], unit="s", tz="UTC")


def test_order_answers_and_status(fake):
    df = load_runs(fake)
    entries = RunStore(fake).evaluations()
    assert len(entries) == 5 and int(df["n_answers"].sum()) == 5 and int(df["cached_hits"].sum()) == 1
    first_seen = list(dict.fromkeys(e["run_id"] for e in entries))
    assert list(df["run_id"][:4]) == first_seen and list(df["order"][:4]) == [1, 2, 3, 4]
    x0 = df.iloc[0]
    assert (x0["n_answers"], x0["cached_hits"], bool(x0["cached"])) == (2, 1, False)
    assert [x0[f"x_{n}"] for n in ["rank", "alpha", "dropout", "lr"]] == [2, 1, 1, -4.0]
    failed = df.iloc[2]
    assert (failed["status"], failed["error_kind"], failed["reason"]) == ("failed", "oom", "CUDA out of memory")
    assert pd.isna(failed["objective"])
    hand = df.iloc[3]
    assert hand["source"] == "hand" and (hand["rank"], hand["alpha"]) == (8, 24)
    coords = [hand["x_rank"], hand["x_alpha"], hand["x_dropout"], hand["x_lr"]]
    assert coords == [3, 3, 2, pytest.approx(math.log10(3e-4))]  # encoded from the hand-given hyperparameters
    lost = df.iloc[4]  # trained, but the answer was never recorded: last, without an order
    assert pd.isna(lost["order"]) and lost["n_answers"] == 0 and lost["status"] == "ok"


def test_best_x0_and_text(fake):
    df = load_runs(fake)
    top = best(df)
    assert top["val_loss"] == pytest.approx(2.1) and top["rank"] == 8
    assert x0_row(df)["val_loss"] == pytest.approx(2.5)
    text = table_text(df)
    lines = text.splitlines()
    assert "objective (min)" in lines[0]
    assert "2.1000" in lines[1] and "failed" in lines[-1] and "CUDA out of memory" in lines[-1]
    assert len(table_text(df, top=2).splitlines()) == 3
    summary = summary_text(df, load_config(fake))
    assert "best point: rank 8, alpha 16" in summary and "X0 vs best: 2.5 -> 2.1" in summary
    assert "-16.00%" in summary


def test_mmlu_objective_is_negated(tmp_path):
    df = load_runs(make_experiment(tmp_path / "m", metric="mmlu"))
    ok = df[df["status"] == "ok"]
    assert (ok["objective"] == -ok["mmlu"]).all()
    assert best(df)["mmlu"] == ok["mmlu"].max()
    assert "objective (min) = -mmlu" in table_text(df).splitlines()[0]


def test_empty_experiment(tmp_path):
    exp = copy_experiment(DEMO, tmp_path / "empty")
    df = load_runs(exp)
    assert df.empty
    assert {"run_id", "order", "status", "x_rank", "x_lr", "rank", "alpha_over_rank", "objective", "val_loss",
            "mmlu", "started"} <= set(df.columns)
    assert str(df["rank"].dtype) == "Int64" and df["objective"].dtype == "float64"
    assert table_text(df) == "no evaluations yet" and best(df) is None
    assert load_nomad_history(exp).empty


def test_compare(tmp_path):
    a = make_experiment(tmp_path / "a", name="exp-a")
    b = make_experiment(tmp_path / "b", name="exp-b", metric="mmlu")
    both = compare([a, b])
    assert list(both.columns[:2]) == ["experiment", "run_id"]
    assert both["experiment"].value_counts().to_dict() == {"exp-a": 5, "exp-b": 5}
    assert len(both) == len(load_runs(a)) + len(load_runs(b))
    assert "experiment" in table_text(both).splitlines()[0]


# ---------------------------------------------------------------- NOMAD's own files

def check_agrees_with_nomad(exp: Path) -> None:
    """Every NOMAD history line is a run of the table, with the same coordinates and outputs."""
    config = load_config(exp)
    runs = load_runs(exp)
    nomad = load_nomad_history(exp)
    names = [f"x_{n}" for n in config.space.names()]
    assert len(nomad) > 0
    assert (nomad["in_cache"]).all()
    by_point = {tuple(float(v) for v in row[names]): row for _, row in runs.iterrows()}
    for _, h in nomad.iterrows():
        row = by_point[tuple(float(v) for v in h[names])]
        assert row["status"] == h["status"]
        assert h["cache_status"] == ("BB_EVAL_OK" if h["status"] == "ok" else "BB_EVAL_FAILED")
        for name in ["rank", "alpha", "dropout", "lr"]:
            assert row[name] == pytest.approx(h[name])
        for name in config.objective.outputs + [config.objective.metric]:
            if h["status"] == "ok":
                assert h[name] == pytest.approx(row[name], rel=1e-9), name
            else:
                assert pd.isna(h[name])
    nomad_runs = runs[runs["source"] == "nomad"]
    assert len(nomad) == len(nomad_runs)  # one history line per point NOMAD asked for (cache hits excepted)


def test_nomad_history_agrees_with_runs(fake):
    check_agrees_with_nomad(fake)
    nomad = load_nomad_history(fake)
    assert list(nomad["status"]) == ["ok", "ok", "failed"]
    assert nomad["source"].eq("history").all()


def test_nomad_cache_only(fake):
    (fake / HISTORY_FILE).unlink()
    nomad = load_nomad_history(fake)
    assert len(nomad) == 3 and nomad["source"].eq("cache").all()
    assert sorted(nomad["status"]) == ["failed", "ok", "ok"]


def test_original_bbo3_history():
    """The original system's real 50-evaluation history (NOMAD 4.3, LLaMA-2-7B, 4xA100)."""
    bare = load_history_file(ORIGINAL / "history.0.txt", ORIGINAL / "param.txt")
    assert len(bare) == 50 and list(bare.columns[:5]) == ["order", "status", "x1", "x2", "x3"]
    assert list(bare.columns[5:9]) == ["objective", "extra_1", "extra_2", "extra_3"]
    top = best(bare)
    assert [top["x1"], top["x2"], top["x3"]] == [5, 20, 2] and round(top["objective"], 4) == 0.8194
    assert round(x0_row(bare)["objective"], 4) == 0.8765 and x0_row(bare)["order"] == 1
    first = table_text(bare).splitlines()[1].split()
    assert first[2:6] == ["5", "20", "2", "0.8194"]
    assert any(line.split()[2:6] == ["2", "8", "1", "0.8765"] for line in table_text(bare).splitlines())
    summary = summary_text(bare)
    assert "(5 20 2)" in summary and "0.876455 -> 0.819357" in summary

    space = load_config(REPO / "experiments" / "llama2-7b-bbo3").space
    named = load_history_file(ORIGINAL / "history.0.txt", ORIGINAL / "param.txt", space=space,
                              outputs=["val_loss", "eval_seconds", "train_loss", "train_seconds"])
    top = best(named)
    assert (top["rank"], top["alpha"], top["dropout"]) == (64, 1280, 1e-4)
    assert round(top["val_loss"], 4) == 0.8194
    assert round(x0_row(named)["val_loss"], 4) == 0.8765 and x0_row(named)["rank"] == 8
    assert "rank 64, alpha 1280 (20 x rank), dropout 0.0001" in summary_text(named)


# ---------------------------------------------------------------- command line

def run_cli(*args, timeout=300):
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_cli_results_csv_parquet(fake, tmp_path):
    csv, parquet = tmp_path / "runs.csv", tmp_path / "runs.parquet"
    proc = run_cli("bbo", "results", str(fake), "--csv", str(csv), "--parquet", str(parquet))
    assert proc.returncode == 0, proc.stderr
    assert "objective (min)" in proc.stdout and f"wrote {csv}" in proc.stdout
    df = load_runs(fake)
    back = pd.read_parquet(parquet)
    pd.testing.assert_frame_equal(back, df, check_dtype=False)
    assert str(back["rank"].dtype) == "Int64" and isinstance(back["started"].dtype, pd.DatetimeTZDtype)
    from_csv = pd.read_csv(csv)
    assert list(from_csv.columns) == list(df.columns)
    assert list(from_csv["run_id"]) == list(df["run_id"])
    pd.testing.assert_series_equal(from_csv["objective"], df["objective"])
    assert list(from_csv["mmlu_arithmetic"].fillna(-1)) == list(df["mmlu_arithmetic"].fillna(-1))


def test_cli_results_top(fake):
    proc = run_cli("bbo", "results", str(fake), "--top", "2")
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.strip().splitlines()) == 3


def test_cli_overrides_after_an_option(fake):
    """key=value overrides after an option still reach the config; an unknown option is still an error."""
    proc = run_cli("bbo", "results", str(fake), "--top", "2", "objective.metric=mmlu")
    assert proc.returncode == 0, proc.stderr
    assert "objective (min) = -mmlu" in proc.stdout
    proc = run_cli("bbo", "results", str(fake), "--top", "2", "--bogus")
    assert proc.returncode == 2 and "unrecognized arguments: --bogus" in proc.stderr
    proc = run_cli("bbo", "export", str(fake), str(fake / "out"))  # which run is missing: one line
    assert proc.returncode == 2 and proc.stderr.splitlines() == [
        "error: export: say which run: --best (the best ok run) or --run ID (python -m bbo results)"]


# ---------------------------------------------------------------- a real search

@pytest.mark.slow
def test_real_search_on_tiny_model(tmp_path):
    """`bbo run` on the tiny model (3 evaluations, 5 steps each), then one cached answer by hand:
    the table agrees with the run folders and with NOMAD's history and cache; plots and report work."""
    from fixtures import make_assets

    make_assets(REPO / ".cache" / "demo")
    exp = copy_experiment(DEMO, tmp_path / "demo", **{"nomad.budget": 3, "train.max_steps": 5})
    proc = run_cli("bbo", "run", str(exp), timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "best point:" in proc.stdout and "X0" in proc.stdout

    config = load_config(exp)
    hp = config.space.decode(config.space.x0)
    proc = run_cli("blackbox", "--experiment", str(exp), "--rank", str(hp["rank"]), "--alpha", str(hp["alpha"]),
                   "--dropout", str(hp["dropout"]), "--lr", str(hp["lr"]))
    assert proc.returncode == 0, proc.stderr[-3000:]

    df = load_runs(exp)
    store = RunStore(exp)
    assert len(df) == len(store.run_ids()) == 3
    assert int(df["n_answers"].sum()) == len(store.evaluations()) == 4 and int(df["cached_hits"].sum()) == 1
    x0 = x0_row(df)
    assert x0["order"] == 1 and x0["n_answers"] == 2 and x0["cached_hits"] == 1
    for _, row in df.iterrows():
        metrics = store.metrics(row["run_id"])
        assert row["status"] == "ok"
        for name in ["objective", "val_loss", "mmlu", "train_loss", "train_seconds", "wall_seconds"]:
            assert row[name] == pytest.approx(metrics[name])
        for subject, acc in metrics["mmlu_subjects"].items():
            assert row[f"mmlu_{subject}"] == pytest.approx(acc)
    check_agrees_with_nomad(exp)

    out = tmp_path / "figures"
    proc = run_cli("bbo", "plot", str(exp), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    pngs = sorted(out.glob("*.png"))
    assert {p.name for p in pngs} == {"best_so_far.png", "parallel_coordinates.png", "learning_curves.png",
                                      *(f"objective_vs_{hp}.png" for hp in ("rank", "alpha", "alpha_over_rank", "dropout", "lr"))}
    for png in pngs:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
    proc = run_cli("bbo", "report", str(exp))
    assert proc.returncode == 0, proc.stderr
    report = (exp / "report" / "report.md").read_text()
    assert "## Best point" in report and "## Budget spent" in report and "cached hits" in report
