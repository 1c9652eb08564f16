"""Ingest: content addressing, dedup, quarantine, labelled layouts, S3 and tfds sources."""

from __future__ import annotations

import io
import itertools
import os
import struct
import zlib

import pytest
from images import write_image, write_labelled_tree

from activeflow.core.ingest import ingest as ingest_module
from activeflow.core.ingest.ingest import content_id, ingest_images
from activeflow.core.ingest.sources import SourceError, SourceImage, iter_source
from activeflow.core.storage.pool import load_state, open_catalog
from activeflow.core.storage.store import LocalStore, StoreError, get_json, open_store
from activeflow.settings import SettingsError, load_settings


@pytest.fixture
def store(tmp_path):
    return LocalStore(tmp_path / "store")


def ingest(store, source, split="pool", classes=()):
    return ingest_images(
        store, iter_source(str(source), labelled=split != "pool"), split=split, classes=classes
    )


def test_new_images_are_stored_under_their_content_hash(store, tmp_path):
    image = write_image(tmp_path / "in" / "a.png", 1)
    write_image(tmp_path / "in" / "b.jpg", 2, fmt="JPEG")

    report = ingest(store, tmp_path / "in")

    assert (report.new, report.duplicate, report.quarantined) == (2, 0, 0)
    sample_id = content_id(image.read_bytes())
    assert store.get(f"samples/{sample_id[:2]}/{sample_id}.png") == image.read_bytes()
    assert sorted(load_state(store).samples.table.column("ext").to_pylist()) == ["jpg", "png"]
    assert load_state(store).unlabelled_count == len(load_state(store).unlabelled) == 2


def test_rerun_and_duplicate_bytes_add_nothing(store, tmp_path):
    write_image(tmp_path / "in" / "a.png", 1)
    (tmp_path / "in" / "copy-of-a.png").write_bytes((tmp_path / "in" / "a.png").read_bytes())
    first = ingest(store, tmp_path / "in")
    assert (first.new, first.duplicate) == (1, 1)
    keys_before = store.list()

    again = ingest(store, tmp_path / "in")

    assert (again.new, again.duplicate, again.quarantined, again.unchanged) == (0, 0, 0, 2)
    assert store.list() == keys_before  # not even an empty commit


def test_a_rerun_reads_only_source_files_it_has_not_ingested(store, tmp_path):
    for n in range(3):
        write_image(tmp_path / "in" / f"{n}.png", n)
    ingest(store, tmp_path / "in")
    # Same size and modification time: the rerun must not even read it (or it would be
    # quarantined as undecodable). A changed file, and a new one, are read.
    stale = tmp_path / "in" / "0.png"
    stat = stale.stat()
    stale.write_bytes(b"x" * stat.st_size)
    os.utime(stale, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    write_image(tmp_path / "in" / "1.png", 11)
    write_image(tmp_path / "in" / "3.png", 3)

    again = ingest(store, tmp_path / "in")

    assert (again.unchanged, again.new, again.duplicate, again.quarantined) == (2, 2, 0, 0)
    assert load_state(store).unlabelled_count == 5


def test_unreadable_inputs_go_to_quarantine_with_the_reason(store, tmp_path):
    write_image(tmp_path / "in" / "good.png", 1)
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    (tmp_path / "in" / "empty.png").write_bytes(b"")
    write_image(tmp_path / "full.png", 2, size=64)
    (tmp_path / "in" / "truncated.png").write_bytes((tmp_path / "full.png").read_bytes()[:200])

    report = ingest(store, tmp_path / "in")

    assert (report.new, report.quarantined) == (1, 3)
    reasons = {get_json(store, k)["source"].rsplit("/", 1)[-1]: get_json(store, k)["reason"]
               for k in store.list("quarantine/") if k.endswith(".json")}
    assert reasons["notes.txt"] == "not an image PIL can identify"
    assert reasons["empty.png"] == "empty file"
    assert reasons["truncated.png"].startswith("image cannot be decoded")
    assert load_state(store).quarantined == 3
    assert len(load_state(store).samples) == 1  # quarantined inputs never enter the pool


def test_labelled_folder_keeps_labels_for_train_and_test(store, tmp_path):
    write_labelled_tree(tmp_path / "train", {"cat": 2, "dog": 3})
    write_labelled_tree(tmp_path / "test", {"cat": 1, "dog": 1}, first_seed=100)

    ingest(store, tmp_path / "train", split="train", classes=["cat", "dog"])
    ingest(store, tmp_path / "test", split="test", classes=["cat", "dog"])

    state = load_state(store)
    assert sorted(state.labelled.values()) == ["cat", "cat", "dog", "dog", "dog"]
    assert sorted(state.test.values()) == ["cat", "dog"]
    assert state.unlabelled.to_pylist() == []


def test_label_outside_the_configured_classes_is_quarantined(store, tmp_path):
    write_labelled_tree(tmp_path / "train", {"cat": 1, "horse": 1})
    report = ingest(store, tmp_path / "train", split="train", classes=["cat", "dog"])
    assert (report.new, report.quarantined) == (1, 1)
    assert "class 'horse' is not one of data.classes ['cat', 'dog']" in report.quarantine_reasons[0]


def test_labelled_source_must_be_class_slash_image(store, tmp_path):
    write_image(tmp_path / "flat" / "a.png", 1)
    with pytest.raises(SourceError, match="must be laid out as <class>/<image>; found 'a.png'"):
        ingest(store, tmp_path / "flat", split="train")
    assert store.list() == []


def test_a_folder_lists_its_files_in_path_order_without_hidden_ones(tmp_path):
    """Path order decides which of two identical files is the sample's source: parts are
    compared one by one ("a/b" before "a-c" and "a.b", though "/" sorts after both)."""
    root = tmp_path / "in"
    for name in ["a-c/x.png", "a/b.png", "a.b.png", "b/.hidden.png", ".git/c.png", "a/a/z.png"]:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(name.encode())

    images = list(iter_source(str(root), labelled=False))

    assert [image.name for image in images] == [
        str(root / name) for name in ["a/a/z.png", "a/b.png", "a-c/x.png", "a.b.png"]
    ]
    assert [image.data for image in images] == [b"a/a/z.png", b"a/b.png", b"a-c/x.png", b"a.b.png"]
    stat = (root / "a/b.png").stat()
    assert images[1].version == f"{stat.st_size}:{stat.st_mtime_ns}" and images[1].label is None
    with pytest.raises(SourceError, match="found 'a/a/z.png'"):  # the first in path order
        list(iter_source(str(root), labelled=True))


def test_missing_source_folder_is_named(store, tmp_path):
    with pytest.raises(SourceError, match="nowhere does not exist"):
        ingest(store, tmp_path / "nowhere")
    assert store.list() == []


@pytest.mark.s3
def test_ingest_from_an_s3_prefix_into_an_s3_store(s3_storage):
    store = open_store(s3_storage)
    inbox = open_store(s3_storage.model_copy(update={"uri": s3_storage.uri + "-inbox"}))
    write_image_bytes = [_png(seed) for seed in range(3)]
    for n, data in enumerate(write_image_bytes):
        inbox.put(f"cat/{n}.png", data)

    images = iter_source(inbox.uri, labelled=True, storage=s3_storage)
    report = ingest_images(store, images, split="train", classes=["cat"])

    assert report.new == 3
    assert sorted(load_state(store).labelled.values()) == ["cat"] * 3
    assert all(k.startswith(("samples/", "catalog/")) for k in store.list())

    # The rerun reads only the object that changed (a new ETag) and the new one.
    inbox.put("cat/0.png", _png(10))
    inbox.put("cat/3.png", _png(11))
    again = ingest_images(
        store, iter_source(inbox.uri, labelled=True, storage=s3_storage), split="train", classes=["cat"]
    )
    assert (again.unchanged, again.new, again.duplicate) == (2, 2, 0)


def test_tfds_image_folder_source(store, tmp_path):
    write_labelled_tree(tmp_path / "tree" / "train", {"cat": 2, "dog": 2})
    write_labelled_tree(tmp_path / "tree" / "test", {"cat": 1, "dog": 1}, first_seed=50)

    train = ingest_images(
        store, iter_source(f"tfds:{tmp_path / 'tree'}/train", labelled=True), split="train"
    )
    test = ingest_images(
        store, iter_source(f"tfds:{tmp_path / 'tree'}/test", labelled=True), split="test"
    )

    assert (train.new, test.new) == (4, 2)
    state = load_state(store)
    assert sorted(state.labelled.values()) == ["cat", "cat", "dog", "dog"]
    assert sorted(state.test.values()) == ["cat", "dog"]
    # tfds decodes and activeflow re-encodes PNG: the same example twice is still one sample.
    again = ingest_images(store, iter_source(f"tfds:{tmp_path / 'tree'}/train", labelled=True), split="train")
    assert (again.new, again.duplicate) == (0, 4)


def test_unknown_tfds_split_is_named(store, tmp_path):
    write_labelled_tree(tmp_path / "tree" / "train", {"cat": 1, "dog": 1})
    with pytest.raises(SourceError, match="no split 'validation'"):
        list(iter_source(f"tfds:{tmp_path / 'tree'}/validation", labelled=True))


def _png(seed: int) -> bytes:
    import numpy as np
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(
        buffer, format="PNG"
    )
    return buffer.getvalue()


def _png_claiming(width: int, height: int) -> bytes:
    """A valid PNG signature and header claiming ``width`` x ``height``, with almost no data:
    what a decompression bomb looks like before it is decoded."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _corrupt_gif() -> bytes:
    """A GIF whose logical screen is 65535 x 65535: PIL raises DecompressionBombError on open."""
    return b"GIF89a" + struct.pack("<HH", 65535, 65535) + b"\x00\x00\x00" + b"\x2c" + b"\x00" * 9 + b"\x3b"


def test_decompression_bombs_and_oversized_images_go_to_quarantine_not_a_traceback(store, tmp_path):
    folder = tmp_path / "in"
    write_image(folder / "good.png", 1)
    (folder / "bomb.png").write_bytes(_png_claiming(40_000, 40_000))
    (folder / "bomb.gif").write_bytes(_corrupt_gif())
    (folder / "large.png").write_bytes(_png_claiming(5_000, 4_000))

    report = ingest_images(store, iter_source(str(folder), labelled=False), max_pixels=10_000_000)

    assert (report.new, report.quarantined) == (1, 3)
    reasons = {get_json(store, k)["source"].rsplit("/", 1)[-1]: get_json(store, k)["reason"]
               for k in store.list("quarantine/") if k.endswith(".json")}
    assert reasons["large.png"] == "image is 5000x4000 = 20,000,000 pixels, above ingest.max_pixels (10,000,000)"
    # PIL's own guard refuses these on open, before anything is decoded.
    assert reasons["bomb.png"].startswith("decompression bomb: Image size (1600000000 pixels) exceeds limit")
    assert reasons["bomb.gif"].startswith("decompression bomb: ")
    assert len(load_state(store).samples) == 1


def test_max_pixels_is_a_setting_checked_at_start():
    assert load_settings().ingest.max_pixels == 64_000_000
    with pytest.raises(SettingsError, match="ingest.max_pixels: Input should be greater than or equal to 1"):
        load_settings(ingest={"max_pixels": 0})


# Concurrency: store.max_concurrency threads read, check and write, and the result must be
# the one a single thread gets. Small chunks, so several commits and duplicates across them.


def _mixed_inputs(folder):
    """60 files: 50 distinct images, 8 copies of earlier ones (some in the chunk of the
    original, some in a later one), and an undecodable file twice (quarantined once, then
    a duplicate)."""
    for n in range(50):
        write_image(folder / f"{n:02d}.png", n)
    for n, original in enumerate([0, 3, 11, 12, 25, 40, 41, 49]):
        (folder / f"{original:02d}_copy{n}.png").write_bytes((folder / f"{original:02d}.png").read_bytes())
    (folder / "30-broken.png").write_bytes(b"not a png at all")
    (folder / "31-broken-again.png").write_bytes(b"not a png at all")


def _outcome(store, report):
    """Everything an ingest decides, less ids and times that differ run to run."""
    catalog = open_catalog(store)
    samples = catalog.read("samples", ["id", "ext", "source", "size", "split", "label"])[0]
    sources = catalog.read("sources", ["name", "version", "sample_id"])[0]
    counts = (report.new, report.duplicate, report.unchanged, report.quarantined)
    return (counts, report.quarantine_reasons, sorted(samples.to_pylist(), key=lambda r: r["id"]),
            sorted(sources.to_pylist(), key=lambda r: r["name"]), store.list("samples/"),
            store.list("quarantine/"))


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(ingest_module, "INGEST_CHUNK", 7)


def _as_remote(images):
    """Images read as if from S3: concurrently (local files are read one at a time)."""
    for image in images:
        image.remote = True
        yield image


def test_concurrent_ingest_decides_exactly_what_a_sequential_one_does(tmp_path, small_chunks):
    _mixed_inputs(tmp_path / "in")
    outcomes = []
    for workers in (1, 4):
        store = LocalStore(tmp_path / f"store-{workers}")
        store.max_concurrency = workers
        report = ingest_images(store, _as_remote(iter_source(str(tmp_path / "in"), labelled=False)))
        outcomes.append(_outcome(store, report))

    sequential, concurrent = outcomes
    assert concurrent[0] == sequential[0] == (50, 9, 0, 1)
    assert concurrent[1] == sequential[1]
    assert len(sequential[1]) == 1
    assert sequential[1][0].endswith("30-broken.png: not an image PIL can identify")
    assert concurrent[2:] == sequential[2:]
    # The first occurrence wins: no copy is ever the catalogued source.
    assert not any("_copy" in row["source"].rsplit("/", 1)[-1] for row in concurrent[2])


@pytest.mark.s3
def test_concurrent_ingest_from_and_into_s3_matches_a_sequential_one(s3_storage, small_chunks, tmp_path):
    _mixed_inputs(tmp_path / "in")
    inbox = open_store(s3_storage.model_copy(update={"uri": s3_storage.uri + "-inbox"}))
    for path in sorted((tmp_path / "in").iterdir()):
        inbox.put(path.name, path.read_bytes())
    outcomes = []
    for workers in (1, 4):
        store = open_store(
            s3_storage.model_copy(update={"uri": f"{s3_storage.uri}-{workers}", "max_concurrency": workers})
        )
        report = ingest_images(store, iter_source(inbox.uri, labelled=False, storage=s3_storage))
        outcomes.append(_outcome(store, report))

    sequential, concurrent = outcomes
    assert concurrent[0] == sequential[0] == (50, 9, 0, 1)
    assert concurrent[1:] == sequential[1:]


class _FailingStore(LocalStore):
    """Fault injection: the ``fail_at``-th image write (counted across threads) raises."""

    def __init__(self, root, fail_at: int) -> None:
        super().__init__(root)
        self.fail_at, self._writes = fail_at, itertools.count(1)  # count() is atomic

    def put_if_absent(self, key: str, data: bytes, **options) -> bool:
        if key.startswith("samples/") and next(self._writes) == self.fail_at:
            raise StoreError(f"injected failure writing {key}")
        return super().put_if_absent(key, data, **options)


def test_a_failed_write_in_a_worker_fails_the_ingest_and_commits_nothing_of_its_chunk(tmp_path, small_chunks):
    for n in range(20):
        write_image(tmp_path / "in" / f"{n:02d}.png", n)
    store = _FailingStore(tmp_path / "store", fail_at=10)  # a write of the second chunk of 7
    store.max_concurrency = 4

    with pytest.raises(StoreError, match="injected failure"):
        ingest_images(store, iter_source(str(tmp_path / "in"), labelled=False))

    catalog = open_catalog(store)
    sources = sorted(catalog.read("sources", ["name"])[0].column("name").to_pylist())
    assert sources == [str(tmp_path / "in" / f"{n:02d}.png") for n in range(7)]
    assert len(catalog.read("samples", ["id"])[0]) == 7
    # The rerun reads what was not catalogued and finds the bytes already written.
    healthy = LocalStore(tmp_path / "store")
    again = ingest_images(healthy, iter_source(str(tmp_path / "in"), labelled=False))
    assert (again.unchanged, again.new, again.duplicate) == (7, 13, 0)


def test_concurrent_reads_stay_a_few_images_ahead_of_the_chunk(tmp_path, small_chunks):
    reads = itertools.count(1)
    reads_before_first_write = []

    class Store(LocalStore):
        def put_if_absent(self, key: str, data: bytes, **options) -> bool:
            if not reads_before_first_write:
                reads_before_first_write.append(next(reads) - 1)
            return super().put_if_absent(key, data, **options)

    def image(n: int) -> SourceImage:
        data = (tmp_path / "in" / f"{n}.png").read_bytes()
        return SourceImage(f"{n}.png", read=lambda: next(reads) and data, remote=True)

    for n in range(40):
        write_image(tmp_path / "in" / f"{n}.png", n)
    store = Store(tmp_path / "store")
    store.max_concurrency = 4

    report = ingest_images(store, [image(n) for n in range(40)])

    assert report.new == 40
    # The first chunk (7) is read before anything is written, plus at most 4 read ahead.
    assert 7 <= reads_before_first_write[0] <= 7 + 4


def test_an_image_already_in_the_pool_is_not_silently_kept_there_by_a_labelled_ingest(store, tmp_path):
    """Re-ingesting a pool image as a labelled test image would otherwise count as a plain
    duplicate: its label dropped, the held-out image still selectable."""
    write_image(tmp_path / "pool" / "a.png", 1)
    write_image(tmp_path / "pool" / "b.png", 2)
    ingest(store, tmp_path / "pool")
    write_image(tmp_path / "test" / "cat" / "same-as-a.png", 1)
    write_image(tmp_path / "test" / "dog" / "new.png", 3)

    report = ingest(store, tmp_path / "test", split="test", classes=["cat", "dog"])

    assert (report.new, report.duplicate) == (1, 0)
    assert report.conflicts == [
        f"{tmp_path / 'test' / 'cat' / 'same-as-a.png'}: already in the store as a pool image "
        "(no label); left there, not added to the test split"
    ]
    state = load_state(store)
    assert state.test == {content_id((tmp_path / "test" / "dog" / "new.png").read_bytes()): "dog"}
    assert content_id((tmp_path / "pool" / "a.png").read_bytes()) in state.unlabelled.to_pylist()


def test_the_same_labelled_image_ingested_again_is_a_plain_duplicate(store, tmp_path):
    write_labelled_tree(tmp_path / "train", {"cat": 1, "dog": 1})
    write_labelled_tree(tmp_path / "copy", {"cat": 1, "dog": 1})
    ingest(store, tmp_path / "train", split="train", classes=["cat", "dog"])
    report = ingest(store, tmp_path / "copy", split="train", classes=["cat", "dog"])
    assert (report.new, report.duplicate, report.conflicts) == (0, 2, [])


def test_a_chunk_of_images_is_synced_once_before_its_catalog_commit(tmp_path, small_chunks):
    """Durability per chunk, not per image: the bytes a commit names are synced before it."""
    for n in range(16):
        write_image(tmp_path / "in" / f"{n:02d}.png", n)
    synced_at: list[tuple[int, int]] = []  # (images written, samples catalogued) at each sync

    class Store(LocalStore):
        def sync(self) -> None:
            super().sync()
            written = len(self.list("samples/"))
            catalogued = len(open_catalog(self).read("samples", ["id"])[0])
            synced_at.append((written, catalogued))

    store = Store(tmp_path / "store")
    store.max_concurrency = 4
    report = ingest_images(store, iter_source(str(tmp_path / "in"), labelled=False))

    assert report.new == 16
    assert synced_at == [(7, 0), (14, 7), (16, 14)]  # chunks of 7: each synced, then committed


def test_a_stored_image_whose_bytes_were_lost_is_rewritten_by_the_next_ingest(store, tmp_path):
    """A power cut between an image's write and its sync can leave a truncated object under
    the image's content id, catalogued by nobody: the rerun must repair it, not reuse it."""
    image = write_image(tmp_path / "in" / "a.png", 1)
    sample_id = content_id(image.read_bytes())
    key = f"samples/{sample_id[:2]}/{sample_id}.png"
    store.put(key, b"")  # what ext4 may leave of a file linked but never synced

    report = ingest(store, tmp_path / "in")

    assert (report.new, report.duplicate) == (1, 0)
    assert store.get(key) == image.read_bytes()
