"""The scale benchmark runs end to end at a tiny size (CI); the full numbers are in the README."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "scale.py"


@pytest.mark.slow
def test_scale_benchmark_measures_every_command_at_a_tiny_size(tmp_path):
    out = tmp_path / "scale.json"
    subprocess.run(
        [sys.executable, str(SCRIPT), "--sizes", "10000", "--nightly", "--reingest", "300", "--out", str(out)],
        check=True, capture_output=True, text=True, timeout=600,
    )
    reingest, row = json.loads(out.read_text())["results"]
    again = reingest["reingest"]
    assert (again["first_new"], again["again_unchanged"], again["again_new"]) == (300, 300, 0)
    unlabelled = 10_000 - 50 * 100  # 50 open batches of 100 items
    assert row["status"]["unlabelled"] == unlabelled
    assert row["plan-scoring"] == {**row["plan-scoring"], "to_score": 0, "reused": unlabelled}
    for export in ("export-margin", "export-coreset", "export-badge"):  # one after the other
        assert row[export]["batch"] == 1000 and row[export]["seconds"] > 0
    night = row["nightly"]
    assert (night["new"], night["scored"], night["reused"]) == (100, 100, unlabelled - 3000)
    assert all(row[what]["peak_rss_mb"] > 0 for what in ("status", "export-margin", "nightly"))
