"""Query strategies: which samples of the unlabelled pool to label next.

Two layers, both pure numpy/scipy (this module must stay importable without TensorFlow or
Prefect):

* Per-sample scorers map probs [n, C] -> scores [n] with higher = query first
  (``least_confidence``, ``margin``, ``entropy``, ``random``, ``ratio``; ``bald`` maps
  mc_probs [T, n, C] -> [n]). ``SCORERS``/``score``/``CRITERIA``/``StrategyName`` cover the four
  scorers whose values are stored per sample by the scoring run.
* ``select(name, outputs, k, seed=...)`` is the one selection interface for every strategy in
  ``SELECTORS`` (``SelectorName``): from what the model produced for the pool (``PoolOutputs``:
  probabilities and, where a strategy needs them, embeddings, Monte-Carlo passes or per-class
  test errors) plus ``k`` and a seed, to the chosen pool positions. Score-based strategies take
  the top ``k`` scores; ``coreset``, ``badge``, ``margin-diverse`` and ``class-balanced`` build the
  batch as a whole so that it is diverse or balanced. ``REQUIREMENTS`` says which optional
  ``PoolOutputs`` fields each strategy needs, so callers compute only those.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike
from scipy.special import xlogy

__all__ = [
    "BATCH_AWARE",
    "CRITERIA",
    "DIVERSE_FACTOR",
    "REQUIREMENTS",
    "SCORERS",
    "SCORE_BASED",
    "SELECTORS",
    "PoolOutputs",
    "SelectorName",
    "StrategyName",
    "bald",
    "class_quotas",
    "entropy",
    "gradient_sq_distances",
    "least_confidence",
    "margin",
    "random",
    "ratio",
    "score",
    "select",
    "select_top",
    "split_budget",
    "validate_probabilities",
]

# The strategies whose per-sample score is a column of the stored scores table (see scoring.py
# and batches.py, which read ``table.column(name)``). Every selectable strategy is a
# ``SelectorName`` below; this one stays the four that ``score``/``SCORERS`` serve.
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


# --- more per-sample scores -------------------------------------------------------------------


def ratio(probs: ArrayLike) -> np.ndarray:
    """``p_top2 / p_top1`` in [0, 1]: 1 when the two best classes tie, 0 when one is certain."""
    p = validate_probabilities(probs)  # [n, C]
    c = p.shape[1]
    top2 = np.partition(p, c - 2, axis=1)[:, -2:]  # [n, 2]; [:, 1] is max, [:, 0] the runner-up
    # A row sums to 1 over C >= 2 classes, so its maximum is at least 1/C: no division by zero.
    return top2[:, 0] / top2[:, 1]  # [n]


def _validate_mc_probs(mc_probs: ArrayLike) -> np.ndarray:
    """``mc_probs`` as float64 [T, n, C] with T >= 1 and every pass valid probs; else ValueError."""
    mc = np.asarray(mc_probs, dtype=np.float64)  # [T, n, C]
    if mc.ndim != 3:
        raise ValueError(
            f"mc_probs must be 3-D [T_passes, n_samples, n_classes], got {mc.ndim}-D "
            f"with shape {mc.shape}"
        )
    if mc.shape[0] == 0:
        raise ValueError("mc_probs must hold at least one forward pass, got T = 0")
    for t in range(mc.shape[0]):
        try:
            validate_probabilities(mc[t])
        except ValueError as err:
            raise ValueError(f"mc_probs pass {t}: {err}") from None
    return mc


def bald(mc_probs: ArrayLike) -> np.ndarray:
    """BALD mutual information ``H(mean_t p_t) - mean_t H(p_t)`` in nats, from [T, n, C].

    ``mc_probs`` holds T stochastic forward passes (dropout kept on at inference). High when the
    passes disagree (epistemic uncertainty), 0 when they agree, however unsure each pass is
    (aleatoric noise). Mathematically >= 0; float rounding below 0 is clipped to 0.
    """
    mc = _validate_mc_probs(mc_probs)  # [T, n, C]
    mean = mc.mean(axis=0)  # [n, C]
    predictive = -xlogy(mean, mean).sum(axis=1)  # [n]
    # One pass at a time, so the temporaries stay [n, C] rather than [T, n, C].
    expected = np.zeros(mc.shape[1])  # [n]
    for p_t in mc:  # p_t: [n, C]
        expected -= xlogy(p_t, p_t).sum(axis=1)
    expected /= mc.shape[0]
    return np.maximum(predictive - expected, 0.0)  # [n]


# --- what the model produced for the pool -----------------------------------------------------


def _read_only(a: np.ndarray) -> np.ndarray:
    # A view, so the caller's own array keeps its flags; selectors then cannot write into it.
    view = a.view()
    view.flags.writeable = False
    return view


def _finite_2d(value: ArrayLike, field: str) -> np.ndarray:
    a = np.asarray(value, dtype=np.float32)  # [rows, d]; no copy if already float32
    if a.ndim != 2:
        raise ValueError(f"{field} must be 2-D [rows, d], got {a.ndim}-D with shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{field} contains NaN or inf")
    return a


@dataclass(frozen=True, eq=False)
class PoolOutputs:
    """What the model produced for the unlabelled pool of n samples, as arrays.

    probs: [n, C] class probabilities (required; checked by ``validate_probabilities``).
    embeddings: [n, d] penultimate-layer features, or None. Stored as float32.
    mc_probs: [T, n, C] probabilities from T stochastic passes with dropout on, or None.
    labelled_embeddings: [m, d] features of already-labelled samples (``coreset`` starts from
        their coverage), or None. Needs ``embeddings`` with the same d. Stored as float32.
    class_errors: [C] error rate per class on the held-out test set, each in [0, 1], or None.

    Fields are stored as read-only views (converted where the dtype differs); the caller's arrays
    are never written to. Position i in every field is the same pool sample.
    """

    probs: np.ndarray
    embeddings: np.ndarray | None = None
    mc_probs: np.ndarray | None = None
    labelled_embeddings: np.ndarray | None = None
    class_errors: np.ndarray | None = None

    def __post_init__(self) -> None:
        probs = validate_probabilities(self.probs)  # [n, C]
        fields = {
            "probs": probs,
            "embeddings": self._check_embeddings(probs.shape),
            "mc_probs": self._check_mc_probs(probs.shape),
            "labelled_embeddings": self._check_labelled(),
            "class_errors": self._check_class_errors(probs.shape),
        }
        for name, value in fields.items():
            object.__setattr__(self, name, None if value is None else _read_only(value))

    @property
    def n(self) -> int:
        return int(self.probs.shape[0])

    @property
    def num_classes(self) -> int:
        return int(self.probs.shape[1])

    def _check_embeddings(self, probs_shape: tuple[int, int]) -> np.ndarray | None:
        if self.embeddings is None:
            return None
        h = _finite_2d(self.embeddings, "embeddings")  # [n, d]
        if h.shape[0] != probs_shape[0]:
            raise ValueError(
                f"embeddings has {h.shape[0]} rows (shape {h.shape}) but probs has "
                f"{probs_shape[0]} (shape {probs_shape}): one row per pool sample in both"
            )
        return h

    def _check_mc_probs(self, probs_shape: tuple[int, int]) -> np.ndarray | None:
        if self.mc_probs is None:
            return None
        mc = _validate_mc_probs(self.mc_probs)  # [T, n, C]
        if mc.shape[1:] != probs_shape:
            raise ValueError(
                f"mc_probs has shape {mc.shape}, expected [T, {probs_shape[0]}, {probs_shape[1]}] "
                f"to match probs {probs_shape}"
            )
        return mc

    def _check_labelled(self) -> np.ndarray | None:
        if self.labelled_embeddings is None:
            return None
        if self.embeddings is None:
            raise ValueError("labelled_embeddings given without embeddings for the pool")
        lab = _finite_2d(self.labelled_embeddings, "labelled_embeddings")  # [m, d]
        d = np.shape(self.embeddings)[1]
        if lab.shape[1] != d:
            raise ValueError(
                f"labelled_embeddings has d = {lab.shape[1]} (shape {lab.shape}) but embeddings "
                f"has d = {d} (shape {np.shape(self.embeddings)})"
            )
        return lab

    def _check_class_errors(self, probs_shape: tuple[int, int]) -> np.ndarray | None:
        if self.class_errors is None:
            return None
        e = np.asarray(self.class_errors, dtype=np.float64)  # [C]
        if e.shape != (probs_shape[1],):
            raise ValueError(
                f"class_errors must have shape ({probs_shape[1]},), one error rate per class of "
                f"probs {probs_shape}, got shape {e.shape}"
            )
        if not np.isfinite(e).all() or (e < 0).any() or (e > 1).any():
            raise ValueError(f"class_errors must be error rates in [0, 1], got {e.tolist()}")
        return e


# --- selection: one interface over every strategy ---------------------------------------------

SelectorName = Literal[
    "least_confidence",
    "margin",
    "entropy",
    "random",
    "ratio",
    "bald",
    "coreset",
    "badge",
    "margin-diverse",
    "class-balanced",
]

Selector = Callable[[PoolOutputs, int, np.random.Generator], np.ndarray]

# Fields beyond probs (always present) that each strategy reads. coreset also uses
# labelled_embeddings when given; it is optional, so it is not listed.
REQUIREMENTS: dict[str, frozenset[str]] = {
    "least_confidence": frozenset(),
    "margin": frozenset(),
    "entropy": frozenset(),
    "random": frozenset(),
    "ratio": frozenset(),
    "bald": frozenset({"mc_probs"}),
    "coreset": frozenset({"embeddings"}),
    "badge": frozenset({"embeddings"}),
    "margin-diverse": frozenset({"embeddings"}),
    "class-balanced": frozenset({"class_errors"}),
}

_FIELD_HELP = {
    "embeddings": "penultimate-layer embeddings [n, d]",
    "mc_probs": "T stochastic forward passes with dropout on [T, n, C]",
    "class_errors": "per-class error rates on the held-out test set [C]",
}

# Top-M by margin considered by margin-diverse: M = DIVERSE_FACTOR * k (at most n).
DIVERSE_FACTOR = 10

# Distance work is done in tiles of at most this many float32 entries (16 MiB).
_TILE = 1 << 22

_EMPTY = np.empty(0, dtype=np.int64)


def _need(outputs: PoolOutputs, field: str, strategy: str) -> np.ndarray:
    value = getattr(outputs, field)
    if value is None:
        raise ValueError(f"{strategy} needs {field}: {_FIELD_HELP[field]}")
    return value


def _top_by(scorer: Callable[[PoolOutputs, np.random.Generator], np.ndarray]) -> Selector:
    def selector(outputs: PoolOutputs, k: int, rng: np.random.Generator) -> np.ndarray:
        return select_top(scorer(outputs, rng), k)

    return selector


def _rows_sq_norm(x: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", x, x)  # [rows]


def _sq_dist_to_row(x: np.ndarray, x_sq: np.ndarray, i: int) -> np.ndarray:
    """Squared Euclidean distances [n] from every row of x [n, d] to row i; one O(n*d) pass."""
    d2 = x @ x[i]  # [n]
    d2 *= -2.0
    d2 += x_sq
    d2 += x_sq[i]
    return np.maximum(d2, 0.0, out=d2)  # the expansion can round a little below 0


def _min_sq_dist_to_set(x: np.ndarray, x_sq: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """min_j ||x_i - c_j||^2 for x [n, d], centres [m, d], in tiles: memory O(n) + one tile."""
    out = np.full(x.shape[0], np.inf, dtype=np.float32)  # [n]
    c_sq = _rows_sq_norm(centres)  # [m]
    rows = max(1, min(x.shape[0], 4096))
    cols = max(1, _TILE // rows)
    for a in range(0, x.shape[0], rows):
        for b in range(0, centres.shape[0], cols):
            tile = x[a : a + rows] @ centres[b : b + cols].T  # [rows, cols]
            tile *= -2.0
            tile += c_sq[b : b + cols]
            np.minimum(out[a : a + rows], tile.min(axis=1), out=out[a : a + rows])
    out += x_sq  # ||x||^2 is constant along a row, so it is added after the min
    return np.maximum(out, 0.0, out=out)


def _select_coreset(outputs: PoolOutputs, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-center greedy (Sener & Savarese): repeatedly take the pool point farthest from all
    centres so far (labelled samples, then picks). O(n*k*d) time, O(n) memory beyond x."""
    x = _need(outputs, "embeddings", "coreset")  # [n, d] float32
    n, k = x.shape[0], min(k, x.shape[0])
    if k == 0:
        return _EMPTY
    x_sq = _rows_sq_norm(x)  # [n]
    labelled = outputs.labelled_embeddings
    if labelled is not None and labelled.shape[0] > 0:
        min_d2 = _min_sq_dist_to_set(x, x_sq, labelled)  # [n]
        i = int(np.argmax(min_d2))
    else:
        min_d2 = np.full(n, np.inf, dtype=np.float32)  # [n]
        i = int(rng.integers(n))  # nothing covered yet: a seeded random first centre
    chosen = np.empty(k, dtype=np.int64)
    for j in range(k):
        chosen[j] = i
        np.minimum(min_d2, _sq_dist_to_row(x, x_sq, i), out=min_d2)
        min_d2[i] = -np.inf  # never again, even if every remaining distance is 0
        i = int(np.argmax(min_d2))  # ties (e.g. all 0) go to the lowest index
    return chosen


def _d2_sampling(
    n: int,
    k: int,
    first: int,
    sq_dist_to: Callable[[int], np.ndarray],
    rng: np.random.Generator,
) -> np.ndarray:
    """k-means++ seeding: after ``first``, draw each pick with probability proportional to D^2,
    its squared distance to the nearest pick so far. Picks are distinct: a chosen point has
    D^2 = 0; if every unchosen D^2 is 0 too, the lowest-index unchosen point is taken."""
    chosen = np.empty(k, dtype=np.int64)
    taken = np.zeros(n, dtype=bool)  # [n]
    d2 = np.full(n, np.inf, dtype=np.float32)  # [n]
    i = first
    for j in range(k):
        chosen[j], taken[i] = i, True
        np.minimum(d2, sq_dist_to(i), out=d2)
        d2[i] = 0.0
        if j + 1 < k:
            i = _draw_d2(d2, taken, rng)
    return chosen


def _draw_d2(d2: np.ndarray, taken: np.ndarray, rng: np.random.Generator) -> int:
    cum = np.cumsum(d2, dtype=np.float64)  # [n]
    total = cum[-1]
    if total <= 0.0:
        return int(np.argmin(taken))  # the first False: lowest-index unchosen
    # side="right" lands on the first index whose cumulative sum exceeds u, so on a D^2 > 0.
    i = int(np.searchsorted(cum, rng.random() * total, side="right"))
    return i if i < d2.shape[0] else int(np.flatnonzero(d2)[-1])  # u rounded up to the total


@dataclass(frozen=True)
class _GradEmbeddings:
    """BADGE's last-layer gradient embeddings g_i = a_i (x) h_i, never materialised.

    a = p - onehot(argmax p) [n, C] is the gradient of the cross-entropy at the hypothesised
    label w.r.t. the logits; h [n, d] the penultimate features. Since <g_i, g_j> =
    (a_i . a_j)(h_i . h_j), squared distances cost O(C + d) per pair instead of O(C * d).
    """

    a: np.ndarray  # [n, C] float32
    h: np.ndarray  # [n, d] float32
    sq_norm: np.ndarray  # [n] ||g_i||^2 = ||a_i||^2 ||h_i||^2

    @classmethod
    def of(cls, probs: np.ndarray, h: np.ndarray) -> _GradEmbeddings:
        a = probs.astype(np.float32)  # [n, C], a copy: probs is left alone
        a[np.arange(a.shape[0]), probs.argmax(axis=1)] -= 1.0
        return cls(a=a, h=h, sq_norm=_rows_sq_norm(a) * _rows_sq_norm(h))

    def sq_dist_to(self, i: int) -> np.ndarray:
        d2 = (self.a @ self.a[i]) * (self.h @ self.h[i])  # [n] <g, g_i>
        d2 *= -2.0
        d2 += self.sq_norm
        d2 += self.sq_norm[i]
        return np.maximum(d2, 0.0, out=d2)  # [n]


def gradient_sq_distances(probs: ArrayLike, embeddings: ArrayLike, i: int) -> np.ndarray:
    """Squared distances [n] from every BADGE gradient embedding to sample i's, computed without
    forming the [n, C * d] embeddings (see ``_GradEmbeddings``)."""
    outputs = PoolOutputs(probs=probs, embeddings=embeddings)
    return _GradEmbeddings.of(outputs.probs, outputs.embeddings).sq_dist_to(operator.index(i))


def _select_badge(outputs: PoolOutputs, k: int, rng: np.random.Generator) -> np.ndarray:
    """BADGE (Ash et al.): k-means++ seeding on gradient embeddings, first centre the largest
    gradient, so picks are both uncertain (long gradients) and diverse (far apart)."""
    h = _need(outputs, "embeddings", "badge")  # [n, d]
    n, k = h.shape[0], min(k, h.shape[0])
    if k == 0:
        return _EMPTY
    g = _GradEmbeddings.of(outputs.probs, h)
    return _d2_sampling(n, k, int(np.argmax(g.sq_norm)), g.sq_dist_to, rng)


def _nearest_centre(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Index [m] of the nearest centre for each row of x [m, d], in tiles of rows."""
    c_sq = _rows_sq_norm(centres)  # [k]
    rows = max(1, _TILE // max(1, centres.shape[0]))
    labels = np.empty(x.shape[0], dtype=np.int64)  # [m]
    for a in range(0, x.shape[0], rows):
        # ||x||^2 is the same along a row, so argmin of ||c||^2 - 2 x.c is the nearest centre.
        tile = x[a : a + rows] @ centres.T  # [rows, k]
        tile *= -2.0
        tile += c_sq
        labels[a : a + rows] = tile.argmin(axis=1)
    return labels


def _cluster_means(x: np.ndarray, labels: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Mean [k, d] of each cluster's rows; an empty cluster keeps its previous centre."""
    order = np.argsort(labels, kind="stable")  # [m]
    counts = np.bincount(labels, minlength=centres.shape[0])  # [k]
    nonempty = np.flatnonzero(counts)  # [k'], ascending label
    starts = np.concatenate([[0], np.cumsum(counts[nonempty])[:-1]])  # [k']
    sums = np.add.reduceat(x[order], starts, axis=0, dtype=np.float64)  # [k', d]
    means = centres.copy()
    means[nonempty] = sums / counts[nonempty, None]
    return means


def _kmeans_labels(
    x: np.ndarray, k: int, rng: np.random.Generator, iterations: int = 10
) -> np.ndarray:
    """Seeded k-means: k-means++ seeding, then at most ``iterations`` Lloyd steps. Labels [m]."""
    x_sq = _rows_sq_norm(x)  # [m]
    first = int(rng.integers(x.shape[0]))
    seeds = _d2_sampling(x.shape[0], k, first, lambda i: _sq_dist_to_row(x, x_sq, i), rng)
    centres = x[seeds]  # [k, d], a copy
    labels = _nearest_centre(x, centres)  # [m]
    for _ in range(iterations):
        centres = _cluster_means(x, labels, centres)
        new = _nearest_centre(x, centres)
        if np.array_equal(new, labels):
            break
        labels = new
    return labels


def _select_margin_diverse(
    outputs: PoolOutputs,
    k: int,
    rng: np.random.Generator,
    *,
    diverse_factor: int = DIVERSE_FACTOR,
) -> np.ndarray:
    """Cluster-margin style: the top M = diverse_factor * k by margin, clustered into k groups
    on their embeddings; from each cluster its highest-margin member. Clusters left empty by
    k-means are made up with the next-highest margins."""
    h = _need(outputs, "embeddings", "margin-diverse")  # [n, d]
    scores = margin(outputs.probs)  # [n]
    top = select_top(scores, min(h.shape[0], diverse_factor * k))  # [M], best first
    if k >= top.shape[0]:
        return top[:k]
    labels = _kmeans_labels(h[top], k, rng)  # [M]
    # np.unique gives each cluster's first position in ``top``, i.e. its best-margin member.
    _, best = np.unique(labels, return_index=True)  # [k'] positions in top
    picked = np.zeros(top.shape[0], dtype=bool)  # [M]
    picked[best] = True
    fill = np.flatnonzero(~picked)[: k - best.shape[0]]  # next-highest margins, if k' < k
    return top[np.sort(np.concatenate([best, fill]))]  # [k], best margin first


def _largest_remainder(total: int, weights: np.ndarray) -> np.ndarray:
    """Integers [c] summing to ``total``, proportional to ``weights`` [c] (all > 0).

    Hamilton's method: floors of the exact shares, then one more each for the largest
    fractional parts; equal fractions go to the lower index.
    """
    exact = total * weights / weights.sum()  # [c]
    share = np.floor(exact).astype(np.int64)  # [c]
    extra = total - int(share.sum())
    order = np.argsort(-(exact - share), kind="stable")  # [c]
    share[order[:extra]] += 1
    return share


def class_quotas(class_errors: ArrayLike, available_per_class: ArrayLike, k: int) -> np.ndarray:
    """How many of a batch of ``k`` to take from each predicted class: int64 [C].

    Proportional to ``class_errors`` [C] (largest-remainder rounding), capped by
    ``available_per_class`` [C]; what a capped class cannot take goes to the classes with room,
    again in proportion to their errors. Zero-error classes get nothing unless the budget cannot
    be filled otherwise; then the rest is spread evenly over the classes with samples left.
    The quotas always sum to exactly ``min(k, sum(available_per_class))``.
    """
    k = operator.index(k)
    errors = np.asarray(class_errors, dtype=np.float64)  # [C]
    room = np.asarray(available_per_class)  # [C]
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if errors.ndim != 1 or room.shape != errors.shape:
        raise ValueError(
            f"class_errors {errors.shape} and available_per_class {room.shape} must both be "
            "1-D with one entry per class"
        )
    if not np.isfinite(errors).all() or (errors < 0).any():
        raise ValueError(f"class_errors must be finite and >= 0, got {errors.tolist()}")
    if not np.issubdtype(room.dtype, np.integer) or (room < 0).any():
        raise ValueError(f"available_per_class must be integers >= 0, got {room.tolist()}")
    quotas = np.zeros(errors.shape[0], dtype=np.int64)  # [C]
    remaining = min(k, int(room.sum()))
    while remaining > 0:
        free = room - quotas  # [C]
        active = (free > 0) & (errors > 0)  # [C]
        weights = errors[active]
        if not active.any():  # only zero-error classes have samples left
            active = free > 0
            weights = np.ones(int(active.sum()))
        share = np.minimum(_largest_remainder(remaining, weights), free[active])
        quotas[active] += share
        remaining -= int(share.sum())  # each round fills the budget or saturates a class
    return quotas


def _select_class_balanced(outputs: PoolOutputs, k: int, rng: np.random.Generator) -> np.ndarray:
    """Spread the batch over predicted classes by ``class_quotas`` (more where the model errs
    more on the test set); within a class, the highest margins. Ordered best margin first."""
    del rng  # deterministic: the quotas and the margins decide everything
    errors = _need(outputs, "class_errors", "class-balanced")  # [C]
    predicted = outputs.probs.argmax(axis=1)  # [n]
    scores = margin(outputs.probs)  # [n]
    available = np.bincount(predicted, minlength=outputs.num_classes)  # [C]
    quotas = class_quotas(errors, available, k)  # [C]
    parts = [_EMPTY]
    for c in np.flatnonzero(quotas):
        members = np.flatnonzero(predicted == c)  # [n_c]
        parts.append(members[select_top(scores[members], int(quotas[c]))])
    chosen = np.sort(np.concatenate(parts))  # ascending, so equal margins keep index order
    return chosen[np.argsort(-scores[chosen], kind="stable")]


SELECTORS: dict[str, Selector] = {
    "least_confidence": _top_by(lambda o, rng: least_confidence(o.probs)),
    "margin": _top_by(lambda o, rng: margin(o.probs)),
    "entropy": _top_by(lambda o, rng: entropy(o.probs)),
    "random": _top_by(lambda o, rng: random(o.probs, seed=rng)),
    "ratio": _top_by(lambda o, rng: ratio(o.probs)),
    "bald": _top_by(lambda o, rng: bald(_need(o, "mc_probs", "bald"))),
    "coreset": _select_coreset,
    "badge": _select_badge,
    "margin-diverse": _select_margin_diverse,
    "class-balanced": _select_class_balanced,
}

# Ranked by a per-sample score (the batch is the top k) versus built as a whole.
SCORE_BASED = ("least_confidence", "margin", "entropy", "random", "ratio", "bald")
BATCH_AWARE = ("coreset", "badge", "margin-diverse", "class-balanced")


def _generator(seed: int | np.random.Generator) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None or isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        # default_rng(None) would draw OS entropy and silently make the run unreproducible.
        raise TypeError(f"seed must be an int or numpy.random.Generator, got {seed!r}")
    return np.random.default_rng(int(seed))


def select(
    name: str, outputs: PoolOutputs, k: int, *, seed: int | np.random.Generator = 0
) -> np.ndarray:
    """Pool positions (int64 [min(k, n)], distinct) chosen by strategy ``name``.

    ``outputs`` must carry the fields ``REQUIREMENTS[name]`` lists; a missing one is a ValueError
    naming it. The same ``seed`` (an int, or a Generator used and advanced as given) gives the
    same picks. Score-based strategies return best first; batch-aware ones in pick order
    (coreset, badge) or best margin first (margin-diverse, class-balanced).

    The random slice of a batch reserved for unbiased estimates is not taken here: split the
    budget with ``split_budget(k, random_fraction)``, call ``select`` for the strategy part, and
    draw the random part uniformly from the positions it did not choose.
    """
    try:
        selector = SELECTORS[name]
    except KeyError:
        raise ValueError(
            f"unknown strategy {name!r}; known strategies: {', '.join(SELECTORS)}"
        ) from None
    if not isinstance(outputs, PoolOutputs):
        raise TypeError(f"outputs must be a PoolOutputs, got {type(outputs).__name__}")
    k = operator.index(k)
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    for field in sorted(REQUIREMENTS[name]):
        _need(outputs, field, name)
    rng = _generator(seed)
    return selector(outputs, k, rng).astype(np.int64, copy=False)


def split_budget(k: int, random_fraction: float) -> tuple[int, int]:
    """``(strategy part, random part)`` of a batch of ``k``: the random part is
    ``round(k * random_fraction)`` (halves round up). With 0 < fraction < 1 and k >= 2 each part
    gets at least 1, so a small batch still carries one unbiased sample and one chosen one."""
    k = operator.index(k)
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if not 0.0 <= random_fraction <= 1.0:
        raise ValueError(f"random_fraction must be in [0, 1], got {random_fraction}")
    n_random = math.floor(k * random_fraction + 0.5)
    if 0.0 < random_fraction < 1.0 and k >= 2:
        n_random = min(max(n_random, 1), k - 1)
    return k - n_random, n_random
