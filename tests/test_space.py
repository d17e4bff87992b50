"""Encoding/decoding between NOMAD points and LoRA hyperparameters, and bounds."""
import pytest

from core.space import PointError, SearchSpace, SpaceError, check_hyperparameters

BBO3 = {  # experiment 3 of the original study
    "rank": {"choices": [4, 8, 16, 32, 64], "x0": 8},
    "alpha": {"times_rank": [1, 64], "x0": 8},
    "dropout": {"choices": [0.0, 1e-4, 1e-3, 1e-2, 0.1], "x0": 0.0},
    "lr": 3.1622777e-4,
}
EXP1 = {  # experiment 1: NOMAD order rank, dropout, alpha, lr
    "rank": {"choices": [4, 8, 16, 32, 64, 128], "x0": 8},
    "dropout": {"choices": [0.0, 1e-4, 1e-3, 1e-2, 0.1], "x0": 0.1},
    "alpha": {"range": [1, 64], "x0": 32},
    "lr": {"log10": [-6, -3], "x0": 1e-5},
}


def test_bbo3_matches_the_original_encoding():
    space = SearchSpace.from_dict(BBO3)
    assert space.dimension == 3 and space.input_types == ["I", "I", "I"]
    assert space.x0 == [2, 8, 1] and space.lower == [1, 1, 1] and space.upper == [5, 64, 5]
    assert space.decode([5, 20, 2]) == {"rank": 64, "alpha": 1280, "dropout": 0.0001, "lr": 0.000316228}


def test_exp1_order_x0_and_log_lr():
    space = SearchSpace.from_dict(EXP1)
    assert space.names() == ["rank", "dropout", "alpha", "lr"]
    assert space.x0 == [2, 5, 32, -5]
    assert space.input_types == ["I", "I", "I", "R"]
    hp = space.decode(space.parse_point(["3", "2", "10", "-4.25"]))
    assert hp == {"rank": 16, "alpha": 10, "dropout": 0.0001, "lr": pytest.approx(10 ** -4.25, rel=1e-5)}


@pytest.mark.parametrize("spec", [BBO3, EXP1])
def test_encode_decode_round_trip_over_the_whole_grid(spec):
    space = SearchSpace.from_dict(spec)
    for rank_i in range(1, len(spec["rank"]["choices"]) + 1):
        for second in (1, 3, 5):
            coords = [rank_i, second, 7, -4.5] if space.dimension == 4 else [rank_i, 7, second]
            hp = space.decode(coords)
            assert space.encode(hp) == pytest.approx(coords)


def test_encode_returns_none_outside_the_space():
    space = SearchSpace.from_dict(BBO3)
    assert space.encode({"rank": 12, "alpha": 12, "dropout": 0.0, "lr": 3.1622777e-4}) is None
    assert space.encode({"rank": 8, "alpha": 12, "dropout": 0.0, "lr": 3.1622777e-4}) is None  # not a multiple
    assert space.encode({"rank": 8, "alpha": 16, "dropout": 0.0, "lr": 1e-3}) is None  # lr is fixed


@pytest.mark.parametrize("tokens, message", [
    (["2", "8"], "has 2 values"),
    (["2", "8", "x"], "not a number"),
    (["2", "8", "1.5"], "must be an integer"),
    (["6", "8", "1"], "outside its bounds"),
    (["2", "0", "1"], "outside its bounds"),
    (["2", "8", "nan"], "not finite"),
])
def test_bad_points(tokens, message):
    with pytest.raises(PointError, match=message):
        SearchSpace.from_dict(BBO3).parse_point(tokens)


@pytest.mark.parametrize("spec, message", [
    ({**BBO3, "rank": {"choices": []}}, "non-empty list"),
    ({**BBO3, "alpha": {"range": [64, 1]}}, "must be below"),
    ({**BBO3, "rank": {"choices": [4, 8], "x0": 16}}, "not one of the choices"),
    ({**BBO3, "dropout": {"choices": [0.0, 1.0]}}, r"dropout must be in \[0, 1\)"),
    ({**BBO3, "rank": {"times_rank": [1, 4]}}, "only alpha"),
    ({**BBO3, "rank": {"choices": [4], "step": 2}}, "unknown key"),
    ({**BBO3, "beta": 1}, "unknown hyperparameter"),
    ({k: v for k, v in BBO3.items() if k != "lr"}, "space.lr: missing"),
    ({"rank": 8, "alpha": 16, "dropout": 0.0, "lr": 1e-4}, "every hyperparameter is fixed"),
    ({**BBO3, "lr": {"log10": [-6, -3], "x0": 1.0}}, "x0"),
])
def test_bad_spaces(spec, message):
    with pytest.raises(SpaceError, match=message):
        SearchSpace.from_dict(spec)


def test_hand_hyperparameters_are_checked_and_canonical():
    assert check_hyperparameters({"rank": "8", "alpha": 16.0, "dropout": 0.05, "lr": 0.00030000001}) == {
        "rank": 8, "alpha": 16, "dropout": 0.05, "lr": 0.0003}
    with pytest.raises(PointError, match="rank: must be an integer"):
        check_hyperparameters({"rank": 8.5, "alpha": 16, "dropout": 0, "lr": 1e-4})
    with pytest.raises(PointError, match="dropout"):
        check_hyperparameters({"rank": 8, "alpha": 16, "dropout": 1.0, "lr": 1e-4})
