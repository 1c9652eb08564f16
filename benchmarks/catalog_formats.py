"""The catalog's concurrency contract run against Delta, Lance and Iceberg (ADR 0001).

Per format and store (a local directory; a SeaweedFS S3 bucket, started here):

1. concurrent appends: 10 threads released together by a barrier each append one row;
   how many rows landed (want 10) and the wall time;
2. exclusive commits, 10 trials: two writers both read version v and, released together,
   each try "append one row, but only if nobody committed since v". Want exactly one
   winner and one error per trial, and the table one row longer:
   - Delta: an append carrying the application transaction ("bench", trial) (the pattern
     `activeflow.core.storage.catalog` uses), on the table opened at v;
   - Lance: `LanceDataset.commit(Overwrite(rows at v + one row), read_version=v)`;
     Lance rebases appends, deletes, updates and merge-inserts over intervening commits,
     an Overwrite made on a stale read is refused instead;
   - Iceberg: `Table.append` on two tables loaded at the same snapshot through a
     `SqlCatalog` (a sqlite file, so commits are only serialized on one host), with the
     table property commit.retry.num-retries=0: pyiceberg 0.12 otherwise rebases a
     failed append on the new snapshot and retries it (4 times), so both would land.

The libraries are not project dependencies; run from the repository root with:

    python3 -m venv /tmp/fmt-venv
    /tmp/fmt-venv/bin/pip install pyarrow==26.0.1 deltalake==1.6.6 pylance==14.0.2 \
        'pyiceberg[sql-sqlite,pyarrow,s3fs]==0.12.0' 'boto3<1.43.118' httpx
    PATH=.venv/bin:$PATH nice -n 10 /tmp/fmt-venv/bin/python benchmarks/catalog_formats.py

(`weed` comes from the project's `.venv`; `boto3` is capped to the botocore s3fs accepts.)
Writes benchmarks/results/catalog_formats.json.
"""

from __future__ import annotations

import json
import platform
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

import pyarrow as pa

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))  # the SeaweedFS launcher
from s3_server import DUMMY_CREDENTIALS, s3_client, start_seaweedfs  # noqa: E402

THREADS = 10
TRIALS = 10
SCHEMA = pa.schema([("id", pa.int64()), ("writer", pa.string())])
OUT = Path(__file__).parent / "results" / "catalog_formats.json"


def row(i: int, writer: str) -> pa.Table:
    return pa.table({"id": [i], "writer": [writer]}, schema=SCHEMA)


@dataclass
class Store:
    name: str
    root: str  # a directory, or s3://bucket
    endpoint: str | None = None
    scratch: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="fmt-")))


def one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:240]}"


# --- Delta (deltalake) ---------------------------------------------------------------


def delta_options(store: Store) -> dict[str, str]:
    if store.endpoint is None:
        return {}
    # Non-AWS S3 has no DynamoDB lock: delta-rs must commit by conditional put (etag).
    return {
        "AWS_ACCESS_KEY_ID": DUMMY_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "AWS_SECRET_ACCESS_KEY": DUMMY_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        "AWS_REGION": DUMMY_CREDENTIALS["AWS_DEFAULT_REGION"],
        "AWS_ENDPOINT_URL": store.endpoint,
        "AWS_ALLOW_HTTP": "true",
        "conditional_put": "etag",
    }


class Delta:
    def __init__(self, store: Store, name: str) -> None:
        from deltalake import DeltaTable, write_deltalake

        self.DeltaTable, self.write = DeltaTable, write_deltalake
        self.uri, self.options = f"{store.root}/{name}", delta_options(store)
        write_deltalake(self.uri, row(0, "init"), storage_options=self.options)

    def append(self, i: int) -> None:
        self.write(self.uri, row(i, "t"), mode="append", storage_options=self.options)

    def prepare_exclusive(self) -> None:
        pass  # an application transaction in the commit makes it exclusive

    def exclusive(self, trial: int, writer: str, ready: threading.Barrier) -> None:
        from deltalake import CommitProperties, Transaction

        table = self.DeltaTable(self.uri, storage_options=self.options)
        ready.wait()  # both writers have read the same version
        props = CommitProperties(app_transactions=[Transaction("bench", trial)])
        self.write(table, row(trial, writer), mode="append", commit_properties=props)

    def rows(self) -> int:
        return self.DeltaTable(self.uri, storage_options=self.options).to_pyarrow_table().num_rows


# --- Lance (pylance) -----------------------------------------------------------------


def lance_options(store: Store) -> dict[str, str]:
    if store.endpoint is None:
        return {}
    return {
        "aws_access_key_id": DUMMY_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": DUMMY_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        "aws_region": DUMMY_CREDENTIALS["AWS_DEFAULT_REGION"],
        "aws_endpoint": store.endpoint,
        "allow_http": "true",
    }


class Lance:
    def __init__(self, store: Store, name: str) -> None:
        import lance

        self.lance = lance
        self.uri, self.options = f"{store.root}/{name}", lance_options(store)
        lance.write_dataset(row(0, "init"), self.uri, storage_options=self.options)

    def append(self, i: int) -> None:
        self.lance.write_dataset(
            row(i, "t"), self.uri, mode="append", storage_options=self.options
        )

    def prepare_exclusive(self) -> None:
        pass  # an Overwrite naming its read_version is exclusive as it is

    def exclusive(self, trial: int, writer: str, ready: threading.Barrier) -> None:
        from lance.fragment import write_fragments

        seen = self.lance.dataset(self.uri, storage_options=self.options)
        ready.wait()
        # Read-modify-write: the new state is what was read plus one row; the commit names
        # the version read, and Lance refuses an Overwrite if anything committed since.
        rows = pa.concat_tables([seen.to_table(), row(trial, writer)])
        fragments = write_fragments(rows, self.uri, storage_options=self.options)
        operation = self.lance.LanceOperation.Overwrite(SCHEMA, fragments)
        self.lance.LanceDataset.commit(
            self.uri, operation, read_version=seen.version, storage_options=self.options
        )

    def rows(self) -> int:
        return self.lance.dataset(self.uri, storage_options=self.options).count_rows()


# --- Iceberg (pyiceberg, SqlCatalog on sqlite) ----------------------------------------


def iceberg_properties(store: Store) -> dict[str, str]:
    properties = {
        "uri": f"sqlite:///{store.scratch / 'iceberg-catalog.db'}",
        "warehouse": store.root if store.endpoint else f"file://{store.root}",
    }
    if store.endpoint:
        properties |= {
            "s3.endpoint": store.endpoint,
            "s3.access-key-id": DUMMY_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            "s3.secret-access-key": DUMMY_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            "s3.region": DUMMY_CREDENTIALS["AWS_DEFAULT_REGION"],
        }
    return properties


class Iceberg:
    def __init__(self, store: Store, name: str) -> None:
        from pyiceberg.catalog.sql import SqlCatalog

        self.catalog = SqlCatalog("bench", **iceberg_properties(store))
        self.catalog.create_namespace_if_not_exists("bench")
        self.ident = ("bench", name)
        self.catalog.create_table(self.ident, schema=SCHEMA).append(row(0, "init"))

    def append(self, i: int) -> None:
        self.catalog.load_table(self.ident).append(row(i, "t"))

    def prepare_exclusive(self) -> None:
        # Without retries a commit keeps its requirement "main is still the snapshot read".
        table = self.catalog.load_table(self.ident)
        table.transaction().set_properties({"commit.retry.num-retries": "0"}).commit_transaction()

    def exclusive(self, trial: int, writer: str, ready: threading.Barrier) -> None:
        table = self.catalog.load_table(self.ident)
        ready.wait()
        # The commit asserts the snapshot it was made on; the catalog swaps the metadata
        # pointer only if it is still the one loaded.
        table.append(row(trial, writer))

    def rows(self) -> int:
        return self.catalog.load_table(self.ident).scan().to_arrow().num_rows


FORMATS: dict[str, Callable[[Store, str], Delta | Lance | Iceberg]] = {
    "delta": Delta,
    "lance": Lance,
    "iceberg": Iceberg,
}


# --- the contract --------------------------------------------------------------------


def run_together(jobs: list[Callable[[threading.Barrier], None]]) -> list[str | None]:
    """Run the jobs in threads released by one barrier; None per success, else the error."""
    barrier = threading.Barrier(len(jobs))
    outcomes: list[str | None] = [None] * len(jobs)

    def worker(k: int) -> None:
        try:
            jobs[k](barrier)
        except Exception as error:  # noqa: BLE001 - the error is the measurement
            outcomes[k] = one_line(error)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def concurrent_appends(table: Delta | Lance | Iceberg) -> dict:
    before = table.rows()

    def job(i: int) -> Callable[[threading.Barrier], None]:
        return lambda barrier: (barrier.wait(), table.append(100 + i))

    start = time.perf_counter()
    outcomes = run_together([job(i) for i in range(THREADS)])
    wall = time.perf_counter() - start
    return {
        "landed": table.rows() - before,
        "errors": sum(o is not None for o in outcomes),
        "wall_s": round(wall, 2),
        "error_lines": sorted({o for o in outcomes if o}),
    }


def exclusive_commits(table: Delta | Lance | Iceberg) -> dict:
    table.prepare_exclusive()
    one_winner, lines = 0, set()
    for trial in range(1, TRIALS + 1):
        before = table.rows()
        outcomes = run_together(
            [lambda b, w=w: table.exclusive(trial, w, b) for w in ("A", "B")]
        )
        failed = [o for o in outcomes if o]
        lines.update(failed)
        one_winner += len(failed) == 1 and table.rows() == before + 1
    return {"one_winner": one_winner, "trials": TRIALS, "error_lines": sorted(lines)}


def run_cell(fmt: str, store: Store) -> dict:
    try:
        table = FORMATS[fmt](store, f"{fmt}-table")
        return {"appends": concurrent_appends(table), "exclusive": exclusive_commits(table)}
    except Exception as error:  # noqa: BLE001 - a format that cannot run is a result
        return {"setup_error": one_line(error)}


def main() -> None:
    versions = {p: version(p) for p in ("deltalake", "pylance", "pyiceberg", "pyarrow")}
    results: dict[str, dict[str, dict]] = {}
    local = Store("local", tempfile.mkdtemp(prefix="fmt-local-"))
    results["local"] = {fmt: run_cell(fmt, local) for fmt in FORMATS}
    server = start_seaweedfs(Path(tempfile.mkdtemp(prefix="fmt-weed-")))
    try:
        results["seaweedfs"] = {}
        for fmt in FORMATS:
            bucket = f"bench-{fmt}"
            s3_client(server.endpoint).create_bucket(Bucket=bucket)
            store = Store("seaweedfs", f"s3://{bucket}", server.endpoint)
            results["seaweedfs"][fmt] = run_cell(fmt, store)
    finally:
        server.stop()
    s3 = Store("seaweedfs", "s3://bench-<format>", server.endpoint)
    options = {  # what each library was given on S3, secrets left out
        fmt: {k: v for k, v in make(s3).items() if "secret" not in k.lower()}
        for fmt, make in (("delta", delta_options), ("lance", lance_options),
                          ("iceberg", iceberg_properties))
    }
    report = {"versions": versions, "python": platform.python_version(),
              "s3_options": options, "results": results}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=2) + "\n")
    print_table(results, versions)


def print_table(results: dict[str, dict[str, dict]], versions: dict[str, str]) -> None:
    print(" ".join(f"{p} {v}" for p, v in versions.items()))
    print(f"{'store':<10} {'format':<8} {'appends':>8} {'wall s':>7} {'1 winner':>9}  errors")
    for store, cells in results.items():
        for fmt, cell in cells.items():
            if "setup_error" in cell:
                print(f"{store:<10} {fmt:<8} setup failed: {cell['setup_error']}")
                continue
            a, e = cell["appends"], cell["exclusive"]
            print(f"{store:<10} {fmt:<8} {a['landed']:>5}/{THREADS} {a['wall_s']:>7} "
                  f"{e['one_winner']:>6}/{e['trials']}  {(a['error_lines'] + e['error_lines'])[:2]}")


if __name__ == "__main__":
    main()
