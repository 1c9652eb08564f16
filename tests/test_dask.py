"""Scoring on a Dask cluster (``scoring.runner = "dask"``) through prefect-dask: a local
cluster of two worker processes against SeaweedFS gives the scores the thread runner does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from images import write_image
from processes import processes_with

from activeflow.core.ingest.ingest import ingest_images
from activeflow.core.ingest.sources import iter_source
from activeflow.core.score import modeling
from activeflow.core.score.scoring import model_scores
from activeflow.core.storage.pool import Promotion, model_key, promotion_key
from activeflow.core.storage.store import open_store, put_json_if_absent
from activeflow.flows.score import run_score_flow
from activeflow.settings import load_settings

pytestmark = [pytest.mark.usefixtures("prefect_harness"), pytest.mark.s3, pytest.mark.slow]

CLASSES = ["a", "b", "c"]
VERSION = "m-dask-test"  # its shard task runs are named "score shard <n> with <version>"


def _shard_runs() -> list[int]:
    """Shard indexes of the completed score-shard task runs of VERSION in the Prefect API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_=f"with {VERSION}"))
        )
    return [int(run.name.split()[2]) for run in runs if run.name.startswith("score shard") and
            run.state is not None and run.state.is_completed()]


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
    store.put(model_key(VERSION), modeling.model_to_bytes(modeling.build_classifier(settings.model, 3)))
    put_json_if_absent(store, promotion_key(1), Promotion(
        sequence=1, version=VERSION, accuracy=0.5, previous=None, promoted_at="now").model_dump())

    threads = run_score_flow(settings)
    by_threads = _scores_by_id(store, VERSION, ["embedding"])
    for key in store.list("scores/"):
        store.delete(key)
    dask_settings = settings.model_copy(update={"scoring": settings.scoring.model_copy(
        update={"runner": "dask", "dask_workers": 2})})
    on_dask = run_score_flow(dask_settings)
    assert "Creating a new Dask cluster with `distributed.deploy.local.LocalCluster`" in caplog.text
    by_dask = _scores_by_id(store, VERSION, ["embedding"])

    assert threads.total == on_dask.total == 30 and len(on_dask.shards) == 4
    # The workers reported their shards to this session's Prefect API, not to servers of their own.
    assert sorted(_shard_runs()) == sorted([*range(4)] * 2)
    assert by_dask.column("id").to_pylist() == by_threads.column("id").to_pylist()
    for column in ("predicted", "margin", "entropy"):
        assert by_dask.column(column).to_pylist() == pytest.approx(by_threads.column(column).to_pylist())
    np.testing.assert_allclose(
        np.stack(by_dask.column("embedding").to_numpy(zero_copy_only=False)),
        np.stack(by_threads.column("embedding").to_numpy(zero_copy_only=False)), rtol=1e-5,
    )


@pytest.mark.skipif(sys.platform != "linux", reason="finds leftover servers through /proc")
def test_local_dask_workers_use_the_commands_temporary_server(tmp_path):
    """`activeflow score` on a local Dask cluster, with Prefect's temporary server: the
    workers report to the command's server instead of each starting one (which the
    command's exit would leave running)."""
    for n in range(12):
        write_image(tmp_path / "in" / f"{n}.png", n)
    store_uri = str(tmp_path / "store")
    settings = load_settings(storage={"uri": store_uri}, data={"classes": CLASSES}, model={"image_size": 16})
    store = open_store(settings.storage)
    ingest_images(store, iter_source(str(tmp_path / "in"), labelled=False))
    store.put(model_key(VERSION), modeling.model_to_bytes(modeling.build_classifier(settings.model, 3)))
    put_json_if_absent(store, promotion_key(1), Promotion(
        sequence=1, version=VERSION, accuracy=0.5, previous=None, promoted_at="now").model_dump())
    home = tmp_path / "prefect-home-dask"
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), ACTIVEFLOW_DATA__CLASSES='["a", "b", "c"]',
               ACTIVEFLOW_MODEL__IMAGE_SIZE="16", ACTIVEFLOW_SCORING__SHARD_SIZE="4",
               ACTIVEFLOW_SCORING__RUNNER="dask", ACTIVEFLOW_SCORING__DASK_WORKERS="2")

    run = subprocess.run(
        [Path(sys.executable).parent / "activeflow", "-v", "--store", store_uri, "score", "--json"],
        capture_output=True, text=True, env=env, timeout=600,
    )

    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(run.stdout)["scored"] == 12
    assert run.stderr.count("Starting temporary server") == 1
    assert processes_with(str(home)) == []

    # Without -v the workers keep their task logs off the terminal too.
    for n in range(12, 16):
        write_image(tmp_path / "more" / f"{n}.png", n)
    ingest_images(store, iter_source(str(tmp_path / "more"), labelled=False))
    quiet = subprocess.run(
        [Path(sys.executable).parent / "activeflow", "--store", store_uri, "score", "--json"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert quiet.returncode == 0 and json.loads(quiet.stdout)["scored"] == 4, quiet.stderr[-3000:]
    assert "Task run" not in quiet.stderr, quiet.stderr[-3000:]

