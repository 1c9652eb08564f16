"""Completed label exports dropped in the store, each announced exactly once.

Labellers (or their tool) drop an export at ``<drop prefix><batch-id>.json`` or
``.csv`` (default prefix ``incoming-labels/``). A watcher polls the prefix and *claims* each
drop with a conditional create of ``watch/claims/<batch-id>/<sha256 of the file>.json``.
Only the poll that creates the claim announces the drop, so however often or
concurrently the watcher runs, each file is announced once; a corrected or extended
export (new bytes) is a new claim. The import it leads to writes only labels the store
does not have yet, so announcing a superset of an earlier export adds just the new ones.
If announcing fails the claim is withdrawn (``unclaim``) and the next poll tries again;
only a process killed between claim and announcement leaves a file claimed but never
announced (the watch report keeps listing it; run import-and-retrain by hand then).

Plain Python: no Prefect. The watcher flow turns each claimed drop into an event.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import PurePosixPath

from pydantic import BaseModel

from activeflow.core.storage.pool import utc_now
from activeflow.core.storage.store import ObjectNotFound, ObjectStore, put_json_if_absent, validate_key

DROP_EXTENSIONS = (".json", ".csv")
CLAIMS_PREFIX = "watch/claims/"
IGNORED_PREFIX = "watch/ignored/"
# What export-batch names batches (letters, digits, '-', '_'); anything else in a drop's
# name cannot answer a batch and must not become part of a claim's key.
_BATCH_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


class LabelDrop(BaseModel):
    """One dropped export: where it is and which batch it answers."""

    key: str  # in the store
    uri: str  # what ``import-labels`` reads: a local path or s3://bucket/key
    batch_id: str
    sha256: str


class DropScan(BaseModel):
    """What one poll found."""

    prefix: str
    claimed: list[LabelDrop] = []  # new: announce these
    already_claimed: list[str] = []  # keys whose bytes an earlier poll announced
    ignored: dict[str, str] = {}  # key -> why it is not a drop (first seen in this poll)
    already_ignored: int = 0  # not drops, reported by an earlier poll


def claim_key(drop: LabelDrop) -> str:
    return f"{CLAIMS_PREFIX}{drop.batch_id}/{drop.sha256}.json"


def scan_drops(store: ObjectStore, prefix: str, claimer: str) -> DropScan:
    """Claim every new drop under ``prefix``; ``claimer`` names the poll in the claim.

    A file that is no drop is reported by the first poll that sees it and skipped after,
    so one bad name neither stops the valid drops beside it nor fills every report."""
    scan = DropScan(prefix=prefix)
    for key in store.list(prefix):
        problem = _not_a_drop(key, prefix)
        if problem is None:
            _claim(store, key, claimer, scan)
        elif _first_report(store, key, problem, claimer):
            scan.ignored[key] = problem
        else:
            scan.already_ignored += 1
    return scan


def _not_a_drop(key: str, prefix: str) -> str | None:
    name = key[len(prefix) :]
    batch_id, ext = _split(name)
    if "/" in name or ext not in DROP_EXTENSIONS:
        return f"not a label export: expected {prefix}<batch-id>.json or {prefix}<batch-id>.csv"
    if not _BATCH_ID.fullmatch(batch_id):
        return f"not a batch id: {batch_id!r} (letters, digits, '-' and '_' only)"
    try:
        validate_key(key)
    except ValueError as error:
        return str(error)
    return None


def _claim(store: ObjectStore, key: str, claimer: str, scan: DropScan) -> None:
    try:
        content = store.get(key)
    except ObjectNotFound:
        return  # removed since the listing
    batch_id, _ = _split(key[len(scan.prefix) :])
    drop = LabelDrop(
        key=key, uri=store.url(key), batch_id=batch_id, sha256=hashlib.sha256(content).hexdigest()
    )
    claim = {**drop.model_dump(), "claimed_at": utc_now(), "claimed_by": claimer}
    if put_json_if_absent(store, claim_key(drop), claim):
        scan.claimed.append(drop)
    else:
        scan.already_claimed.append(key)


def _first_report(store: ObjectStore, key: str, problem: str, reporter: str) -> bool:
    """True for the one poll that records ``key`` as no drop (the key may be unusable as a
    store key itself, so the record is named by its hash)."""
    record = {"key": key, "problem": problem, "reported_at": utc_now(), "reported_by": reporter}
    digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()
    return put_json_if_absent(store, f"{IGNORED_PREFIX}{digest}.json", record)


def unclaim(store: ObjectStore, drop: LabelDrop) -> None:
    """Undo a claim whose announcement failed, so the next poll announces the drop."""
    store.delete(claim_key(drop))


def _split(name: str) -> tuple[str, str]:
    path = PurePosixPath(name)
    return path.stem, path.suffix.lower()
