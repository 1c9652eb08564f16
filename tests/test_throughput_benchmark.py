"""The throughput benchmark runs end to end at a tiny size (CI); the full numbers are in the README."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "throughput.py"


@pytest.mark.slow
@pytest.mark.s3
def test_throughput_benchmark_measures_ingest_scoring_and_dask_at_a_tiny_size(tmp_path):
    out = tmp_path / "throughput.json"
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--images", "30", "--models", "small_cnn", "--image-size", "32",
         "--shard-size", "8", "--dask", "--out", str(out)],
        capture_output=True, text=True, timeout=900,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    local, s3 = json.loads(out.read_text())["results"]
    assert (local["store"], s3["store"]) == ("local", "s3")
    assert s3["ingest"]["ingest_over_parallel_loop"] > 0 and s3["ingest"]["parallel_put_loop_16_threads_per_s"] > 0
    for row in (local, s3):
        assert row["ingest"]["images"] == 30 and row["ingest"]["ingest_over_loop"] > 0
        assert row["ingest"]["repeats"] == 3  # the default: medians of three ingests, each into an empty store
        scoring = row["small_cnn-32"]
        assert scoring["images"] == 30
        assert all(scoring[rate] > 0 for rate in ("raw_predict_per_s", "core_per_s", "flow_per_s"))
        dask = row["dask-small_cnn-32"]
        assert dask["images"] == 30 and dask["same_scores"] is True
