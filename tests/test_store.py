"""One contract for every ObjectStore: the local directory and S3 (a real SeaweedFS)."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest
from s3_server import free_ports, s3_client

from activeflow.core.storage.store import (
    LocalStore,
    ObjectNotFound,
    ObjectStore,
    S3Store,
    StoreError,
    get_json,
    get_jsonl,
    iter_many,
    open_store,
    put_json,
    put_json_if_absent,
    put_jsonl,
    put_jsonl_if_absent,
)
from activeflow.settings import StorageSettings


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return open_store(StorageSettings(uri=str(tmp_path / "store")))
    return open_store(request.getfixturevalue("s3_storage"))


def _all_keys(store: ObjectStore) -> list[str]:
    """Everything under the root, temp files included where the backend has them."""
    if isinstance(store, LocalStore):
        if not store.root.exists():
            return []
        files = (path for path in store.root.rglob("*") if path.is_file())
        return sorted(path.relative_to(store.root).as_posix() for path in files)
    return store.list()


# --- put / get ----------------------------------------------------------------------


def test_put_then_get_returns_the_bytes(store: ObjectStore) -> None:
    data = bytes(range(256)) * 3
    store.put("samples/ab/abcd.png", data)
    store.put("empty.bin", b"")

    assert store.get("samples/ab/abcd.png") == data
    assert store.get("empty.bin") == b""


def test_put_replaces_an_existing_object(store: ObjectStore) -> None:
    store.put("a/b.txt", b"first")
    store.put("a/b.txt", b"second, longer")

    assert store.get("a/b.txt") == b"second, longer"
    assert store.list() == ["a/b.txt"]


def test_put_if_absent_creates_once_and_never_overwrites(store: ObjectStore) -> None:
    assert store.put_if_absent("labels/b1.jsonl", b"winner") is True
    assert store.put_if_absent("labels/b1.jsonl", b"loser") is False

    assert store.get("labels/b1.jsonl") == b"winner"
    assert _all_keys(store) == ["labels/b1.jsonl"]


def test_put_if_absent_does_not_overwrite_a_put(store: ObjectStore) -> None:
    store.put("models/champion.json", b"v1")

    assert store.put_if_absent("models/champion.json", b"v2") is False
    assert store.get("models/champion.json") == b"v1"


def test_concurrent_put_if_absent_has_exactly_one_winner(store: ObjectStore) -> None:
    writers = 8
    barrier = threading.Barrier(writers)
    results: dict[int, bool] = {}
    errors: list[BaseException] = []

    def write(number: int) -> None:
        try:
            barrier.wait()
            content = f"writer {number}".encode()
            results[number] = store.put_if_absent("once/promotion.json", content)
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    winners = [number for number, created in results.items() if created]
    assert len(results) == writers
    assert len(winners) == 1
    assert store.get("once/promotion.json") == f"writer {winners[0]}".encode()
    assert _all_keys(store) == ["once/promotion.json"]  # no temp files left behind


def test_get_missing_raises_object_not_found_naming_key_and_store(store: ObjectStore) -> None:
    store.put("present.txt", b"x")

    with pytest.raises(ObjectNotFound) as caught:
        store.get("samples/zz/missing.png")

    assert isinstance(caught.value, KeyError)
    assert caught.value.key == "samples/zz/missing.png"
    assert "samples/zz/missing.png" in str(caught.value)
    assert store.uri in str(caught.value)


def test_iter_many_reads_in_parallel_in_the_order_given(store: ObjectStore) -> None:
    keys = [f"many/{n:03d}.bin" for n in range(50)]
    for n, key in enumerate(reversed(keys)):
        store.put(key, bytes([n]))
    store.max_concurrency = 4
    seen_threads: set[str] = set()

    def size_and_thread(data: bytes) -> int:
        seen_threads.add(threading.current_thread().name)
        return data[0]

    assert list(iter_many(store, keys, size_and_thread)) == list(reversed(range(50)))
    assert list(iter_many(store, keys[:2])) == [bytes([49]), bytes([48])]
    assert 1 < len(seen_threads) <= 4 and all(name.startswith("store-io") for name in seen_threads)


def test_iter_many_raises_the_first_missing_key_in_order(store: ObjectStore) -> None:
    store.put("a.bin", b"a")
    store.put("c.bin", b"c")

    images = iter_many(store, ["a.bin", "b.bin", "c.bin"])

    assert next(images) == b"a"
    with pytest.raises(ObjectNotFound) as caught:
        next(images)
    assert caught.value.key == "b.bin"


def test_get_on_an_empty_store_raises_object_not_found(store: ObjectStore) -> None:
    with pytest.raises(ObjectNotFound, match="nothing.json"):
        store.get("nothing.json")


def test_open_gives_a_seekable_file_of_the_object_or_names_the_missing_key(store: ObjectStore) -> None:
    store.put("parts/a.bin", b"0123456789")

    with store.open("parts/a.bin") as file:
        file.seek(4)
        assert file.read(3) == b"456"
    with pytest.raises(ObjectNotFound, match="parts/b.bin"):
        store.open("parts/b.bin")


def test_unsynced_writes_are_read_back_and_sync_makes_them_durable(store: ObjectStore) -> None:
    assert store.put_if_absent("samples/x.png", b"image", durable=False) is True
    assert store.put_if_absent("samples/x.png", b"other", durable=False) is False
    store.sync()

    assert store.get("samples/x.png") == b"image"


def test_an_unsynced_write_that_fails_midway_leaves_nothing_at_its_key(tmp_path, monkeypatch) -> None:
    """An unsynced local write goes straight to its key (no temp file to link): one that
    fails after some bytes must remove what it wrote, so no reader finds a partial object."""
    from activeflow.core.storage import store as store_module

    store = LocalStore(tmp_path / "store")

    def write_half_then_fail(fd: int, data: bytes) -> None:
        os.write(fd, data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store_module, "_write_all", write_half_then_fail)
    with pytest.raises(StoreError, match="No space left on device"):
        store.put_if_absent("samples/ab/ab01.png", b"x" * 1000, durable=False)

    assert _all_keys(store) == []
    monkeypatch.undo()
    assert store.put_if_absent("samples/ab/ab01.png", b"x" * 1000, durable=False) is True
    assert store.get("samples/ab/ab01.png") == b"x" * 1000


@pytest.mark.parametrize("durable", [True, False])
def test_creating_a_key_that_is_a_folder_of_other_keys_is_refused_by_name(tmp_path, durable) -> None:
    store = LocalStore(tmp_path / "store")
    store.put("samples/ab/ab01.png", b"x")

    with pytest.raises(StoreError, match="samples/ab: it is a folder of other keys"):
        store.put_if_absent("samples/ab", b"y", durable=durable)

    assert _all_keys(store) == ["samples/ab/ab01.png"]


def test_exists(store: ObjectStore) -> None:
    assert store.exists("a/b.txt") is False
    store.put("a/b.txt", b"x")

    assert store.exists("a/b.txt") is True
    assert store.exists("a") is False  # a folder-like prefix is not an object
    assert store.exists("a/b") is False


# --- list ---------------------------------------------------------------------------

KEYS = [
    "batches/b1/manifest.json",
    "samples/ab/ab01.png",
    "samples/ab/ab02.png",
    "samples/ac/ac01.png",
    "samples/cd/cd01.png",
    "top.txt",
]


@pytest.fixture
def filled(store: ObjectStore) -> ObjectStore:
    for key in reversed(KEYS):
        store.put(key, key.encode())
    return store


def test_list_everything_is_sorted_recursive_and_relative(filled: ObjectStore) -> None:
    assert filled.list() == KEYS


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        ("samples/", KEYS[1:5]),
        ("samples", KEYS[1:5]),
        ("samples/a", KEYS[1:4]),  # a string prefix, as in S3, not only whole folders
        ("samples/ab/", KEYS[1:3]),
        ("samples/ab/ab02.png", ["samples/ab/ab02.png"]),
        ("t", ["top.txt"]),
        ("nothing/", []),
        ("samples/zz", []),
        ("top.txt/", []),
    ],
)
def test_list_with_prefix(filled: ObjectStore, prefix: str, expected: list[str]) -> None:
    assert filled.list(prefix) == expected


def test_list_of_an_empty_store_is_empty(store: ObjectStore) -> None:
    assert store.list() == []
    assert store.list("samples/") == []


def test_list_never_shows_temp_files(store: ObjectStore) -> None:
    store.put("samples/ab/ab01.png", b"x")
    store.put_if_absent("samples/ab/ab01.png", b"y")
    if isinstance(store, LocalStore):  # a writer that crashed mid-write leaves one behind
        (store.root / "samples" / "ab" / ".tmp-0123abcd").write_bytes(b"partial")

    assert store.list() == ["samples/ab/ab01.png"]
    assert store.list("samples/ab/") == ["samples/ab/ab01.png"]


def test_a_write_killed_midway_leaves_nothing_that_the_next_ingest_does_not_remove(tmp_path: Path) -> None:
    """kill -9 between writing a temp file and renaming it leaves the temp behind; writes in
    flight are recent, so only temps older than ``max_age_s`` are removed."""
    from activeflow.core.ingest.ingest import ingest_images

    store = LocalStore(tmp_path / "store")
    script = (
        "import os, sys\n"
        "from activeflow.core.storage import store as s\n"
        "real = os.replace\n"
        "def crash(*a): os.kill(os.getpid(), 9)\n"
        "os.replace = crash\n"
        f"s.LocalStore({str(store.root)!r}).put('samples/ab/ab01.png', b'x' * 1000)\n"
    )
    assert subprocess.run([sys.executable, "-c", script]).returncode == -9
    assert store.list() == []
    (left,) = [p for p in store.root.rglob("*") if p.is_file()]
    assert left.name.startswith(".tmp-")

    assert store.remove_stale_temp_files(max_age_s=3600) == 0  # could be a write in flight
    old = left.stat().st_mtime - 7200
    os.utime(left, (old, old))
    ingest_images(store, [])  # the nightly command sweeps
    assert not left.exists()


@pytest.mark.s3
def test_multipart_uploads_never_completed_are_aborted_once_stale(s3_storage: StorageSettings) -> None:
    store = open_store(s3_storage)
    bucket = s3_storage.uri.removeprefix("s3://").split("/")[0]
    client = s3_client(s3_storage.endpoint_url)
    client.create_multipart_upload(Bucket=bucket, Key="some/prefix/catalog/part-0.parquet")

    assert store.remove_stale_temp_files(max_age_s=3600) == 0  # could be an upload in flight
    assert store.remove_stale_temp_files(max_age_s=0) == 1
    assert client.list_multipart_uploads(Bucket=bucket, Prefix="some/prefix/").get("Uploads", []) == []


# --- delete -------------------------------------------------------------------------


def test_delete_removes_the_object(store: ObjectStore) -> None:
    store.put("a/one.txt", b"1")
    store.put("a/two.txt", b"2")

    store.delete("a/one.txt")

    assert store.exists("a/one.txt") is False
    assert store.list() == ["a/two.txt"]
    with pytest.raises(ObjectNotFound):
        store.get("a/one.txt")


def test_delete_of_a_missing_key_is_fine(store: ObjectStore) -> None:
    store.delete("never/written.txt")
    store.put("a/one.txt", b"1")
    store.delete("a/missing.txt")
    store.delete("a")  # a prefix of other keys, not an object

    assert store.list() == ["a/one.txt"]


# --- url / presigned_url ------------------------------------------------------------


def test_url_is_the_root_uri_plus_the_key(store: ObjectStore) -> None:
    store.put("samples/ab/abcd.png", b"png")

    assert store.url("samples/ab/abcd.png") == f"{store.uri}/samples/ab/abcd.png"
    if isinstance(store, LocalStore):
        assert Path(store.url("samples/ab/abcd.png")).is_absolute()
        assert Path(store.url("samples/ab/abcd.png")).read_bytes() == b"png"
    else:
        assert store.url("samples/ab/abcd.png").startswith("s3://")


def test_presigned_url_reads_the_object_without_the_store(store: ObjectStore) -> None:
    data = b"\x89PNG and more bytes"
    store.put("batches/b1/images/a b+c.png", data)

    url = store.presigned_url("batches/b1/images/a b+c.png", expires_s=60)

    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == data
    if isinstance(store, LocalStore):
        assert url.startswith("file:///")
    else:
        assert url.startswith("http://") and "X-Amz-Expires=60" in url


# --- key validation -----------------------------------------------------------------

BAD_KEYS = [
    "",
    "/etc/passwd",
    "a//b",
    "a/",
    "..",
    "../outside",
    "a/../../b",
    ".",
    "./a",
    "a/./b",
    "a\\b",
    "nul\x00byte",
    ".tmp-1234",
    "a/.tmp-1234",
]


def _operations(store: ObjectStore) -> dict[str, object]:
    return {
        "put": lambda key: store.put(key, b"x"),
        "put_if_absent": lambda key: store.put_if_absent(key, b"x"),
        "get": store.get,
        "exists": store.exists,
        "delete": store.delete,
        "url": store.url,
        "presigned_url": store.presigned_url,
        "put_json": lambda key: put_json(store, key, {"a": 1}),
        "put_jsonl": lambda key: put_jsonl(store, key, [{"a": 1}]),
    }


@pytest.mark.parametrize("key", BAD_KEYS)
def test_invalid_keys_are_refused_and_nothing_is_written(store: ObjectStore, key: str) -> None:
    for name, operation in _operations(store).items():
        with pytest.raises(ValueError) as caught:
            operation(key)  # type: ignore[operator]
        assert repr(key) in str(caught.value), name

    assert _all_keys(store) == []
    if isinstance(store, LocalStore):
        assert not store.root.exists()


@pytest.mark.parametrize("prefix", ["/abs", "../", "a//", "a/../b", "a\\b"])
def test_invalid_list_prefixes_are_refused(store: ObjectStore, prefix: str) -> None:
    with pytest.raises(ValueError, match="invalid prefix"):
        store.list(prefix)


# --- JSON helpers -------------------------------------------------------------------


def test_json_round_trip_is_deterministic_utf8(store: ObjectStore) -> None:
    put_json(store, "batches/b1/manifest.json", {"z": [1, 2], "a": "é"})

    assert get_json(store, "batches/b1/manifest.json") == {"a": "é", "z": [1, 2]}
    assert store.get("batches/b1/manifest.json") == (
        '{\n  "a": "é",\n  "z": [\n    1,\n    2\n  ]\n}\n'.encode()
    )


def test_put_json_if_absent_keeps_the_first(store: ObjectStore) -> None:
    assert put_json_if_absent(store, "models/champion/0001.json", {"version": "v1"}) is True
    assert put_json_if_absent(store, "models/champion/0001.json", {"version": "v2"}) is False

    assert get_json(store, "models/champion/0001.json") == {"version": "v1"}


def test_jsonl_round_trip(store: ObjectStore) -> None:
    rows = [{"id": "ab", "size": 3}, {"label": "cat", "id": "cd"}]
    put_jsonl(store, "ingests/i1.jsonl", rows)

    assert get_jsonl(store, "ingests/i1.jsonl") == rows
    assert store.get("ingests/i1.jsonl") == (
        b'{"id": "ab", "size": 3}\n{"id": "cd", "label": "cat"}\n'
    )


def test_jsonl_keeps_unicode_line_separators_inside_strings(store: ObjectStore) -> None:
    rows = [{"text": "a\u2028b\u0085c\u2029d\x1ce"}, {"text": "next"}]
    put_jsonl(store, "ingests/odd.jsonl", rows)

    assert get_jsonl(store, "ingests/odd.jsonl") == rows


def test_jsonl_of_no_records_is_an_empty_object(store: ObjectStore) -> None:
    put_jsonl(store, "ingests/empty.jsonl", [])

    assert store.get("ingests/empty.jsonl") == b""
    assert get_jsonl(store, "ingests/empty.jsonl") == []


def test_put_jsonl_if_absent_keeps_the_first(store: ObjectStore) -> None:
    assert put_jsonl_if_absent(store, "labels/b1.jsonl", [{"id": "a", "label": "cat"}]) is True
    assert put_jsonl_if_absent(store, "labels/b1.jsonl", [{"id": "a", "label": "dog"}]) is False

    assert get_jsonl(store, "labels/b1.jsonl") == [{"id": "a", "label": "cat"}]


@pytest.mark.parametrize(
    ("write", "error", "message"),
    [
        (
            lambda s: put_jsonl(s, "x.jsonl", [{"a": 1}, ["not", "a", "dict"]]),
            TypeError,
            "record 2 must be a mapping, got list",
        ),
        (
            lambda s: put_jsonl_if_absent(s, "x.jsonl", [{"a": 1}, {"a": float("nan")}]),
            ValueError,
            "record 2: Out of range float",
        ),
        (lambda s: put_json(s, "x.json", {"a": float("inf")}), ValueError, "Out of range float"),
        (lambda s: put_json_if_absent(s, "x.json", {"a": object()}), TypeError, "not JSON"),
    ],
)
def test_unserialisable_json_is_refused_and_nothing_written(
    store: ObjectStore, write, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message) as caught:
        write(store)

    assert "cannot write " in str(caught.value)
    assert store.uri in str(caught.value)

    assert _all_keys(store) == []


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"a": 1}\n{"a": \n', "line 2: invalid JSON"),
        (b'{"a": 1}\n[1, 2]\n', "line 2: expected a JSON object, got list"),
        (b"\xff\xfe", "not valid UTF-8"),
    ],
)
def test_get_jsonl_names_the_object_and_the_bad_line(
    store: ObjectStore, content: bytes, message: str
) -> None:
    store.put("labels/bad.jsonl", content)

    with pytest.raises(ValueError) as caught:
        get_jsonl(store, "labels/bad.jsonl")

    assert store.url("labels/bad.jsonl") in str(caught.value)
    assert message in str(caught.value)


def test_get_json_names_the_object_when_it_is_not_json(store: ObjectStore) -> None:
    store.put("batches/b1/manifest.json", b"{not json")

    with pytest.raises(ValueError, match="not valid UTF-8 JSON") as caught:
        get_json(store, "batches/b1/manifest.json")

    assert store.url("batches/b1/manifest.json") in str(caught.value)


# --- handing a store to another process ---------------------------------------------


def test_a_store_survives_pickling(store: ObjectStore) -> None:
    store.put("a.txt", b"before")

    copy = pickle.loads(pickle.dumps(store))

    assert copy.uri == store.uri
    assert copy.get("a.txt") == b"before"
    copy.put("b.txt", b"from the copy")
    assert store.get("b.txt") == b"from the copy"


# --- local store specifics ----------------------------------------------------------


def test_local_store_creates_its_root_on_first_write(tmp_path: Path) -> None:
    root = tmp_path / "deep" / "store"
    store = open_store(StorageSettings(uri=str(root)))

    assert store.list() == [] and not root.exists()
    store.put("samples/ab/x.png", b"x")

    assert (root / "samples" / "ab" / "x.png").read_bytes() == b"x"
    assert sorted(os.listdir(root / "samples" / "ab")) == ["x.png"]


def test_local_store_refuses_a_key_below_an_object(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put("a", b"file")

    with pytest.raises(StoreError, match="is a file, not a folder"):
        store.put("a/b", b"x")
    with pytest.raises(StoreError, match="is a file, not a folder"):
        store.put_if_absent("a/b", b"x")
    assert store.list() == ["a"]
    assert store.exists("a/b") is False
    with pytest.raises(ObjectNotFound):
        store.get("a/b")


def test_local_store_refuses_an_object_where_a_folder_is(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put("a/b", b"x")

    with pytest.raises(StoreError, match="folder"):
        store.put_if_absent("a", b"x")
    with pytest.raises(StoreError):
        store.put("a", b"x")
    assert store.list() == ["a/b"]


# --- S3 specifics -------------------------------------------------------------------


@pytest.mark.s3
def test_s3_store_on_a_missing_bucket_names_bucket_and_endpoint(s3_endpoint: str) -> None:
    store = S3Store("no-such-bucket", "p", endpoint_url=s3_endpoint, region="us-east-1")

    for operation in (lambda: store.get("a"), lambda: store.put("a", b"x"), store.list):
        with pytest.raises(StoreError) as caught:
            operation()
        assert "'no-such-bucket' does not exist" in str(caught.value)
        assert s3_endpoint in str(caught.value)

    with pytest.raises(s3_client(s3_endpoint).exceptions.ClientError):
        s3_client(s3_endpoint).head_bucket(Bucket="no-such-bucket")  # not created


@pytest.mark.s3
def test_s3_store_sees_only_its_prefix(s3_storage: StorageSettings) -> None:
    store = open_store(s3_storage)
    outside = open_store(s3_storage.model_copy(update={"uri": s3_storage.uri + "x"}))
    outside.put("a.txt", b"outside")  # .../some/prefixx/a.txt shares the string prefix
    store.put("a.txt", b"inside")

    assert store.list() == ["a.txt"]
    assert store.get("a.txt") == b"inside"
    bucket = s3_storage.uri.removeprefix("s3://").split("/")[0]
    assert store.url("a.txt") == f"s3://{bucket}/some/prefix/a.txt"


@pytest.mark.s3
def test_s3_store_with_wrong_credentials_says_access_is_denied(
    s3_storage: StorageSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    store = open_store(s3_storage)

    with pytest.raises(StoreError, match="is denied; check the credentials") as caught:
        store.put("a.txt", b"x")

    assert s3_storage.endpoint_url in str(caught.value)
    monkeypatch.undo()
    assert open_store(s3_storage).list() == []


def test_s3_store_without_credentials_says_how_to_give_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    endpoint = f"http://127.0.0.1:{free_ports(1)[0]}"
    store = S3Store("some-bucket", "p", endpoint_url=endpoint, region="us-east-1")

    with pytest.raises(StoreError, match="no usable S3 credentials.*AWS_ACCESS_KEY_ID"):
        store.get("a.txt")


def test_s3_store_unreachable_endpoint_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "any")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "any")
    endpoint = f"http://127.0.0.1:{free_ports(1)[0]}"  # nothing listens there
    store = S3Store("some-bucket", endpoint_url=endpoint, region="us-east-1")  # no I/O yet

    with pytest.raises(StoreError, match=f"cannot reach S3 endpoint {endpoint}"):
        store.exists("a")


# --- open_store ---------------------------------------------------------------------


def test_open_store_dispatches_on_the_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s3 = open_store(
        StorageSettings(
            uri="s3://my-bucket/a/b/", endpoint_url="http://127.0.0.1:1", region="eu-west-1"
        )
    )
    assert isinstance(s3, S3Store)
    assert (s3.bucket, s3.prefix, s3.uri) == ("my-bucket", "a/b", "s3://my-bucket/a/b")
    assert (s3.endpoint_url, s3.region) == ("http://127.0.0.1:1", "eu-west-1")
    assert s3.url("k.json") == "s3://my-bucket/a/b/k.json"

    bare = open_store(StorageSettings(uri="s3://my-bucket"))
    assert isinstance(bare, S3Store)
    assert (bare.prefix, bare.uri, bare.url("k")) == ("", "s3://my-bucket", "s3://my-bucket/k")

    monkeypatch.chdir(tmp_path)
    local = open_store(StorageSettings(uri="./relative/store"))
    assert isinstance(local, LocalStore)
    assert local.uri == str(tmp_path.resolve() / "relative" / "store")

    monkeypatch.setenv("HOME", str(tmp_path))
    home = open_store(StorageSettings(uri="~/store"))
    assert isinstance(home, LocalStore) and home.uri == str(tmp_path.resolve() / "store")


def test_the_store_module_imports_neither_prefect_nor_tensorflow() -> None:
    code = (
        "import sys, activeflow.core.storage.store; "
        "print(sorted(m for m in ('prefect', 'tensorflow', 'keras') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )

    assert result.stdout.strip() == "[]"


def test_a_frozen_s3_endpoint_fails_within_the_configured_timeouts(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that accepts connections and never answers (a hung S3) must not hang us."""
    import socket
    import time

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "any")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "any")
    frozen = socket.create_server(("127.0.0.1", 0), backlog=16)  # accepts, never reads or replies
    endpoint = f"http://127.0.0.1:{frozen.getsockname()[1]}"
    storage = StorageSettings(
        uri="s3://some-bucket/p", endpoint_url=endpoint,
        connect_timeout_seconds=1, read_timeout_seconds=1, max_attempts=2,
    )
    try:
        started = time.monotonic()
        with pytest.raises(StoreError, match=f"S3 endpoint {endpoint} did not answer within the timeouts"):
            open_store(storage).exists("a")
        assert time.monotonic() - started < 10  # 2 attempts x 1 s, plus backoff
    finally:
        frozen.close()


def test_s3_timeouts_default_to_failing_within_about_a_minute() -> None:
    storage = StorageSettings()
    worst = storage.max_attempts * (storage.connect_timeout_seconds + storage.read_timeout_seconds)
    assert worst <= 60


@pytest.mark.s3
def test_an_s3_server_that_ignores_if_none_match_is_refused_before_any_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every once-only write (a promotion, an import record) relies on If-None-Match; a
    server that ignores it would make each of them last-writer-wins, silently."""
    from http_proxy import header_dropping_proxy
    from s3_server import DUMMY_CREDENTIALS, start_seaweedfs

    for name, value in DUMMY_CREDENTIALS.items():  # any will do: the server checks none
        monkeypatch.setenv(name, value)
    server = start_seaweedfs(tmp_path / "weed", anonymous=True)
    try:
        s3_client(server.endpoint).create_bucket(Bucket="careless")
        with header_dropping_proxy(server.endpoint, "If-None-Match") as proxy:
            honest = S3Store("careless", "p", endpoint_url=server.endpoint, region="us-east-1")
            careless = S3Store("careless", "q", endpoint_url=proxy, region="us-east-1")
            honest.put("a", b"x")  # the real server is fine
            for operation in (lambda: careless.put("a", b"x"), careless.list):
                with pytest.raises(StoreError, match=f"endpoint {proxy} ignores If-None-Match"):
                    operation()
        keys = s3_client(server.endpoint).list_objects_v2(Bucket="careless").get("Contents", [])
        assert [k["Key"] for k in keys] == ["p/a"]  # nothing of the refused store's, probe included
    finally:
        server.stop()
