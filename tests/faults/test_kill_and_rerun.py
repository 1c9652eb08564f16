"""kill -9 at random points of ingest, export, import, score and retrain, then a rerun:
after every trial nothing is lost, nothing doubled, the budget holds, each export request
made one batch, each promotion one champion record, and whatever the killed process left
half-written is of a kind the sweep removes (see ``maintenance.remove_orphans``).

Each operation runs in a child forked from one zygote process (tests/faults/zygote.py)
that imported activeflow and TensorFlow once; trials are seeded (``FAULT_SEED``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from activeflow.core.ingest.ingest import ingest_images
from activeflow.core.ingest.sources import iter_source
from activeflow.core.label.batches import export_batch
from activeflow.core.score.scoring import model_scores
from activeflow.core.storage.maintenance import remove_orphans
from activeflow.core.storage.pool import load_state, metrics_key, model_key, promotions, sample_key
from activeflow.core.storage.store import LocalStore
from activeflow.settings import load_settings

TRIALS = 20
FAULT_SEED = 20261128
CLASSES = ["red", "green", "blue"]
ZYGOTE = Path(__file__).with_name("zygote.py")
TINY_MODEL = {"image_size": 8, "batch_size": 8, "min_steps": 30, "head_epochs": 1,
              "finetune_epochs": 1, "validation_min_per_class": 1000}


class Zygote:
    """Runs operations in forked children; ``run(..., kill_after=s)`` sends SIGKILL."""

    def __init__(self, log: Path) -> None:
        self.log = log.open("w")
        self.process = subprocess.Popen(
            [sys.executable, str(ZYGOTE)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self.log, text=True,
        )

    def _answer(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the zygote exited; its log:\n{Path(self.log.name).read_text()[-3000:]}")
        return json.loads(line)

    def run(self, request: dict, kill_after: float | None = None) -> int:
        """The child's wait status: 0 when it completed, SIGKILL when killed."""
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        pid = self._answer()["pid"]
        if kill_after is not None:
            time.sleep(kill_after)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass  # it finished first: a trial of a complete run
        return self._answer()["status"]

    def timed(self, request: dict) -> float:
        start = time.monotonic()
        status = self.run(request)
        assert status == 0, f"{request['op']} failed; zygote log:\n{Path(self.log.name).read_text()[-3000:]}"
        return time.monotonic() - start

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=30)
        self.log.close()


@pytest.fixture(scope="module")
def zygote(tmp_path_factory):
    z = Zygote(tmp_path_factory.mktemp("zygote") / "zygote.log")
    yield z
    z.close()


def write_coloured(folder: Path, count: int, first: int, *, labelled: bool = False) -> None:
    """Images whose colour is their class (learnable from few labels), with noise."""
    rng = np.random.default_rng(first)
    for n in range(first, first + count):
        label = n % len(CLASSES)
        pixels = rng.integers(0, 60, (8, 8, 3))
        pixels[..., label] += 180
        path = folder / (CLASSES[label] if labelled else "") / f"{n}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels.astype(np.uint8)).save(path)


def settings_for(store: LocalStore, **budget) -> dict:
    return {"storage": {"uri": store.uri}, "data": {"classes": CLASSES},
            "budget": {"per_run": 3, **budget}, "model": TINY_MODEL,
            "scoring": {"shard_size": 4}}


def check_invariants(store: LocalStore, total: int | None = None) -> None:
    state = load_state(store)
    ids = state.samples.table.column("id").to_pylist()
    assert len(ids) == len(set(ids)), "a sample is catalogued twice"
    for sid, ext in zip(ids, state.samples.table.column("ext").to_pylist(), strict=True):
        assert store.exists(sample_key(sid, ext)), f"sample {sid} is catalogued but its image is lost"
    seen: set[str] = set()
    requests = [m.request_id for m in state.batches.values() if m.request_id]
    assert len(requests) == len(set(requests)), "one export request made two batches"
    for manifest in state.batches.values():
        assert seen.isdisjoint(manifest.sample_ids), "two batches share a sample"
        seen |= set(manifest.sample_ids)
    if total is not None:
        assert state.budget_spent <= total
    for batch_id, records in state.batch_labels.items():
        labelled = [r.sample_id for r in records]
        assert len(labelled) == len(set(labelled)), f"batch {batch_id} has a label twice"
    sequence = [p.sequence for p in promotions(store)]
    assert sequence == list(range(1, len(sequence) + 1)), "promotion records skip or repeat"
    for promotion in promotions(store):
        assert store.exists(model_key(promotion.version)) and store.exists(metrics_key(promotion.version))
    remove_orphans(store, max_age_s=0)  # what a killed process left, as a later sweep sees it
    assert not list(store.root.glob(".tmp-writes/*")), "temp files the sweep left"
    assert set(_batch_folders(store)) <= set(state.batches), "files of a batch never committed"
    for version in _model_versions(store):
        assert store.exists(metrics_key(version)), f"model {version} without its metrics"


def _batch_folders(store: LocalStore) -> list[str]:
    return sorted({key.split("/")[1] for key in store.list("batches/")})


def _model_versions(store: LocalStore) -> list[str]:
    return sorted({key.split("/")[1] for key in store.list("models/") if not key.startswith("models/champion/")})


def trials(zygote: Zygote, store: LocalStore, request_for, *, total: int | None = None,
           before_each=None) -> list[int]:
    """``TRIALS`` kill -9 trials of ``request_for(n)``, each followed by a rerun of the same
    request, with the invariants checked after each; returns the statuses."""
    rng = np.random.default_rng(FAULT_SEED)
    for n in (-2, -1):  # the first run of a child pays for lazy imports: time the second
        if before_each:
            before_each(n)
        duration = zygote.timed(request_for(n))  # a complete run: the window to kill in
    check_invariants(store, total)
    statuses = []
    for n in range(TRIALS):
        if before_each:
            before_each(n)
        statuses.append(zygote.run(request_for(n), kill_after=rng.uniform(0, duration)))
        assert zygote.run(request_for(n)) == 0, f"rerun {n} failed: {Path(zygote.log.name).read_text()[-3000:]}"
        check_invariants(store, total)
    killed = sum(s == signal.SIGKILL for s in statuses)
    print(f"{request_for(0)['op']}: {killed} of {TRIALS} runs killed within {duration:.2f} s, all reruns clean")
    return statuses


def test_ingest_killed_anywhere_then_rerun(zygote, tmp_path):
    store = LocalStore(tmp_path / "store")
    for n in range(-2, TRIALS):
        write_coloured(tmp_path / f"in-{n}", 12, 1000 + 100 * n)

    statuses = trials(zygote, store, lambda n: {
        "op": "ingest", "source": str(tmp_path / f"in-{n}"), "settings": settings_for(store)})

    assert sum(s == signal.SIGKILL for s in statuses) >= TRIALS // 2  # most were killed mid-run
    assert load_state(store).unlabelled_count == 12 * (TRIALS + 2)


def test_export_killed_anywhere_then_rerun(zygote, tmp_path):
    store = LocalStore(tmp_path / "store")
    write_coloured(tmp_path / "in", 100, 0)
    ingest_images(store, iter_source(str(tmp_path / "in"), labelled=False))
    total = 3 * (TRIALS + 2) - 1  # the last export is cut short by the total

    statuses = trials(zygote, store, lambda n: {
        "op": "export", "request_id": f"trial-{n}", "settings": settings_for(store, total=total)},
        total=total)

    assert sum(s == signal.SIGKILL for s in statuses) >= TRIALS // 2
    state = load_state(store)
    assert len(state.batches) == TRIALS + 2 and state.budget_spent == total


def test_import_killed_anywhere_then_rerun(zygote, tmp_path):
    store = LocalStore(tmp_path / "store")
    write_coloured(tmp_path / "in", 3 * (TRIALS + 2), 0)
    ingest_images(store, iter_source(str(tmp_path / "in"), labelled=False))
    settings = load_settings(**settings_for(store))
    batch_ids = [export_batch(store, settings).batch_id for _ in range(TRIALS + 2)]
    files = {}
    for n, batch_id in enumerate(batch_ids, start=-2):
        files[n] = tmp_path / f"labels-{n}.csv"
        sample_ids = load_state(store).batches[batch_id].sample_ids
        files[n].write_text("id,label\n" + "".join(f"{sid},{CLASSES[i % 3]}\n" for i, sid in enumerate(sample_ids)))

    statuses = trials(zygote, store, lambda n: {
        "op": "import", "batch_id": batch_ids[n + 2], "file": str(files[n]), "settings": settings_for(store)})

    assert sum(s == signal.SIGKILL for s in statuses) >= TRIALS // 2
    state = load_state(store)
    assert len(state.labelled) == 3 * (TRIALS + 2) and state.queued == set()


def labelled_store(tmp_path: Path) -> LocalStore:
    """12 training and 12 test images of the three colours."""
    store = LocalStore(tmp_path / "store")
    for split, first in (("train", 0), ("test", 500)):
        write_coloured(tmp_path / split, 12, first, labelled=True)
        ingest_images(store, iter_source(str(tmp_path / split), labelled=True), split=split, classes=CLASSES)
    return store


def test_retrain_killed_anywhere_then_rerun(zygote, tmp_path):
    store = labelled_store(tmp_path)

    statuses = trials(zygote, store, lambda n: {"op": "retrain", "settings": settings_for(store)})

    assert sum(s == signal.SIGKILL for s in statuses) >= TRIALS // 2
    assert promotions(store), "no retrain was ever promoted: the trials tested nothing"


def test_score_killed_anywhere_then_rerun(zygote, tmp_path):
    store = labelled_store(tmp_path)
    assert zygote.run({"op": "retrain", "settings": settings_for(store)}) == 0
    (champion,) = promotions(store)

    def new_arrivals(n):  # each trial has new samples to score
        write_coloured(tmp_path / f"in-{n}", 10, 2000 + 100 * n)
        ingest_images(store, iter_source(str(tmp_path / f"in-{n}"), labelled=False))

    statuses = trials(zygote, store, lambda n: {"op": "score", "settings": settings_for(store)},
                      before_each=new_arrivals)

    assert sum(s == signal.SIGKILL for s in statuses) >= TRIALS // 2
    scores = model_scores(store, champion.version)
    scored = scores.column("id").to_pylist()
    assert sorted(set(scored)) == sorted(load_state(store).unlabelled.to_pylist())


def test_leftovers_are_kept_while_they_could_be_writes_in_flight(tmp_path):
    from datetime import UTC, datetime, timedelta

    from activeflow.core.storage.pool import new_id

    store = LocalStore(tmp_path / "store")
    batch, version, run = new_id("b"), new_id("m"), new_id("s")
    store.put(f"batches/{batch}/tasks.json", b"[]")  # files of an export killed before its commit
    store.put(model_key(version), b"model")  # a retrain killed before its metrics
    store.put(f"scores/{version}/{run}/part-00000.parquet", b"part")  # a scoring run never completed
    store.put(f"scores/{version}/{new_id('s')}/_SUCCESS.json", b"{}")  # a complete one stays

    assert remove_orphans(store) == {"temp_files": 0, "batches": 0, "models": 0, "scoring_runs": 0}
    later = datetime.now(UTC) + timedelta(hours=2)
    assert remove_orphans(store, now=later) == {"temp_files": 0, "batches": 1, "models": 1, "scoring_runs": 1}
    assert [k.rsplit("/", 1)[1] for k in store.list()] == ["_SUCCESS.json"]
