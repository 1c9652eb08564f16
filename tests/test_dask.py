"""Scoring on a Dask cluster (``scoring.runner = "dask"``) through prefect-dask: a local
cluster of two worker processes against SeaweedFS gives the scores the thread runner does."""

from __future__ import annotations

import numpy as np
import pytest
from images import write_image

from activeflow import modeling
from activeflow.flows.score import run_score_flow
from activeflow.ingest import ingest_images
from activeflow.pool import Promotion, model_key, promotion_key
from activeflow.scoring import model_scores
from activeflow.settings import load_settings
from activeflow.sources import iter_source
from activeflow.store import open_store, put_json_if_absent

pytestmark = [pytest.mark.usefixtures("prefect_harness"), pytest.mark.s3, pytest.mark.slow]

CLASSES = ["a", "b", "c"]


def _scores_by_id(store, version, columns=()):
    return model_scores(store, version, columns).sort_by("id")


def test_dask_runner_scores_as_the_thread_runner_does(tmp_path, s3_storage, caplog):
    for n in range(30):
        write_image(tmp_path / "in" / f"{n}.png", n)
    settings = load_settings(
        storage=s3_storage.model_dump(), data={"classes": CLASSES},
        model={"image_size": 16}, scoring={"shard_size": 8},
        strategy={"name": "margin-diverse"},  # stores embeddings too
    )
    store = open_store(settings.storage)
    ingest_images(store, iter_source(str(tmp_path / "in"), labelled=False))
    store.put(model_key("m1"), modeling.model_to_bytes(modeling.build_classifier(settings.model, 3)))
    put_json_if_absent(store, promotion_key(1), Promotion(
        sequence=1, version="m1", accuracy=0.5, previous=None, promoted_at="now").model_dump())

    threads = run_score_flow(settings)
    by_threads = _scores_by_id(store, "m1", ["embedding"])
    for key in store.list("scores/"):
        store.delete(key)
    dask_settings = settings.model_copy(update={"scoring": settings.scoring.model_copy(
        update={"runner": "dask", "dask_workers": 2})})
    on_dask = run_score_flow(dask_settings)
    assert "Creating a new Dask cluster with `distributed.deploy.local.LocalCluster`" in caplog.text
    by_dask = _scores_by_id(store, "m1", ["embedding"])

    assert threads.total == on_dask.total == 30 and len(on_dask.shards) == 4
    assert by_dask.column("id").to_pylist() == by_threads.column("id").to_pylist()
    for column in ("predicted", "margin", "entropy"):
        assert by_dask.column(column).to_pylist() == pytest.approx(by_threads.column(column).to_pylist())
    np.testing.assert_allclose(
        np.stack(by_dask.column("embedding").to_numpy(zero_copy_only=False)),
        np.stack(by_threads.column("embedding").to_numpy(zero_copy_only=False)), rtol=1e-5,
    )
