"""Ingest: images from a source into the store, content-addressed.

A sample's id is the sha256 of its bytes, so the same image twice is a no-op.
Unreadable inputs go to ``quarantine/`` with the reason; nothing is dropped silently.
The ingest record is written last, so a crash leaves at most unreferenced bytes that
a rerun reuses.
"""

from __future__ import annotations

import hashlib
import io
import struct
from collections.abc import Iterable, Sequence

from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel

from activeflow.pool import (
    IngestRecord,
    QuarantineRecord,
    Split,
    ingest_key,
    load_state,
    new_id,
    quarantine_key,
    sample_key,
    utc_now,
)
from activeflow.settings import DEFAULT_MAX_PIXELS
from activeflow.sources import SourceImage
from activeflow.store import ObjectStore, put_json_if_absent, put_jsonl

_EXTENSIONS = {"PNG": "png", "JPEG": "jpg", "GIF": "gif", "BMP": "bmp", "WEBP": "webp", "TIFF": "tif"}


class IngestReport(BaseModel):
    ingest_id: str
    split: Split
    new: int = 0
    duplicate: int = 0
    quarantined: int = 0
    quarantine_reasons: list[str] = []


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
    known = set(load_state(store).samples)
    records: list[IngestRecord] = []
    for image in images:
        sample_id = content_id(image.data)
        if sample_id in known:
            report.duplicate += 1
            continue
        try:
            ext = image_extension(image.data, max_pixels)
            label = _checked_label(image, split, classes)
        except ValueError as problem:
            _quarantine(store, image, sample_id, str(problem))
            report.quarantined += 1
            report.quarantine_reasons.append(f"{image.name}: {problem}")
            continue
        store.put_if_absent(sample_key(sample_id, ext), image.data)
        records.append(
            IngestRecord(
                id=sample_id,
                ext=ext,
                source=image.name,
                size=len(image.data),
                ingested_at=utc_now(),
                split=split,
                label=label,
            )
        )
        known.add(sample_id)
    if records:
        put_jsonl(store, ingest_key(report.ingest_id), [r.model_dump() for r in records])
    report.new = len(records)
    return report


def _checked_label(image: SourceImage, split: Split, classes: Sequence[str]) -> str | None:
    if split == "pool":
        return None
    if image.label is None:
        raise ValueError(f"split {split!r} needs a label; source gave none")
    if classes and image.label not in classes:
        raise ValueError(f"class {image.label!r} is not one of data.classes {list(classes)}")
    return image.label


def _quarantine(store: ObjectStore, image: SourceImage, sample_id: str, reason: str) -> None:
    store.put_if_absent(f"quarantine/{sample_id}.bin", image.data)
    record = QuarantineRecord(
        content_id=sample_id, source=image.name, reason=reason, quarantined_at=utc_now()
    )
    put_json_if_absent(store, quarantine_key(sample_id), record.model_dump())
