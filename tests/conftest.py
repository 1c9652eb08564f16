"""Shared fixtures. Servers are real and start once per session."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from s3_server import DUMMY_CREDENTIALS, s3_client, start_seaweedfs

from activeflow.settings import StorageSettings

_bucket_numbers = itertools.count()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that starts SeaweedFS is marked ``s3``, whether or not it says so, so
    ``-m "not s3"`` really runs without the server."""
    for item in items:
        if "s3_endpoint" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.s3)


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a SeaweedFS S3 gateway started for this session. While it runs, the
    environment holds the server's (dummy) AWS credentials and no AWS config files apply."""
    with pytest.MonkeyPatch.context() as env:
        for name, value in DUMMY_CREDENTIALS.items():
            env.setenv(name, value)
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
            env.delenv(name, raising=False)
        missing = tmp_path_factory.getbasetemp() / "no-aws-config"
        env.setenv("AWS_CONFIG_FILE", str(missing))
        env.setenv("AWS_SHARED_CREDENTIALS_FILE", str(missing))
        server = start_seaweedfs(Path(tmp_path_factory.mktemp("seaweedfs")))
        try:
            yield server.endpoint
        finally:
            server.stop()


@pytest.fixture(scope="session")
def _s3_admin(s3_endpoint: str):  # noqa: ANN202 - boto3 client types are generated
    return s3_client(s3_endpoint)


@pytest.fixture
def s3_storage(s3_endpoint: str, _s3_admin) -> Iterator[StorageSettings]:  # noqa: ANN001
    """Storage settings for a fresh, empty bucket (deleted afterwards with its objects)."""
    bucket = f"test-{next(_bucket_numbers):04d}-{uuid.uuid4().hex[:8]}"
    _s3_admin.create_bucket(Bucket=bucket)
    yield StorageSettings(
        uri=f"s3://{bucket}/some/prefix", endpoint_url=s3_endpoint, region="us-east-1"
    )
    # SeaweedFS deletes a non-empty bucket with its objects (and frees its volume).
    try:
        _s3_admin.delete_bucket(Bucket=bucket)
    except _s3_admin.exceptions.NoSuchBucket:
        pass


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One temporary Prefect server (and database) for every flow test of the session."""
    from prefect.logging.configuration import setup_logging
    from prefect.testing.utilities import prefect_test_harness

    with pytest.MonkeyPatch.context() as env:
        env.setenv("PREFECT_HOME", str(tmp_path_factory.mktemp("prefect-home")))
        env.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        # Bind Prefect's console handler now, to the session's stream; left to the first
        # flow run it would bind to that test's capsys stream, closed when the test ends.
        setup_logging(incremental=False)
        with prefect_test_harness(server_startup_timeout=120):
            yield


@pytest.fixture(scope="session")
def label_studio(  # noqa: ANN201 - the server type is imported lazily, below
    tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config
):
    """A Label Studio server for the session (``label_studio_server.LabelStudioServer``:
    ``url``, ``token`` a personal access token, ``files_dir``). Skipped when Label Studio
    is not installed locally; under CI (``CI`` set) or with ``ACTIVEFLOW_LABEL_STUDIO_BIN``
    naming a missing binary, that is a failure: ``.ci/run`` installs it. Pytest's cache
    keeps a migrated database, so later sessions start faster."""
    import os

    from label_studio_server import (
        BINARY_ENV,
        LabelStudioNotInstalled,
        find_label_studio,
        start_label_studio,
    )

    missing = None
    try:
        find_label_studio()
    except LabelStudioNotInstalled as error:
        missing = str(error)
    if missing is not None:
        in_ci = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")
        if in_ci or os.environ.get(BINARY_ENV):
            pytest.fail(f"{missing} (.ci/run does that)", pytrace=False)
        pytest.skip(missing)
    cache = getattr(pytestconfig, "cache", None)  # None under -p no:cacheprovider
    server = start_label_studio(
        tmp_path_factory.mktemp("label-studio"),
        cache_dir=None if cache is None else cache.mkdir("label-studio"),
    )
    try:
        yield server
    finally:
        server.stop()
