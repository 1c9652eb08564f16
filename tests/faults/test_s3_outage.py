"""SeaweedFS frozen (SIGSTOP) or killed in the middle of an ingest, then back: the ingest
fails within the configured timeouts naming the endpoint, and a rerun completes with every
image catalogued once."""

from __future__ import annotations

import signal
import threading
import time

import pytest
from images import write_image
from s3_server import DUMMY_CREDENTIALS, restart_seaweedfs, s3_client, start_seaweedfs

from activeflow.core.ingest.ingest import ingest_images
from activeflow.core.ingest.sources import iter_source
from activeflow.core.storage.pool import load_state, sample_key
from activeflow.core.storage.store import open_store
from activeflow.settings import StorageSettings

pytestmark = pytest.mark.s3

IMAGES = 600


@pytest.fixture
def seaweedfs(tmp_path, monkeypatch):
    for name, value in DUMMY_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    server = start_seaweedfs(tmp_path / "weed")
    s3_client(server.endpoint).create_bucket(Bucket="outage")
    yield server
    server.stop()


def storage_at(endpoint: str) -> StorageSettings:
    return StorageSettings(uri="s3://outage/store", endpoint_url=endpoint, region="us-east-1",
                           connect_timeout_seconds=1, read_timeout_seconds=2, max_attempts=2)


def ingest_in_background(storage: StorageSettings, source) -> tuple[threading.Thread, dict]:
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["report"] = ingest_images(open_store(storage), iter_source(str(source), labelled=False))
        except Exception as error:  # noqa: BLE001 - the test looks at it
            outcome["error"] = error
        outcome["ended"] = time.monotonic()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def wait_until_writing(endpoint: str, timeout: float = 60.0) -> None:
    """Until the ingest has put its first image: the fault then lands mid-ingest however
    fast the machine (a fixed second was, here, after 300 images had all been written)."""
    client = s3_client(endpoint)
    deadline = time.monotonic() + timeout
    while client.list_objects_v2(Bucket="outage", Prefix="store/samples/", MaxKeys=1)["KeyCount"] == 0:
        assert time.monotonic() < deadline, "the ingest wrote no image"
        time.sleep(0.01)


def assert_every_image_once(storage: StorageSettings) -> None:
    store = open_store(storage)
    samples = load_state(store).samples.table
    ids = samples.column("id").to_pylist()
    assert len(ids) == len(set(ids)) == IMAGES
    for sid, ext in zip(ids, samples.column("ext").to_pylist(), strict=True):
        assert store.exists(sample_key(sid, ext))


@pytest.fixture
def source(tmp_path):
    for n in range(IMAGES):
        write_image(tmp_path / "in" / f"{n}.png", n)
    return tmp_path / "in"


def test_a_frozen_server_fails_the_ingest_in_time_and_a_rerun_completes(seaweedfs, source):
    storage = storage_at(seaweedfs.endpoint)
    thread, outcome = ingest_in_background(storage, source)
    wait_until_writing(seaweedfs.endpoint)
    seaweedfs.process.send_signal(signal.SIGSTOP)
    frozen_at = time.monotonic()
    try:
        thread.join(timeout=120)
        assert not thread.is_alive(), "the ingest hung on a frozen server"
    finally:
        seaweedfs.process.send_signal(signal.SIGCONT)
    assert "error" in outcome, "the server froze after the ingest had finished: freeze earlier"
    assert seaweedfs.endpoint in str(outcome["error"])
    assert outcome["ended"] - frozen_at < 60

    ingest_images(open_store(storage), iter_source(str(source), labelled=False))

    assert_every_image_once(storage)


def test_a_killed_server_fails_the_ingest_at_once_and_a_rerun_after_restart_completes(seaweedfs, source):
    storage = storage_at(seaweedfs.endpoint)
    thread, outcome = ingest_in_background(storage, source)
    wait_until_writing(seaweedfs.endpoint)
    seaweedfs.process.kill()
    killed_at = time.monotonic()
    thread.join(timeout=120)
    assert not thread.is_alive()
    assert "error" in outcome, "the server was killed after the ingest had finished"
    assert seaweedfs.endpoint in str(outcome["error"])
    assert outcome["ended"] - killed_at < 60

    restarted = restart_seaweedfs(seaweedfs)
    try:
        ingest_images(open_store(storage), iter_source(str(source), labelled=False))
        assert_every_image_once(storage)
    finally:
        restarted.stop()
