"""One strategy's learning curve under the default recipe against hand-tuned recipes, paired
by seed: is the default within a few points of the best curve found for it?

Each folder is a finished ``label_efficiency.py`` benchmark: its benchmark.json holds the
records and the ``--set`` overrides it ran with. Only seeds that every folder ran are
compared.

    python benchmarks/compare_recipes.py benchmarks/results/label_efficiency/shapes-10 \\
        benchmarks/results/label_efficiency/shapes-10-random-2400-steps \\
        --out benchmarks/results/label_efficiency/shapes-10-recipes.json
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

import numpy as np

from activeflow.evaluation.label_efficiency import RoundRecord, run_aulc, runs_by_seed


@functools.cache
def _document(folder: Path) -> dict[str, object]:
    """A benchmark's benchmark.json, read once (records, model settings and overrides)."""
    return json.loads((folder / "benchmark.json").read_text())


def _runs(folder: Path, strategy: str) -> dict[int, list[RoundRecord]]:
    records = (RoundRecord.model_validate(record) for record in _document(folder)["records"])
    return runs_by_seed(r for r in records if r.strategy == strategy)


def _model(folder: Path) -> dict[str, object]:
    """The model settings a benchmark ran with, flattened (augment.shift, ...)."""
    flat: dict[str, object] = {}

    def visit(prefix: str, value: object) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                visit(f"{prefix}{key}.", inner)
        else:
            flat[prefix.rstrip(".")] = value

    visit("", _document(folder)["model"])
    return flat


def _recipe(folder: Path, first: Path) -> str:
    """What the folder's model settings change against the first folder's (the defaults), and
    its ``--set`` overrides of other groups (the record holds only the model's settings)."""
    overrides = _document(folder).get("overrides") or []
    if folder == first:
        return ", ".join(overrides) or "defaults"
    mine, theirs = _model(folder), _model(first)
    changed = [f"{key}={mine[key]}" for key in mine if mine[key] != theirs.get(key)]
    changed += [override for override in overrides if not override.startswith("model.")]
    return ", ".join(changed) or "the same settings"


def compare(folders: list[Path], strategy: str) -> dict[str, object]:
    runs = {folder: _runs(folder, strategy) for folder in folders}
    seeds = sorted(set.intersection(*(set(r) for r in runs.values())))
    if not seeds:
        raise SystemExit(f"no seed of {strategy} is in every folder")
    rows = []
    for folder, by_seed in runs.items():
        aulc = [100 * run_aulc(by_seed[s]) for s in seeds]
        curve = np.mean([[100 * r.accuracy for r in by_seed[s]] for s in seeds], axis=0)
        rows.append({
            "recipe": _recipe(folder, folders[0]), "folder": str(folder), "aulc_per_seed": [round(a, 2) for a in aulc],
            "aulc_mean": round(float(np.mean(aulc)), 2), "labels": [r.labels for r in by_seed[seeds[0]]],
            "mean_accuracy": [round(float(a), 1) for a in curve],
        })
    default = rows[0]
    for row in rows:
        row["aulc_vs_first_points"] = round(row["aulc_mean"] - default["aulc_mean"], 2)
        row["seeds_above_first"] = sum(a > b for a, b in zip(row["aulc_per_seed"], default["aulc_per_seed"]))
    best = max(rows, key=lambda row: row["aulc_mean"])
    return {"strategy": strategy, "seeds": seeds, "rows": rows, "best": best["recipe"],
            "first_behind_best_points": round(best["aulc_mean"] - default["aulc_mean"], 2)}


def markdown(result: dict[str, object]) -> str:
    rows = result["rows"]
    labels = rows[0]["labels"]
    lines = [
        f"| recipe ({result['strategy']}, seeds {', '.join(map(str, result['seeds']))}) | AULC % | vs first (points) "
        f"| seeds above first | " + " | ".join(str(n) for n in labels) + " |",
        "|---|---|---|---|" + "---|" * len(labels),
    ]
    for row in rows:
        lines.append(
            f"| {row['recipe']} | {row['aulc_mean']:.1f} | {row['aulc_vs_first_points']:+.1f} | {row['seeds_above_first']} | "
            + " | ".join(f"{a:.1f}" for a in row["mean_accuracy"]) + " |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path, help="the default recipe's benchmark first")
    parser.add_argument("--strategy", default="random")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    result = compare(args.folders, args.strategy)
    print(markdown(result))
    print(f"first recipe behind the best ({result['best']}) by {result['first_behind_best_points']:.1f} points")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
