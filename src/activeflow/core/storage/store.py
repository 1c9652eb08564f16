"""The one object-store interface: a local directory or any S3 API, same contract.

Keys are relative POSIX paths (``samples/ab/<sha256>.png``) under the store's root.
Every write is atomic — a reader sees the whole object or none of it — and
``put_if_absent`` is a conditional create (an exclusive hard link locally, S3
``If-None-Match: *`` remotely), the primitive for what must happen once.

Plain Python and boto3 only: no Prefect, no TensorFlow. Build a store where it is used
(``open_store(settings.storage)``); S3 credentials come from boto3's usual chain
(``AWS_ACCESS_KEY_ID`` ..., profiles, instance roles), never from settings.
"""

from __future__ import annotations

import abc
import ctypes
import io
import json
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from itertools import islice
from typing import Any, BinaryIO, TypeVar

import boto3
import botocore.loaders
import botocore.session
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError
from botocore.exceptions import NoCredentialsError, PartialCredentialsError

from activeflow.settings import StorageSettings

T = TypeVar("T")
R = TypeVar("R")

try:
    _SYNCFS = ctypes.CDLL(None, use_errno=True).syncfs  # Linux
except (AttributeError, OSError, TypeError):
    _SYNCFS = None

TEMP_PREFIX = ".tmp-"  # local temp files; a key segment may not start with it


class ObjectNotFound(KeyError):
    """No object at ``key`` in the store at ``uri``."""

    def __init__(self, key: str, uri: str) -> None:
        super().__init__(key)
        self.key = key
        self.uri = uri

    def __str__(self) -> str:  # KeyError would print repr(key) only
        return f"no object {self.key!r} in store {self.uri}"


class StoreError(RuntimeError):
    """The store cannot be used as configured: missing bucket, unreachable endpoint,
    no credentials, access denied, a path that is not a directory ...

    ``timed_out``: the endpoint did not answer in time, on every attempt the connection
    settings allow; trying again at once would only multiply the wait."""

    def __init__(self, message: str, *, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


def validate_key(key: str, *, what: str = "key") -> str:
    """Return ``key`` if it is a relative POSIX path of plain segments, else ValueError."""
    if not isinstance(key, str) or not key:
        raise ValueError(f"invalid {what} {key!r}: must be a non-empty string")
    problem = None
    if key.startswith("/"):
        problem = "must be relative (no leading '/')"
    elif "\\" in key:
        problem = "must use '/' as separator (no backslashes)"
    elif "\x00" in key:
        problem = "must not contain NUL characters"
    else:
        for segment in key.split("/"):
            if segment == "":
                problem = "must not have empty segments ('//' or a trailing '/')"
            elif segment in (".", ".."):
                problem = "must not have '.' or '..' segments"
            elif segment.startswith(TEMP_PREFIX):
                problem = f"segments starting with {TEMP_PREFIX!r} are reserved for temp files"
            if problem:
                break
    if problem:
        raise ValueError(f"invalid {what} {key!r}: {problem}")
    return key


def _validate_prefix(prefix: str) -> str:
    """A list prefix: empty, or a key-like string that may end with '/'."""
    if prefix:
        validate_key(prefix[:-1] if prefix.endswith("/") else prefix, what="prefix")
    return prefix


class ObjectStore(abc.ABC):
    """Immutable-by-convention blobs under a root. ``uri`` names the root; ``max_concurrency``
    bounds the requests one caller keeps in flight (see ``parallel_map``)."""

    uri: str
    max_concurrency: int = 16
    # Whether each request waits on a network: only then do more of them in flight pay off.
    remote: bool = False

    @abc.abstractmethod
    def put(self, key: str, data: bytes) -> None:
        """Write ``data`` at ``key``, replacing any object there; atomic."""

    @abc.abstractmethod
    def put_if_absent(self, key: str, data: bytes, *, durable: bool = True) -> bool:
        """Create ``key`` with ``data`` unless it exists. True if this call created it;
        False if it already existed (left unchanged). Atomic.

        ``durable=False`` lets a local store skip the flush to disk, so many writes share
        one ``sync``: until then a power cut may lose the bytes, and a local store writes
        them in place, so a killed writer may leave them partial. For objects nothing reads
        before the sync and commit that name them."""

    def sync(self) -> None:
        """Make every earlier ``durable=False`` write durable. S3 acknowledges a PUT only
        once it is stored, so only the local store has anything to do."""

    @abc.abstractmethod
    def get(self, key: str) -> bytes:
        """The object's bytes; ObjectNotFound if there is none."""

    def open(self, key: str) -> BinaryIO:
        """The object as a seekable file, for readers that take only parts of it (a parquet
        file's columns); ObjectNotFound if there is none. Here: its bytes in memory."""
        return io.BytesIO(self.get(key))

    @abc.abstractmethod
    def exists(self, key: str) -> bool: ...

    @abc.abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Every key starting with ``prefix`` (a plain string prefix, as in S3), recursive,
        relative to the root, sorted."""

    @abc.abstractmethod
    def list_versions(self, prefix: str = "") -> list[tuple[str, str]]:
        """``(key, version)`` for every key ``list`` gives: the version changes whenever
        the object does (size and modification time; size and ETag on S3)."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key``; a missing key is not an error."""

    @abc.abstractmethod
    def remove_stale_temp_files(self, max_age_s: float = 3600) -> int:
        """Remove what writes killed midway left behind (local temp files, S3 multipart
        uploads never completed) older than ``max_age_s``; return how many. Younger ones
        may belong to a write in flight and are kept."""

    @abc.abstractmethod
    def url(self, key: str) -> str:
        """Where the object lives: an absolute file path or ``s3://bucket/prefix/key``."""

    @abc.abstractmethod
    def presigned_url(self, key: str, expires_s: int = 3600) -> str:
        """A URL that reads the object without credentials: a presigned S3 GET URL, or a
        ``file://`` URI locally."""

    @abc.abstractmethod
    def table_location(self, key: str) -> tuple[str, dict[str, str]]:
        """Where a table under ``key`` lives, as a table library names it: its URI and the
        storage options that reach it (see catalog.py)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"


class LocalStore(ObjectStore):
    """A directory; created on the first write.

    Writes go to a temp file in ``.tmp-writes/`` and are then renamed (``put``) or
    hard-linked (``put_if_absent``, which fails atomically if the target exists), so
    readers never see a partial object, and what a killed writer left is in one folder.
    Unsynced writes (``put_if_absent(durable=False)``) are the exception: see
    ``_create_in_place``.
    """

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).expanduser().absolute()
        self.uri = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / validate_key(key)

    def _write_temp(self, path: Path, data: bytes, durable: bool = True) -> str:
        """Write ``data`` to a fresh temp file for ``path``, flushed to disk if ``durable``.
        Plain ``os`` calls: a small image's write is a few syscalls, and pathlib's and
        mkdir's overhead cost twice as much as the syscalls themselves."""
        temp = os.path.join(self._temp_folder, f"{TEMP_PREFIX}{uuid.uuid4().hex}")
        try:
            fd = self._create(temp)
        except OSError as error:
            raise StoreError(f"cannot write {path}: {error}") from error
        self._fill(temp, fd, data, path, durable)
        return temp

    @staticmethod
    def _fill(name: str, fd: int, data: bytes, path: Path, durable: bool) -> None:
        """Write ``data`` into the new file ``name`` (open as ``fd``) and close it, flushed to
        disk if ``durable``. One that fails, or is interrupted, removes the file."""
        try:
            try:
                _write_all(fd, data)
                if durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
        except BaseException as error:
            _remove(name)
            if isinstance(error, OSError):
                raise StoreError(f"cannot write {path}: {error}") from error
            raise

    def _create(self, name: str) -> int:
        """A new file ``name`` open for writing (FileExistsError if there is one), creating
        its folders when missing: only the first write into a folder pays."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        try:
            return os.open(name, flags, 0o666)
        except (FileNotFoundError, NotADirectoryError):
            self._make_folder(Path(name))
            return os.open(name, flags, 0o666)

    def _place(self, place: Callable[[str, Path], None], temp: str, path: Path) -> None:
        """``place(temp, path)`` (a link or a rename), creating ``path``'s folders when missing."""
        try:
            place(temp, path)
        except (FileNotFoundError, NotADirectoryError):
            self._make_folder(path)
            place(temp, path)

    def _make_folder(self, path: Path) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as error:
            raise StoreError(
                f"cannot write {path}: a parent of it in store {self.uri} is a file, not a folder"
            ) from error
        except OSError as error:
            raise StoreError(f"cannot create folder {path.parent}: {error}") from error

    @property
    def _temp_folder(self) -> str:
        return f"{self.root}/{TEMP_PREFIX}writes"  # no key can name it (validate_key)

    def remove_stale_temp_files(self, max_age_s: float = 3600) -> int:
        cutoff = time.time() - max_age_s
        removed = 0
        for temp in Path(self._temp_folder).glob(f"{TEMP_PREFIX}*"):
            try:
                if temp.stat().st_mtime < cutoff:
                    temp.unlink()
                    removed += 1
            except FileNotFoundError:
                pass  # its writer finished meanwhile, or another sweep took it
        return removed

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        temp = self._write_temp(path, data)
        try:
            self._place(os.replace, temp, path)
        except OSError as error:
            raise StoreError(f"cannot write {path}: {error}") from error
        finally:
            _remove(temp)  # what a failed rename left (after one that worked: nothing)

    def put_if_absent(self, key: str, data: bytes, *, durable: bool = True) -> bool:
        path = self._path(key)
        if not durable:
            return self._create_in_place(path, data)
        temp = self._write_temp(path, data, durable)
        try:
            self._place(os.link, temp, path)
            return True
        except FileExistsError:
            return self._already_there(path)
        except OSError as error:
            raise StoreError(
                f"cannot create {path} exclusively (the local store needs a filesystem "
                f"with hard links): {error}"
            ) from error
        finally:
            _remove(temp)

    def _already_there(self, path: Path) -> bool:
        """``put_if_absent``'s answer when ``path`` exists: False, if it is an object."""
        if path.is_dir():
            raise StoreError(f"cannot write {path}: it is a folder of other keys in store {self.uri}") from None
        return False

    def _create_in_place(self, path: Path, data: bytes) -> bool:
        """``put_if_absent`` without a temp file to link (a third of a small image's write).
        Only for what nothing reads before the ``sync`` and commit that name it (ingest's
        images): a reader may see it partial until this returns, and a writer killed midway
        leaves it so, which is why ingest compares an object nobody catalogued before it
        trusts it. A write that fails removes what it wrote."""
        name = str(path)
        try:
            fd = self._create(name)
        except FileExistsError:
            return self._already_there(path)
        except OSError as error:
            raise StoreError(f"cannot write {path}: {error}") from error
        self._fill(name, fd, data, path, durable=False)
        return True

    def sync(self) -> None:
        """One flush of the store's filesystem (Linux' syncfs; sync elsewhere): an fsync
        per small file costs a journal commit each, about 0.9 ms here, 20 times the write.
        It also flushes what other programs left unwritten on that filesystem, so its time
        depends on them (after a gigabyte just written, about a second)."""
        if not self.root.exists():
            return
        fd = os.open(self.root, os.O_RDONLY)
        try:
            if _SYNCFS is None:
                os.sync()
            elif _SYNCFS(fd) != 0:
                error = ctypes.get_errno()
                raise StoreError(f"cannot flush store {self.uri} to disk: {os.strerror(error)}")
        finally:
            os.close(fd)

    def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound(key, self.uri) from None

    def open(self, key: str) -> BinaryIO:
        """The file itself: a reader seeks to what it needs instead of reading it all."""
        try:
            return open(self._path(key), "rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound(key, self.uri) from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> list[str]:
        _validate_prefix(prefix)
        # Walk only the deepest folder the prefix names; filter the rest by string prefix.
        folder = self.root / prefix.rpartition("/")[0]
        keys = []
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = [d for d in dirnames if not d.startswith(TEMP_PREFIX)]
            relative_dir = Path(dirpath).relative_to(self.root).as_posix()
            for name in filenames:
                if name.startswith(TEMP_PREFIX):
                    continue
                key = name if relative_dir == "." else f"{relative_dir}/{name}"
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def list_versions(self, prefix: str = "") -> list[tuple[str, str]]:
        versions = []
        for key in self.list(prefix):
            stat = (self.root / key).stat()
            versions.append((key, f"{stat.st_size}:{stat.st_mtime_ns}"))
        return versions

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            pass  # no object at this key (a folder holds other keys, not this one)

    def url(self, key: str) -> str:
        return str(self._path(key))

    def presigned_url(self, key: str, expires_s: int = 3600) -> str:
        return self._path(key).as_uri()

    def table_location(self, key: str) -> tuple[str, dict[str, str]]:
        return str(self._path(key)), {}


_NO_SUCH_KEY_CODES = {"404", "NoSuchKey", "NotFound"}
_CONFLICT_RETRIES = 5


_BOTO_ERRORS = (ClientError, BotoCoreError)
# (endpoint, bucket) pairs this process has seen honour If-None-Match.
_HONOURS_IF_NONE_MATCH: set[tuple[str | None, str]] = set()

# Loading botocore's service models is most of the ~0.15 s a new client costs; sessions
# share one loader (a read-only cache), while each still resolves credentials itself.
_MODEL_LOADER = botocore.loaders.create_loader()


def _new_session(region: str | None) -> boto3.session.Session:
    core = botocore.session.Session()
    core.register_component("data_loader", _MODEL_LOADER)
    return boto3.session.Session(botocore_session=core, region_name=region)


def _error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))



class S3Store(ObjectStore):
    """Objects under ``s3://bucket/prefix`` on AWS or any S3 API (``endpoint_url``).

    The boto3 client is built inside, lazily, and dropped when pickled, so a store can
    be handed to another process. The bucket is checked once, on first use; buckets are
    never created here. Transient errors are retried by botocore (standard mode,
    ``max_attempts`` in all), each attempt bounded by the connect and read timeouts, so an
    unreachable or frozen endpoint fails in about ``max_attempts * (connect + read)``
    seconds. Failures surface as StoreError naming the endpoint, bucket and key.
    """

    remote = True

    def __init__(  # noqa: PLR0913 (the settings of one connection)
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        *,
        connect_timeout: float = 5,
        read_timeout: float = 15,
        max_attempts: int = 3,
        max_concurrency: int = 16,
    ) -> None:
        if len(bucket) < 3 or "/" in bucket:
            raise StoreError(f"invalid bucket name {bucket!r} (3+ characters, no '/')")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        if self.prefix:
            validate_key(self.prefix, what="store prefix")
        self.endpoint_url = endpoint_url
        self.region = region
        self.timeouts = (connect_timeout, read_timeout, max_attempts)
        self.max_concurrency = max_concurrency
        self.uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self._s3: Any = None  # boto3 client, built on first use
        self._bucket_checked = False
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_s3": None, "_bucket_checked": False, "_lock": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @property
    def _endpoint(self) -> str:
        return self.endpoint_url or "AWS S3"

    @property
    def _client(self) -> Any:
        """The boto3 client, after the bucket has been checked once."""
        if not self._bucket_checked:
            with self._lock:
                if self._s3 is None:
                    connect, read, attempts = self.timeouts
                    config = Config(
                        retries={"max_attempts": attempts, "mode": "standard"},
                        connect_timeout=connect,
                        read_timeout=read,
                        signature_version="s3v4",
                        # One connection per request in flight (botocore's default is 10).
                        max_pool_connections=self.max_concurrency,
                    )
                    self._s3 = _new_session(self.region).client(
                        "s3", endpoint_url=self.endpoint_url, config=config
                    )
                if not self._bucket_checked:
                    self._check_bucket(self._s3)
                    self._check_conditional_writes(self._s3)
                    self._bucket_checked = True
        return self._s3

    def _check_bucket(self, client: Any) -> None:
        try:
            client.head_bucket(Bucket=self.bucket)
        except ClientError as error:
            code = _error_code(error)
            if code in {"404", "NoSuchBucket", "NotFound"}:
                raise StoreError(
                    f"bucket {self.bucket!r} does not exist at endpoint {self._endpoint}; "
                    "create it first (activeflow never creates buckets)"
                ) from error
            if code in {"403", "AccessDenied", "Forbidden"}:
                raise StoreError(
                    f"access to bucket {self.bucket!r} at endpoint {self._endpoint} is denied; "
                    "check the credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or "
                    "AWS_PROFILE) and the bucket's policy"
                ) from error
            raise self._error(error, "check bucket", None) from error
        except BotoCoreError as error:
            raise self._error(error, "check bucket", None) from error

    def _check_conditional_writes(self, client: Any) -> None:
        """Refuse an endpoint that ignores ``If-None-Match: *``: on it every once-only write
        (a promotion, an import record) would silently become last-writer-wins. Probed
        once per endpoint and bucket in a process, with a temp object removed afterwards."""
        if (self.endpoint_url, self.bucket) in _HONOURS_IF_NONE_MATCH:
            return
        probe = f"{self.prefix}/" if self.prefix else ""
        probe += f"{TEMP_PREFIX}conditional-write-probe-{uuid.uuid4().hex}"
        refusal = StoreError(
            f"S3 endpoint {self._endpoint} ignores If-None-Match (conditional writes) on bucket "
            f"{self.bucket!r}: once-only writes would silently overwrite one another there. Use "
            "a server that honours it (AWS S3 and SeaweedFS do)"
        )
        try:
            client.put_object(Bucket=self.bucket, Key=probe, Body=b"", IfNoneMatch="*")
            try:
                client.put_object(Bucket=self.bucket, Key=probe, Body=b"", IfNoneMatch="*")
            except ClientError as error:
                if _error_code(error) not in {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}:
                    raise
            else:
                raise refusal
            finally:
                client.delete_object(Bucket=self.bucket, Key=probe)
        except _BOTO_ERRORS as error:
            if isinstance(error, ClientError) and _error_code(error) in {"NotImplemented", "501"}:
                raise refusal from error
            raise self._error(error, "check conditional writes", None) from error
        _HONOURS_IF_NONE_MATCH.add((self.endpoint_url, self.bucket))

    def _error(self, error: Exception, action: str, key: str | None) -> StoreError:
        """A StoreError for a botocore failure, naming endpoint, bucket and key."""
        where = f"s3://{self.bucket}/{self._full_key(key)}" if key else self.uri
        if isinstance(error, NoCredentialsError | PartialCredentialsError):
            return StoreError(
                f"no usable S3 credentials for {where}: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) in the environment"
            )
        if isinstance(error, ReadTimeoutError | ConnectTimeoutError):
            return StoreError(
                f"S3 endpoint {self._endpoint} did not answer within the timeouts "
                f"(storage.connect_timeout_seconds / read_timeout_seconds, "
                f"{self.timeouts[2]} attempts) for {action} of {where}: {error}",
                timed_out=True,
            )
        if isinstance(error, EndpointConnectionError | BotoConnectionError):
            return StoreError(f"cannot reach S3 endpoint {self._endpoint} for {where}: {error}")
        if isinstance(error, ClientError):
            code = _error_code(error)
            if code == "NoSuchBucket":
                return StoreError(
                    f"bucket {self.bucket!r} does not exist at endpoint {self._endpoint}"
                )
            message = error.response.get("Error", {}).get("Message", "")
            return StoreError(
                f"S3 {action} of {where} failed at endpoint {self._endpoint}: {code} {message}"
            )
        return StoreError(f"S3 {action} of {where} failed at endpoint {self._endpoint}: {error}")

    def _full_key(self, key: str) -> str:
        validate_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def put(self, key: str, data: bytes) -> None:
        full = self._full_key(key)
        try:
            self._client.put_object(Bucket=self.bucket, Key=full, Body=data)
        except _BOTO_ERRORS as error:
            raise self._error(error, "put", key) from error

    def put_if_absent(self, key: str, data: bytes, *, durable: bool = True) -> bool:
        full = self._full_key(key)
        for attempt in range(_CONFLICT_RETRIES):
            try:
                self._client.put_object(Bucket=self.bucket, Key=full, Body=data, IfNoneMatch="*")
                return True
            except ClientError as error:
                code = _error_code(error)
                if code in {"PreconditionFailed", "412"}:
                    return False  # it exists; left as it was
                if code not in {"ConditionalRequestConflict", "409"}:
                    raise self._error(error, "put_if_absent", key) from error
                # 409: another conditional write of this key is in flight. Asking again
                # settles it: 412 once that write has landed, success if it was abandoned.
                time.sleep(0.05 * 2**attempt)
            except BotoCoreError as error:
                raise self._error(error, "put_if_absent", key) from error
        raise StoreError(
            f"put_if_absent of {self.url(key)}: conditional-write conflicts persisted after "
            f"{_CONFLICT_RETRIES} attempts"
        )

    def get(self, key: str) -> bytes:
        full = self._full_key(key)
        try:
            return self._client.get_object(Bucket=self.bucket, Key=full)["Body"].read()
        except ClientError as error:
            if _error_code(error) in _NO_SUCH_KEY_CODES:
                raise ObjectNotFound(key, self.uri) from None
            raise self._error(error, "get", key) from error
        except BotoCoreError as error:
            raise self._error(error, "get", key) from error

    def exists(self, key: str) -> bool:
        full = self._full_key(key)
        try:
            self._client.head_object(Bucket=self.bucket, Key=full)
            return True
        except ClientError as error:
            if _error_code(error) in _NO_SUCH_KEY_CODES:
                return False
            raise self._error(error, "exists", key) from error
        except BotoCoreError as error:
            raise self._error(error, "exists", key) from error

    def list(self, prefix: str = "") -> list[str]:
        return [key for key, _ in self.list_versions(prefix)]

    def list_versions(self, prefix: str = "") -> list[tuple[str, str]]:
        _validate_prefix(prefix)
        root = f"{self.prefix}/" if self.prefix else ""
        versions = []
        try:
            paginator = self._client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=root + prefix):
                for item in page.get("Contents", []):
                    key = item["Key"][len(root) :]
                    # Skip folder markers and a probe a killed process left (see below).
                    if key and not key.endswith("/") and not key.startswith(TEMP_PREFIX):
                        etag = item["ETag"].strip('"')
                        versions.append((key, f"{item['Size']}:{etag}"))
        except _BOTO_ERRORS as error:
            raise self._error(error, f"list (prefix {prefix!r})", None) from error
        return sorted(versions)

    def remove_stale_temp_files(self, max_age_s: float = 3600) -> int:
        """Aborts multipart uploads under the prefix (delta-rs writes large files so) and
        deletes conditional-write probes, both begun more than ``max_age_s`` ago."""
        root = f"{self.prefix}/" if self.prefix else ""
        cutoff = datetime.now(UTC) - timedelta(seconds=max_age_s)
        removed = 0
        try:
            for page in self._client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=root
            ):
                for upload in page.get("Uploads", []):
                    if upload["Initiated"] < cutoff:
                        self._client.abort_multipart_upload(
                            Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                        )
                        removed += 1
            probes = self._client.list_objects_v2(Bucket=self.bucket, Prefix=root + TEMP_PREFIX)
            for item in probes.get("Contents", []):
                if item["LastModified"] < cutoff:
                    self._client.delete_object(Bucket=self.bucket, Key=item["Key"])
                    removed += 1
        except _BOTO_ERRORS as error:
            raise self._error(error, "remove stale uploads", None) from error
        return removed

    def delete(self, key: str) -> None:
        full = self._full_key(key)
        try:
            self._client.delete_object(Bucket=self.bucket, Key=full)
        except _BOTO_ERRORS as error:
            raise self._error(error, "delete", key) from error

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._full_key(key)}"

    def presigned_url(self, key: str, expires_s: int = 3600) -> str:
        full = self._full_key(key)
        try:
            return self._client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": full}, ExpiresIn=expires_s
            )
        except _BOTO_ERRORS as error:
            raise self._error(error, "presign", key) from error


    def table_location(self, key: str) -> tuple[str, dict[str, str]]:
        """delta-rs reaches S3 itself (object_store, not boto3): it gets the credentials
        boto3 resolves, the same endpoint and timeouts, and commits by conditional put."""
        credentials = _new_session(self.region).get_credentials()
        if credentials is None:
            raise StoreError(f"no AWS credentials found for {self.uri} ({self._endpoint})")
        frozen = credentials.get_frozen_credentials()
        connect, read, attempts = self.timeouts
        options = {
            "AWS_ACCESS_KEY_ID": frozen.access_key,
            "AWS_SECRET_ACCESS_KEY": frozen.secret_key,
            "AWS_REGION": self.region or _new_session(None).region_name or "us-east-1",
            "conditional_put": "etag",
            "connect_timeout": f"{connect:g}s",
            "timeout": f"{read:g}s",
            "max_retries": str(attempts - 1),
        }
        if frozen.token:
            options["AWS_SESSION_TOKEN"] = frozen.token
        if self.endpoint_url:
            options["AWS_ENDPOINT_URL"] = self.endpoint_url
            options["AWS_ALLOW_HTTP"] = str(self.endpoint_url.startswith("http://")).lower()
        return f"s3://{self.bucket}/{self._full_key(key)}", options


def open_store(storage: StorageSettings) -> ObjectStore:
    """``s3://bucket/prefix`` -> S3Store; anything else is a local directory."""
    if storage.uri.startswith("s3://"):
        bucket, _, prefix = storage.uri.removeprefix("s3://").partition("/")
        return S3Store(
            bucket, prefix, endpoint_url=storage.endpoint_url, region=storage.region,
            connect_timeout=storage.connect_timeout_seconds,
            read_timeout=storage.read_timeout_seconds, max_attempts=storage.max_attempts,
            max_concurrency=storage.max_concurrency,
        )
    store = LocalStore(Path(storage.uri).expanduser().resolve())
    store.max_concurrency = storage.max_concurrency
    return store


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _write_all(fd: int, data: bytes) -> None:
    """os.write may write less than asked (above 2 GiB on Linux, for one): loop until done."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def parallel_map(fn: Callable[[T], R], items: Iterable[T], workers: int) -> Iterator[R]:
    """``fn`` of each item on up to ``workers`` threads, yielded in the order of ``items``.

    Unlike ``Executor.map``, items are taken only ``workers`` ahead of the results consumed,
    so a long list of lazy reads or writes never holds more than that many in flight. The first
    failure, in item order, is raised there; items not yet started are then not run."""
    iterator = iter(items)
    if workers <= 1:
        yield from map(fn, iterator)  # max_concurrency 1: no thread, one at a time as before
        return
    pool = ThreadPoolExecutor(workers, thread_name_prefix="store-io")
    try:
        pending: deque[Future[R]] = deque(pool.submit(fn, item) for item in islice(iterator, workers))
        while pending:
            result = pending.popleft().result()
            for item in islice(iterator, 1):  # one in for one out: ``workers`` stay in flight
                pending.append(pool.submit(fn, item))
            yield result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # no worker outlives the ingest


def iter_many(
    store: ObjectStore, keys: Sequence[str], transform: Callable[[bytes], T] | None = None
) -> Iterator[T]:
    """``store.get`` of each key, in the order given, with ``store.max_concurrency`` requests
    in flight (``parallel_map``); ``transform`` (e.g. decoding) runs on each object in the
    same worker threads, so neither latency nor decoding waits on the consumer."""
    def read(key: str) -> Any:
        data = store.get(key)
        return transform(data) if transform is not None else data

    return parallel_map(read, keys, store.max_concurrency)


# JSON helpers: the pipeline writes small JSON / JSONL objects constantly. Output is
# deterministic (sorted keys), UTF-8, and strict (no NaN / Infinity).


def json_bytes(obj: Any) -> bytes:
    text = json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False)
    return (text + "\n").encode()


def jsonl_bytes(records: Iterable[Mapping[str, Any]]) -> bytes:
    lines = []
    for number, record in enumerate(records, start=1):
        if not isinstance(record, Mapping):
            raise TypeError(f"record {number} must be a mapping, got {type(record).__name__}")
        try:
            lines.append(
                json.dumps(dict(record), sort_keys=True, ensure_ascii=False, allow_nan=False)
            )
        except (TypeError, ValueError) as error:
            raise type(error)(f"record {number}: {error}") from None
    return "".join(line + "\n" for line in lines).encode()


def _encoded(store: ObjectStore, key: str, encode: Callable[[Any], bytes], value: Any) -> bytes:
    store.url(key)  # validates the key first
    try:
        return encode(value)
    except (TypeError, ValueError) as error:
        raise type(error)(f"cannot write {store.url(key)}: {error}") from None


def put_json(store: ObjectStore, key: str, obj: Any) -> None:
    store.put(key, _encoded(store, key, json_bytes, obj))


def put_json_if_absent(store: ObjectStore, key: str, obj: Any) -> bool:
    return store.put_if_absent(key, _encoded(store, key, json_bytes, obj))


def get_json(store: ObjectStore, key: str) -> Any:
    data = store.get(key)
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{store.url(key)} is not valid UTF-8 JSON: {error}") from None


def put_jsonl(store: ObjectStore, key: str, records: Iterable[Mapping[str, Any]]) -> None:
    store.put(key, _encoded(store, key, jsonl_bytes, records))


def put_jsonl_if_absent(store: ObjectStore, key: str, records: Iterable[Mapping[str, Any]]) -> bool:
    return store.put_if_absent(key, _encoded(store, key, jsonl_bytes, records))


def get_jsonl(store: ObjectStore, key: str) -> list[dict[str, Any]]:
    data = store.get(key)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{store.url(key)} is not valid UTF-8: {error}") from None
    records = []
    # split on "\n" only: str.splitlines() would also split at U+2028, U+0085 ..., which
    # json.dumps(ensure_ascii=False) leaves unescaped inside strings.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{store.url(key)} line {number}: invalid JSON: {error}") from None
        if not isinstance(record, dict):
            raise ValueError(
                f"{store.url(key)} line {number}: expected a JSON object, "
                f"got {type(record).__name__}"
            )
        records.append(record)
    return records
