"""Batch selection through the pipeline: every strategy by name from a real scoring run, the
random slice, the unbiased estimate it makes possible, and what scoring stores for whom."""

from __future__ import annotations

import io
import shutil
from typing import get_args

import numpy as np
import pyarrow.parquet as pq
import pytest
from images import write_image

from activeflow.core.ingest.ingest import ingest_images
from activeflow.core.ingest.sources import iter_source
from activeflow.core.label.batches import export_batch
from activeflow.core.score import modeling, scoring, selection, strategies
from activeflow.core.score.scoring import ScoringError
from activeflow.core.storage.pool import (
    BatchItemRecord,
    BatchManifest,
    ImportedLabel,
    Promotion,
    load_state,
    promotion_key,
)
from activeflow.core.storage.store import LocalStore, put_json_if_absent
from activeflow.core.train import training
from activeflow.evaluation.demo_data import write_digits
from activeflow.settings import ModelSettings, SelectorName, SettingsError, load_settings

TINY_MODEL = {"image_size": 8, "head_epochs": 1, "finetune_epochs": 0, "batch_size": 64, "min_steps": 60, "baseline_tolerance": 1.0}
CLASSES = ["cat", "dog", "bird"]


# --- a real (tiny) champion over a slice of the digits ----------------------------------------


@pytest.fixture(scope="module")
def trained_store(tmp_path_factory):
    """A store with a test set, a labelled seed set, a 120-image pool and a tiny champion."""
    root = tmp_path_factory.mktemp("selection")
    digits = write_digits(root / "digits", arrivals=2, test_size=60)
    store = LocalStore(root / "store")
    settings = load_settings(
        storage={"uri": store.uri}, data={"classes": digits.classes}, model=TINY_MODEL
    )
    ingest_images(store, iter_source(str(digits.test), labelled=True), split="test")
    ingest_images(store, iter_source(str(digits.seed), labelled=True), split="train")
    pool = list(iter_source(str(digits.arrivals[1]), labelled=False))[:120]
    ingest_images(store, pool)
    metrics = training.train_candidate(store, load_state(store), settings)
    assert training.promote_if_not_worse(store, metrics, settings.model.baseline_tolerance).promoted
    return store, digits.classes


def _store_copy(trained_store, tmp_path):
    store, classes = trained_store
    shutil.copytree(store.root, tmp_path / "store")
    return LocalStore(tmp_path / "store"), classes


def _score(store, settings):
    return scoring.score_pool(store, settings)


def test_a_scoring_run_scores_only_what_its_champion_has_not_scored(trained_store, tmp_path):
    store, classes = _store_copy(trained_store, tmp_path)
    settings = load_settings(storage={"uri": store.uri}, data={"classes": classes}, model=TINY_MODEL)
    first = _score(store, settings)
    again = _score(store, settings)
    assert (first.total, first.reused) == (120, 0)
    assert (again.total, again.reused, again.shards) == (0, 120, [])

    for n in range(3):  # the night's new images: only they are scored
        write_image(tmp_path / "new" / f"{n}.png", 1000 + n)
    ingest_images(store, iter_source(str(tmp_path / "new"), labelled=False))
    nightly = _score(store, settings)
    assert (nightly.total, nightly.reused) == (3, 120)
    scores = scoring.model_scores(store, first.model_version)
    assert scores.num_rows == len(set(scores.column("id").to_pylist())) == 123

    # A strategy that needs what earlier runs did not store scores everything once.
    coreset = load_settings(
        storage={"uri": store.uri}, data={"classes": classes}, model=TINY_MODEL, strategy={"name": "coreset"}
    )
    assert (_score(store, coreset).total, _score(store, coreset).total) == (123, 0)

    # A new champion scores everything.
    champion = load_state(store).champion
    store.put("models/m-new/model.keras", store.get(f"models/{champion.version}/model.keras"))
    promotion = Promotion(sequence=2, version="m-new", accuracy=1.0, previous=champion.version, promoted_at="now")
    put_json_if_absent(store, promotion_key(2), promotion.model_dump())
    assert (_score(store, settings).total, _score(store, settings).reused) == (123, 123)


@pytest.mark.parametrize("name", ["margin", "margin-diverse"])
def test_an_export_keeps_only_the_top_candidates_and_a_uniform_sample(trained_store, tmp_path, name):
    store, classes = _store_copy(trained_store, tmp_path)
    settings = load_settings(
        storage={"uri": store.uri}, data={"classes": classes}, model=TINY_MODEL, budget={"per_run": 10},
        strategy={"name": name, "random_fraction": 0.2, "candidates": 15},
    )
    plan = _score(store, settings)
    scores = scoring.model_scores(store, plan.model_version, plan.columns)
    by_margin = scores.sort_by([("margin", "descending")]).column("id").to_pylist()

    batch_id = export_batch(store, settings).batch_id
    manifest = load_state(store).batches[batch_id]

    picks = [item.sample_id for item in manifest.items if not item.random_slice]
    drawn = [item.sample_id for item in manifest.items if item.random_slice]
    assert (len(picks), len(drawn)) == (8, 2) and not set(picks) & set(drawn)
    assert set(picks) <= set(by_margin[:15])  # chosen among the 15 kept candidates
    if name == "margin":  # a score-based strategy loses nothing: the same top 8 as from all
        assert set(picks) == set(by_margin[:8])


@pytest.mark.parametrize("name", get_args(SelectorName))
def test_every_strategy_is_selectable_by_name_from_a_real_scoring_run(trained_store, tmp_path, name):
    store, classes = _store_copy(trained_store, tmp_path)
    settings = load_settings(
        storage={"uri": store.uri}, data={"classes": classes}, model=TINY_MODEL,
        scoring={"shard_size": 50}, budget={"per_run": 12},
        strategy={"name": name, "mc_passes": 4},
    )
    before = load_state(store)
    _score(store, settings)

    result = export_batch(store, settings)

    state = load_state(store)
    manifest = state.batches[result.batch_id]
    assert result.size == 12 and manifest.strategy == name
    ids = manifest.sample_ids
    assert len(set(ids)) == 12 and set(ids) <= set(before.unlabelled.to_pylist())
    _, n_random = strategies.split_budget(12, settings.strategy.random_fraction)
    flags = [item.random_slice for item in manifest.items]
    assert sum(flags) == n_random == 1
    assert flags == sorted(flags)  # the strategy's picks first, then the random slice
    assert all(item.predicted in classes and 0 < item.confidence <= 1 for item in manifest.items)


def test_only_the_configured_strategy_s_extra_outputs_are_stored(trained_store, tmp_path):
    store, classes = _store_copy(trained_store, tmp_path)

    def columns(name):
        settings = load_settings(
            storage={"uri": store.uri}, data={"classes": classes}, model=TINY_MODEL,
            strategy={"name": name, "mc_passes": 3},
        )
        plan = _score(store, settings)
        return scoring.model_scores(store, plan.model_version, plan.columns)

    margin = columns("margin")
    assert set(margin.column_names) == set(scoring.SCORE_SCHEMA.names) | {"probs"}
    coreset = columns("coreset")
    assert {"embedding"} <= set(coreset.column_names) and "mc_probs" not in coreset.column_names
    assert scoring.embeddings_of(coreset).shape == (120, 128)  # small_cnn's pooled features
    bald = columns("bald")
    mc = scoring.mc_probs_of(bald, len(classes))
    assert mc.shape == (3, 120, 10) and "embedding" not in bald.column_names
    assert np.allclose(mc.sum(axis=2), 1.0)
    np.testing.assert_allclose(bald.column("bald").to_numpy(), strategies.bald(mc), atol=1e-6)
    # The passes differ (dropout is on) and each is a valid distribution.
    assert np.abs(mc[0] - mc[1]).max() > 1e-4


def test_a_strategy_whose_outputs_were_not_scored_says_what_to_run(trained_store, tmp_path):
    store, classes = _store_copy(trained_store, tmp_path)
    common = {"storage": {"uri": store.uri}, "data": {"classes": classes}, "model": TINY_MODEL}
    _score(store, load_settings(**common, strategy={"name": "margin"}))
    before = store.list()
    with pytest.raises(ScoringError, match="strategy coreset needs embeddings.*strategy.name = coreset"):
        export_batch(store, load_settings(**common, strategy={"name": "coreset"}))
    assert store.list() == before


def test_coreset_starts_from_what_the_labelled_samples_cover(trained_store, tmp_path):
    store, classes = _store_copy(trained_store, tmp_path)
    settings = load_settings(
        storage={"uri": store.uri}, data={"classes": classes}, model=TINY_MODEL,
        strategy={"name": "coreset"},
    )
    plan = _score(store, settings)
    state = load_state(store)
    table = scoring.model_scores(store, plan.model_version, plan.columns)
    outputs = selection.pool_outputs(store, state, settings, table)
    assert outputs.labelled_embeddings.shape == (len(state.labelled), 128)
    # With the labelled samples as centres, the first pick is the pool point farthest from them.
    far = np.min(
        ((outputs.embeddings[:, None, :] - outputs.labelled_embeddings[None]) ** 2).sum(-1), axis=1
    )
    assert strategies.select("coreset", outputs, 1)[0] == int(np.argmax(far))


# --- the random slice on hand-made scores ------------------------------------------------------


@pytest.fixture
def store(tmp_path):
    for n in range(30):
        write_image(tmp_path / "in" / f"{n}.png", n)
    store = LocalStore(tmp_path / "store")
    ingest_images(store, iter_source(str(tmp_path / "in"), labelled=False))
    return store


def _champion_with_scores(store, probs):
    """A champion (with metrics) and one complete scoring run of the given probabilities."""
    version = "m-test"
    put_json_if_absent(
        store, promotion_key(1),
        Promotion(sequence=1, version=version, accuracy=0.5, previous=None, promoted_at="now").model_dump(),
    )
    ids = load_state(store).unlabelled.to_pylist()
    table = scoring.scores_table(ids, probs, CLASSES)
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    store.put(f"scores/{version}/s1/part-00000.parquet", buffer.getvalue())
    scoring.commit_scores(store, scoring.ScoringPlan(run_id="s1", model_version=version, shards=[ids]), len(ids))
    return ids


def _settings(store, **strategy):
    return load_settings(
        storage={"uri": store.uri}, data={"classes": CLASSES}, budget={"per_run": 10},
        strategy={"name": "margin", **strategy},
    )


def _gapped(n):
    """Sample i has top-2 gap 0.9 - 0.03 i: later samples are more confused."""
    rows = []
    for i in range(n):
        gap = 0.9 - 0.03 * i
        top = (1 + gap) / 2 - 0.005
        rows.append([top, top - gap, 1 - (2 * top - gap)])
    return np.array(rows)


@pytest.mark.parametrize(("fraction", "expected"), [(0.0, 0), (0.1, 1), (0.25, 3), (0.5, 5)])
def test_random_slice_size_follows_split_budget(store, fraction, expected):
    ids = _champion_with_scores(store, _gapped(30))
    result = export_batch(store, _settings(store, random_fraction=fraction))
    manifest = load_state(store).batches[result.batch_id]
    chosen = [item.sample_id for item in manifest.items if not item.random_slice]
    drawn = [item.sample_id for item in manifest.items if item.random_slice]
    assert (len(chosen), len(drawn)) == strategies.split_budget(10, fraction)
    assert len(drawn) == expected
    # The strategy's part is still the most confused, best first; the slice is elsewhere.
    assert chosen == [ids[29 - i] for i in range(len(chosen))]
    assert not set(drawn) & set(chosen)


def test_random_slice_is_reproducible_by_seed_and_varies_with_it(store, tmp_path):
    _champion_with_scores(store, _gapped(30))

    def slice_of(seed, twin_name):
        twin = LocalStore(tmp_path / twin_name)
        for key in store.list():
            twin.put(key, store.get(key))
        result = export_batch(twin, _settings(twin, random_fraction=0.5, seed=seed))
        return [i.sample_id for i in load_state(twin).batches[result.batch_id].items if i.random_slice]

    assert slice_of(1, "a") == slice_of(1, "b")
    assert slice_of(1, "a2") != slice_of(2, "c")


def test_class_balanced_reads_the_champion_s_per_class_errors(store):
    ids = _champion_with_scores(store, np.tile([[0.5, 0.3, 0.2], [0.2, 0.5, 0.3], [0.3, 0.2, 0.5]], (10, 1)))
    settings = _settings(store, name="class-balanced", random_fraction=0.0)
    with pytest.raises(ScoringError, match="model m-test has no metrics.json"):
        export_batch(store, settings)
    metrics = training.ModelMetrics(
        version="m-test", created_at="now", classes=CLASSES, accuracy=0.5,
        per_class_accuracy={"cat": 0.2, "dog": 0.9, "bird": None},  # errors 0.8, 0.1, mean 0.45
        confusion_matrix=[[0] * 3] * 3, labels_used=3, test_size=3,
        history=modeling.TrainingHistory(head_loss=[], finetune_loss=[]), model_settings={},
    )
    put_json_if_absent(store, "models/m-test/metrics.json", metrics.model_dump())
    assert selection.class_errors(metrics).tolist() == pytest.approx([0.8, 0.1, 0.45])

    result = export_batch(store, settings)

    items = load_state(store).batches[result.batch_id].items
    predicted = [item.predicted for item in items]
    # Quotas of 10 in proportion 0.8 : 0.1 : 0.45 (largest remainder): 6, 1, 3.
    assert (predicted.count("cat"), predicted.count("dog"), predicted.count("bird")) == (6, 1, 3)
    assert {item.sample_id for item in items} <= set(ids)


def test_random_fraction_and_mc_passes_are_validated():
    with pytest.raises(SettingsError, match="strategy.random_fraction"):
        load_settings(strategy={"random_fraction": 1.0})
    with pytest.raises(SettingsError, match="strategy.mc_passes"):
        load_settings(strategy={"mc_passes": 1})
    with pytest.raises(SettingsError, match="strategy.name"):
        load_settings(strategy={"name": "oracle"})
    assert load_settings(strategy={"name": "margin-diverse"}).strategy.random_fraction == 0.1


# --- the unbiased estimate ----------------------------------------------------------------------


def _manifest(items):
    return BatchManifest(
        batch_id="b1", created_at="now", strategy="margin", model_version="m1",
        budget_per_run=len(items), budget_total=None, items=items,
    )


def _label(sample_id, label):
    return ImportedLabel(sample_id=sample_id, label=label, batch_id="b1", source_file="x.csv", imported_at="now")


def test_pool_estimate_counts_only_the_labelled_random_slice():
    items = [
        BatchItemRecord(sample_id="a", score=0.9, predicted="cat"),  # strategy's pick: ignored
        BatchItemRecord(sample_id="b", score=0.1, predicted="cat", random_slice=True),
        BatchItemRecord(sample_id="c", score=0.1, predicted="dog", random_slice=True),
        BatchItemRecord(sample_id="d", score=0.1, predicted="dog", random_slice=True),
        BatchItemRecord(sample_id="e", score=0.1, predicted="bird", random_slice=True),  # unlabelled
    ]
    labels = [_label("a", "dog"), _label("b", "cat"), _label("c", "dog"), _label("d", "cat")]

    estimate = selection.estimate_pool_accuracy(_manifest(items), labels, test_accuracy=0.9)

    assert (estimate.random_slice, estimate.answered, estimate.correct) == (4, 3, 2)
    assert estimate.accuracy == pytest.approx(2 / 3)
    # Wilson 95 % for 2 of 3, by hand: centre (2/3 + 1.92/3) / (1 + 3.8416/3) = 0.5741...
    assert (estimate.low, estimate.high) == pytest.approx((0.2077, 0.9385), abs=1e-4)
    assert estimate.test_accuracy == 0.9
    assert "pool accuracy 66.7% on 3 random-slice item(s)" in estimate.summary
    assert "vs test accuracy 90.0%" in estimate.summary


def test_pool_estimate_without_a_random_slice_says_so():
    items = [BatchItemRecord(sample_id="a", score=0.9, predicted="cat")]
    estimate = selection.estimate_pool_accuracy(_manifest(items), [_label("a", "cat")])
    assert estimate.accuracy is None and estimate.low is None and estimate.answered == 0
    assert "no unbiased pool estimate" in estimate.summary


def test_wilson_interval_edges():
    assert selection.wilson_interval(0, 0) is None
    low, high = selection.wilson_interval(10, 10)
    assert high == 1.0 and low == pytest.approx(0.7225, abs=1e-4)
    low, high = selection.wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)


# --- what the model computes for the strategies ------------------------------------------------


def test_forward_pool_embeds_once_and_varies_only_the_dropout():
    model = modeling.build_classifier(ModelSettings(image_size=8, dropout=0.4), 3)
    x = np.random.default_rng(0).uniform(0, 255, (24, 8, 8, 3)).astype("float32")

    out = modeling.forward_pool(model, x, 8, embeddings=True, mc_passes=20, seed=3)

    np.testing.assert_allclose(out.probs, modeling.predict_proba(model, x, 8), atol=1e-6)
    features = model.get_layer("backbone")(model.get_layer("preprocess")(x), training=False)
    np.testing.assert_allclose(out.embeddings, np.asarray(features), atol=1e-5)
    assert out.mc_probs.shape == (20, 24, 3)
    np.testing.assert_allclose(out.mc_probs.sum(axis=2), 1.0, atol=1e-6)
    assert np.abs(out.mc_probs[0] - out.mc_probs[1]).max() > 1e-3  # dropout really is on
    # Inverted dropout keeps the expected pre-activation, so the passes centre on the prediction.
    assert np.abs(out.mc_probs.mean(axis=0) - out.probs).max() < 0.15
    again = modeling.forward_pool(model, x, 8, mc_passes=20, seed=3)
    np.testing.assert_array_equal(again.mc_probs, out.mc_probs)
    assert again.embeddings is None


def test_forward_pool_keeps_batchnorm_in_inference_mode():
    model = modeling.build_classifier(ModelSettings(backbone="mobilenet_v2", image_size=32, dropout=0.5), 3)
    x = np.random.default_rng(0).uniform(0, 255, (6, 32, 32, 3)).astype("float32")
    moving = [np.array(v) for v in model.get_layer("backbone").non_trainable_weights]

    out = modeling.forward_pool(model, x, 6, embeddings=True, mc_passes=3)

    after = [np.array(v) for v in model.get_layer("backbone").non_trainable_weights]
    assert all(np.array_equal(a, b) for a, b in zip(moving, after, strict=True))
    features = model.get_layer("backbone")(model.get_layer("preprocess")(x), training=False)
    np.testing.assert_allclose(out.embeddings, np.asarray(features), atol=1e-5)


def test_a_short_last_batch_gives_each_image_what_it_gets_alone():
    # 7 images in batches of 4: the last batch is padded to 4, never leaking into the outputs.
    model = modeling.build_classifier(ModelSettings(backbone="mobilenet_v2", image_size=32), 3)
    x = np.random.default_rng(1).uniform(0, 255, (7, 32, 32, 3)).astype("float32")
    alone = np.concatenate([np.asarray(model(x[i : i + 1], training=False)) for i in range(7)])

    out = modeling.forward_pool(model, x, 4, embeddings=True)

    assert out.probs.shape == (7, 3) and out.embeddings.shape[0] == 7
    np.testing.assert_allclose(out.probs, alone, atol=1e-5)
    np.testing.assert_allclose(modeling.predict_proba(model, x, 4), alone, atol=1e-5)


def test_forward_pool_refuses_mc_dropout_without_dropout():
    model = modeling.build_classifier(ModelSettings(image_size=8, dropout=0.0), 2)
    x = np.zeros((2, 8, 8, 3), dtype="float32")
    with pytest.raises(ValueError, match="Monte-Carlo dropout needs model.dropout > 0"):
        modeling.forward_pool(model, x, 2, mc_passes=2)


def test_scoring_is_worth_it_only_with_a_champion_and_budget_left():
    from activeflow.core.score.scoring import worth_scoring

    assert worth_scoring({"champion": "m1", "budget_remaining": None})  # no total budget
    assert worth_scoring({"champion": "m1", "budget_remaining": 5})
    assert not worth_scoring({"champion": "m1", "budget_remaining": 0})
    assert not worth_scoring({"champion": None, "budget_remaining": 5})  # cold start: random
