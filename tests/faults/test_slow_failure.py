"""A frozen S3 endpoint must fail a command within about a minute: botocore already tried
each request ``storage.max_attempts`` times, each bounded by the timeouts, so a task retry
on top would multiply the wait; a fast failure (a refused connection, a server restarting)
is still retried by the task."""

from __future__ import annotations

import socket
import time

import pytest
from prefect import flow, task

from activeflow.core.storage.store import StoreError, open_store
from activeflow.settings import StorageSettings
from activeflow.tasks.retry import STORE_RETRIES

pytestmark = pytest.mark.usefixtures("prefect_harness")


def storage_at(endpoint: str) -> StorageSettings:
    return StorageSettings(uri="s3://some-bucket/p", endpoint_url=endpoint,
                           connect_timeout_seconds=1, read_timeout_seconds=1, max_attempts=2)


def attempts_of_a_store_task(storage: StorageSettings) -> tuple[list[float], BaseException]:
    tries: list[float] = []

    @task(**{**STORE_RETRIES, "retry_delay_seconds": 0})
    def touch() -> None:
        tries.append(time.monotonic())
        open_store(storage).exists("a")

    @flow
    def run() -> None:
        touch()

    with pytest.raises(StoreError) as caught:
        run()
    return tries, caught.value


def test_a_frozen_endpoint_is_not_retried_by_the_task_on_top_of_botocore(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "any")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "any")
    frozen = socket.create_server(("127.0.0.1", 0), backlog=16)  # accepts, never answers
    try:
        tries, error = attempts_of_a_store_task(storage_at(f"http://127.0.0.1:{frozen.getsockname()[1]}"))
    finally:
        frozen.close()
    assert len(tries) == 1 and "timeout" in str(error).lower()


def test_a_refused_connection_is_retried_by_the_task(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "any")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "any")
    closed = socket.create_server(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there: connections are refused at once
    tries, error = attempts_of_a_store_task(storage_at(f"http://127.0.0.1:{port}"))
    assert len(tries) == 3 and "cannot reach S3 endpoint" in str(error)


def test_status_on_a_frozen_endpoint_fails_in_one_clean_line_within_the_timeouts(monkeypatch, capsys):
    """The catalog is read by delta-rs, whose errors are a multi-line chain with terminal
    colour codes: the command still prints one plain line naming the endpoint."""
    from activeflow.cli import main

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "any")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "any")
    monkeypatch.setenv("ACTIVEFLOW_STORAGE__CONNECT_TIMEOUT_SECONDS", "1")
    monkeypatch.setenv("ACTIVEFLOW_STORAGE__READ_TIMEOUT_SECONDS", "1")
    monkeypatch.setenv("ACTIVEFLOW_STORAGE__MAX_ATTEMPTS", "2")
    frozen = socket.create_server(("127.0.0.1", 0), backlog=16)
    endpoint = f"http://127.0.0.1:{frozen.getsockname()[1]}"
    try:
        started = time.monotonic()
        code = main(["--store", "s3://bucket/p", "--endpoint-url", endpoint, "status"])
        elapsed = time.monotonic() - started
    finally:
        frozen.close()
    err = capsys.readouterr().err
    assert code == 2 and elapsed < 20
    assert err.count("\n") == 1 and "\x1b" not in err and endpoint in err
    assert "timed out" in err
