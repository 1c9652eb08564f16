"""Tests for the strategy library in activeflow.core.score.strategies: ratio, BALD, core-set, BADGE,
margin-diverse and class-balanced selection behind one ``select`` interface.

Hand-built cases where the right pick is known, brute-force references for the greedy and
implicit-distance algorithms, and one contract suite that every strategy in SELECTORS runs.
"""

from __future__ import annotations

import math
from typing import get_args

import numpy as np
import pytest

from activeflow.core.score import strategies
from activeflow.core.score.strategies import (
    BATCH_AWARE,
    REQUIREMENTS,
    SCORE_BASED,
    SELECTORS,
    PoolOutputs,
    SelectorName,
    StrategyName,
    bald,
    class_quotas,
    entropy,
    gradient_sq_distances,
    least_confidence,
    margin,
    random,
    ratio,
    select,
    select_top,
    split_budget,
)

ALL_SELECTORS = sorted(SELECTORS)

# Rows: one-hot, uniform over 3, two-way tie, a typical confident prediction.
PROBS = np.array(
    [
        [1.0, 0.0, 0.0],
        [1 / 3, 1 / 3, 1 / 3],
        [0.5, 0.5, 0.0],
        [0.7, 0.2, 0.1],
    ]
)  # [4, 3]


def blobs(centres, per_blob, spread, seed=0):
    """Points [len(centres) * per_blob, d] around each centre, blob b in rows b*per_blob..."""
    rng = np.random.default_rng(seed)
    centres = np.asarray(centres, dtype=np.float64)
    pts = [c + spread * rng.standard_normal((per_blob, centres.shape[1])) for c in centres]
    return np.concatenate(pts)


def full_outputs(n, c=4, d=5, t=3, m=4, seed=0):
    """PoolOutputs with every optional field set, so every strategy can run on it."""
    rng = np.random.default_rng(seed)
    return PoolOutputs(
        probs=rng.dirichlet(np.ones(c), size=n) if n else np.empty((0, c)),
        embeddings=rng.standard_normal((n, d)),
        mc_probs=rng.dirichlet(np.ones(c), size=(t, n)) if n else np.empty((t, 0, c)),
        labelled_embeddings=rng.standard_normal((m, d)),
        class_errors=rng.uniform(0.05, 0.5, size=c),
    )


def only_required(name, full):
    """``full`` keeping probs and just the fields ``name`` requires."""
    kept = {f: getattr(full, f) for f in REQUIREMENTS[name]}
    return PoolOutputs(probs=full.probs, **kept)


# --- ratio --------------------------------------------------------------------------------------


def test_ratio_values():
    # top2 / top1: 0/1 = 0; (1/3)/(1/3) = 1; 0.5/0.5 = 1; 0.2/0.7 = 0.285714
    np.testing.assert_allclose(ratio(PROBS), [0.0, 1.0, 1.0, 2 / 7])


def test_ratio_two_classes_and_refusal():
    np.testing.assert_allclose(ratio([[0.8, 0.2], [0.4, 0.6]]), [0.25, 2 / 3])
    with pytest.raises(ValueError, match=r"row 0 sums to 2"):
        ratio([[1.0, 1.0]])


def test_ratio_selection_order():
    # ratio 1 == 1 > 0.286 > 0: uniform and 50/50 tie, the lower index goes first
    assert select("ratio", PoolOutputs(PROBS), 4).tolist() == [1, 2, 3, 0]


# --- BALD ---------------------------------------------------------------------------------------

# Two passes over three samples: 0 = passes disagree completely, 1 = both passes uniform
# (aleatoric noise, no disagreement), 2 = passes lean opposite ways.
MC = np.array(
    [
        [[1.0, 0.0], [0.5, 0.5], [0.9, 0.1]],
        [[0.0, 1.0], [0.5, 0.5], [0.1, 0.9]],
    ]
)  # [T=2, n=3, C=2]


def test_bald_values():
    # 0: H(mean) = H(.5,.5) = ln 2, mean H = (0 + 0)/2 = 0          -> ln 2
    # 1: H(mean) = ln 2, mean H = (ln 2 + ln 2)/2 = ln 2             -> 0
    # 2: H(mean) = ln 2, mean H = H(.9,.1) = .9*0.105361 + .1*2.302585 = 0.325083
    #                                                                -> 0.693147 - 0.325083
    np.testing.assert_allclose(bald(MC), [math.log(2), 0.0, 0.368064], atol=1e-6)


def test_bald_prefers_disagreement_over_aleatoric_noise():
    outputs = PoolOutputs(probs=MC.mean(axis=0), mc_probs=MC)
    # The entropy of the mean cannot tell samples 0 and 1 apart (both ln 2) ...
    np.testing.assert_allclose(entropy(outputs.probs)[:2], [math.log(2), math.log(2)])
    # ... BALD ranks the disagreeing passes first and the consistent uniform ones last.
    assert select("bald", outputs, 3).tolist() == [0, 2, 1]


def test_bald_of_identical_passes_is_zero():
    p = np.random.default_rng(0).dirichlet(np.ones(4), size=6)  # [6, 4]
    np.testing.assert_allclose(bald(np.stack([p, p, p])), 0.0, atol=1e-12)
    np.testing.assert_allclose(bald(p[None]), 0.0, atol=1e-12)  # T = 1


def test_bald_one_hot_passes_are_finite():
    out = bald(np.array([[[1.0, 0.0]], [[1.0, 0.0]]]))
    assert np.isfinite(out).all() and out[0] == 0.0


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (np.full((2, 2), 0.5), r"mc_probs must be 3-D .*got 2-D"),
        (np.empty((0, 3, 2)), r"at least one forward pass, got T = 0"),
        (np.array([[[0.5, 0.5]], [[0.9, 0.9]]]), r"mc_probs pass 1: row 0 sums to 1.8"),
        (np.array([[[np.nan, 1.0]]]), r"mc_probs pass 0: row 0 contains NaN"),
    ],
)
def test_bald_refuses(bad, match):
    with pytest.raises(ValueError, match=match):
        bald(bad)


# --- core-set (k-center greedy) -----------------------------------------------------------------


def brute_kcenter(x, k, first=None, labelled=None):
    """Textbook k-center greedy in float64 with the full distance matrix."""
    d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)  # [n, n]
    if labelled is not None:
        min_d = ((x[:, None, :] - labelled[None, :, :]) ** 2).sum(-1).min(1)
        first = int(np.argmax(min_d))
    else:
        min_d = np.full(len(x), np.inf)
    picks = [first]
    for _ in range(k - 1):
        min_d = np.minimum(min_d, d[picks[-1]])
        min_d[picks] = -np.inf
        picks.append(int(np.argmax(min_d)))
    return picks


def test_coreset_picks_the_farthest_point_first():
    pool = np.array([[1.0, 0.0], [5.0, 0.0], [2.0, 0.0], [0.0, 3.0]])
    outputs = PoolOutputs(
        probs=np.full((4, 2), 0.5), embeddings=pool, labelled_embeddings=np.zeros((1, 2))
    )
    # Squared distances to the labelled origin: 1, 25, 4, 9 -> index 1 first. Then, to the
    # nearer of {origin, (5,0)}: 1, -, 4, 9 -> index 3.
    assert select("coreset", outputs, 1).tolist() == [1]
    assert select("coreset", outputs, 2).tolist() == [1, 3]


def test_coreset_k2_covers_both_far_clusters():
    near = blobs([[0.0, 0.0]], 6, 0.1, seed=1)
    far = blobs([[10.0, 0.0], [-10.0, 0.0]], 5, 0.1, seed=2)  # rows 0-4 right, 5-9 left
    pool = np.concatenate([near, far])  # [16, 2]: 0-5 near the labelled point, 6-15 far
    outputs = PoolOutputs(
        probs=np.full((16, 2), 0.5), embeddings=pool, labelled_embeddings=np.zeros((3, 2))
    )
    picks = select("coreset", outputs, 2)
    assert sorted((i - 6) // 5 for i in picks) == [0, 1]  # one right, one left


def test_coreset_matches_brute_force_with_labelled():
    rng = np.random.default_rng(3)
    x, lab = rng.standard_normal((120, 6)), rng.standard_normal((7, 6))
    outputs = PoolOutputs(probs=np.full((120, 2), 0.5), embeddings=x, labelled_embeddings=lab)
    assert select("coreset", outputs, 15).tolist() == brute_kcenter(x, 15, labelled=lab)


def test_coreset_labelled_distances_are_tiled(monkeypatch):
    # A tiny tile forces many pool x labelled blocks; the picks must not change.
    rng = np.random.default_rng(4)
    x, lab = rng.standard_normal((50, 3)), rng.standard_normal((23, 3))
    outputs = PoolOutputs(probs=np.full((50, 2), 0.5), embeddings=x, labelled_embeddings=lab)
    expected = select("coreset", outputs, 10).tolist()
    monkeypatch.setattr(strategies, "_TILE", 7)
    assert select("coreset", outputs, 10).tolist() == expected == brute_kcenter(x, 10, labelled=lab)


def test_coreset_without_labelled_is_seeded_then_greedy():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((80, 4))
    outputs = PoolOutputs(probs=np.full((80, 2), 0.5), embeddings=x)
    a = select("coreset", outputs, 12, seed=7)
    np.testing.assert_array_equal(a, select("coreset", outputs, 12, seed=7))
    assert a.tolist() == brute_kcenter(x, 12, first=int(a[0]))
    firsts = {int(select("coreset", outputs, 1, seed=s)[0]) for s in range(10)}
    assert len(firsts) > 1  # the seed does decide the random first centre


def test_coreset_empty_labelled_set_means_random_start():
    x = np.random.default_rng(6).standard_normal((30, 3))
    with_empty = PoolOutputs(
        probs=np.full((30, 2), 0.5), embeddings=x, labelled_embeddings=np.empty((0, 3))
    )
    without = PoolOutputs(probs=np.full((30, 2), 0.5), embeddings=x)
    np.testing.assert_array_equal(
        select("coreset", with_empty, 5, seed=2), select("coreset", without, 5, seed=2)
    )


def test_coreset_duplicates_still_give_distinct_picks():
    outputs = PoolOutputs(
        probs=np.full((6, 2), 0.5), embeddings=np.ones((6, 3)), labelled_embeddings=np.ones((2, 3))
    )
    # Every distance is 0: ties go to the lowest index, and no index repeats.
    assert select("coreset", outputs, 6).tolist() == [0, 1, 2, 3, 4, 5]


# --- BADGE --------------------------------------------------------------------------------------


def explicit_gradients(probs, h):
    """g_i = (p_i - onehot(argmax p_i)) outer h_i, materialised: [n, C * d]."""
    a = probs - np.eye(probs.shape[1])[probs.argmax(1)]  # [n, C]
    return (a[:, :, None] * h[:, None, :]).reshape(len(probs), -1)


def test_badge_implicit_distances_equal_explicit():
    rng = np.random.default_rng(8)
    probs, h = rng.dirichlet(np.ones(3), size=7), rng.standard_normal((7, 4))
    g = explicit_gradients(probs, h)  # [7, 12]
    for i in range(7):
        expected = ((g - g[i]) ** 2).sum(axis=1)
        np.testing.assert_allclose(
            gradient_sq_distances(probs, h, i), expected, rtol=1e-4, atol=1e-5
        )


def test_badge_first_pick_is_the_largest_gradient():
    rng = np.random.default_rng(9)
    probs, h = rng.dirichlet(np.ones(4), size=40), rng.standard_normal((40, 6))
    norms = np.linalg.norm(explicit_gradients(probs, h), axis=1)
    outputs = PoolOutputs(probs=probs, embeddings=h)
    for seed in range(3):
        assert select("badge", outputs, 5, seed=seed)[0] == np.argmax(norms)


def test_badge_prefers_uncertain_samples():
    # a = p - onehot(argmax p), h = (1, 1, 1) so ||h||^2 = 3:
    #   [1, 0] -> a = 0, ||g||^2 = 0;  [.5, .5] -> a = (-.5, .5), ||g||^2 = 0.5 * 3 = 1.5;
    #   [0, 1] -> a = 0;               [.9, .1] -> a = (-.1, .1), ||g||^2 = 0.02 * 3 = 0.06.
    probs = np.array([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0], [0.9, 0.1]])
    outputs = PoolOutputs(probs=probs, embeddings=np.ones((4, 3)))
    assert select("badge", outputs, 1).tolist() == [1]
    # Confident rows still get picked once the budget exceeds the informative ones, distinctly.
    assert sorted(select("badge", outputs, 4).tolist()) == [0, 1, 2, 3]


def test_badge_spans_separated_gradient_clusters():
    # Equal uncertainty everywhere, embeddings in 3 far-apart blobs: the gradient embeddings form
    # 3 far-apart clusters, and D^2 sampling puts the 3 picks in 3 different ones.
    h = blobs([[100.0, 0.0], [0.0, 100.0], [-100.0, -100.0]], 10, 0.01, seed=10)  # [30, 2]
    probs = np.tile([0.6, 0.4], (30, 1))
    outputs = PoolOutputs(probs=probs, embeddings=h)
    for seed in range(5):
        picks = select("badge", outputs, 3, seed=seed)
        assert sorted(i // 10 for i in picks) == [0, 1, 2], picks


def test_badge_all_zero_gradients_fall_back_to_lowest_indices():
    probs = np.tile([1.0, 0.0], (5, 1))  # certain everywhere: every gradient is 0
    outputs = PoolOutputs(probs=probs, embeddings=np.random.default_rng(0).random((5, 2)))
    assert select("badge", outputs, 3, seed=4).tolist() == [0, 1, 2]


def test_badge_reproducible_and_seed_dependent():
    outputs = full_outputs(200, seed=11)
    runs = {tuple(select("badge", outputs, 20, seed=s).tolist()) for s in range(4)}
    np.testing.assert_array_equal(
        select("badge", outputs, 20, seed=1), select("badge", outputs, 20, seed=1)
    )
    assert len(runs) > 1


# --- margin-diverse -----------------------------------------------------------------------------


def three_blob_margin_case():
    """30 samples in 3 blobs of 10; every blob-0 sample is more uncertain (by margin) than any
    other, so plain margin takes its whole batch from blob 0."""
    h = blobs([[0.0, 0.0], [50.0, 0.0], [0.0, 50.0]], 10, 0.5, seed=12)  # [30, 2]
    rng = np.random.default_rng(13)
    top = np.concatenate(
        [rng.uniform(0.50, 0.55, 10), rng.uniform(0.60, 0.70, 10), rng.uniform(0.60, 0.70, 10)]
    )
    probs = np.stack([top, 1 - top], axis=1)  # [30, 2]; margin score = 1 - |2 top - 1|
    return PoolOutputs(probs=probs, embeddings=h)


def test_margin_diverse_spans_all_clusters_where_margin_does_not():
    outputs = three_blob_margin_case()
    scores = margin(outputs.probs)
    assert {i // 10 for i in select("margin", outputs, 3)} == {0}
    for seed in range(5):
        picks = select("margin-diverse", outputs, 3, seed=seed)
        assert sorted(i // 10 for i in picks) == [0, 1, 2], picks
        # Within each blob, the pick is its highest-margin member; best margin first overall.
        for i in picks:
            blob = slice(i // 10 * 10, i // 10 * 10 + 10)
            assert scores[i] == scores[blob].max()
        assert list(scores[picks]) == sorted(scores[picks], reverse=True)


def test_margin_diverse_considers_only_the_top_m():
    outputs = three_blob_margin_case()
    # k = 1: M = 10 * 1 = 10 candidates, one cluster -> the single best margin.
    assert select("margin-diverse", outputs, 1).tolist() == select("margin", outputs, 1).tolist()
    # diverse_factor 1: M = k, so no clustering at all, just the top k by margin.
    picks = SELECTORS["margin-diverse"](outputs, 3, np.random.default_rng(0), diverse_factor=1)
    assert picks.tolist() == select("margin", outputs, 3).tolist()


def test_margin_diverse_fills_from_margin_when_clusters_collapse():
    # Identical embeddings: k-means ends with one non-empty cluster, so the rest of the batch
    # is the next-highest margins; the result is the plain top-k by margin.
    probs = np.random.default_rng(14).dirichlet(np.ones(3), size=40)
    outputs = PoolOutputs(probs=probs, embeddings=np.ones((40, 4)))
    assert (
        select("margin-diverse", outputs, 4).tolist() == select("margin", outputs, 4).tolist()
    )


# --- class-balanced -----------------------------------------------------------------------------


def test_class_quotas_follow_errors():
    # 8 * [0.5, 0.25, 0.25] / 1.0 = [4, 2, 2] exactly
    assert class_quotas([0.5, 0.25, 0.25], [10, 10, 10], 8).tolist() == [4, 2, 2]
    # 4 * [0.3, 0.1] / 0.4 = [3, 1]
    assert class_quotas([0.3, 0.1], [50, 50], 4).tolist() == [3, 1]


def test_class_quotas_largest_remainder_rounding():
    # 2 * [1/3, 1/3, 1/3] = 0.667 each: floors 0, the two extra go to the lowest indices.
    assert class_quotas([0.2, 0.2, 0.2], [5, 5, 5], 2).tolist() == [1, 1, 0]
    # 10 * [0.5, 0.3, 0.2] / 1.0 = [5, 3, 2]; 7 * ... = [3.5, 2.1, 1.4] -> floors [3, 2, 1],
    # one extra to the largest fraction (0.5) -> [4, 2, 1]
    assert class_quotas([0.5, 0.3, 0.2], [20, 20, 20], 7).tolist() == [4, 2, 1]


def test_class_quotas_redistribute_when_a_class_lacks_samples():
    # Class 0 would get 4 but has only 1 sample; its 3 spare go to classes 1 and 2 in proportion
    # to their errors (equal): 7 over [0.25, 0.25] = 3.5 each -> [4, 3] (tie to the lower index).
    assert class_quotas([0.5, 0.25, 0.25], [1, 10, 10], 8).tolist() == [1, 4, 3]
    # Redistribution in proportion: spare 4 from class 0 over errors [0.3, 0.1] -> [3, 1].
    assert class_quotas([0.6, 0.3, 0.1], [2, 50, 50], 10).tolist() == [2, 6, 2]


def test_class_quotas_zero_error_classes_only_when_needed():
    assert class_quotas([0.5, 0.5, 0.0], [10, 10, 10], 6).tolist() == [3, 3, 0]
    # Classes 0 and 1 can take only 4 in all: the zero-error class fills the remaining 2.
    assert class_quotas([0.5, 0.5, 0.0], [2, 2, 10], 6).tolist() == [2, 2, 2]
    # No errors anywhere: spread evenly.
    assert class_quotas([0.0, 0.0, 0.0], [10, 10, 10], 6).tolist() == [2, 2, 2]


def test_class_quotas_budget_larger_than_pool():
    assert class_quotas([0.5, 0.25, 0.25], [1, 2, 3], 100).tolist() == [1, 2, 3]
    assert class_quotas([0.5, 0.5], [0, 0], 5).tolist() == [0, 0]
    assert class_quotas([0.5, 0.5], [3, 3], 0).tolist() == [0, 0]


@pytest.mark.parametrize("seed", range(20))
def test_class_quotas_always_sum_to_min_k_n(seed):
    rng = np.random.default_rng(seed)
    c = int(rng.integers(1, 8))
    errors = rng.uniform(0, 1, c) * (rng.random(c) < 0.7)  # some exact zeros
    available = rng.integers(0, 12, c)
    k = int(rng.integers(0, 60))
    q = class_quotas(errors, available, k)
    assert q.dtype == np.int64
    assert q.sum() == min(k, available.sum())
    assert (q >= 0).all() and (q <= available).all()
    if available[errors > 0].sum() >= min(k, available.sum()):
        assert q[errors == 0].sum() == 0  # zero-error classes untouched while others have room


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (([0.5, 0.5], [1, 1], -1), r"k must be >= 0, got -1"),
        (([0.5, 0.5], [1, 1, 1], 2), r"one entry per class"),
        (([0.5, -0.1], [1, 1], 2), r"finite and >= 0"),
        (([0.5, np.nan], [1, 1], 2), r"finite and >= 0"),
        (([0.5, 0.5], [1.5, 1.0], 2), r"integers >= 0"),
        (([0.5, 0.5], [1, -1], 2), r"integers >= 0"),
    ],
)
def test_class_quotas_refuses(args, match):
    with pytest.raises(ValueError, match=match):
        class_quotas(*args)


def test_class_balanced_selection_meets_quotas_with_best_margins():
    rng = np.random.default_rng(15)
    probs = rng.dirichlet(np.full(3, 0.7), size=300)  # [300, 3]
    errors = np.array([0.5, 0.25, 0.25])
    outputs = PoolOutputs(probs=probs, class_errors=errors)
    picks = select("class-balanced", outputs, 8)
    predicted, scores = probs.argmax(1), margin(probs)
    assert np.bincount(predicted[picks], minlength=3).tolist() == [4, 2, 2]
    for c in range(3):
        members = np.flatnonzero(predicted == c)
        chosen_c = picks[predicted[picks] == c]
        assert set(chosen_c) == set(members[select_top(scores[members], len(chosen_c))])
    assert list(scores[picks]) == sorted(scores[picks], reverse=True)


def test_class_balanced_redistributes_when_a_predicted_class_is_rare():
    # Only one sample is predicted class 0, whose quota would be 4.
    probs = np.array([[0.9, 0.05, 0.05]] + [[0.1, 0.8, 0.1]] * 10 + [[0.1, 0.1, 0.8]] * 10)
    outputs = PoolOutputs(probs=probs, class_errors=[0.5, 0.25, 0.25])
    picks = select("class-balanced", outputs, 8)
    assert np.bincount(probs.argmax(1)[picks], minlength=3).tolist() == [1, 4, 3]


# --- split_budget -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("k", "fraction", "expected"),
    [
        (100, 0.1, (90, 10)),
        (10, 0.05, (9, 1)),  # 0.5 rounds up
        (10, 0.1, (9, 1)),
        (5, 0.1, (4, 1)),  # 0.5 rounds up
        (2, 0.1, (1, 1)),  # 0.2 rounds to 0, but a fraction > 0 keeps at least one random
        (1, 0.1, (1, 0)),  # a batch of one stays the strategy's
        (3, 0.9, (1, 2)),  # 2.7 rounds to 3, but the strategy keeps at least one
        (0, 0.1, (0, 0)),
        (10, 0.0, (10, 0)),
        (10, 1.0, (0, 10)),
    ],
)
def test_split_budget(k, fraction, expected):
    assert split_budget(k, fraction) == expected
    assert sum(split_budget(k, fraction)) == k


@pytest.mark.parametrize(
    ("k", "fraction", "match"),
    [(-1, 0.1, r"k must be >= 0"), (10, 1.5, r"in \[0, 1\]"), (10, -0.1, r"in \[0, 1\]")],
)
def test_split_budget_refuses(k, fraction, match):
    with pytest.raises(ValueError, match=match):
        split_budget(k, fraction)


# --- PoolOutputs --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"probs": [[1.0, 1.0]]}, r"row 0 sums to 2"),
        ({"probs": [0.5, 0.5]}, r"probs must be 2-D"),
        (
            {"probs": np.full((3, 2), 0.5), "embeddings": np.zeros((4, 8))},
            r"embeddings has 4 rows \(shape \(4, 8\)\) but probs has 3 \(shape \(3, 2\)\)",
        ),
        ({"probs": np.full((3, 2), 0.5), "embeddings": np.zeros(3)}, r"embeddings must be 2-D"),
        (
            {"probs": np.full((2, 2), 0.5), "embeddings": [[0.0, np.nan], [0.0, 0.0]]},
            r"embeddings contains NaN or inf",
        ),
        (
            {"probs": np.full((3, 2), 0.5), "mc_probs": np.full((5, 3, 3), 1 / 3)},
            r"mc_probs has shape \(5, 3, 3\), expected \[T, 3, 2\] to match probs \(3, 2\)",
        ),
        ({"probs": np.full((3, 2), 0.5), "mc_probs": np.full((3, 2), 0.5)}, r"must be 3-D"),
        (
            {
                "probs": np.full((3, 2), 0.5),
                "embeddings": np.zeros((3, 4)),
                "labelled_embeddings": np.zeros((2, 5)),
            },
            r"labelled_embeddings has d = 5 \(shape \(2, 5\)\) but embeddings has d = 4",
        ),
        (
            {"probs": np.full((3, 2), 0.5), "labelled_embeddings": np.zeros((2, 5))},
            r"labelled_embeddings given without embeddings",
        ),
        (
            {"probs": np.full((3, 2), 0.5), "class_errors": [0.1, 0.2, 0.3]},
            r"class_errors must have shape \(2,\), one error rate per class of probs \(3, 2\), "
            r"got shape \(3,\)",
        ),
        (
            {"probs": np.full((3, 2), 0.5), "class_errors": [0.1, 1.2]},
            r"class_errors must be error rates in \[0, 1\]",
        ),
    ],
)
def test_pool_outputs_refuses(fields, match):
    with pytest.raises(ValueError, match=match):
        PoolOutputs(**fields)


def test_pool_outputs_stores_read_only_views_and_leaves_caller_arrays_alone():
    probs = np.full((3, 2), 0.5)
    emb = np.zeros((3, 4), dtype=np.float32)
    outputs = PoolOutputs(probs=probs, embeddings=emb)
    assert np.shares_memory(outputs.probs, probs) and np.shares_memory(outputs.embeddings, emb)
    assert not outputs.probs.flags.writeable and not outputs.embeddings.flags.writeable
    assert probs.flags.writeable and emb.flags.writeable
    assert outputs.embeddings.dtype == np.float32
    assert PoolOutputs(probs, embeddings=np.zeros((3, 4))).embeddings.dtype == np.float32
    assert (outputs.n, outputs.num_classes) == (3, 2)
    with pytest.raises(AttributeError):
        outputs.probs = probs  # type: ignore[misc]


# --- registry and dispatcher --------------------------------------------------------------------


def test_registries_agree():
    names = set(get_args(SelectorName))
    assert set(SELECTORS) == names == set(REQUIREMENTS)
    assert set(SCORE_BASED) | set(BATCH_AWARE) == names
    assert not set(SCORE_BASED) & set(BATCH_AWARE)
    assert set(get_args(StrategyName)) <= names  # every stored-score strategy is selectable


@pytest.mark.parametrize(
    ("name", "scorer"),
    [
        ("least_confidence", least_confidence),
        ("margin", margin),
        ("entropy", entropy),
        ("ratio", ratio),
    ],
)
def test_score_based_selection_is_top_k_of_the_score(name, scorer):
    outputs = full_outputs(60, seed=16)
    np.testing.assert_array_equal(
        select(name, outputs, 9), select_top(scorer(outputs.probs), 9)
    )


def test_random_and_bald_selection_are_top_k_of_their_scores():
    outputs = full_outputs(60, seed=17)
    expected = select_top(random(outputs.probs, seed=np.random.default_rng(5)), 9)
    np.testing.assert_array_equal(select("random", outputs, 9, seed=5), expected)
    np.testing.assert_array_equal(
        select("bald", outputs, 9), select_top(bald(outputs.mc_probs), 9)
    )


def test_select_unknown_name_lists_known_ones():
    with pytest.raises(ValueError, match=r"unknown strategy 'kmeans'; known strategies: .*badge"):
        select("kmeans", full_outputs(5), 2)


def test_select_refuses_bad_arguments():
    outputs = full_outputs(5)
    with pytest.raises(ValueError, match=r"k must be >= 0, got -2"):
        select("margin", outputs, -2)
    with pytest.raises(TypeError, match=r"seed must be an int or numpy.random.Generator"):
        select("coreset", outputs, 2, seed=None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"outputs must be a PoolOutputs"):
        select("margin", outputs.probs, 2)  # type: ignore[arg-type]


def test_select_accepts_and_advances_a_generator():
    outputs = full_outputs(50)
    rng, ref = np.random.default_rng(3), np.random.default_rng(3)
    first, second = select("random", outputs, 5, seed=rng), select("random", outputs, 5, seed=rng)
    np.testing.assert_array_equal(first, select("random", outputs, 5, seed=ref))
    np.testing.assert_array_equal(second, select("random", outputs, 5, seed=ref))


# --- shared contract over every selector --------------------------------------------------------


@pytest.mark.parametrize("name", ALL_SELECTORS)
@pytest.mark.parametrize("n", [0, 1, 7, 37])
def test_selector_contract(name, n):
    outputs = full_outputs(n, seed=n)
    before = {f: np.array(getattr(outputs, f)) for f in ("probs", "embeddings", "mc_probs")}
    for k in (0, 1, 5, n, n + 3):
        out = select(name, outputs, k, seed=3)
        assert isinstance(out, np.ndarray) and out.dtype == np.int64
        assert out.shape == (min(k, n),)
        assert len(set(out.tolist())) == out.shape[0]  # distinct
        assert ((out >= 0) & (out < n)).all()
        np.testing.assert_array_equal(out, select(name, outputs, k, seed=3))  # reproducible
    for f, value in before.items():
        np.testing.assert_array_equal(getattr(outputs, f), value)  # inputs untouched


@pytest.mark.parametrize("name", ALL_SELECTORS)
def test_selector_k_larger_than_n_returns_everything(name):
    out = select(name, full_outputs(12, seed=1), 50)
    assert sorted(out.tolist()) == list(range(12))


@pytest.mark.parametrize("name", ALL_SELECTORS)
def test_selector_needs_only_its_required_fields(name):
    outputs = only_required(name, full_outputs(25, seed=2))
    out = select(name, outputs, 6, seed=1)
    assert out.shape == (6,)


@pytest.mark.parametrize(
    ("name", "field"), [(name, f) for name in ALL_SELECTORS for f in sorted(REQUIREMENTS[name])]
)
def test_selector_missing_field_is_named(name, field):
    full = full_outputs(10)
    kept = {f: getattr(full, f) for f in REQUIREMENTS[name] if f != field}
    with pytest.raises(ValueError, match=rf"^{name} needs {field}: "):
        select(name, PoolOutputs(probs=full.probs, **kept), 3)
    with pytest.raises(ValueError, match=rf"^{name} needs {field}: "):
        SELECTORS[name](PoolOutputs(probs=full.probs, **kept), 3, np.random.default_rng(0))


def test_bald_missing_field_message():
    with pytest.raises(
        ValueError, match=r"bald needs mc_probs: T stochastic forward passes with dropout on"
    ):
        select("bald", PoolOutputs(PROBS), 2)


@pytest.mark.parametrize("name", ["random", "coreset", "badge", "margin-diverse"])
def test_seeded_selectors_depend_on_the_seed(name):
    outputs = full_outputs(300, seed=18)
    outputs = PoolOutputs(probs=outputs.probs, embeddings=outputs.embeddings)  # no labelled set
    runs = {tuple(select(name, outputs, 10, seed=s).tolist()) for s in range(5)}
    assert len(runs) > 1
