"""The store's layout, its records, and the pool state derived from them.

Nothing here is a counter or a mutable index: every fact is an immutable object
under the store root, and ``load_state`` derives unlabelled / queued / labelled /
test from them, so a crash between two writes leaves nothing false behind.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from activeflow.store import ObjectStore, get_json, get_jsonl

Split = Literal["pool", "train", "test"]


# Keys ---------------------------------------------------------------------------------


def sample_key(sample_id: str, ext: str) -> str:
    return f"samples/{sample_id[:2]}/{sample_id}.{ext}"


def ingest_key(ingest_id: str) -> str:
    return f"ingests/{ingest_id}.jsonl"


def quarantine_key(content_id: str) -> str:
    return f"quarantine/{content_id}.json"


def manifest_key(batch_id: str) -> str:
    return f"batches/{batch_id}/manifest.json"


def labels_key(batch_id: str, import_id: str) -> str:
    # One object per import that added labels; its id is the hash of what it added, so
    # the same import twice (even concurrently) is one conditional create.
    return f"labels/{batch_id}/{import_id}.jsonl"


def release_key(batch_id: str) -> str:
    return f"batches/{batch_id}/released.json"


def model_key(version: str) -> str:
    return f"models/{version}/model.keras"


def metrics_key(version: str) -> str:
    return f"models/{version}/metrics.json"


def promotion_key(sequence: int) -> str:
    # One object per promotion; the newest is the champion (no shared pointer to rewrite).
    return f"models/champion/{sequence:06d}.json"


def new_id(prefix: str = "") -> str:
    """A sortable, unique id: UTC time to the microsecond plus random bits."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{prefix}{stamp}-{secrets.token_hex(3)}"


def utc_now() -> str:
    return datetime.now(UTC).isoformat()


# Records ------------------------------------------------------------------------------


class IngestRecord(BaseModel):
    """One newly ingested sample, as written to ``ingests/<ingest-id>.jsonl``."""

    model_config = ConfigDict(frozen=True)

    id: str = Field(description="sha256 of the image bytes")
    ext: str
    source: str = Field(description="where the bytes came from")
    size: int
    ingested_at: str
    split: Split = "pool"
    label: str | None = None


class QuarantineRecord(BaseModel):
    content_id: str
    source: str
    reason: str
    quarantined_at: str


class BatchItemRecord(BaseModel):
    sample_id: str
    score: float
    predicted: str | None = None
    confidence: float | None = None
    # Drawn uniformly from the pool (strategy.random_fraction), not by the strategy: these
    # items give an unbiased estimate of the model's accuracy on the pool.
    random_slice: bool = False


class BatchManifest(BaseModel):
    batch_id: str
    created_at: str
    strategy: str
    model_version: str | None
    budget_per_run: int
    budget_total: int | None
    items: list[BatchItemRecord]
    files: dict[str, str] = Field(default_factory=dict)

    @property
    def sample_ids(self) -> list[str]:
        return [item.sample_id for item in self.items]


class ImportedLabel(BaseModel):
    sample_id: str
    label: str
    batch_id: str
    source_file: str
    imported_at: str


class BatchRelease(BaseModel):
    batch_id: str
    released_at: str
    reason: str
    returned: list[str] = Field(description="sample ids sent back to the pool")


class Promotion(BaseModel):
    sequence: int
    version: str
    accuracy: float
    previous: str | None
    promoted_at: str
    test_set: str | None = None  # fingerprint of the test set ``accuracy`` was measured on


# State --------------------------------------------------------------------------------


@dataclass
class PoolState:
    samples: dict[str, IngestRecord] = field(default_factory=dict)
    batches: dict[str, BatchManifest] = field(default_factory=dict)
    batch_labels: dict[str, list[ImportedLabel]] = field(default_factory=dict)
    released: dict[str, BatchRelease] = field(default_factory=dict)
    quarantined: int = 0
    champion: Promotion | None = None

    @property
    def test(self) -> dict[str, str]:
        return {
            sid: rec.label for sid, rec in self.samples.items() if rec.split == "test" and rec.label
        }

    @property
    def labelled(self) -> dict[str, str]:
        """Training labels: labelled at ingest, then imported batch labels."""
        labels = {
            sid: rec.label for sid, rec in self.samples.items() if rec.split == "train" and rec.label
        }
        for batch_id in sorted(self.batch_labels):
            for record in self.batch_labels[batch_id]:
                labels.setdefault(record.sample_id, record.label)
        return labels

    def waiting(self, batch_id: str) -> list[str]:
        """Samples of a batch still waiting for a label (none once it is released)."""
        if batch_id in self.released:
            return []
        done = {label.sample_id for label in self.batch_labels.get(batch_id, [])}
        return [sid for sid in self.batches[batch_id].sample_ids if sid not in done]

    @property
    def open_batches(self) -> list[str]:
        return sorted(b for b in self.batches if self.waiting(b))

    @property
    def queued(self) -> set[str]:
        labelled = self.labelled
        return {sid for b in self.open_batches for sid in self.waiting(b) if sid not in labelled}

    @property
    def unlabelled(self) -> list[str]:
        """Pool samples neither labelled nor queued, in a stable order."""
        taken = self.queued | set(self.labelled)
        return sorted(
            sid for sid, rec in self.samples.items() if rec.split == "pool" and sid not in taken
        )

    @property
    def budget_spent(self) -> int:
        """Labels asked for: every batch item, less those a release handed back unlabelled."""
        returned = sum(len(release.returned) for release in self.released.values())
        return sum(len(manifest.items) for manifest in self.batches.values()) - returned

    def budget_remaining(self, total: int | None) -> int | None:
        return None if total is None else max(total - self.budget_spent, 0)

    def summary(self, total: int | None) -> dict[str, object]:
        return {
            "unlabelled": len(self.unlabelled),
            "queued": len(self.queued),
            "labelled": len(self.labelled),
            "test": len(self.test),
            "quarantined": self.quarantined,
            "budget_spent": self.budget_spent,
            "budget_remaining": self.budget_remaining(total),
            "champion": self.champion.version if self.champion else None,
        }


def load_state(store: ObjectStore) -> PoolState:
    state = PoolState()
    for key in store.list("ingests/"):
        for row in get_jsonl(store, key):
            record = IngestRecord.model_validate(row)
            state.samples.setdefault(record.id, record)  # first ingest of the bytes wins
    for key in store.list("batches/"):
        if key.endswith("/manifest.json"):
            manifest = BatchManifest.model_validate(get_json(store, key))
            state.batches[manifest.batch_id] = manifest
        elif key.endswith("/released.json"):
            release = BatchRelease.model_validate(get_json(store, key))
            state.released[release.batch_id] = release
    for key in store.list("labels/"):
        batch_id = key.split("/")[1]
        state.batch_labels.setdefault(batch_id, []).extend(
            ImportedLabel.model_validate(row) for row in get_jsonl(store, key)
        )
    state.quarantined = sum(1 for key in store.list("quarantine/") if key.endswith(".json"))
    state.champion = current_champion(store)
    return state


def promotions(store: ObjectStore) -> list[Promotion]:
    return [Promotion.model_validate(get_json(store, k)) for k in store.list("models/champion/")]


def current_champion(store: ObjectStore) -> Promotion | None:
    keys = store.list("models/champion/")
    return Promotion.model_validate(get_json(store, keys[-1])) if keys else None
