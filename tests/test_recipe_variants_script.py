"""benchmarks/recipe_variants.py at a tiny size: it runs, and its JSON holds what it measured."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parent.parent / "benchmarks" / "recipe_variants.py"


def test_the_recipe_probe_reports_each_variant_per_label_count(tmp_path):
    out = tmp_path / "variants.json"
    subprocess.run(
        [sys.executable, str(SCRIPT), "--dataset", "shapes:2", "--labels", "4,6", "--seeds", "1",
         "--set", "model.image_size=8", "--set", "model.min_steps=4",
         "--variant", "grey=model.augment.grayscale=1;model.augment.invert=0.5", "--out", str(out)],
        check=True, capture_output=True, timeout=300,
    )
    report = json.loads(out.read_text())
    assert report["variants"] == {"defaults": [], "grey": ["model.augment.grayscale=1", "model.augment.invert=0.5"]}
    assert [(r["variant"], r["labels"]) for r in report["runs"]] == [
        ("defaults", 4), ("defaults", 6), ("grey", 4), ("grey", 6)
    ]
    assert all(0 <= r["accuracy"] <= 1 for r in report["runs"])
    assert set(report["mean_accuracy"]) == {"defaults", "grey"}
