"""The simulated labeller: an oracle that answers a batch from ground truth, as the
reference article does with tf_flowers, so whole rounds run unattended."""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from pathlib import Path

from activeflow.core.ingest.ingest import content_id
from activeflow.core.ingest.sources import iter_source
from activeflow.core.storage.pool import BatchManifest


def ground_truth(labelled_folder: Path | str) -> dict[str, str]:
    """Sample id -> class for a folder laid out as ``<class>/<image>``."""
    return {content_id(image.data): image.label for image in iter_source(str(labelled_folder), labelled=True)}


def oracle_answers(manifest: BatchManifest, truth: Mapping[str, str]) -> bytes:
    """A CSV export (``id,label``) answering every batch item the oracle knows."""
    missing = [sid for sid in manifest.sample_ids if sid not in truth]
    if missing:
        raise ValueError(f"the oracle has no ground truth for {len(missing)} batch items, e.g. {missing[0]}")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["id", "label"])
    writer.writerows([sid, truth[sid]] for sid in manifest.sample_ids)
    return buffer.getvalue().encode()
