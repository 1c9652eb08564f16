"""benchmarks/compare_recipes.py: one strategy's curves under two recipes, paired by seed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "compare_recipes.py"


def _benchmark(folder: Path, curves: dict[int, list[float]], min_steps: int, overrides: tuple[str, ...] = ()) -> Path:
    records = [
        {"strategy": "random", "seed": seed, "round": i, "labels": 20 * (i + 1), "accuracy": accuracy,
         "promoted": True, "seconds": 1.0}
        for seed, curve in curves.items() for i, accuracy in enumerate(curve)
    ]
    folder.mkdir()
    document = {"model": {"min_steps": min_steps, "augment": {"shift": 0.1}}, "overrides": list(overrides),
                "records": records}
    (folder / "benchmark.json").write_text(json.dumps(document))
    return folder


def _compare(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120)


def test_recipes_are_compared_on_the_seeds_both_ran_and_named_by_what_they_change(tmp_path):
    default = _benchmark(tmp_path / "default", {0: [0.5, 0.7], 1: [0.5, 0.9], 2: [0.1, 0.1]}, 1200)
    longer = _benchmark(tmp_path / "longer", {0: [0.6, 0.8], 1: [0.5, 0.9]}, 2400)
    out = tmp_path / "compare.json"

    done = _compare(str(default), str(longer), "--out", str(out))

    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert result["seeds"] == [0, 1]  # seed 2 ran under one recipe only
    first, second = result["rows"]
    assert (first["recipe"], second["recipe"]) == ("defaults", "min_steps=2400")
    assert first["aulc_per_seed"] == [60.0, 70.0] and second["aulc_per_seed"] == [70.0, 70.0]
    assert second["aulc_vs_first_points"] == 5.0 and second["seeds_above_first"] == 1
    assert result["best"] == "min_steps=2400" and result["first_behind_best_points"] == 5.0
    assert second["mean_accuracy"] == [55.0, 85.0]


def test_a_recipe_that_changes_settings_outside_the_model_is_named_by_its_overrides(tmp_path):
    default = _benchmark(tmp_path / "default", {0: [0.5, 0.7]}, 1200)
    warm = _benchmark(tmp_path / "warm", {0: [0.5, 0.8]}, 1200, ("strategy.warm_start_per_class=4",))
    out = tmp_path / "compare.json"

    done = _compare(str(default), str(warm), "--out", str(out))

    assert done.returncode == 0, done.stderr
    assert [row["recipe"] for row in json.loads(out.read_text())["rows"]] == [
        "defaults", "strategy.warm_start_per_class=4"]


def test_recipes_without_a_common_seed_are_refused_and_nothing_is_written(tmp_path):
    default = _benchmark(tmp_path / "default", {0: [0.5, 0.7]}, 1200)
    other = _benchmark(tmp_path / "other", {1: [0.5, 0.7]}, 2400)
    out = tmp_path / "compare.json"

    refused = _compare(str(default), str(other), "--out", str(out))

    assert refused.returncode != 0
    assert "no seed of random is in every folder" in refused.stderr
    assert not out.exists()
