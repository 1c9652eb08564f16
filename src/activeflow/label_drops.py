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
from pathlib import PurePosixPath

from pydantic import BaseModel

from activeflow.pool import utc_now
from activeflow.store import ObjectNotFound, ObjectStore, put_json_if_absent

DROP_EXTENSIONS = (".json", ".csv")
CLAIMS_PREFIX = "watch/claims/"


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
    ignored: dict[str, str] = {}  # key -> why it is not a drop


def claim_key(drop: LabelDrop) -> str:
    return f"{CLAIMS_PREFIX}{drop.batch_id}/{drop.sha256}.json"


def scan_drops(store: ObjectStore, prefix: str, claimer: str) -> DropScan:
    """Claim every new drop under ``prefix``; ``claimer`` names the poll in the claim."""
    scan = DropScan(prefix=prefix)
    for key in store.list(prefix):
        name = key[len(prefix) :]
        batch_id, ext = _split(name)
        if "/" in name or ext not in DROP_EXTENSIONS or not batch_id:
            scan.ignored[key] = (
                f"not a label export: expected {prefix}<batch-id>.json or {prefix}<batch-id>.csv"
            )
            continue
        try:
            content = store.get(key)
        except ObjectNotFound:
            continue  # removed since the listing
        drop = LabelDrop(
            key=key, uri=store.url(key), batch_id=batch_id,
            sha256=hashlib.sha256(content).hexdigest(),
        )
        claim = {**drop.model_dump(), "claimed_at": utc_now(), "claimed_by": claimer}
        if put_json_if_absent(store, claim_key(drop), claim):
            scan.claimed.append(drop)
        else:
            scan.already_claimed.append(key)
    return scan


def unclaim(store: ObjectStore, drop: LabelDrop) -> None:
    """Undo a claim whose announcement failed, so the next poll announces the drop."""
    store.delete(claim_key(drop))


def _split(name: str) -> tuple[str, str]:
    path = PurePosixPath(name)
    return path.stem, path.suffix.lower()
