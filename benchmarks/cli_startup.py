"""How long each CLI command takes on tiny inputs, where start-up is nearly all of it.

Runs ``activeflow`` as a user would (a fresh process per command) on a store of a few
images, twice: against a running ``prefect server start`` (``PREFECT_API_URL`` set, what
the README recommends beyond the demo) and with Prefect's temporary server (nothing set).
Reports the median wall time of ``--repeats`` runs per command, and whether the command
imported TensorFlow. Writes ``benchmarks/results/cli_startup.json``.

    python benchmarks/cli_startup.py [--repeats 3] [--out benchmarks/results/cli_startup.json]
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

BIN = Path(sys.executable).parent
CLASSES = ["cat", "dog"]
# Exits from sitecustomize-free Python: prints whether TensorFlow was imported by the command.
TF_PROBE = (
    "import atexit, sys\n"
    "atexit.register(lambda: sys.stderr.write("
    "'\\nTENSORFLOW_IMPORTED=%s\\n' % ('tensorflow' in sys.modules)))\n"
)


def write_images(folder: Path, count: int) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for n in range(count):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), np.uint8)).save(folder / f"{n}.png")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_prefect_server(home: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**_clean_env(), "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    log = (home / "server.log").open("wb")
    server = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    api = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                return server, api
        except httpx.HTTPError:
            time.sleep(0.5)
    server.terminate()
    raise RuntimeError(f"prefect server did not answer within 120 s; log: {home / 'server.log'}")


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}


def run(command: list[str], env: dict[str, str], cwd: Path) -> tuple[float, bool, str]:
    """Wall seconds of ``activeflow <command>``, whether it imported TensorFlow, its stdout."""
    probe = cwd / "probe"
    probe.mkdir(exist_ok=True)
    (probe / "sitecustomize.py").write_text(TF_PROBE)
    env = {**env, "PYTHONPATH": str(probe)}
    start = time.perf_counter()
    done = subprocess.run([str(BIN / "activeflow"), *command], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"activeflow {' '.join(command)} exited {done.returncode}:\n{done.stderr[-2000:]}")
    return seconds, "TENSORFLOW_IMPORTED=True" in done.stderr, done.stdout


def measure(env: dict[str, str], work: Path, repeats: int) -> dict[str, dict[str, object]]:
    """Each command ``repeats`` times on a fresh store: status, ingest, export, import."""
    (work / "activeflow.toml").write_text(f'[data]\nclasses = {json.dumps(CLASSES)}\n')
    results: dict[str, dict[str, object]] = {}

    def record(name: str, command: list[str]) -> str:
        seconds, tf, out = run(command, env, work)
        entry = results.setdefault(name, {"seconds": [], "imports_tensorflow": tf})
        entry["seconds"].append(round(seconds, 2))
        return out

    for attempt in range(repeats):
        store = work / f"store-{attempt}"
        record("help", ["--help"])
        record("ingest (4 images)", ["--store", str(store), "ingest", str(work / "images")])
        record("status", ["--store", str(store), "status"])
        batch = json.loads(record("export-batch (cold start)",
                                  ["--store", str(store), "export-batch", "--budget", "2", "--json"]))
        tasks = (store / "batches" / batch["batch_id"] / "tasks.csv").read_text()
        ids = [row["id"] for row in csv.DictReader(io.StringIO(tasks))]
        labels = work / f"labels-{attempt}.csv"
        labels.write_text("id,label\n" + "".join(f"{sid},cat\n" for sid in ids))
        record("import-labels", ["--store", str(store), "import-labels", batch["batch_id"], str(labels)])
    for entry in results.values():
        entry["median_seconds"] = statistics.median(entry["seconds"])
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/cli_startup.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_images(root / "images", 4)
        modes: dict[str, dict[str, dict[str, object]]] = {}
        home = root / "server-home"
        home.mkdir()
        server, api = start_prefect_server(home)
        try:
            env = {**_clean_env(), "PREFECT_API_URL": api, "PREFECT_HOME": str(root / "client-home")}
            modes["prefect server running"] = measure(env, _fresh(root / "with-server", root), args.repeats)
        finally:
            server.terminate()
            server.wait(30)
        env = {**_clean_env(), "PREFECT_HOME": str(root / "temporary-home")}
        modes["temporary server"] = measure(env, _fresh(root / "temporary", root), args.repeats)
    report = {
        "benchmark": "cli_startup",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "repeats": args.repeats,
        "modes": modes,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    for mode, commands in modes.items():
        print(mode)
        for name, entry in commands.items():
            tf = "  (imports TensorFlow)" if entry["imports_tensorflow"] else ""
            print(f"  {name:<28} {entry['median_seconds']:6.2f} s{tf}")
    print(f"wrote {args.out}")


def _fresh(work: Path, root: Path) -> Path:
    work.mkdir()
    shutil.copytree(root / "images", work / "images")
    return work


if __name__ == "__main__":
    main()
