"""The catalog: the pool's state as Delta Lake tables on the store, read column-wise.

The object store keeps the bytes (content-addressed images, models, batch files); the
catalog keeps the facts about them, one Delta table each under ``catalog/``:

- ``samples``: one row per ingested image (id = sha256, split, ingest label), append-only;
- ``sources``: one row per source object read (name, version), so a rerun skips it;
- ``batch_items``: one row per sample a batch asked labels for, with the batch's metadata;
- ``labels``: one row per imported label;
- ``releases``: one row per batch whose unlabelled samples went back to the pool.

Why Delta Lake (delta-rs), not the JSON objects the state was replayed from before: a
command reads only the columns it needs (no per-sample Python objects), every write is
one ACID commit on the local store and on S3 (conditional put), and teams read the tables
with DuckDB, Polars or Spark. See docs/decisions/0001-catalog-table-format.md.

Once-only facts (a batch, a label import, a release) are *serial* commits: each carries a
Delta application transaction (``txn`` action) whose version is the table's sequence
number. Two writers that read the same sequence both commit as ``sequence + 1``; Delta's
conflict checker lets exactly one land, and the other gets ``CatalogConflict`` and reruns
its decision on the new state. New samples are serial commits too (``insert_new``): an
ingest appends what it checked against the table as of a sequence, or merges them into the
table if another ingest landed since, so the same image is never catalogued twice. Every
commit to ``samples`` goes through ``insert_new``.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import pyarrow as pa
from deltalake import CommitProperties, DeltaTable, QueryBuilder, Transaction, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError

from activeflow.core.storage.store import ObjectStore, StoreError

CATALOG_PREFIX = "catalog/"

SAMPLES = pa.schema(
    [
        ("id", pa.string()),
        ("ext", pa.string()),
        ("source", pa.string()),
        ("size", pa.int64()),
        ("ingested_at", pa.string()),
        ("split", pa.string()),
        ("label", pa.string()),
    ]
)
BATCH_ITEMS = pa.schema(
    [
        ("batch_id", pa.string()),
        ("created_at", pa.string()),
        ("strategy", pa.string()),
        ("model_version", pa.string()),
        ("budget_per_run", pa.int64()),
        ("budget_total", pa.int64()),
        ("request_id", pa.string()),  # the export request (e.g. task run) that made it
        ("position", pa.int32()),  # order in the batch, most informative first
        ("sample_id", pa.string()),
        ("score", pa.float64()),
        ("predicted", pa.string()),
        ("confidence", pa.float64()),
        ("random_slice", pa.bool_()),
    ]
)
LABELS = pa.schema(
    [
        ("batch_id", pa.string()),
        ("sample_id", pa.string()),
        ("label", pa.string()),
        ("source_file", pa.string()),
        ("imported_at", pa.string()),
    ]
)
RELEASES = pa.schema(
    [
        ("batch_id", pa.string()),
        ("released_at", pa.string()),
        ("reason", pa.string()),
        ("returned", pa.list_(pa.string())),
    ]
)
SOURCES = pa.schema(
    [
        ("name", pa.string()),  # where an input came from (path, s3:// URL)
        ("version", pa.string()),  # size and mtime / ETag when it was read
        ("sample_id", pa.string()),  # sha256 of what was read (also for quarantined inputs)
        ("read_at", pa.string()),
    ]
)
TABLES: dict[str, pa.Schema] = {
    "samples": SAMPLES,
    "sources": SOURCES,
    "batch_items": BATCH_ITEMS,
    "labels": LABELS,
    "releases": RELEASES,
}

# Commits lost to concurrent writers before giving up: each round of a race lands one
# writer, so this bounds how many may contend at once.
_ATTEMPTS = 20
T = TypeVar("T")
_PLAIN_VALUE = re.compile(r"[A-Za-z0-9_.:-]+")  # what may be spliced into a lookup query

# Compaction: above this many data files a table is rewritten; files replaced more than a
# week ago are deleted (Delta's default retention: readers and writers of older versions
# that are still running are not disturbed).
COMPACT_ABOVE_FILES = 64
RETAIN_HOURS = 7 * 24


class CatalogConflict(RuntimeError):
    """A concurrent writer committed first; rerun the decision on the new state."""


class CatalogError(StoreError):
    """The catalog could not be read or written (names the table and the cause)."""

    @classmethod
    def because(cls, what: str, error: BaseException) -> CatalogError:
        """``what`` failed because of ``error``, a delta-rs error: its cause chain spans
        lines, with terminal colour codes; the message is one plain line."""
        cause = " ".join(_ANSI.sub("", str(error)).replace("↳", " ").split())
        return cls(f"{what}: {cause}", timed_out="timed out" in cause or "timeout" in cause.lower())


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _app_id(name: str) -> str:
    return f"activeflow.{name}"


class Catalog:
    """The catalog tables of one store."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    def location(self, name: str) -> tuple[str, dict[str, str]]:
        if name not in TABLES:
            raise ValueError(f"no catalog table {name!r}; tables: {', '.join(TABLES)}")
        return self.store.table_location(CATALOG_PREFIX + name)

    def has(self, name: str) -> bool:
        return self._open(name) is not None

    def version(self, name: str) -> int | None:
        """The table's current version (None before it exists): pass it to ``read`` to
        read the table as it was then."""
        table = self._open(name)
        return None if table is None else table.version()

    def _open(self, name: str, version: int | None = None) -> DeltaTable | None:
        uri, options = self.location(name)
        try:
            return DeltaTable(uri, version=version, storage_options=options)
        except TableNotFoundError:
            return None
        except (DeltaError, OSError) as error:
            raise CatalogError.because(f"cannot read catalog table {uri}", error) from error

    def read(
        self, name: str, columns: list[str] | None = None, *, version: int | None = None
    ) -> tuple[pa.Table, int]:
        """The table's rows (only ``columns``; at ``version``, else the latest) and its
        serial sequence number at that snapshot (0 before any serial commit)."""
        table = self._open(name, version)
        if table is None:
            empty = TABLES[name].empty_table()
            return (empty.select(columns) if columns else empty), 0
        try:
            # No filter pushed down: files written by a merge carry string_view statistics
            # that pyarrow 26's dataset filters cannot compare (ArrowNotImplementedError).
            rows = table.to_pyarrow_dataset().to_table(columns=columns)
        except (DeltaError, OSError) as error:
            raise CatalogError.because(f"cannot read catalog table {name}", error) from error
        return rows, table.transaction_version(_app_id(name)) or 0

    def _open_for_write(self, name: str) -> DeltaTable:
        """The table, created empty first if need be. Creating is a commit of version 0 with
        no rows: two writers that race to create write the same thing, so no data rides on
        it (on S3 a racing creation is not guaranteed to be refused)."""
        table = self._open(name)
        if table is not None:
            return table
        uri, options = self.location(name)
        try:
            DeltaTable.create(uri, TABLES[name], mode="ignore", storage_options=options)
        except CommitFailedError:
            pass  # another writer created it first
        except (DeltaError, OSError) as error:
            raise CatalogError.because(f"cannot create catalog table {uri}", error) from error
        table = self._open(name)
        if table is None:
            raise CatalogError(f"catalog table {uri} was created but cannot be opened")
        return table

    def lookup(
        self, name: str, key: str, values: Sequence[str], columns: list[str], *, version: int | None = None
    ) -> pa.Table:
        """The rows whose ``key`` is one of ``values`` (only ``columns``), found by delta-rs'
        query engine, which streams the table instead of loading the key column whole."""
        wanted = list(dict.fromkeys(values))
        bad = next((v for v in wanted if not _PLAIN_VALUE.fullmatch(v)), None)
        if bad is not None:
            raise ValueError(f"catalog lookup: {key} {bad!r} is not a plain identifier")
        table = self._open(name, version)
        if table is None or not wanted:
            return TABLES[name].empty_table().select(columns)
        quoted = ", ".join(f"'{value}'" for value in wanted)
        query = f'SELECT {", ".join(columns)} FROM "{name}" WHERE {key} IN ({quoted})'
        try:
            reader = QueryBuilder().register(name, table).execute(query)
            schema = pa.schema([TABLES[name].field(column) for column in columns])
            return pa.table(reader.read_all()).cast(schema)
        except (DeltaError, OSError) as error:
            raise CatalogError.because(f"cannot read catalog table {name}", error) from error

    def append(self, name: str, rows: pa.Table, *, after: int | None = None) -> None:
        """Commit ``rows``. With ``after`` (the sequence the writer read), a serial commit:
        CatalogConflict if another serial commit landed since."""
        rows = rows.select(TABLES[name].names).cast(TABLES[name])
        properties = None
        if after is not None:
            properties = CommitProperties(app_transactions=[Transaction(_app_id(name), after + 1)])
        table = self._open_for_write(name)
        if after is not None:
            current = table.transaction_version(_app_id(name)) or 0
            if current != after:
                raise CatalogConflict(f"{name}: sequence {current}, this writer read {after}")
        try:
            # A blind append (after=None) never conflicts: delta-rs retries it on a new version.
            write_deltalake(table, rows, mode="append", commit_properties=properties)
        except CommitFailedError as error:
            raise CatalogConflict(f"{name}: {error}") from error
        except (DeltaError, OSError) as error:
            raise CatalogError.because(f"cannot write catalog table {name}", error) from error

    def advance(self, name: str, *, after: int) -> None:
        """A serial commit with no rows: writers deciding on ``name`` as of ``after`` must
        decide again. Budget spending is written to two tables (exports to batch_items, late
        labels to labels); each writer advances the other's table before committing its own,
        so of two spends decided on the same state only one lands."""
        self.append(name, TABLES[name].empty_table(), after=after)

    def insert_new(
        self, name: str, rows: pa.Table, key: str, *, checked_at: int | None = None
    ) -> tuple[int, int | None]:
        """Insert the rows whose ``key`` the table lacks, as a serial commit; returns how many
        were new, and the sequence the writer's check holds at now, or None if it no longer does.

        A writer that found none of the rows' keys in the table as of sequence ``checked_at``
        (rows unique among themselves) has them appended as they are, if nothing landed
        since: a merge reads the whole key column (10^6 samples: 0.4 s a commit). Otherwise,
        or on conflict, they are merged against the new state; rows that landed meanwhile are
        unknown to the writer, so the sequence returned is None. Every commit of the table
        is serial, so an append cannot miss a concurrent insert."""
        rows = rows.select(TABLES[name].names).cast(TABLES[name])
        if checked_at is not None:
            try:
                self.append(name, rows, after=checked_at)
                return rows.num_rows, checked_at + 1
            except CatalogConflict:
                pass  # another writer landed since the check: merge
        for attempt in range(_ATTEMPTS):
            table = self._open_for_write(name)
            sequence = table.transaction_version(_app_id(name)) or 0
            serial = CommitProperties(app_transactions=[Transaction(_app_id(name), sequence + 1)])
            try:
                metrics = (
                    table.merge(rows, predicate=f"t.{key} = s.{key}", source_alias="s", target_alias="t",
                                commit_properties=serial)
                    .when_not_matched_insert_all()
                    .execute()
                )
                return int(metrics["num_target_rows_inserted"]), None
            except CommitFailedError:
                _backoff(attempt)
            except (DeltaError, OSError) as error:
                raise CatalogError.because(f"cannot write catalog table {name}", error) from error
        raise CatalogError(f"catalog table {name}: {_ATTEMPTS} commits in a row lost a race")

    def compact(self, max_files: int = COMPACT_ABOVE_FILES) -> dict[str, int]:
        """Rewrite each table with more than ``max_files`` data files into few large ones, and
        delete the files that no version younger than ``RETAIN_HOURS`` reads. Every commit
        adds a file, so without this a nightly table gathers thousands. Returns the files
        each compacted table had; a compaction that lost a race to a writer waits for the
        next call (the table stays correct, just fragmented)."""
        compacted = {}
        for name in TABLES:
            table = self._open(name)
            if table is None or len(table.file_uris()) <= max_files:
                continue
            files = len(table.file_uris())
            try:
                table.optimize.compact()
                table.vacuum(retention_hours=RETAIN_HOURS, dry_run=False)
            except CommitFailedError:
                continue
            except (DeltaError, OSError) as error:
                raise CatalogError.because(f"cannot compact catalog table {name}", error) from error
            compacted[name] = files
        return compacted


def retry_on_conflict(decide_and_commit: Callable[[], T], attempts: int = _ATTEMPTS) -> T:
    """Run a read-decide-commit step until its serial commit lands."""
    for attempt in range(attempts):
        try:
            return decide_and_commit()
        except CatalogConflict:
            if attempt == attempts - 1:
                raise
            _backoff(attempt)
    raise AssertionError("unreachable")


def _backoff(attempt: int) -> None:
    # Jittered, so writers that lost together do not collide again together.
    time.sleep(random.uniform(0, min(0.05 * 2**attempt, 1.0)))
