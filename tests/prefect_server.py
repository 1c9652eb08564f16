"""A real ``prefect server start`` (and ``activeflow serve``) for the production tests.

``start_prefect_server(home)`` runs the server on a free loopback port with its SQLite
database under ``home`` (a temporary ``PREFECT_HOME``), waits for ``/api/health`` and
returns a handle with a small JSON client over the REST API. Nothing here is mocked.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from s3_server import free_ports

BIN = Path(sys.executable).parent
FINAL_STATES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
RETRY_STATUSES = {429, 502, 503}


def _log_tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _set_parent_death_signal() -> None:
    """Linux: end the child when the test process dies, so no server outlives a run."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


@dataclass
class Process:
    """A child process logging to a file; ``stop()`` interrupts it like Ctrl-C would."""

    process: subprocess.Popen[bytes]
    log: Path

    def log_tail(self, lines: int = 60) -> str:
        return _log_tail(self.log, lines)

    def stop(self, timeout_s: float = 20.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                # Where it is stuck, into its log, for the failure message (`activeflow
                # serve` prints its threads' stacks on SIGUSR1).
                self.process.send_signal(signal.SIGUSR1)
                time.sleep(2)
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def spawn(command: list[str], env: Mapping[str, str], log: Path, cwd: Path | None = None) -> Process:
    handle = log.open("ab")
    process = subprocess.Popen(
        command, env=dict(env), cwd=cwd, stdout=handle, stderr=subprocess.STDOUT,
        preexec_fn=_set_parent_death_signal,
    )
    handle.close()
    return Process(process, log)


@dataclass
class PrefectServer:
    api_url: str  # http://127.0.0.1:PORT/api
    home: Path
    server: Process
    client: httpx.Client = field(repr=False)

    @property
    def ui_url(self) -> str:
        return self.api_url.removesuffix("/api")

    def env(self, **extra: str) -> dict[str, str]:
        """The environment for a process that talks to this server."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(
            PREFECT_API_URL=self.api_url,
            PREFECT_HOME=str(self.home / "client"),
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
        )
        env.update(extra)
        return env

    # The REST API, as JSON ---------------------------------------------------------------

    def get(self, path: str) -> Any:
        return self._request("GET", path)

    def post(self, path: str, body: Mapping[str, Any] | None = None) -> Any:
        return self._request("POST", path, dict(body or {}))

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        # Like Prefect's own client: a busy SQLite server answers 503 ("try again"), and
        # 429 / 502 are as transient.
        for attempt in range(6):
            response = self.client.request(method, path, json=body)
            if response.status_code not in RETRY_STATUSES or attempt == 5:
                break
            time.sleep(0.5 * 2**attempt)
        response.raise_for_status()
        return response.json()

    def deployment(self, flow_name: str, name: str) -> dict[str, Any]:
        return self.get(f"/deployments/name/{flow_name}/{name}")

    def flow_runs(self, deployment_id: str) -> list[dict[str, Any]]:
        return self.post(
            "/flow_runs/filter", {"deployments": {"id": {"any_": [deployment_id]}}, "limit": 200}
        )

    def artifacts(self, flow_run_id: str) -> dict[str, dict[str, Any]]:
        """The run's artifacts (its own and its task runs'), by key."""
        found = self.post("/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}})
        return {a["key"]: a for a in found if a.get("key")}

    def task_runs(self, flow_run_id: str) -> list[dict[str, Any]]:
        return self.post("/task_runs/filter", {"flow_runs": {"id": {"any_": [flow_run_id]}}, "limit": 200})

    def wait_for_run(self, flow_run_id: str, timeout_s: float = 240.0) -> dict[str, Any]:
        return wait_for(
            lambda: (run := self.get(f"/flow_runs/{flow_run_id}"))["state_type"] in FINAL_STATES and run,
            timeout_s,
            f"flow run {flow_run_id} to finish",
        )

    def stop(self) -> None:
        self.client.close()
        self.server.stop()


def wait_for(check: Callable[[], Any], timeout_s: float, what: str, every_s: float = 0.5) -> Any:
    """Poll ``check`` until it returns something truthy; TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting {timeout_s:g} s for {what}")
        time.sleep(every_s)


def start_prefect_server(home: Path, timeout_s: float = 120.0) -> PrefectServer:
    """``prefect server start`` on a free port, SQLite under ``home``; healthy or raises."""
    home.mkdir(parents=True, exist_ok=True)
    (port,) = free_ports(1)
    api_url = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    # Host and port in the environment too: the UI reads its API address from settings,
    # not from the command line, and would look for the API on port 4200.
    env.update(
        PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_API_HOST="127.0.0.1", PREFECT_SERVER_API_PORT=str(port),
    )
    server = spawn(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env, home / "server.log",
    )
    client = httpx.Client(base_url=api_url, timeout=30)

    def healthy() -> bool:
        if server.process.poll() is not None:
            raise RuntimeError(f"prefect server exited early:\n{server.log_tail()}")
        try:
            return client.get("/health").status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(healthy, timeout_s, f"prefect server at {api_url}")
    except BaseException:
        client.close()
        server.stop()
        raise
    return PrefectServer(api_url=api_url, home=home, server=server, client=client)
