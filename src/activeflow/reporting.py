"""Learning curves: the report of a demo or a simulated run, as JSON, a text table and a PNG."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel


class CurvePoint(BaseModel):
    strategy: str
    round: int  # 0 is the seed model
    labels: int  # training labels the model was trained on
    accuracy: float  # test accuracy of the model trained this round


def round_table(points: Sequence[CurvePoint]) -> str:
    """One row per round, one (labels, accuracy) column pair per strategy."""
    strategies = sorted({p.strategy for p in points})
    rounds = sorted({p.round for p in points})
    by_key = {(p.strategy, p.round): p for p in points}
    header = "round  " + "  ".join(f"{s + ' labels':>16} {s + ' acc':>12}" for s in strategies)
    lines = [header]
    for r in rounds:
        cells = []
        for s in strategies:
            point = by_key.get((s, r))
            cells.append(f"{point.labels:>16} {point.accuracy:>12.4f}" if point else " " * 29)
        lines.append(f"{r:>5}  " + "  ".join(cells))
    return "\n".join(lines)


def learning_curve_png(points: Sequence[CurvePoint], title: str = "Learning curve") -> bytes:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for strategy in sorted({p.strategy for p in points}):
        curve = sorted((p for p in points if p.strategy == strategy), key=lambda p: p.round)
        axes.plot([p.labels for p in curve], [p.accuracy for p in curve], marker="o", label=strategy)
    axes.set_xlabel("training labels")
    axes.set_ylabel("test accuracy")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def write_report(out: Path, points: Sequence[CurvePoint]) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    report = out / "report.json"
    report.write_text(json.dumps({"runs": [p.model_dump() for p in points]}, indent=2))
    curve = out / "learning_curve.png"
    curve.write_bytes(learning_curve_png(points))
    return {"report": report, "learning_curve": curve}
