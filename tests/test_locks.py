"""The export lock: a lease in the store that survives crashes, and exports under it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from images import write_image

from activeflow import locks
from activeflow.ingest import ingest_images
from activeflow.pool import load_state
from activeflow.settings import load_settings
from activeflow.sources import iter_source
from activeflow.store import LocalStore, ObjectStore, open_store


def _held_by_many(store: ObjectStore, threads: int, *, lease_s: float) -> tuple[int, int]:
    """``threads`` threads enter ``hold`` at once; returns (most inside at once, entries)."""
    inside = 0
    most = 0
    entries = 0
    counter = threading.Lock()
    start = threading.Barrier(threads)
    errors: list[BaseException] = []

    def work() -> None:
        nonlocal inside, most, entries
        try:
            start.wait()
            with locks.hold(store, "export", lease_s=lease_s, wait_s=30, poll_s=0.01):
                with counter:
                    inside += 1
                    entries += 1
                    most = max(most, inside)
                time.sleep(0.05)
                with counter:
                    inside -= 1
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert errors == []
    return most, entries


def test_threads_holding_the_lock_never_overlap(tmp_path):
    store = LocalStore(tmp_path / "store")
    assert _held_by_many(store, 6, lease_s=10) == (1, 6)
    assert locks.read_lock(store, "export").state == "released"


@pytest.mark.s3
def test_threads_holding_the_lock_never_overlap_on_s3(s3_storage):
    store = open_store(s3_storage)
    assert _held_by_many(store, 4, lease_s=10) == (1, 4)


def test_a_waiter_gives_up_naming_the_holder_and_writes_nothing(tmp_path):
    store = LocalStore(tmp_path / "store")
    held = locks.acquire(store, "export", "worker-a", lease_s=60, wait_s=0)
    before = store.list("locks/")

    with pytest.raises(locks.LockTimeout, match=r"'export' .* is held by worker-a until .*waited 0.3 s"):
        locks.acquire(store, "export", "worker-b", lease_s=60, wait_s=0.3, poll_s=0.05)

    assert store.list("locks/") == before
    assert locks.read_lock(store, "export") == held


def test_a_crashed_holders_lease_is_taken_over_once_it_expires(tmp_path):
    store_dir = tmp_path / "store"
    # A real process takes the lock and dies without releasing it.
    code = textwrap.dedent(
        f"""
        import os
        from activeflow import locks
        from activeflow.store import LocalStore
        locks.acquire(LocalStore({str(store_dir)!r}), "export", "doomed", lease_s=1.5, wait_s=0)
        os._exit(9)
        """
    )
    died = subprocess.run([sys.executable, "-c", code], check=False)
    assert died.returncode == 9
    store = LocalStore(store_dir)
    stale = locks.read_lock(store, "export")
    assert stale.state == "held" and stale.owner == "doomed"

    with pytest.raises(locks.LockTimeout):  # not yet expired: still respected
        locks.acquire(store, "export", "eager", lease_s=5, wait_s=0)
    started = time.time()
    record = locks.acquire(store, "export", "heir", lease_s=5, wait_s=10, poll_s=0.05)

    assert record.owner == "heir" and record.took_over_from == "doomed"
    assert record.generation == stale.generation + 1
    assert time.time() >= stale.expires_at
    assert time.time() - started < 5


def test_a_lease_is_renewed_while_the_block_runs(tmp_path):
    store = LocalStore(tmp_path / "store")
    with locks.hold(store, "export", owner="slow", lease_s=0.6) as first:
        time.sleep(1.5)  # more than two leases
        current = locks.read_lock(store, "export")
        assert current.owner == "slow" and current.state == "held"
        assert current.generation > first.generation
        with pytest.raises(locks.LockTimeout):
            locks.acquire(store, "export", "rival", lease_s=1, wait_s=0)
    assert locks.read_lock(store, "export").state == "released"


def test_a_holder_whose_lease_was_taken_over_cannot_renew_or_release(tmp_path):
    store = LocalStore(tmp_path / "store")
    stalled = locks.acquire(store, "export", "stalled", lease_s=0.1, wait_s=0)
    time.sleep(0.15)
    heir = locks.acquire(store, "export", "heir", lease_s=30, wait_s=0)

    with pytest.raises(locks.LockLost, match="lost by stalled: its lease expired and it was now held by heir"):
        locks.renew(store, stalled, lease_s=30)
    assert locks.release(store, stalled) is False
    assert locks.read_lock(store, "export") == heir


def test_an_error_in_the_block_releases_the_lock_and_propagates(tmp_path):
    store = LocalStore(tmp_path / "store")
    with pytest.raises(ZeroDivisionError):
        with locks.hold(store, "export", lease_s=30):
            1 / 0  # noqa: B018
    assert locks.read_lock(store, "export").state == "released"


def test_old_generations_are_pruned(tmp_path):
    store = LocalStore(tmp_path / "store")
    for _ in range(30):
        with locks.hold(store, "export", lease_s=30):
            pass
    keys = store.list("locks/export/")
    assert len(keys) <= locks.KEEP_GENERATIONS + 2
    assert locks.read_lock(store, "export").generation == 60


@pytest.mark.parametrize("name", ["", "a/b", "../x", "sp ace"])
def test_bad_lock_names_are_refused(tmp_path, name):
    store = LocalStore(tmp_path / "store")
    with pytest.raises(ValueError, match="invalid lock name"):
        locks.acquire(store, name, "me", lease_s=1, wait_s=0)
    assert not (tmp_path / "store").exists()


# Two exports at once, through the export task's body ------------------------------------


def _pool(store: ObjectStore, folder: Path, count: int) -> None:
    for n in range(count):
        write_image(folder / f"{n}.png", seed=1000 + n, size=8)
    ingest_images(store, iter_source(str(folder), labelled=False), split="pool")


def _two_exports_at_once(storage: dict, tmp_path: Path):
    from activeflow.tasks.batches import export_batch

    settings = load_settings(
        storage=storage, data={"classes": ["cat", "dog"]}, budget={"per_run": 10, "total": 15}
    )
    store = open_store(settings.storage)
    _pool(store, tmp_path / "pool", 40)
    start = threading.Barrier(2)
    results = []

    def export() -> None:
        start.wait()
        results.append(export_batch.fn(settings))  # the task's body: lock + core export

    workers = [threading.Thread(target=export) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return store, results


def _assert_no_overlap_or_overspend(store: ObjectStore, results) -> None:
    assert sorted(r.size for r in results) == [5, 10]  # the second saw the first's batch
    state = load_state(store)
    first, second = (state.batches[r.batch_id].sample_ids for r in results)
    assert set(first).isdisjoint(second)
    assert state.budget_spent == 15 and state.budget_remaining(15) == 0
    assert len(state.queued) == 15
    assert locks.read_lock(store, "export").state == "released"


def test_two_simultaneous_exports_neither_overlap_nor_overspend(tmp_path):
    store, results = _two_exports_at_once({"uri": str(tmp_path / "store")}, tmp_path)
    _assert_no_overlap_or_overspend(store, results)


@pytest.mark.s3
def test_two_simultaneous_exports_on_s3(s3_storage, tmp_path):
    store, results = _two_exports_at_once(s3_storage.model_dump(), tmp_path)
    _assert_no_overlap_or_overspend(store, results)
