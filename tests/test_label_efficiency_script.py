"""benchmarks/label_efficiency.py as a process: stopping it stops its workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent.parent / "benchmarks" / "label_efficiency.py"


def _children(pid: int) -> set[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return {int(p) for p in path.read_text().split()} if path.exists() else set()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.mark.skipif(sys.platform != "linux", reason="reads the process tree from /proc")
def test_a_benchmark_stopped_with_sigterm_leaves_no_worker_training(tmp_path):
    script = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--seeds", "1", "--rounds", "1", "--strategies", "margin",
         "--workers", "2", "--out", str(tmp_path / "out")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    workers: set[int] = set()
    try:
        deadline = time.monotonic() + 120
        while len(workers) < 3 and time.monotonic() < deadline:  # 2 workers + the resource tracker
            workers = _children(script.pid)
            time.sleep(0.5)
        assert len(workers) >= 2, "the benchmark started no workers"
        time.sleep(3)  # the workers are past their initializer
        script.send_signal(signal.SIGTERM)
        script.wait(timeout=60)
        deadline = time.monotonic() + 30
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not any(_alive(pid) for pid in workers), "workers outlived the stopped benchmark"
    finally:
        script.kill()
        for pid in workers | _children(script.pid):
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
