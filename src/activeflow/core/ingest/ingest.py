"""Ingest: images from a source into the store, content-addressed.

A sample's id is the sha256 of its bytes, so the same image twice is a no-op.
Unreadable inputs go to ``quarantine/`` with the reason; nothing is dropped silently.
Images are written first and catalogued after, a chunk at a time (one commit per
chunk), so a crash loses at most one chunk's catalog rows; the rerun finds their bytes
already stored and catalogues them. A chunk's images are flushed to disk by one
``store.sync`` before its commit, not one fsync each.

Reads and hashes from an S3 source run on ``store.max_concurrency`` threads, and so do
checks and writes into an S3 store (round trips wait, they don't compute). Local reads and
writes run in the calling thread: there threads only contend for the GIL (5,000 small
PNGs into a local store: 2.2 s on one thread, 3.8 s on 16). What is new, what is a
duplicate, the report and the catalog commits are decided in the calling thread in input
order, so the result is the same as one image at a time.
"""

from __future__ import annotations

import hashlib
import io
import struct
from collections.abc import Iterable, Sequence
from functools import partial
from itertools import islice

import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel

from activeflow.core.ingest.sources import SourceImage
from activeflow.core.storage.catalog import Catalog
from activeflow.core.storage.pool import (
    IngestRecord,
    QuarantineRecord,
    Split,
    new_id,
    open_catalog,
    quarantine_key,
    sample_key,
    utc_now,
)
from activeflow.core.storage.store import ObjectStore, parallel_map, put_json_if_absent
from activeflow.settings import DEFAULT_MAX_PIXELS

_EXTENSIONS = {"PNG": "png", "JPEG": "jpg", "GIF": "gif", "BMP": "bmp", "WEBP": "webp", "TIFF": "tif"}


class IngestReport(BaseModel):
    ingest_id: str
    split: Split
    new: int = 0
    duplicate: int = 0
    unchanged: int = 0  # source objects read by an earlier ingest, unchanged since: not read
    quarantined: int = 0
    quarantine_reasons: list[str] = []
    # Images already in the store under another split or label: left as they are, never
    # silently counted as duplicates (a pool image re-ingested as a test image, say).
    conflicts: list[str] = []


def content_id(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# What decoders raise on hostile or broken bytes, beyond PIL's own OSError: truncated
# headers (EOFError, struct.error), impossible tile layouts (ValueError, IndexError).
_DECODE_ERRORS = (OSError, SyntaxError, EOFError, struct.error, ValueError, IndexError, MemoryError)


def image_extension(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> str:
    """The file extension of an image PIL can fully decode; ValueError says why not.

    The size its header claims is checked against ``max_pixels`` before anything is decoded,
    so a small file that would expand to gigabytes never is."""
    if not data:
        raise ValueError("empty file")
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            oversized = width * height > max_pixels
            if not oversized:
                image.load()  # a full decode catches truncated files that verify() lets through
            format_name = image.format
    except UnidentifiedImageError:
        raise ValueError("not an image PIL can identify") from None
    except Image.DecompressionBombError as error:
        raise ValueError(f"decompression bomb: {error}") from None
    except _DECODE_ERRORS as error:
        raise ValueError(f"image cannot be decoded: {error or type(error).__name__}") from None
    if oversized:
        raise ValueError(
            f"image is {width}x{height} = {width * height:,} pixels, "
            f"above ingest.max_pixels ({max_pixels:,})"
        )
    if format_name not in _EXTENSIONS:
        raise ValueError(f"unsupported image format {format_name}")
    return _EXTENSIONS[format_name]


def ingest_images(
    store: ObjectStore,
    images: Iterable[SourceImage],
    *,
    split: Split = "pool",
    classes: Sequence[str] = (),
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> IngestReport:
    """Add new images to the store; ``split`` "train"/"test" keeps each image's label.

    Labels outside ``classes`` (when classes are configured), undecodable images and images
    above ``max_pixels`` are quarantined with the reason.
    """
    report = IngestReport(ingest_id=new_id(), split=split)
    store.remove_stale_temp_files()  # what writers killed midway left behind
    catalog = open_catalog(store)
    columns = ["id"] if split == "pool" else ["id", "split", "label"]
    samples, checked_at = catalog.read("samples", columns)  # read once, only what is compared
    catalogued = samples.column("id")
    read_before = _source_keys(catalog.read("sources", ["name", "version"])[0])
    seen: set[str] = set()  # ids this run has already met
    workers = store.max_concurrency
    check_and_store = partial(_ingest_new, store, split=split, classes=classes, max_pixels=max_pixels)
    for listed in _chunks(images, LISTING_CHUNK):
        fresh = _not_read_before(listed, read_before)
        report.unchanged += len(listed) - len(fresh)
        reading = workers if any(image.remote for image in fresh) else 1
        for chunk in _read_chunks(fresh, reading):
            ids = [sample_id for _, _, sample_id in chunk]
            known = _among(catalogued, ids) | seen
            placed = {} if split == "pool" else _placement(samples, ids)
            new, read = [], []
            for image, data, sample_id in chunk:  # in input order: the first occurrence wins
                if image.version is not None:
                    read.append({"name": image.name, "version": image.version,
                                 "sample_id": sample_id, "read_at": utc_now()})
                if sample_id in known:
                    if placed.get(sample_id, (split, image.label)) == (split, image.label):
                        report.duplicate += 1
                    else:
                        report.conflicts.append(_conflict(image, *placed[sample_id], split))
                    continue
                known.add(sample_id)
                seen.add(sample_id)
                new.append((image, data, sample_id))
            records = []
            for outcome in parallel_map(check_and_store, new, workers if store.remote else 1):
                if isinstance(outcome, IngestRecord):
                    records.append(outcome)
                else:  # the worker quarantined it; the report is only touched here
                    report.quarantined += 1
                    report.quarantine_reasons.append(outcome)
            if records:
                store.sync()  # the chunk's images are on disk before a commit names them
            checked_at = _commit_chunk(catalog, records, read, report, checked_at)
    catalog.compact()  # every commit added a file: keep the tables few-filed
    return report


INGEST_CHUNK = 10_000  # images per catalog commit: the most a crash makes the rerun read
# again (their bytes are stored already). Each chunk costs a sync and two commits (and a
# merge reading the whole id column after a race with another ingest), so not many more.
INGEST_CHUNK_BYTES = 256 * 2**20  # ... and the most image bytes a chunk holds in memory
LISTING_CHUNK = 20_000  # source entries checked against what was read before, at a time


def _read_chunks(
    images: list[SourceImage], workers: int
) -> Iterable[list[tuple[SourceImage, bytes, str]]]:
    """Each image read once, with its content id, in chunks bounded in count and bytes.

    ``workers`` images are read ahead of the chunk, so at most that many more are held; the
    chunks are the same as reading one at a time."""
    chunk: list[tuple[SourceImage, bytes, str]] = []
    size = 0
    for image, data, sample_id in parallel_map(_read, images, workers):
        chunk.append((image, data, sample_id))
        size += len(data)
        if len(chunk) == INGEST_CHUNK or size >= INGEST_CHUNK_BYTES:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def _read(image: SourceImage) -> tuple[SourceImage, bytes, str]:
    data = image.data
    return image, data, content_id(data)


def _ingest_new(
    store: ObjectStore,
    item: tuple[SourceImage, bytes, str],
    *,
    split: Split,
    classes: Sequence[str],
    max_pixels: int,
) -> IngestRecord | str:
    """Store a new image's bytes and return its record, or quarantine it and return the
    report's line for it. Runs in a worker thread: it changes nothing but the store."""
    image, data, sample_id = item
    try:
        ext = image_extension(data, max_pixels)
        label = _checked_label(image, split, classes)
    except ValueError as problem:
        _quarantine(store, image.name, data, sample_id, str(problem))
        return f"{image.name}: {problem}"
    key = sample_key(sample_id, ext)
    # Written unsynced: the chunk is synced once before its commit. An object already there
    # but catalogued by nobody was left by a crash; a power cut may have cut its bytes short.
    if not store.put_if_absent(key, data, durable=False) and store.get(key) != data:
        store.put(key, data)
    return IngestRecord(
        id=sample_id, ext=ext, source=image.name, size=len(data), ingested_at=utc_now(),
        split=split, label=label,
    )


def _commit_chunk(
    catalog: Catalog,
    records: list[IngestRecord],
    read: list[dict[str, str]],
    report: IngestReport,
    checked_at: int | None,
) -> int | None:
    """Samples first, then the source objects read: a crash between the two makes the rerun
    read those objects again and find their samples already catalogued. The records were
    checked against the catalog as of ``checked_at``; returns the sequence that holds at
    after this commit (see ``Catalog.insert_new``)."""
    if records:
        rows = pa.Table.from_pylist([r.model_dump() for r in records])
        inserted, checked_at = catalog.insert_new("samples", rows, key="id", checked_at=checked_at)
        report.new += inserted
        report.duplicate += len(records) - inserted  # a concurrent ingest catalogued them first
    if read:
        catalog.append("sources", pa.Table.from_pylist(read))
    return checked_at


def _chunks(items: Iterable[SourceImage], size: int) -> Iterable[list[SourceImage]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def _among(catalogued: pa.ChunkedArray, ids: list[str]) -> set[str]:
    """Which of ``ids`` are in ``catalogued``: the few ids are the hashed side."""
    wanted = pa.array(ids, pa.string())
    return set(catalogued.filter(pc.is_in(catalogued, value_set=wanted)).to_pylist())


def _placement(samples: pa.Table, ids: list[str]) -> dict[str, tuple[str, str | None]]:
    """(split, label) of those of ``ids`` that are catalogued."""
    rows = samples.filter(pc.is_in(samples.column("id"), value_set=pa.array(ids, pa.string())))
    return {row["id"]: (row["split"], row["label"]) for row in rows.to_pylist()}


def _conflict(image: SourceImage, split: str, label: str | None, wanted: Split) -> str:
    held = f"labelled {label!r}" if label is not None else "no label"
    return f"{image.name}: already in the store as a {split} image ({held}); left there, not added to the {wanted} split"


def _source_keys(rows: pa.Table) -> pa.ChunkedArray:
    return pc.binary_join_element_wise(rows.column("name"), rows.column("version"), "\n")


def _not_read_before(listed: list[SourceImage], read_before: pa.ChunkedArray) -> list[SourceImage]:
    """The listed images not read before at the same version (unversioned ones always are)."""
    keys = [f"{image.name}\n{image.version}" for image in listed if image.version is not None]
    if not keys:
        return listed
    done = set(read_before.filter(pc.is_in(read_before, value_set=pa.array(keys))).to_pylist())
    return [i for i in listed if i.version is None or f"{i.name}\n{i.version}" not in done]


def _checked_label(image: SourceImage, split: Split, classes: Sequence[str]) -> str | None:
    if split == "pool":
        return None
    if image.label is None:
        raise ValueError(f"split {split!r} needs a label; source gave none")
    if classes and image.label not in classes:
        raise ValueError(f"class {image.label!r} is not one of data.classes {list(classes)}")
    return image.label


def _quarantine(store: ObjectStore, name: str, data: bytes, sample_id: str, reason: str) -> None:
    store.put_if_absent(f"quarantine/{sample_id}.bin", data)
    record = QuarantineRecord(content_id=sample_id, source=name, reason=reason, quarantined_at=utc_now())
    put_json_if_absent(store, quarantine_key(sample_id), record.model_dump())
