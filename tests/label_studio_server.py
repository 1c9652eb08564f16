"""A throwaway Label Studio server for the tests.

``start_label_studio(data_dir)`` runs ``label-studio start`` on a free loopback port with
everything (SQLite database, media, secret key) under ``data_dir``, waits until
``/health`` answers, then gets a personal access token the way a person does: log in
through the login form, then ``POST /api/token/`` with that session. ``stop()`` ends it.

Label Studio's pins (Django, label-studio-sdk 2.1 with opencv 4.12, numpy < 2.3) clash
with ours, so it lives in a virtualenv of its own: ``.ls-venv`` at the repository root
(``.ci/run`` makes it), or the binary named by ``ACTIVEFLOW_LABEL_STUDIO_BIN``.

Startup notes (label-studio 1.23.2):
- A fresh database runs Label Studio's migrations first, ~35 s of CPU: ready in ~41 s
  on an idle 2-core machine, 60-90 s on a busy one. A start on a migrated database is
  ready in 10-20 s. So with a ``cache_dir`` (the fixture passes pytest's cache) the
  database as it is once healthy (migrated, user made, no token yet) is kept there, one
  file per Label Studio version, and later sessions start from a copy. CI starts from
  scratch; ``timeout_s`` leaves room for a busy machine.
- ``LABEL_STUDIO_USERNAME`` / ``LABEL_STUDIO_PASSWORD`` make the first user (an admin)
  and its organisation at start, with legacy API tokens off (the default).
- A user may hold one personal access token at a time: a second ``POST /api/token/``
  answers 409 until the first is revoked.
- If the port is taken when it binds, ``label-studio start`` quietly moves to the next
  one ("Port P is in use. Trying to start at P+1"); that start is abandoned and retried
  on a new port.
- Local files: ``/data/local-files/?d=<path under LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT>``
  serves a file only to a logged-in user (or one with a token) of a project that has a
  local-files import storage whose path holds the file; that path must be a
  subdirectory of the document root, not the root itself. ``files_dir`` is the root.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

LABEL_STUDIO_VERSION = "1.23.2"  # what .ci/run installs
REPO_ROOT = Path(__file__).resolve().parent.parent
BINARY_ENV = "ACTIVEFLOW_LABEL_STUDIO_BIN"

USERNAME = "activeflow-tests@example.com"
PASSWORD = "activeflow-tests-password"

# The constraints hold Label Studio's dependencies at versions that start (docs/decisions/0006).
_INSTALL_HINT = (
    "python3 -m venv .ls-venv && .ls-venv/bin/pip install "
    f"label-studio=={LABEL_STUDIO_VERSION} -c .ci/constraints/label-studio.txt"
)


class LabelStudioServerError(RuntimeError):
    """The server could not be started or did not become healthy."""


class LabelStudioNotInstalled(LabelStudioServerError):
    """No ``label-studio`` binary where the tests look for one."""


def find_label_studio() -> str:
    """``$ACTIVEFLOW_LABEL_STUDIO_BIN`` if set, else ``<repo>/.ls-venv/bin/label-studio``."""
    named = os.environ.get(BINARY_ENV)
    path = Path(named) if named else REPO_ROOT / ".ls-venv" / "bin" / "label-studio"
    if not (path.is_file() and os.access(path, os.X_OK)):
        where = f"{BINARY_ENV}={named}" if named else str(path)
        raise LabelStudioNotInstalled(
            f"no label-studio binary at {where}; install it in its own virtualenv at the "
            f"repository root: {_INSTALL_HINT}"
        )
    return str(path)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LabelStudioServer:
    url: str
    token: str  # personal access token (JWT refresh token) of USERNAME
    files_dir: Path  # LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT
    process: subprocess.Popen[bytes]
    data_dir: Path
    log_path: Path
    started_in_s: float

    def log_tail(self, lines: int = 40) -> str:
        return _tail(self.log_path, lines)

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it is still running after ``timeout_s``."""
        _stop(self.process, timeout_s)


def start_label_studio(
    data_dir: Path, timeout_s: float = 180.0, attempts: int = 3, cache_dir: Path | None = None
) -> LabelStudioServer:
    """Start Label Studio storing under ``data_dir``; return once it is healthy and a
    personal access token is made. ``cache_dir`` keeps a migrated database between
    sessions (see the module notes).

    A start that exits early or moves to another port (its port was taken between
    choosing and binding) is tried again on a new port, up to ``attempts`` times.
    Raises ``LabelStudioNotInstalled`` without a binary, ``LabelStudioServerError`` with
    the end of the server log if it is not healthy within ``timeout_s``.
    """
    binary = find_label_studio()
    snapshot = _snapshot_path(binary, cache_dir)
    for attempt in range(1, attempts + 1):
        try:
            return _start(binary, data_dir / f"run-{attempt}", timeout_s, snapshot)
        except _LostPort:
            if attempt == attempts:
                raise
    raise AssertionError("unreachable")


class _LostPort(LabelStudioServerError):
    pass


def _start(
    binary: str, data_dir: Path, timeout_s: float, snapshot: Path | None
) -> LabelStudioServer:
    files_dir = data_dir / "files"
    files_dir.mkdir(parents=True)
    database = data_dir / "label_studio.sqlite3"
    if snapshot is not None and snapshot.is_file():
        shutil.copyfile(snapshot, database)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        # Nothing of a developer's own Label Studio or Django set-up leaks in.
        **{
            name: value
            for name, value in os.environ.items()
            if not name.startswith(("LABEL_STUDIO_", "HEARTEX_", "DJANGO_"))
        },
        "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),  # media, secret key
        "LABEL_STUDIO_DATABASE_NAME": str(database),
        "LABEL_STUDIO_USERNAME": USERNAME,
        "LABEL_STUDIO_PASSWORD": PASSWORD,
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(files_dir),
        # No calls home: PyPI version check, usage analytics.
        "LABEL_STUDIO_LATEST_VERSION_CHECK": "false",
        "LABEL_STUDIO_COLLECT_ANALYTICS": "false",
        # Its analytics user id and caches go under data_dir, not ~/.config, ~/.cache.
        "XDG_CONFIG_HOME": str(data_dir / "config"),
        "XDG_CACHE_HOME": str(data_dir / "cache"),
        "XDG_DATA_HOME": str(data_dir / "share"),
    }
    args = [binary, "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(port)]
    log_path = data_dir / "label-studio.log"
    started = time.monotonic()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            args,
            cwd=data_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_set_parent_death_signal if sys.platform == "linux" else None,
        )
    try:
        _wait_healthy(url, port, process, log_path, started + timeout_s)
        if snapshot is not None and not snapshot.is_file():
            _save_snapshot(database, snapshot)
        token = _personal_access_token(url)
    except BaseException:
        _stop(process, 10.0)
        raise
    return LabelStudioServer(
        url=url,
        token=token,
        files_dir=files_dir,
        process=process,
        data_dir=data_dir,
        log_path=log_path,
        started_in_s=time.monotonic() - started,
    )


def _wait_healthy(
    url: str, port: int, process: subprocess.Popen[bytes], log_path: Path, deadline: float
) -> None:
    last_error: str = "no answer yet"
    while time.monotonic() < deadline:
        log = log_path.read_text(errors="replace")
        if f"Port {port} is in use" in log:
            raise _LostPort(f"port {port} was taken before label-studio bound it")
        if process.poll() is not None:
            error = _LostPort if "already in use" in log else LabelStudioServerError
            raise error(
                f"label-studio exited with code {process.returncode} while starting; "
                f"log tail:\n{_tail(log_path)}"
            )
        try:
            answer = httpx.get(f"{url}/health", timeout=2.0)
            if answer.status_code == 200 and answer.json().get("status") == "UP":
                return
            last_error = f"HTTP {answer.status_code}: {answer.text[:200]}"
        except (httpx.HTTPError, ValueError) as error:
            last_error = repr(error)
        time.sleep(0.5)
    raise LabelStudioServerError(
        f"label-studio at {url} not healthy in time (last: {last_error}); "
        f"log tail:\n{_tail(log_path)}"
    )


def _personal_access_token(url: str) -> str:
    """Log in through the login form, then create the user's personal access token."""
    with httpx.Client(base_url=url, timeout=30.0) as session:
        session.get("/user/login/").raise_for_status()  # sets the csrftoken cookie
        login = session.post(
            "/user/login/",
            data={
                "email": USERNAME,
                "password": PASSWORD,
                "csrfmiddlewaretoken": session.cookies["csrftoken"],
            },
            headers={"Referer": f"{url}/user/login/"},
        )
        # Success is a redirect away from the form; a wrong password renders it again.
        if login.status_code != 302 or "sessionid" not in session.cookies:
            raise LabelStudioServerError(
                f"logging in to {url} as {USERNAME} failed: HTTP {login.status_code}"
            )
        created = session.post(
            "/api/token/",
            headers={"X-CSRFToken": session.cookies["csrftoken"], "Referer": f"{url}/"},
        )
        if created.status_code != 201:
            raise LabelStudioServerError(
                f"creating a personal access token at {url} failed: "
                f"HTTP {created.status_code}: {created.text[:300]}"
            )
        return created.json()["token"]


def _snapshot_path(binary: str, cache_dir: Path | None) -> Path | None:
    """Where the migrated database of this Label Studio version is kept, if anywhere."""
    if cache_dir is None:
        return None
    venv = Path(binary).parent.parent
    found = list(venv.glob("lib/python*/site-packages/label_studio-*.dist-info"))
    if len(found) != 1:
        return None  # not a virtualenv we can tell the version of: no snapshot
    version = found[0].name.removesuffix(".dist-info")
    return cache_dir / f"{version}-{USERNAME}.sqlite3"


def _save_snapshot(database: Path, snapshot: Path) -> None:
    """A consistent copy of the live database (SQLite's backup API), put in place
    atomically so that concurrent sessions never see half a file."""
    snapshot.parent.mkdir(parents=True, exist_ok=True)
    partial = snapshot.with_name(f"{snapshot.name}.{os.getpid()}.partial")
    source = sqlite3.connect(database)
    target = sqlite3.connect(partial)
    try:
        source.backup(target)
    finally:
        target.close()
        source.close()
    os.replace(partial, snapshot)


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no log written)"
    return "\n".join(text.splitlines()[-lines:])


def _stop(process: subprocess.Popen[bytes], timeout_s: float) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _set_parent_death_signal() -> None:
    """Linux: kill the server if the test process dies without stopping it."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
