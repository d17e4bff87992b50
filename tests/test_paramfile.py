"""param.txt: consistent with experiment.yaml, standard keywords, rejected when it drifts."""
from pathlib import Path

import pytest

from bbo import paramfile
from core.config import ConfigError, load_config
from core.nomadtext import format_number, parse_params

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", ["demo", "llama2-7b-mmlu", "llama2-7b-valloss", "llama2-7b-bbo3"])
def test_committed_param_files_match_their_config(name):
    config = load_config(REPO / "experiments" / name)
    assert (config.dir / "param.txt").read_text() == paramfile.render(config)
    assert (config.dir / "bb.sh").read_text() == paramfile.render_bb_script(config)
    paramfile.check(config)


def test_bbo3_param_file_says_what_the_original_said():
    entries = parse_params((REPO / "experiments" / "llama2-7b-bbo3" / "param.txt").read_text())
    original = parse_params((REPO / "tests" / "data" / "original-bbo3" / "param.txt").read_text()
                               .replace("NB_THREADS_OPENMP 1", ""))
    x0_file = REPO / "experiments" / "llama2-7b-bbo3" / entries["X0"][0]  # nomad.start_points: X0 comes first
    assert paramfile.normalize_values(original["X0"]) == ["( 2 8 1 )"] and x0_file.read_text().splitlines()[0] == "2 8 1"
    assert entries["UPPER_BOUND"] == ["( 5 64 5 )"]
    assert entries["BB_OUTPUT_TYPE"] == ["OBJ EXTRA_O EXTRA_O EXTRA_O"]
    for key in ("DIMENSION", "BB_INPUT_TYPE", "MAX_BB_EVAL"):
        assert paramfile.normalize_values(entries[key]) == paramfile.normalize_values(original[key])


def test_drift_and_bad_keywords_are_errors(tmp_path):
    config = load_config(REPO / "experiments" / "demo")
    path = tmp_path / "param.txt"
    path.write_text(paramfile.render(config).replace("MAX_BB_EVAL 10", "MAX_BB_EVAL 11"))
    with pytest.raises(ConfigError, match="MAX_BB_EVAL is"):
        paramfile.check(config, path)
    path.write_text(paramfile.render(config) + "MAX_BB_EVALS 3\n")
    with pytest.raises(ConfigError, match="unknown NOMAD keyword MAX_BB_EVALS"):
        paramfile.check(config, path)
    path.write_text(paramfile.render(config) + "NB_THREADS_OPENMP 4\n")
    with pytest.raises(ConfigError, match="no longer exists"):
        paramfile.check(config, path)
    path.write_text(paramfile.render(config).replace("MAX_BB_EVAL 10", "MAX_BB_EVAL abc"))
    with pytest.raises(ConfigError, match="MAX_BB_EVAL must be a positive integer"):
        paramfile.check(config, path)


def test_parallel_and_search_options_reach_the_file(tmp_path):
    config = load_config(REPO / "experiments" / "demo", ["launch.parallel=4", "nomad.lh_search=[5,0]",
                                                         "nomad.extra_lines=[VNS_MADS_SEARCH yes]"])
    text = paramfile.render(config)
    assert "BB_MAX_BLOCK_SIZE 4" in text and "LH_SEARCH 5 0" in text and "VNS_MADS_SEARCH yes" in text
    assert "MEGA_SEARCH_POLL yes" in text  # blocks filled with search and poll points (benchmarks/parallelism.py)
    assert "MEGA_SEARCH_POLL" not in paramfile.render(load_config(REPO / "experiments" / "demo"))


def test_initial_frame_is_a_fraction_of_each_range():
    config = load_config(REPO / "experiments" / "llama2-7b-mmlu", ["nomad.initial_frame=0.3"])
    # rank index 1..6, dropout index 1..5, alpha 1..64, log10 lr -6..-3: integers at least 1, the real one as is
    assert "INITIAL_FRAME_SIZE ( 2 1 19 0.9 )" in paramfile.render(config)
    assert "INITIAL_FRAME_SIZE" not in paramfile.render(load_config(REPO / "experiments" / "llama2-7b-mmlu"))


def test_start_points_are_seeded_spread_and_inside_the_space():
    space = load_config(REPO / "experiments" / "llama2-7b-mmlu").space  # rank, dropout (indices), alpha, log10 lr
    points = space.start_design(8, seed=3)
    assert points[0] == space.x0 and len(points) == 9 and points == space.start_design(8, seed=3)
    assert points != space.start_design(8, seed=4)  # unlike NOMAD 4.5.1's LH_SEARCH, the seed moves them
    for point in points[1:]:
        assert space.decode(point)  # decodable: inside the bounds, integers where NOMAD needs them
        assert [isinstance(v, int) for v in point] == [t == "I" for t in space.input_types]
    for j, (low, high) in enumerate(zip(space.lower, space.upper)):  # Latin hypercube: each eighth of a range once
        strata = sorted(min(7, int(8 * (p[j] - low) / (high - low + (space.input_types[j] == "I")))) for p in points[1:])
        assert strata == list(range(8)) or space.input_types[j] == "I"


def test_start_points_go_to_an_x0_file_that_must_match_the_config(tmp_path):
    import shutil

    shutil.copytree(REPO / "experiments" / "demo", tmp_path / "demo")
    config = load_config(tmp_path / "demo", ["nomad.start_points=4"])
    paramfile.write(config)
    name = paramfile.start_points(config)[0]
    assert name.startswith("nomad/x0-") and f"X0 {name}" in (tmp_path / "demo" / "param.txt").read_text()
    lines = (tmp_path / "demo" / name).read_text().splitlines()
    assert [line.split() for line in lines] == [[format_number(v) for v in p] for p in
                                                config.space.start_design(4, config.nomad.seed)]
    paramfile.check(config)
    other = paramfile.start_points(load_config(tmp_path / "demo", ["nomad.start_points=4", "nomad.seed=1"]))[0]
    assert other != name  # another seed, another file: a run with an override leaves this one alone
    x0_file = tmp_path / "demo" / name
    x0_file.write_text("1 1 1 -3\n")  # edited by hand
    with pytest.raises(ConfigError, match=r"\.txt: edited \(the start points of nomad.start_points=4, seed 0\); regen"):
        paramfile.check(config)
    x0_file.unlink()
    with pytest.raises(ConfigError, match=r"\.txt: missing"):
        paramfile.check(config)
    with pytest.raises(ConfigError, match="must be an integer >= 0"):
        load_config(tmp_path / "demo", ["nomad.start_points=-1"])


def test_nomad_text_is_written_by_core_nomadtext_and_reads_back():
    from core.nomadtext import param_line, point_file, point_lines, render_params, vector

    assert format_number(8) == format_number(8.0) == "8" and format_number(1e-5) == "1e-05"
    assert format_number("bb.sh") == "bb.sh" and format_number(Path("/x/x0.txt")) == "/x/x0.txt"
    assert vector([1, 8.0, -4.5]) == "( 1 8 -4.5 )"
    assert param_line("X0", [2, 8, 1]) == "X0 ( 2 8 1 )" and param_line("LH_SEARCH", 5, 0) == "LH_SEARCH 5 0"
    assert param_line("DISPLAY_STATS", "BBE", ["SOL"], "OBJ") == "DISPLAY_STATS BBE ( SOL ) OBJ"
    points = [[2, 8, 1], [3, 16.0, 0.05]]
    assert point_file(points) == "2 8 1\n3 16 0.05\n" and point_lines(point_file(points))[1] == ["3", "16", "0.05"]
    lines = render_params(input_types=["I", "R"], output_types=["OBJ", "EXTRA_O"], x0=[1, -4], lower=[1, -6], upper=[5, -3],
                          budget=9, seed=2, bb_exe="bb.sh", block_size=2, extra_lines=["NM_SEARCH no"])
    entries = parse_params("\n".join(lines))  # standard keywords only (strict)
    assert entries["BB_OUTPUT_TYPE"] == ["OBJ EXTRA_O"] and entries["BB_MAX_BLOCK_SIZE"] == ["2"]
    assert entries["X0"] == ["( 1 -4 )"] and lines[-1] == "NM_SEARCH no"
