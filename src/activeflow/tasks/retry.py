"""Retries for what is worth retrying: the store's transient failures, nothing else."""

from __future__ import annotations

from typing import Any

from activeflow.core.storage.store import StoreError


def store_error_retry(task: Any, task_run: Any, state: Any) -> bool:
    """``retry_condition_fn``: retry a task only when it failed with a StoreError (an
    unreachable endpoint, a throttled or dropped request); a bad label file or a missing
    champion fails at once, since trying again cannot help. Nor is a timed-out endpoint
    retried: botocore already tried each request ``storage.max_attempts`` times, and a
    frozen endpoint must fail a command within about a minute, not three."""
    return isinstance(state.data, StoreError) and not state.data.timed_out


# Keyword arguments for @task: two more tries, 2 s and then 10 s later.
STORE_RETRIES: dict[str, Any] = {
    "retries": 2,
    "retry_delay_seconds": [2, 10],
    "retry_condition_fn": store_error_retry,
}
