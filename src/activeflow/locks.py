"""A lock that outlives the process holding it: a lease written to the store.

Why a lease in the store rather than a Prefect global concurrency limit: the store is
the system of record every export already depends on, so the lock works wherever the
store does — under ``activeflow serve``, from the CLI (each command of which may talk to
its own temporary Prefect server), and in a plain Python process — and it can be tested
without Prefect. A concurrency limit would protect only the runs of one Prefect server.

The lock named ``N`` is the **newest** of the immutable records
``locks/N/<generation>.json``: ``held`` by an owner until ``expires_at``, or
``released``. Every change — acquire, renew, release, take-over — is the conditional
create (``put_if_absent``) of the next generation, so of any two processes that act on
the same newest record exactly one succeeds; the other reads the lock again. Nothing is
ever rewritten in place, and a crashed holder's record simply expires: the next
acquirer takes over by creating the next generation.

While a ``hold`` block runs, a thread renews the lease every third of its length, so a
live holder never loses the lock to expiry; only a holder stalled for a whole lease
(or clocks skewed by more than a lease) can, and then the block raises ``LockLost``
instead of reporting success. Old generations are pruned as new ones are made.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel

from activeflow.store import ObjectNotFound, ObjectStore, get_json, put_json_if_absent

LOCKS_PREFIX = "locks/"
KEEP_GENERATIONS = 20  # records kept behind the newest, for whoever investigates


class LockTimeout(RuntimeError):
    """The lock stayed held by someone else for the whole wait."""


class LockLost(RuntimeError):
    """The lease expired while held and another owner took the lock over."""


class LockRecord(BaseModel):
    name: str
    generation: int
    owner: str
    state: Literal["held", "released"]
    expires_at: float  # seconds since the epoch; meaningful while held
    written_at: float
    took_over_from: str | None = None  # the owner of an expired lease this one replaced

    def expired(self, now: float) -> bool:
        return self.state == "held" and self.expires_at <= now


def lock_key(name: str, generation: int) -> str:
    return f"{LOCKS_PREFIX}{name}/{generation:012d}.json"


def new_owner(label: str | None = None) -> str:
    """A unique owner id: host, process and a random part, with an optional label
    (e.g. the flow run) so a person reading the lock knows who holds it."""
    owner = f"{socket.gethostname()}:pid{os.getpid()}:{uuid.uuid4().hex[:8]}"
    return f"{owner} ({label})" if label else owner


def read_lock(store: ObjectStore, name: str) -> LockRecord | None:
    """The newest record of lock ``name``, or None if it was never taken."""
    _check_name(name)
    while True:
        keys = [k for k in store.list(f"{LOCKS_PREFIX}{name}/") if k.endswith(".json")]
        if not keys:
            return None
        try:
            return LockRecord.model_validate(get_json(store, keys[-1]))
        except ObjectNotFound:
            continue  # pruned between list and get: newer generations exist, look again


def acquire(
    store: ObjectStore,
    name: str,
    owner: str,
    *,
    lease_s: float,
    wait_s: float,
    poll_s: float = 0.2,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> LockRecord:
    """Take lock ``name`` for ``owner`` for ``lease_s`` seconds, waiting up to ``wait_s``
    while someone else holds it. An expired lease is taken over. Raises LockTimeout."""
    if lease_s <= 0:
        raise ValueError(f"lease_s must be positive, got {lease_s}")
    deadline = clock() + wait_s
    while True:
        newest = read_lock(store, name)
        now = clock()
        if newest is None or newest.state == "released" or newest.expired(now):
            record = LockRecord(
                name=name,
                generation=newest.generation + 1 if newest else 1,
                owner=owner,
                state="held",
                expires_at=now + lease_s,
                written_at=now,
                took_over_from=newest.owner if newest and newest.expired(now) else None,
            )
            if put_json_if_absent(store, lock_key(name, record.generation), record.model_dump()):
                _prune(store, name, record.generation)
                return record
            continue  # another process made this generation first: read the lock again
        if now >= deadline:
            raise LockTimeout(
                f"lock {name!r} in store {store.uri} is held by {newest.owner} until "
                f"{_iso(newest.expires_at)} (waited {wait_s:g} s); another run is using it. "
                f"If that process died, its lease expires then and the next attempt takes over."
            )
        sleep(max(min(poll_s, deadline - now), 0.0))


def renew(
    store: ObjectStore, record: LockRecord, *, lease_s: float, clock: Callable[[], float] = time.time
) -> LockRecord:
    """Extend a held lease; LockLost if the lock is no longer ``record``'s."""
    newest = read_lock(store, record.name)
    now = clock()
    if newest is None or newest.generation != record.generation:
        raise LockLost(_lost_message(store, record, newest))
    renewed = record.model_copy(
        update={"generation": record.generation + 1, "expires_at": now + lease_s, "written_at": now,
                "took_over_from": None}
    )
    if not put_json_if_absent(store, lock_key(record.name, renewed.generation), renewed.model_dump()):
        raise LockLost(_lost_message(store, record, read_lock(store, record.name)))
    _prune(store, record.name, renewed.generation)
    return renewed


def release(store: ObjectStore, record: LockRecord, *, clock: Callable[[], float] = time.time) -> bool:
    """Free the lock if ``record`` still holds it; False if it was taken over meanwhile."""
    newest = read_lock(store, record.name)
    if newest is None or newest.generation != record.generation:
        return False
    now = clock()
    freed = record.model_copy(
        update={"generation": record.generation + 1, "state": "released", "expires_at": now,
                "written_at": now, "took_over_from": None}
    )
    return put_json_if_absent(store, lock_key(record.name, freed.generation), freed.model_dump())


@contextlib.contextmanager
def hold(
    store: ObjectStore,
    name: str,
    *,
    lease_s: float,
    owner: str | None = None,
    wait_s: float | None = None,
    poll_s: float = 0.2,
) -> Iterator[LockRecord]:
    """Hold lock ``name`` for the block, renewing its lease in a thread meanwhile.

    Waits up to ``wait_s`` (default: one lease, long enough to take over from a crashed
    holder). Raises LockTimeout if the lock stays taken, and LockLost after the block if
    the lease was lost while it ran (then the block's work may have overlapped another's).
    """
    record = acquire(
        store, name, owner or new_owner(), lease_s=lease_s,
        wait_s=lease_s if wait_s is None else wait_s, poll_s=poll_s,
    )
    renewer = _Renewer(store, record, lease_s)
    renewer.start()
    try:
        yield record
    except BaseException:
        renewer.stop()
        with contextlib.suppress(Exception):  # the block's error is the one to report;
            release(store, renewer.record)  # an unreleased lease just expires
        raise
    renewer.stop()
    if renewer.lost is not None:
        raise renewer.lost
    if not release(store, renewer.record):
        raise LockLost(_lost_message(store, renewer.record, read_lock(store, name)))


class _Renewer:
    """Renews a lease every third of its length until stopped or lost."""

    def __init__(self, store: ObjectStore, record: LockRecord, lease_s: float) -> None:
        self.store = store
        self.record = record
        self.lease_s = lease_s
        self.lost: LockLost | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"lease-renewer-{record.name}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            try:
                self.record = renew(self.store, self.record, lease_s=self.lease_s)
            except LockLost as error:
                self.lost = error
                return
            except Exception:  # noqa: BLE001 - a transient store error: try again next tick
                continue  # the lease still has two thirds left


def _prune(store: ObjectStore, name: str, newest: int) -> None:
    """Delete records more than KEEP_GENERATIONS behind ``newest`` (never the newest)."""
    for key in store.list(f"{LOCKS_PREFIX}{name}/"):
        stem = key.rsplit("/", 1)[-1].removesuffix(".json")
        if stem.isdigit() and int(stem) < newest - KEEP_GENERATIONS:
            store.delete(key)


def _lost_message(store: ObjectStore, record: LockRecord, newest: LockRecord | None) -> str:
    holder = f"now held by {newest.owner}" if newest and newest.state == "held" else "taken over"
    return (
        f"lock {record.name!r} in store {store.uri} was lost by {record.owner}: its lease expired "
        f"and it was {holder}; the work done under it may have overlapped another run's. "
        "Check the most recent batches, and raise schedule.export_lock_seconds if runs stall."
    )


def _check_name(name: str) -> None:
    if not name or "/" in name or not name.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"invalid lock name {name!r}: letters, digits, '-' and '_' only")


def _iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="seconds")
