"""The label-efficiency benchmark: how many labels each strategy needs, measured against random.

For each strategy (and always for ``random``, the baseline) and each of N seeds, one simulated
run: a labelled seed set, then R rounds of score -> select a batch of B -> oracle answers ->
import -> retrain, through the same core functions the flows call, each run in its own store.
Seed s fixes the seed set, the model's initialisation and the strategy's randomness, and is
the same for every strategy, so strategies are compared on identical starts (paired by seed).

The dataset is scikit-learn's bundled digits (the demo's), a local folder laid out as
``<class>/<image>``, or ``tfds:NAME[/SPLIT]``; it is split once, stratified, into a held-out
test set and the rest, from which each seed draws its seed set; the remaining images are the
unlabelled pool.

Results: per (strategy, seed, round) the training labels and test accuracy (of the model
trained that round, as in the demo's curves); per strategy the area under the learning curve
(trapezoid over labels, divided by the label span: the mean accuracy over the run, in [0, 1])
and the labels needed to reach random's final mean accuracy, read off the strategy's mean
curve by linear interpolation between rounds. ``write_benchmark_report`` writes
``benchmark.json``, ``learning_curve.png`` (mean and +-1 sd band per strategy) and
``table.md``.

Core module: no Prefect; ``flows/benchmark.py`` runs the (strategy, seed) runs as tasks.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import get_args

import numpy as np
from pydantic import BaseModel, Field, model_validator

from activeflow.core.ingest.ingest import content_id, image_extension, ingest_images
from activeflow.core.ingest.sources import SourceImage, iter_source
from activeflow.core.label import batches, label_import
from activeflow.core.score import scoring, selection
from activeflow.core.storage.pool import current_champion, load_state
from activeflow.core.storage.store import open_store
from activeflow.core.train import stopping, training
from activeflow.core.train.reporting import Series, line_chart_png
from activeflow.evaluation import simulation
from activeflow.settings import SelectorName, Settings

BASELINE = "random"
DEFAULT_STRATEGIES: tuple[str, ...] = tuple(
    name for name in get_args(SelectorName) if name != BASELINE
)
DIGITS = "digits"  # the ``dataset`` value (or None) for scikit-learn's bundled digits
SHAPES = "shapes"  # ``shapes[:N]``: synthetic shapes of N classes (activeflow.evaluation.synthetic_shapes)
ROTATED_SHAPES = "shapes-rotated"  # ``shapes-rotated[:N]``: the same at random angles


class BenchmarkError(ValueError):
    """A benchmark that cannot run as asked: the message says what to change."""


class BenchmarkConfig(BaseModel):
    strategies: list[SelectorName] = Field(
        default_factory=lambda: list(DEFAULT_STRATEGIES),
        description="Strategies to compare; random, the baseline, is always run as well.",
    )
    seeds: int = Field(5, ge=1, description="Runs per strategy, seeds 0..seeds-1.")
    rounds: int = Field(8, ge=1, description="Rounds after the seed model.")
    budget: int = Field(20, ge=1, description="Labels per round.")
    dataset: str | None = Field(
        None,
        description="None or digits (bundled digits), shapes[:N] or shapes-rotated[:N] (synthetic), a folder "
        "<class>/<image>, or tfds:NAME[/SPLIT].",
    )
    test_size: float = Field(
        0.2, gt=0, description="Held-out test set: a fraction (< 1) or a number of images (>= 1)."
    )
    seed_per_class: int = Field(2, ge=1, description="Labelled seed images per class.")
    pool_size: int | None = Field(
        None, ge=1, description="Subsample the unlabelled pool to this many (None: all the rest)."
    )

    @model_validator(mode="after")
    def _whole_number_of_test_images(self) -> BenchmarkConfig:
        if self.test_size >= 1 and self.test_size != int(self.test_size):
            raise ValueError(f"test_size {self.test_size} >= 1 must be a whole number of images")
        return self

    @property
    def all_strategies(self) -> list[str]:
        """The baseline first, then the chosen strategies without repeats."""
        return [BASELINE] + [s for s in dict.fromkeys(self.strategies) if s != BASELINE]


class BenchmarkData(BaseModel):
    test: str  # folder <class>/<image>: the held-out test set
    rest: str  # folder <class>/<image>: seed sets and pools are drawn from it
    classes: list[str]
    test_count: int
    rest_count: int
    skipped: list[str] = []  # inputs that are no image, with the reason


class RunSpec(BaseModel):
    """One (strategy, seed) run: everything a worker needs, small and picklable."""

    strategy: SelectorName
    seed: int
    config: BenchmarkConfig
    data: BenchmarkData
    store: str  # a fresh local folder for this run's store
    settings: Settings  # model, scoring and strategy options; storage/budget/name are set per run


class RoundRecord(BaseModel):
    strategy: str
    seed: int
    round: int  # 0: the seed model
    labels: int  # training labels of the model trained this round
    accuracy: float  # its test accuracy
    baseline_accuracy: float | None = None  # the pixel baseline's, on the same labels
    chance_accuracy: float | None = None  # share of the most common test class
    promoted: bool
    pool_estimate: float | None = None  # previous champion's accuracy on the batch's random slice
    pool_estimate_items: int = 0
    agreement: float | None = None  # last two models on the stop sample
    slope: float | None = None  # accuracy points per 100 labels, last models
    stop: bool = False  # the stopping signal fired this round
    seconds: float  # wall time of the round


# Data ------------------------------------------------------------------------------------------


def prepare_dataset(
    folder: Path, dataset: str | None = None, test_size: float = 0.2, *, seed: int = 0
) -> BenchmarkData:
    """Split ``dataset`` once into ``folder/test`` and ``folder/rest`` (both ``<class>/<image>``),
    stratified by class with ``seed``. The bundled digits keep the demo's test split."""
    if dataset is not None and dataset.split(":")[0] in (SHAPES, ROTATED_SHAPES):
        return _split_folder(folder, str(_write_shapes(folder / "shapes", dataset)), test_size, seed)
    if dataset in (None, DIGITS):
        from activeflow.evaluation.demo_data import write_digits

        count = int(test_size) if test_size >= 1 else round(test_size * 1797)
        # arrivals=2: write_digits cannot make 1; the truth folder holds every arrival either way.
        digits = write_digits(folder / "digits", arrivals=2, test_size=count, seed_per_class=0, seed=seed)
        return _described(digits.test, digits.truth, digits.classes, [])
    return _split_folder(folder, dataset, test_size, seed)


def _write_shapes(folder: Path, dataset: str) -> Path:
    """``shapes[:N]`` or ``shapes-rotated[:N]``: N classes (default 5) of 300 synthetic 64 px
    images each, upright or at random angles."""
    from activeflow.evaluation.synthetic_shapes import DEFAULT_CLASSES, write_shapes

    name, colon, count = dataset.partition(":")
    count = count if colon else str(DEFAULT_CLASSES)
    if not count.isdigit():
        raise BenchmarkError(f"{dataset!r}: write {name}:N with N the number of classes, e.g. {name}:5")
    try:
        write_shapes(folder, classes=int(count), rotate=name == ROTATED_SHAPES)
    except ValueError as error:
        raise BenchmarkError(f"{dataset!r}: {error}") from None
    return folder


def _split_folder(folder: Path, dataset: str, test_size: float, seed: int) -> BenchmarkData:
    from sklearn.model_selection import train_test_split

    images, skipped, seen = [], [], set()
    for image in iter_source(dataset, labelled=True):
        sample_id = content_id(image.data)
        if sample_id in seen:
            continue  # the same bytes twice would be one sample in the store anyway
        try:
            ext = image_extension(image.data)
        except ValueError as problem:
            skipped.append(f"{image.name}: {problem}")
            continue
        seen.add(sample_id)
        images.append((image, f"{sample_id[:16]}.{ext}"))
    labels = [image.label for image, _ in images]
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise BenchmarkError(f"{dataset}: needs images of at least 2 classes, found {classes}")
    test_arg = int(test_size) if test_size >= 1 else test_size
    try:
        rest, test = train_test_split(
            np.arange(len(images)), test_size=test_arg, stratify=labels, random_state=seed
        )
    except ValueError as error:
        raise BenchmarkError(f"{dataset}: cannot split off a stratified test set: {error}") from None
    for part, indices in (("test", test), ("rest", rest)):
        for i in indices:
            image, name = images[i]
            path = folder / part / image.label / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(image.data)
    return _described(folder / "test", folder / "rest", classes, skipped)


def _described(test: Path, rest: Path, classes: list[str], skipped: list[str]) -> BenchmarkData:
    def count(root: Path) -> int:
        return sum(1 for p in root.rglob("*") if p.is_file())

    return BenchmarkData(
        test=str(test), rest=str(rest), classes=classes, test_count=count(test),
        rest_count=count(rest), skipped=skipped,
    )


def seed_split(
    images: Sequence[SourceImage],
    classes: Sequence[str],
    seed: int,
    seed_per_class: int,
    pool_size: int | None = None,
) -> tuple[list[SourceImage], list[SourceImage]]:
    """(seed set, pool): ``seed_per_class`` images of every class drawn with ``seed``, and the
    rest (or a ``pool_size`` subsample of it, in the original order)."""
    rng = np.random.default_rng(seed)
    labels = np.array([image.label for image in images])
    chosen: list[int] = []
    for name in classes:
        members = np.flatnonzero(labels == name)
        if members.shape[0] <= seed_per_class:
            raise BenchmarkError(
                f"class {name!r} has {members.shape[0]} images outside the test set; "
                f"{seed_per_class} per class for the seed set leaves none for the pool"
            )
        chosen += rng.choice(members, seed_per_class, replace=False).tolist()
    rest = np.setdiff1d(np.arange(len(images)), chosen)
    if pool_size is not None and pool_size < rest.shape[0]:
        rest = np.sort(rng.choice(rest, pool_size, replace=False))
    return [images[i] for i in sorted(chosen)], [images[i] for i in rest]


def run_specs(config: BenchmarkConfig, data: BenchmarkData, settings: Settings, out: Path) -> list[RunSpec]:
    """One spec per (strategy, seed), seed-major: a run cut short has whole seeds."""
    return [
        RunSpec(
            strategy=strategy, seed=seed, config=config, data=data, settings=settings,
            store=str(out / "stores" / strategy / f"seed-{seed}"),
        )
        for seed in range(config.seeds)
        for strategy in config.all_strategies
    ]


# One run ---------------------------------------------------------------------------------------


def run_settings(spec: RunSpec) -> Settings:
    base = spec.settings
    return base.model_copy(
        update={
            "storage": base.storage.model_copy(update={"uri": spec.store, "endpoint_url": None}),
            "strategy": base.strategy.model_copy(update={"name": spec.strategy, "seed": spec.seed}),
            "model": base.model.model_copy(update={"seed": spec.seed}),
            "data": base.data.model_copy(update={"classes": spec.data.classes}),
            "budget": base.budget.model_copy(update={"per_run": spec.config.budget, "total": None}),
        }
    )


def run_strategy_seed(spec: RunSpec) -> list[RoundRecord]:
    """The seed model and ``config.rounds`` rounds of one strategy from one seed."""
    settings = run_settings(spec)
    store = open_store(settings.storage)
    if store.list():
        raise BenchmarkError(f"store {spec.store} is not empty: a benchmark run needs a fresh one")
    classes = spec.data.classes
    rest = list(iter_source(spec.data.rest, labelled=True))
    seed_set, pool = seed_split(rest, classes, spec.seed, spec.config.seed_per_class, spec.config.pool_size)
    truth = {content_id(image.data): image.label for image in (*seed_set, *pool)}
    ingest_images(store, iter_source(spec.data.test, labelled=True), split="test", classes=classes)
    ingest_images(store, seed_set, split="train", classes=classes)
    ingest_images(store, pool, split="pool")

    start = time.perf_counter()
    decision = training.retrain(store, settings)
    records = [_record(spec, 0, decision, start)]
    for number in range(1, spec.config.rounds + 1):
        start = time.perf_counter()
        _score(store, settings)
        exported = batches.export_batch(store, settings)
        if exported.batch_id is None:
            break  # the pool is empty
        manifest = load_state(store).batches[exported.batch_id]
        _import_answers(store, settings, exported.batch_id, simulation.oracle_answers(manifest, truth))
        decision = training.retrain(store, settings)
        state = load_state(store)
        estimate = selection.batch_pool_estimate(store, state, exported.batch_id)
        signal = stopping.stopping_signal_for_store(store, settings)
        records.append(_record(spec, number, decision, start, estimate, signal))
    return records


def _score(store, settings: Settings) -> None:  # noqa: ANN001
    if current_champion(store) is None:  # not load_state: score_pool reads the catalog itself
        return  # every candidate so far was refused: the export is a random cold start
    scoring.score_pool(store, settings)


def _import_answers(store, settings: Settings, batch_id: str, answers: bytes) -> None:  # noqa: ANN001
    label_import.import_labels(store, load_state(store), settings, batch_id, "oracle.csv", answers)


def _record(
    spec: RunSpec,
    number: int,
    decision: training.PromotionDecision,
    start: float,
    estimate: selection.PoolAccuracyEstimate | None = None,
    signal: stopping.StoppingSignal | None = None,
) -> RoundRecord:
    return RoundRecord(
        strategy=spec.strategy,
        seed=spec.seed,
        round=number,
        labels=decision.labels_used,
        accuracy=decision.accuracy,
        baseline_accuracy=decision.baseline_accuracy,
        chance_accuracy=decision.chance_accuracy,
        promoted=decision.promoted,
        pool_estimate=estimate.accuracy if estimate else None,
        pool_estimate_items=estimate.answered if estimate else 0,
        agreement=signal.agreement if signal else None,
        slope=signal.slope if signal else None,
        stop=signal.stop if signal else False,
        seconds=time.perf_counter() - start,
    )


# Summary ---------------------------------------------------------------------------------------


def area_under_curve(labels: Sequence[float], accuracy: Sequence[float]) -> float:
    """Trapezoid area under accuracy against labels, divided by the label span: the mean
    accuracy over the run, in [0, 1]. One point: its accuracy."""
    x = np.asarray(labels, dtype=np.float64)
    y = np.asarray(accuracy, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1 or x.shape[0] == 0:
        raise ValueError(f"labels and accuracy must be 1-D of one length >= 1, got {x.shape}, {y.shape}")
    if np.any(np.diff(x) <= 0):
        raise ValueError(f"labels must increase strictly, got {x.tolist()}")
    if x.shape[0] == 1:
        return float(y[0])
    return float(np.sum((y[1:] + y[:-1]) / 2 * np.diff(x)) / (x[-1] - x[0]))


_ROUNDING = 1e-9  # far below one test image in a million


def labels_to_reach(labels: Sequence[float], accuracy: Sequence[float], target: float) -> float | None:
    """Labels at which the curve first reaches ``target``, linearly interpolated between the
    two rounds around the crossing; None if it never does. Means over seeds that differ only
    in float rounding count as equal (the same right answers, summed in another order)."""
    for i, (x, y) in enumerate(zip(labels, accuracy, strict=True)):
        if y >= target - _ROUNDING:
            if i == 0:
                return float(x)
            x0, y0 = labels[i - 1], accuracy[i - 1]
            return float(min(x, x0 + (target - y0) / (y - y0) * (x - x0)))
    return None


class CurveStats(BaseModel):
    rounds: list[int]
    labels: list[float]  # mean over seeds (equal across seeds unless a pool ran out)
    mean: list[float]
    sd: list[float]  # sample standard deviation over seeds (0 with one seed)
    min: list[float]
    max: list[float]
    seeds: list[int]  # seeds that reached each round, counted


class StrategySummary(BaseModel):
    strategy: str
    curve: CurveStats
    aulc_mean: float
    aulc_sd: float
    aulc_vs_random: float  # aulc_mean - random's aulc_mean
    aulc_seeds_at_or_above_random: int  # paired by seed
    final_mean: float
    final_sd: float
    labels_to_reach_random_final: float | None  # on the mean curve; None: never
    label_saving_vs_random: float | None  # 1 - labels / random's labels to reach the same
    # 1 - labels / the labels random spent in all (its last round): less conservative, since
    # random's mean curve may touch its final accuracy before the last round.
    label_saving_vs_random_spent: float | None
    stop_labels_mean: float | None  # labels when the stopping signal first fired (seeds where it did)
    stop_accuracy_mean: float | None  # accuracy then
    stop_seeds: int  # seeds where it fired
    pool_estimate_mean: float | None  # random-slice estimate of the selecting model's accuracy
    pool_estimate_items: int
    seconds_per_run: float


class TargetCheck(BaseModel):
    random_final_mean: float
    random_labels_to_reach: float | None
    best_strategy: str | None
    best_label_saving: float | None
    best_saves_half: bool  # the best strategy reaches random's final accuracy with >= 50 % fewer labels
    every_aulc_at_or_above_random: bool
    below_random_aulc: list[str]
    never_reach_random_final: list[str]
    chance: float | None = None  # share of the most common test class
    seed_labels: float | None = None  # labels of the seed model
    random_at_seed_labels: float | None = None  # random's mean accuracy with the seed labels
    seed_model_at_least_twice_chance: bool | None = None


class BaselineSummary(BaseModel):
    """The pixel baseline (logistic regression) refitted on random's labels every round."""

    name: str
    curve: CurveStats
    aulc_mean: float
    final_mean: float


class BenchmarkSummary(BaseModel):
    strategies: list[StrategySummary]
    target: TargetCheck
    baseline: BaselineSummary | None = None


def _curve(records: Sequence[RoundRecord], value: str = "accuracy") -> CurveStats:
    by_round: dict[int, list[RoundRecord]] = defaultdict(list)
    for record in records:
        by_round[record.round].append(record)
    rounds = sorted(by_round)
    acc = [np.array([getattr(r, value) for r in by_round[n]]) for n in rounds]
    return CurveStats(
        rounds=rounds,
        labels=[float(np.mean([r.labels for r in by_round[n]])) for n in rounds],
        mean=[float(a.mean()) for a in acc],
        sd=[float(a.std(ddof=1)) if a.shape[0] > 1 else 0.0 for a in acc],
        min=[float(a.min()) for a in acc],
        max=[float(a.max()) for a in acc],
        seeds=[int(a.shape[0]) for a in acc],
    )


def runs_by_seed(records: Iterable[RoundRecord]) -> dict[int, list[RoundRecord]]:
    """One strategy's records as runs: seed -> its rounds in order."""
    runs: dict[int, list[RoundRecord]] = defaultdict(list)
    for record in records:
        runs[record.seed].append(record)
    return {seed: sorted(run, key=lambda r: r.round) for seed, run in sorted(runs.items())}


def run_aulc(run: Sequence[RoundRecord]) -> float:
    """The area under one run's learning curve, in [0, 1]."""
    return area_under_curve([r.labels for r in run], [r.accuracy for r in run])


def summarise(records: Sequence[RoundRecord]) -> BenchmarkSummary:
    """Per-strategy curves, AULC, labels to reach random's final accuracy, and the targets."""
    by_strategy: dict[str, list[RoundRecord]] = defaultdict(list)
    for record in records:
        by_strategy[record.strategy].append(record)
    if BASELINE not in by_strategy:
        raise BenchmarkError("no random runs: the baseline is needed to compare against")
    baseline_runs = runs_by_seed(by_strategy[BASELINE])
    baseline_aulc = {seed: run_aulc(run) for seed, run in baseline_runs.items()}
    baseline_curve = _curve(by_strategy[BASELINE])
    target_accuracy = baseline_curve.mean[-1]
    random_reach = labels_to_reach(baseline_curve.labels, baseline_curve.mean, target_accuracy)
    summaries = []
    order = [BASELINE] + sorted(s for s in by_strategy if s != BASELINE)
    for name in order:
        runs = runs_by_seed(by_strategy[name])
        curve = _curve(by_strategy[name])
        aulcs = {seed: run_aulc(run) for seed, run in runs.items()}
        finals = np.array([run[-1].accuracy for run in runs.values()])
        reach = labels_to_reach(curve.labels, curve.mean, target_accuracy)
        stops = [next((r for r in run if r.stop), None) for run in runs.values()]
        stops = [r for r in stops if r is not None]
        estimates = [r for r in by_strategy[name] if r.pool_estimate is not None]
        items = sum(r.pool_estimate_items for r in estimates)
        summaries.append(
            StrategySummary(
                strategy=name,
                curve=curve,
                aulc_mean=float(np.mean(list(aulcs.values()))),
                aulc_sd=float(np.std(list(aulcs.values()), ddof=1)) if len(aulcs) > 1 else 0.0,
                aulc_vs_random=float(np.mean(list(aulcs.values())) - np.mean(list(baseline_aulc.values()))),
                aulc_seeds_at_or_above_random=sum(
                    aulcs[s] >= baseline_aulc[s] for s in aulcs if s in baseline_aulc
                ),
                final_mean=float(finals.mean()),
                final_sd=float(finals.std(ddof=1)) if finals.shape[0] > 1 else 0.0,
                labels_to_reach_random_final=reach,
                label_saving_vs_random=(
                    1.0 - reach / random_reach if reach is not None and random_reach else None
                ),
                label_saving_vs_random_spent=(
                    1.0 - reach / baseline_curve.labels[-1] if reach is not None else None
                ),
                stop_labels_mean=float(np.mean([r.labels for r in stops])) if stops else None,
                stop_accuracy_mean=float(np.mean([r.accuracy for r in stops])) if stops else None,
                stop_seeds=len(stops),
                # Weighted by items: the mean of per-batch estimates would overweight tiny slices.
                pool_estimate_mean=(
                    sum(r.pool_estimate * r.pool_estimate_items for r in estimates) / items
                    if items else None
                ),
                pool_estimate_items=items,
                seconds_per_run=float(
                    np.mean([sum(r.seconds for r in run) for run in runs.values()])
                ),
            )
        )
    target = _target(summaries, target_accuracy, random_reach)
    chances = [r.chance_accuracy for r in by_strategy[BASELINE] if r.chance_accuracy is not None]
    if chances:
        chance = float(np.mean(chances))
        target.chance, target.seed_labels = chance, baseline_curve.labels[0]
        target.random_at_seed_labels = baseline_curve.mean[0]
        target.seed_model_at_least_twice_chance = baseline_curve.mean[0] >= 2 * chance
    return BenchmarkSummary(
        strategies=summaries, target=target, baseline=_baseline_summary(by_strategy[BASELINE])
    )


def _baseline_summary(random_records: Sequence[RoundRecord]) -> BaselineSummary | None:
    if any(r.baseline_accuracy is None for r in random_records):
        return None  # records of a version without the baseline
    from activeflow.core.train.training import PIXEL_BASELINE

    curve = _curve(random_records, "baseline_accuracy")
    runs = runs_by_seed(random_records)
    aulc = np.mean([area_under_curve([r.labels for r in run], [r.baseline_accuracy for r in run]) for run in runs.values()])
    return BaselineSummary(name=PIXEL_BASELINE, curve=curve, aulc_mean=float(aulc), final_mean=curve.mean[-1])


def _target(
    summaries: Sequence[StrategySummary], target_accuracy: float, random_reach: float | None
) -> TargetCheck:
    others = [s for s in summaries if s.strategy != BASELINE]
    baseline = next(s for s in summaries if s.strategy == BASELINE)
    savings = [s for s in others if s.label_saving_vs_random is not None]
    best = max(savings, key=lambda s: s.label_saving_vs_random, default=None)
    below = [s.strategy for s in others if s.aulc_mean < baseline.aulc_mean]
    return TargetCheck(
        random_final_mean=target_accuracy,
        random_labels_to_reach=random_reach,
        best_strategy=best.strategy if best else None,
        best_label_saving=best.label_saving_vs_random if best else None,
        best_saves_half=bool(best and best.label_saving_vs_random >= 0.5),
        every_aulc_at_or_above_random=not below,
        below_random_aulc=below,
        never_reach_random_final=[s.strategy for s in others if s.labels_to_reach_random_final is None],
    )


# Report ----------------------------------------------------------------------------------------


def _pct(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value * 100:+.1f}" if signed else f"{value * 100:.1f}"


def _saving(conservative: float | None, spent: float | None) -> str:
    if conservative is None:
        return "-"
    return f"{_pct(conservative)} % ({_pct(spent)} %)"


def markdown_table(summary: BenchmarkSummary) -> str:
    """One row per strategy; accuracies and AULC in %, label counts including the seed set."""
    t = summary.target
    lines = [
        "| strategy | AULC % (mean ± sd) | AULC vs random (points) | seeds ≥ random | final acc % "
        "(mean ± sd) | labels to reach random's final | fewer labels than random (vs all it spent) "
        "| stop signal at labels (seeds) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in summary.strategies:
        reach = "never" if s.labels_to_reach_random_final is None else f"{math.ceil(s.labels_to_reach_random_final - 1e-9)}"
        stop = "-" if s.stop_labels_mean is None else f"{s.stop_labels_mean:.0f} ({s.stop_seeds})"
        seeds = "-" if s.strategy == BASELINE else str(s.aulc_seeds_at_or_above_random)
        lines.append(
            f"| {s.strategy} | {_pct(s.aulc_mean)} ± {_pct(s.aulc_sd)} | {_pct(s.aulc_vs_random, True)} "
            f"| {seeds} | {_pct(s.final_mean)} ± {_pct(s.final_sd)} | {reach} "
            f"| {_saving(s.label_saving_vs_random, s.label_saving_vs_random_spent)} | {stop} |"
        )
    if summary.baseline is not None:
        b = summary.baseline
        lines.append(
            f"| baseline: {b.name}, on random's labels | {_pct(b.aulc_mean)} | - | - "
            f"| {_pct(b.final_mean)} | - | - | - |"
        )
    best = (
        f"{t.best_strategy} reaches random's final {_pct(t.random_final_mean)} % with "
        f"{_pct(t.best_label_saving)} % fewer labels ({'meets' if t.best_saves_half else 'misses'} "
        "the 50 % target)"
        if t.best_strategy
        else "no strategy reaches random's final accuracy (misses the 50 % target)"
    )
    aulc = (
        "every strategy's mean AULC is at or above random's"
        if t.every_aulc_at_or_above_random
        else f"below random's mean AULC: {', '.join(t.below_random_aulc)}"
    )
    seed = (
        f" With the seed set's {t.seed_labels:.0f} labels random's model scores "
        f"{_pct(t.random_at_seed_labels)} %, {t.random_at_seed_labels / t.chance:.1f}x chance "
        f"({_pct(t.chance)} %)."
        if t.chance
        else ""
    )
    return "\n".join(lines) + f"\n\nTargets: {best}; {aulc}.{seed}\n"


def learning_curve_png(summary: BenchmarkSummary, title: str = "Label efficiency") -> bytes:
    series = [
        Series(
            name=s.strategy,
            x=s.curve.labels,
            y=[100 * v for v in s.curve.mean],
            sd=[100 * v for v in s.curve.sd],
            style="--" if s.strategy == BASELINE else "-",
            colour="black" if s.strategy == BASELINE else None,
        )
        for s in summary.strategies
    ]
    if summary.baseline is not None:
        b = summary.baseline.curve
        series.append(Series(name="baseline: pixels (random's labels)", x=b.labels,
                             y=[100 * v for v in b.mean], style=":", marker="x", colour="grey"))
    return line_chart_png(
        series, title=title, xlabel="training labels (seed set included)",
        ylabel="test accuracy, % (mean ± 1 sd over seeds)",
        reference=summary.target.random_final_mean * 100, size=(9, 5.5),
    )


def write_benchmark_report(
    out: Path,
    config: BenchmarkConfig,
    records: Sequence[RoundRecord],
    *,
    settings: Settings | None = None,
    extra: dict[str, object] | None = None,
) -> dict[str, Path]:
    """``benchmark.json`` (config, every record, the summary), ``learning_curve.png``, ``table.md``."""
    summary = summarise(records)
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "json": out / "benchmark.json",
        "learning_curve": out / "learning_curve.png",
        "table": out / "table.md",
    }
    document = {
        "config": config.model_dump(),
        "model": settings.model.model_dump() if settings else None,
        "random_fraction": settings.strategy.random_fraction if settings else None,
        "environment": {"python": platform.python_version(), "cpu_count": os.cpu_count()},
        **(extra or {}),
        "records": [r.model_dump() for r in records],
        "summary": summary.model_dump(),
    }
    files["json"].write_text(json.dumps(document, indent=2))
    files["learning_curve"].write_bytes(learning_curve_png(summary))
    files["table"].write_text(markdown_table(summary))
    return files
