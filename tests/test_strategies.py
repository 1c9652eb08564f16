"""Tests for activeflow.core.score.strategies: hand-computed scores, refused inputs, top-k selection."""

from __future__ import annotations

import math
import subprocess
import sys
from typing import get_args

import numpy as np
import pytest

from activeflow.core.score import strategies
from activeflow.core.score.strategies import (
    CRITERIA,
    SCORERS,
    StrategyName,
    entropy,
    least_confidence,
    margin,
    random,
    score,
    select_top,
    validate_probabilities,
)

# Rows: one-hot, uniform over 3, two-way tie, a typical confident prediction.
PROBS = np.array(
    [
        [1.0, 0.0, 0.0],
        [1 / 3, 1 / 3, 1 / 3],
        [0.5, 0.5, 0.0],
        [0.7, 0.2, 0.1],
    ]
)  # [4, 3]
ONE_HOT, UNIFORM, HALF, TYPICAL = range(4)

ALL_NAMES = list(get_args(StrategyName))


# --- hand-computed values -----------------------------------------------------------------------


def test_least_confidence_values():
    # 1 - max p: 1-1 = 0; 1-1/3 = 2/3; 1-0.5 = 0.5; 1-0.7 = 0.3
    np.testing.assert_allclose(least_confidence(PROBS), [0.0, 2 / 3, 0.5, 0.3])


def test_margin_values():
    # 1 - (top1 - top2): 1-(1-0) = 0; 1-(1/3-1/3) = 1; 1-(0.5-0.5) = 1; 1-(0.7-0.2) = 0.5
    np.testing.assert_allclose(margin(PROBS), [0.0, 1.0, 1.0, 0.5])


def test_entropy_values():
    # one-hot: 1*ln1 + 0*ln0 + 0*ln0 = 0 (0*ln0 := 0)
    # uniform 3: -3 * (1/3) ln(1/3) = ln 3 ~= 1.0986
    # [0.5, 0.5, 0]: -2 * 0.5 ln 0.5 = ln 2 ~= 0.6931
    # [0.7, 0.2, 0.1]: -(0.7 ln0.7 + 0.2 ln0.2 + 0.1 ln0.1)
    #   = 0.7*0.356675 + 0.2*1.609438 + 0.1*2.302585 = 0.249672 + 0.321888 + 0.230259 = 0.801819
    expected = [0.0, math.log(3), math.log(2), 0.801819]
    np.testing.assert_allclose(entropy(PROBS), expected, atol=1e-6)


def test_entropy_of_one_hot_is_exactly_zero_not_nan():
    out = entropy(np.array([[0.0, 1.0]]))
    assert np.isfinite(out).all()
    assert out[0] == 0.0


def test_two_class_values():
    # p = [0.8, 0.2]: LC = 0.2; margin = 1 - 0.6 = 0.4; entropy = -(0.8 ln0.8 + 0.2 ln0.2)
    #   = 0.8*0.223144 + 0.2*1.609438 = 0.178515 + 0.321888 = 0.500402
    p = np.array([[0.8, 0.2]])
    np.testing.assert_allclose(least_confidence(p), [0.2])
    np.testing.assert_allclose(margin(p), [0.4])
    np.testing.assert_allclose(entropy(p), [0.500402], atol=1e-6)


@pytest.mark.parametrize("name", CRITERIA)
def test_uniform_most_and_one_hot_least_informative(name):
    s = score(name, PROBS)
    assert s[UNIFORM] == pytest.approx(s.max())
    assert s[ONE_HOT] == pytest.approx(0.0)
    assert np.argmin(s) == ONE_HOT
    # The confident-but-unsure row sits strictly between the extremes for every criterion.
    assert s[ONE_HOT] < s[TYPICAL] < s[UNIFORM]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        # LC 2/3 > 0.5 > 0.3 > 0
        ("least_confidence", [UNIFORM, HALF, TYPICAL, ONE_HOT]),
        # margin 1 == 1 > 0.5 > 0: uniform and 50/50 tie, the lower index goes first
        ("margin", [UNIFORM, HALF, TYPICAL, ONE_HOT]),
        # entropy ln3 (1.099) > 0.802 > ln2 (0.693) > 0: spreading mass over a third class beats
        # a clean two-way split, unlike for LC and margin
        ("entropy", [UNIFORM, TYPICAL, HALF, ONE_HOT]),
    ],
)
def test_full_ranking(name, expected):
    assert select_top(score(name, PROBS), 4).tolist() == expected


# --- validation -----------------------------------------------------------------------------


def test_validate_returns_float64_without_copy():
    p = PROBS.copy()
    out = validate_probabilities(p)
    assert out.dtype == np.float64
    assert np.shares_memory(out, p)


def test_validate_accepts_lists_float32_and_empty():
    assert validate_probabilities([[0.25, 0.75]]).dtype == np.float64
    p32 = np.array([[0.1, 0.2, 0.7]], dtype=np.float32)
    assert validate_probabilities(p32).dtype == np.float64
    assert validate_probabilities(np.empty((0, 3))).shape == (0, 3)


def test_validate_accepts_sum_within_tolerance():
    validate_probabilities([[0.5, 0.5009]])
    validate_probabilities([[0.5, 0.4991]])


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ([0.2, 0.8], r"must be 2-D .*got 1-D"),
        (np.ones((2, 2, 2)) / 2, r"must be 2-D .*got 3-D"),
        ([[1.0], [1.0]], r"at least 2 classes, got 1"),
        (np.empty((0, 1)), r"at least 2 classes, got 1"),
        ([[0.5, 0.5], [np.nan, 1.0]], r"row 1 contains NaN or inf"),
        ([[0.5, 0.5], [0.5, 0.5], [np.inf, 0.0]], r"row 2 contains NaN or inf"),
        ([[0.5, 0.5], [1.1, -0.1]], r"row 1 has a negative probability \(-0.1\)"),
        (
            [[0.5, 0.5], [0.5, 0.5], [0.5, 0.5], [0.5, 0.3]],
            r"row 3 sums to 0.8, expected 1 within 0.001",
        ),
        ([[0.6, 0.6]], r"row 0 sums to 1.2, expected 1 within 0.001"),
        ([[0.5, 0.502]], r"row 0 sums to 1.002, expected 1 within 0.001"),
    ],
)
def test_validate_refuses(bad, match):
    with pytest.raises(ValueError, match=match):
        validate_probabilities(bad)


def test_refused_input_reports_first_offending_row():
    p = np.full((5, 2), 0.5)
    p[2] = [0.9, 0.9]
    p[4] = [0.1, 0.1]
    with pytest.raises(ValueError, match=r"^row 2 sums to 1.8"):
        validate_probabilities(p)


@pytest.mark.parametrize("name", ALL_NAMES)
def test_every_strategy_validates(name):
    with pytest.raises(ValueError, match=r"row 0 sums to 2"):
        score(name, [[1.0, 1.0]])
    with pytest.raises(ValueError, match=r"row 0 contains NaN"):
        score(name, [[np.nan, 1.0]])


# --- dispatcher and registry ----------------------------------------------------------------


def test_registry_matches_literal_and_criteria():
    assert set(SCORERS) == set(ALL_NAMES)
    assert set(CRITERIA) == set(ALL_NAMES) - {"random"}
    for name in ALL_NAMES:
        assert SCORERS[name] is getattr(strategies, name)


def test_score_dispatches_to_the_named_function():
    for name in CRITERIA:
        np.testing.assert_array_equal(score(name, PROBS), SCORERS[name](PROBS))
    np.testing.assert_array_equal(score("random", PROBS, seed=7), random(PROBS, seed=7))


def test_score_unknown_name_lists_known_ones():
    with pytest.raises(
        ValueError,
        match=r"unknown strategy 'bald'; "
        r"known strategies: least_confidence, margin, entropy, random",
    ):
        score("bald", PROBS)


def test_seed_is_ignored_by_deterministic_criteria():
    for name in CRITERIA:
        np.testing.assert_array_equal(score(name, PROBS, seed=1), score(name, PROBS, seed=2))


# --- random -----------------------------------------------------------------------------------


def test_random_reproducible_by_seed():
    p = np.full((50, 4), 0.25)
    a = random(p, seed=123)
    b = random(p, seed=123)
    c = random(p, seed=124)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert ((a >= 0) & (a < 1)).all()


def test_random_default_seed_is_fixed():
    p = np.full((10, 2), 0.5)
    np.testing.assert_array_equal(random(p), random(p))
    np.testing.assert_array_equal(random(p), np.random.default_rng(0).random(10))


def test_random_uses_and_advances_a_given_generator():
    p = np.full((10, 2), 0.5)
    rng = np.random.default_rng(5)
    first = random(p, seed=rng)
    second = random(p, seed=rng)
    ref = np.random.default_rng(5)
    np.testing.assert_array_equal(first, ref.random(10))
    np.testing.assert_array_equal(second, ref.random(10))


def test_random_refuses_none_seed():
    with pytest.raises(TypeError, match="seed must be an int or numpy.random.Generator"):
        random(PROBS, seed=None)  # type: ignore[arg-type]


# --- shared contract over every strategy ------------------------------------------------------


@pytest.mark.parametrize("name", ALL_NAMES)
@pytest.mark.parametrize("n", [0, 1, 4, 37])
def test_strategy_contract(name, n):
    rng = np.random.default_rng(n)
    probs = rng.dirichlet(np.ones(5), size=n) if n else np.empty((0, 5))  # [n, 5]
    if n >= 4:
        probs[:4, :3] = PROBS  # include one-hot and uniform rows (with zeros) in the mix
        probs[:4, 3:] = 0.0
    before = probs.copy()

    out = score(name, probs, seed=3)

    assert isinstance(out, np.ndarray)
    assert out.shape == (n,)
    assert out.dtype == np.float64
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(probs, before)  # input untouched
    np.testing.assert_array_equal(out, score(name, probs, seed=3))  # reproducible
    assert (out >= -1e-12).all()  # higher = more informative, bounded below by certainty (0)


@pytest.mark.parametrize("name", ALL_NAMES)
def test_strategy_output_does_not_alias_input(name):
    probs = PROBS.copy()
    out = score(name, probs)
    out[:] = -1.0
    np.testing.assert_array_equal(probs, PROBS)


# --- select_top -------------------------------------------------------------------------------


def brute_force_top(s, k):
    return sorted(range(len(s)), key=lambda i: (-s[i], i))[:k]


def test_select_top_order_descending():
    s = np.array([0.1, 0.9, 0.5, 0.7, 0.3])
    out = select_top(s, 3)
    assert out.dtype == np.int64
    assert out.tolist() == [1, 3, 2]


def test_select_top_ties_go_to_lower_index():
    s = np.array([0.5, 0.9, 0.5, 0.9, 0.5])
    assert select_top(s, 5).tolist() == [1, 3, 0, 2, 4]
    assert select_top(s, 1).tolist() == [1]


def test_select_top_ties_straddling_the_boundary():
    # Eight tied 1.0s at indices 2..9 (after a 5.0 and a 0.0); k=4 needs the 5.0 plus the three
    # lowest-index tied ones, not whichever three the partition happened to put on top.
    s = np.array([5.0, 0.0] + [1.0] * 8 + [0.0] * 5)
    assert select_top(s, 4).tolist() == [0, 2, 3, 4]
    # All equal: the answer is simply the first k indices.
    flat = np.zeros(1000)
    assert select_top(flat, 10).tolist() == list(range(10))
    # Ties sitting at the end of the array with the partition boundary among them.
    tail = np.concatenate([np.arange(100.0), np.full(50, 200.0), np.full(50, 150.0)])
    assert select_top(tail, 60).tolist() == list(range(100, 150)) + list(range(150, 160))


def test_select_top_k_larger_than_n_returns_all():
    s = np.array([0.2, 0.8, 0.2])
    assert select_top(s, 10).tolist() == [1, 0, 2]
    assert select_top(s, 3).tolist() == [1, 0, 2]


def test_select_top_empty_results():
    outs = (select_top(np.array([0.3, 0.1]), 0), select_top(np.array([]), 5), select_top([], 0))
    for out in outs:
        assert out.shape == (0,)
        assert out.dtype == np.int64


def test_select_top_negative_k_raises():
    with pytest.raises(ValueError, match=r"k must be >= 0, got -1"):
        select_top(np.array([0.1, 0.2]), -1)


def test_select_top_nan_raises():
    with pytest.raises(ValueError, match=r"scores contain NaN \(first at index 2\)"):
        select_top(np.array([0.1, 0.2, np.nan, np.nan]), 1)


def test_select_top_not_1d_raises():
    with pytest.raises(ValueError, match=r"scores must be 1-D"):
        select_top(np.zeros((2, 2)), 1)


def test_select_top_does_not_mutate_input():
    s = np.array([3.0, 1.0, 2.0, 1.0, 5.0, 1.0])
    before = s.copy()
    select_top(s, 2)
    select_top(s, 6)
    np.testing.assert_array_equal(s, before)


def test_select_top_handles_infinities_and_ints():
    assert select_top(np.array([1.0, np.inf, -np.inf, np.inf]), 3).tolist() == [1, 3, 0]
    assert select_top(np.array([0, 3, 3, 1], dtype=np.uint8), 2).tolist() == [1, 2]


@pytest.mark.parametrize("seed", range(8))
def test_select_top_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 300))
    s = rng.integers(0, 6, size=n).astype(np.float64)  # many ties
    for k in {0, 1, 2, n // 3, n // 2, n - 1, n, n + 5}:
        assert select_top(s, k).tolist() == brute_force_top(s.tolist(), k), (n, k)
    f = rng.random(n)  # continuous, distinct with probability 1
    for k in (1, n // 4, n):
        assert select_top(f, k).tolist() == brute_force_top(f.tolist(), k)


# --- import isolation -------------------------------------------------------------------------


def test_import_pulls_in_no_tensorflow_or_prefect():
    code = (
        "import sys, activeflow.core.score.strategies; "
        "bad = [m for m in ('prefect', 'tensorflow') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
