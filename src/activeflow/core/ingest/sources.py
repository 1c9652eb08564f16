"""Where new images come from: a local folder, an S3 prefix, or a tensorflow-datasets dataset.

Every source yields ``SourceImage``s: where each came from, (for labelled sources laid out
as ``<class>/<image>``) the class name, and its bytes. Folder and S3 images are read only
when their bytes are first asked for, and carry a ``version`` from the listing (size and
modification time, or size and ETag), so an ingest can skip what it has seen unchanged.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from activeflow.core.storage.store import open_store
from activeflow.settings import StorageSettings


class SourceImage:
    """One input image: ``name`` says where it came from (for records and messages)."""

    __slots__ = ("name", "label", "version", "remote", "_data", "_read")  # 10^5 per listing

    def __init__(
        self,
        name: str,
        data: bytes | None = None,
        label: str | None = None,
        *,
        read: Callable[[], bytes] | None = None,
        version: str | None = None,
        remote: bool = False,
    ) -> None:
        if (data is None) == (read is None):
            raise ValueError("a SourceImage needs its bytes or a way to read them, not both")
        self.name, self.label, self.version = name, label, version
        self.remote = remote  # reading waits on a network: worth many reads in flight
        self._data, self._read = data, read

    @property
    def data(self) -> bytes:
        """The bytes; read from the source on every call, so hold them only while needed."""
        return self._data if self._data is not None else self._read()  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"SourceImage({self.name!r}, label={self.label!r}, version={self.version!r})"


class _FolderImage(SourceImage):
    """A file in a local folder, read from its path when its bytes are asked for: no
    closure per file, as a listing holds thousands at a time (each an object the garbage
    collector walks)."""

    __slots__ = ()

    def __init__(self, path: str, label: str | None, version: str) -> None:
        self.name, self.label, self.version, self.remote = path, label, version, False

    @property
    def data(self) -> bytes:
        with open(self.name, "rb") as file:
            return file.read()


class SourceError(ValueError):
    """A source that cannot be read at all (missing folder, bad tfds name, bad layout)."""


def iter_source(
    source: str, *, labelled: bool, storage: StorageSettings | None = None
) -> Iterator[SourceImage]:
    """Images of ``source``: a folder path, ``s3://bucket/prefix`` or ``tfds:NAME[/SPLIT]``.

    With ``labelled``, folder and S3 sources are read as ``<class>/<image>``.
    ``storage`` supplies the S3 endpoint and region for ``s3://`` sources.
    """
    if source.startswith("tfds:"):
        yield from _iter_tfds_source(source.removeprefix("tfds:"), labelled=labelled)
    elif source.startswith("s3://"):
        yield from _iter_s3(source, labelled=labelled, storage=storage)
    else:
        yield from _iter_folder(Path(source), labelled=labelled)


def _label_of(relative: PurePosixPath, source: str, labelled: bool) -> str | None:
    if not labelled:
        return None
    if len(relative.parts) != 2:
        raise SourceError(
            f"{source}: labelled sources must be laid out as <class>/<image>; "
            f"found {relative.as_posix()!r}"
        )
    return relative.parts[0]


def _iter_folder(root: Path, *, labelled: bool) -> Iterator[SourceImage]:
    if not root.is_dir():
        raise SourceError(f"source folder {root} does not exist")
    listing = _Listing()
    listing.scan(str(root), "")
    for index in sorted(range(len(listing.paths)), key=listing.relatives.__getitem__):
        path, relative = listing.paths[index], listing.relatives[index]
        label = _label_of(PurePosixPath(*relative.split(_SEP)), str(root), labelled) if labelled else None
        yield _FolderImage(path, label, listing.versions[index])


# Joins a file's path parts below the root: sorting the joined strings orders files as
# sorting their parts would (no name holds it, and it sorts before every character).
_SEP = "\0"


class _Listing:
    """Every file under a folder (hidden files and folders, like .DS_Store or .git, are not
    inputs): its path, its path parts below the root joined by ``_SEP``, and its version
    (size and modification time). os.scandir, not Path.rglob: a listing of 10^5 files is
    mostly path handling, and a directory entry carries its stat. Lists of strings, not a
    tuple or stat result per file: the garbage collector walks every such object it tracks
    each time it runs (10^5 files: 0.3 s a listing)."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.relatives: list[str] = []
        self.versions: list[str] = []

    def scan(self, folder: str, prefix: str) -> None:
        with os.scandir(folder) as entries:
            for entry in entries:
                name = entry.name
                if name[0] == ".":
                    continue
                if entry.is_dir(follow_symlinks=False):
                    self.scan(entry.path, f"{prefix}{name}{_SEP}")
                elif entry.is_file():
                    stat = entry.stat()
                    self.paths.append(entry.path)
                    self.relatives.append(prefix + name)
                    self.versions.append(f"{stat.st_size}:{stat.st_mtime_ns}")


def _iter_s3(uri: str, *, labelled: bool, storage: StorageSettings | None) -> Iterator[SourceImage]:
    store = open_store(
        StorageSettings(
            uri=uri,
            endpoint_url=storage.endpoint_url if storage else None,
            region=storage.region if storage else None,
        )
    )
    for key, version in store.list_versions():
        relative = PurePosixPath(key)
        if any(part.startswith(".") for part in relative.parts):
            continue
        label = _label_of(relative, uri, labelled)
        yield SourceImage(
            store.url(key), label=label, read=lambda key=key: store.get(key), version=version,
            remote=store.remote,
        )


def _iter_tfds_source(spec: str, *, labelled: bool) -> Iterator[SourceImage]:
    """``NAME[/SPLIT]`` of a registered dataset, or ``PATH/SPLIT`` (PATH starting with
    ``/`` or ``.``) of a local tree ``<split>/<class>/<image>`` read by tfds' ImageFolder."""
    if not spec.startswith(("/", ".")):
        name, _, split = spec.partition("/")
        yield from iter_tfds(name, split or "train", labelled=labelled)
        return
    root, _, split = spec.rpartition("/")
    if not Path(root).is_dir():
        raise SourceError(f"tfds:{spec}: expected PATH/SPLIT with PATH an existing folder")
    import tensorflow_datasets as tfds

    builder = tfds.folder_dataset.ImageFolder(root)
    yield from iter_tfds_builder(builder, split, labelled=labelled, source=f"tfds:{root}")


def iter_tfds(
    name: str, split: str, *, labelled: bool, data_dir: str | None = None
) -> Iterator[SourceImage]:
    """A tensorflow-datasets dataset (downloaded where the internet is reachable)."""
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as error:  # tfds raises several types for unknown names
        raise SourceError(f"tfds:{name}: not a tensorflow-datasets dataset ({error})") from error
    builder.download_and_prepare()
    yield from iter_tfds_builder(builder, split, labelled=labelled, source=f"tfds:{name}")


def iter_tfds_builder(
    builder: Any, split: str, *, labelled: bool, source: str
) -> Iterator[SourceImage]:
    """Images of a prepared tfds builder (e.g. ``tfds.folder_dataset.ImageFolder``).

    tfds hands out decoded pixels; they are re-encoded as PNG (lossless and
    deterministic), so the same example always gets the same content id.
    """
    from PIL import Image

    if split not in builder.info.splits:
        raise SourceError(f"{source}: no split {split!r}; has {sorted(builder.info.splits)}")
    names = builder.info.features["label"].names if labelled else None
    dataset = builder.as_dataset(split=split, shuffle_files=False)
    for index, example in enumerate(dataset.as_numpy_iterator()):
        pixels = example["image"]
        if pixels.ndim == 3 and pixels.shape[-1] == 1:
            pixels = pixels[..., 0]
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        label = names[int(example["label"])] if names is not None else None
        yield SourceImage(name=f"{source}/{split}[{index}]", data=buffer.getvalue(), label=label)


def check_within_roots(location: str, roots: list[str]) -> None:
    """Refuse ``location`` (a path or s3:// URI) unless it lies under one of ``roots``.

    Symlinks and ``..`` are resolved first, so neither leads out of a root."""
    if not any(_within(location, root) for root in roots):
        raise SourceError(
            f"{location} is outside the store and labelling.allowed_label_roots, so a "
            "deployment run or event may not read it; drop the export under the store's "
            "incoming-labels/ prefix, or add its folder or s3:// prefix to "
            "labelling.allowed_label_roots"
        )


def _within(location: str, root: str) -> bool:
    if location.startswith("s3://") or root.startswith("s3://"):
        prefix = root.rstrip("/") + "/"
        parts = location.removeprefix("s3://").split("/")
        return location.startswith(prefix) and ".." not in parts and "." not in parts
    return Path(os.path.realpath(location)).is_relative_to(os.path.realpath(root))


def read_location(location: str, *, storage: StorageSettings | None = None) -> bytes:
    """Bytes of one input file: a local path or ``s3://bucket/key`` (endpoint from ``storage``)."""
    if location.startswith("s3://"):
        parent, _, name = location.rpartition("/")
        store = open_store(
            StorageSettings(
                uri=parent,
                endpoint_url=storage.endpoint_url if storage else None,
                region=storage.region if storage else None,
            )
        )
        return store.get(name)
    path = Path(location)
    if not path.is_file():
        raise SourceError(f"file {location} does not exist")
    return path.read_bytes()
