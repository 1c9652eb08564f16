"""benchmarks/train_steps.py at a tiny size: it runs, and its JSON holds what it measured."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent.parent / "benchmarks" / "train_steps.py"


def test_the_update_cost_probe_reports_both_loops_alone_and_two_at_once(tmp_path):
    out = tmp_path / "train_steps.json"
    subprocess.run(
        [sys.executable, str(SCRIPT), "--sizes", "8", "--steps", "30", "--labels", "20", "--repeats", "1",
         "--out", str(out)],
        check=True, capture_output=True, timeout=300,
    )
    (result,) = json.loads(out.read_text())["results"]
    assert (result["image_size"], result["steps"], result["labels"]) == (8, 30, 20)
    for loop in ("compiled_x1", "compiled_x2", "train_on_batch_x1", "train_on_batch_x2"):
        assert result[loop]["seconds"] > 0
        assert result[loop]["ms_per_update"] == pytest.approx(1000 * result[loop]["seconds"] / 30, abs=0.05)
    assert result["speedup_x1"] > 0 and result["speedup_x2"] > 0
