"""Query strategies: informativeness scores over class probabilities, and top-k selection.

Every scorer maps probs [n, C] -> scores [n] with higher = query first. Pure numpy: this module
must stay importable without TensorFlow or Prefect.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike
from scipy.special import xlogy

__all__ = [
    "CRITERIA",
    "SCORERS",
    "StrategyName",
    "entropy",
    "least_confidence",
    "margin",
    "random",
    "score",
    "select_top",
    "validate_probabilities",
]

StrategyName = Literal["least_confidence", "margin", "entropy", "random"]

# Softmax outputs in float32 drift from 1 by ~1e-7 per class; 1e-3 tolerates that and any
# rounding on storage, yet still catches logits or unnormalised scores passed by mistake.
_SUM_TOL = 1e-3


def _first_bad_row(bad_rows: np.ndarray) -> int:
    # bad_rows: [n] bool, known to hold at least one True
    return int(np.flatnonzero(bad_rows)[0])


def validate_probabilities(probs: ArrayLike) -> np.ndarray:
    """Return ``probs`` as float64 [n, C] (no copy if it already is), or raise ValueError.

    Rules: 2-D, at least 2 classes, finite, non-negative, each row sums to 1 within 1e-3.
    n == 0 is allowed.
    """
    p = np.asarray(probs, dtype=np.float64)  # [n, C]; a view when already float64
    if p.ndim != 2:
        raise ValueError(
            f"probs must be 2-D [n_samples, n_classes], got {p.ndim}-D with shape {p.shape}"
        )
    n, c = p.shape
    if c < 2:
        raise ValueError(f"probs must have at least 2 classes, got {c}")
    if n == 0:
        return p

    finite = np.isfinite(p).all(axis=1)  # [n]
    if not finite.all():
        i = _first_bad_row(~finite)
        raise ValueError(f"row {i} contains NaN or inf: {p[i].tolist()}")

    negative = (p < 0).any(axis=1)  # [n]
    if negative.any():
        i = _first_bad_row(negative)
        raise ValueError(f"row {i} has a negative probability ({p[i].min():.6g})")

    sums = p.sum(axis=1)  # [n]
    off = np.abs(sums - 1.0) > _SUM_TOL  # [n]
    if off.any():
        i = _first_bad_row(off)
        raise ValueError(f"row {i} sums to {sums[i]:.6g}, expected 1 within {_SUM_TOL:g}")
    return p


def least_confidence(probs: ArrayLike) -> np.ndarray:
    """``1 - max_c p``: how far the most likely class is from certainty."""
    p = validate_probabilities(probs)  # [n, C]
    return 1.0 - p.max(axis=1)  # [n]


def margin(probs: ArrayLike) -> np.ndarray:
    """``1 - (p_top1 - p_top2)``: a small gap between the two best classes means confusion."""
    p = validate_probabilities(probs)  # [n, C]
    c = p.shape[1]
    # Partial sort per row: only the two largest need to be in place, not all C.
    top2 = np.partition(p, c - 2, axis=1)[:, -2:]  # [n, 2]; [:, 1] is max, [:, 0] the runner-up
    return 1.0 - (top2[:, 1] - top2[:, 0])  # [n]


def entropy(probs: ArrayLike) -> np.ndarray:
    """Shannon entropy in nats, ``-sum_c p ln p``, with 0 * ln 0 = 0."""
    p = validate_probabilities(probs)  # [n, C]
    # xlogy(0, 0) == 0, where p * np.log(p) would give nan.
    return -xlogy(p, p).sum(axis=1)  # [n]


def random(probs: ArrayLike, seed: int | np.random.Generator = 0) -> np.ndarray:
    """One uniform [0, 1) score per row: the passive-learning baseline.

    ``probs`` is validated like the other strategies so that all four share one contract.
    An int seed makes the result reproducible; a Generator is used (and advanced) as given.
    """
    p = validate_probabilities(probs)  # [n, C]
    if seed is None or isinstance(seed, bool):
        # default_rng(None) would draw OS entropy and silently make the run unreproducible.
        raise TypeError(f"seed must be an int or numpy.random.Generator, got {seed!r}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    return rng.random(p.shape[0])  # [n]


SCORERS: dict[str, Callable[..., np.ndarray]] = {
    "least_confidence": least_confidence,
    "margin": margin,
    "entropy": entropy,
    "random": random,
}

# Deterministic functions of probs, so worth storing per sample; random is not.
CRITERIA = ("least_confidence", "margin", "entropy")


def score(
    name: str, probs: ArrayLike, *, seed: int | np.random.Generator = 0
) -> np.ndarray:
    """Scores [n] of strategy ``name`` for ``probs`` [n, C]; ``seed`` is used only by ``random``."""
    try:
        fn = SCORERS[name]
    except KeyError:
        raise ValueError(
            f"unknown strategy {name!r}; known strategies: {', '.join(SCORERS)}"
        ) from None
    if fn is random:
        return fn(probs, seed=seed)
    return fn(probs)


def select_top(scores: ArrayLike, k: int) -> np.ndarray:
    """Indices (int64) of the ``k`` highest scores, best first; ties go to the lower index.

    O(n) selection plus O(k log k) ordering of the selected. ``k > n`` returns all n;
    ``k == 0`` or an empty ``scores`` returns an empty array. ``scores`` is never modified.
    """
    k = operator.index(k)
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    # float64 so that negation below is exact for any input dtype (unsigned ints included).
    s = np.asarray(scores, dtype=np.float64)  # [n]
    if s.ndim != 1:
        raise ValueError(f"scores must be 1-D, got shape {s.shape}")
    nan = np.isnan(s)  # [n]
    if nan.any():
        raise ValueError(f"scores contain NaN (first at index {_first_bad_row(nan)})")
    n = s.shape[0]
    if k == 0 or n == 0:
        return np.empty(0, dtype=np.int64)

    if k >= n:
        # Everything is selected, so a full stable sort is the least work left.
        return np.argsort(-s, kind="stable").astype(np.int64, copy=False)  # [n]

    # Partition so positions n-k.. hold the k largest values; s[part[n-k]] is the k-th largest.
    part = np.argpartition(s, n - k)  # [n]; argpartition copies, s is untouched
    top = part[n - k :]  # [k], in no particular order
    threshold = s[part[n - k]]
    # Everything strictly above the threshold is certainly in the answer. Among values equal to
    # the threshold, the partition picks arbitrary ones, so take the lowest indices instead.
    above = np.sort(top[s[top] > threshold])  # [m], ascending index
    ties = np.flatnonzero(s == threshold)[: k - above.shape[0]]  # [k - m], ascending index
    chosen = np.concatenate([above, ties])  # [k]
    # Stable sort by descending score keeps ascending index order within equal scores; the ties
    # all carry the smallest chosen score, so they land last and stay in index order.
    order = np.argsort(-s[chosen], kind="stable")  # [k]
    return chosen[order].astype(np.int64, copy=False)
