"""benchmarks/label_efficiency.py as a process: stopping it stops its workers."""

from __future__ import annotations

import json
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
def test_a_benchmark_stopped_with_sigterm_leaves_no_worker_training_and_no_scratch_folder(tmp_path):
    scratch = tmp_path / "tmp"  # where its temporary folder of data and stores goes
    scratch.mkdir()
    script = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--seeds", "1", "--rounds", "1", "--strategies", "margin",
         "--workers", "2", "--out", str(tmp_path / "out")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "TMPDIR": str(scratch)},
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
        assert not list(scratch.glob("activeflow-benchmark-*")), "its scratch folder outlived it"
    finally:
        script.kill()
        for pid in workers | _children(script.pid):
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


# A few updates a retrain: these tests are about which runs the script makes, not accuracy.
_QUICK = ["--seeds", "1", "--rounds", "1", "--workers", "1", "--set", "model.min_steps=1",
          "--set", "model.head_epochs=1", "--set", "model.finetune_epochs=0"]


def _script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600)


def test_resume_runs_only_what_a_benchmark_lacks_and_refuses_one_made_with_other_settings(tmp_path):
    out = tmp_path / "out"
    first = _script(*_QUICK, "--strategies", "margin", "--out", str(out))
    assert first.returncode == 0, first.stderr
    earlier_runs = (out / "runs.jsonl").read_text()

    resumed = _script(*_QUICK, "--strategies", "margin,entropy", "--resume", "--out", str(out))

    assert resumed.returncode == 0, resumed.stderr
    trained = [line for line in resumed.stdout.splitlines() if " seed 0: " in line]
    assert len(trained) == 1 and "entropy" in trained[0]  # random and margin were not rerun
    assert (out / "runs.jsonl").read_text().startswith(earlier_runs)
    summary = json.loads((out / "benchmark.json").read_text())["summary"]
    assert {row["strategy"] for row in summary["strategies"]} == {"random", "margin", "entropy"}

    # A fresh clone has benchmark.json (committed) but not runs.jsonl (ignored): resuming
    # rebuilds it from the records and still runs only what is missing.
    (out / "runs.jsonl").unlink()
    again = _script(*_QUICK, "--strategies", "margin,entropy", "--resume", "--out", str(out))
    assert again.returncode == 0, again.stderr
    assert " seed 0: " not in again.stdout  # nothing was rerun
    assert "runs.jsonl was missing: rebuilt from benchmark.json's" in again.stderr
    assert json.loads((out / "benchmark.json").read_text())["summary"] == summary

    before = {p.name: p.read_bytes() for p in out.iterdir()}
    refused = _script(*_QUICK, "--set", "model.batch_size=16", "--strategies", "bald", "--resume",
                      "--out", str(out))
    assert refused.returncode != 0
    assert f"cannot resume {out}: it was made with other settings (model)" in refused.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_resume_of_a_benchmark_that_does_not_exist_is_refused_and_creates_nothing(tmp_path):
    out = tmp_path / "never-ran"

    refused = _script("--resume", "--out", str(out))

    assert refused.returncode != 0
    assert f"nothing to resume: {out / 'benchmark.json'} is missing" in refused.stderr
    assert not out.exists()
