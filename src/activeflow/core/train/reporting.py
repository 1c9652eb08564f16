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


class Series(BaseModel):
    """One line of a chart, with an optional ±sd band."""

    name: str
    x: list[float]
    y: list[float]
    sd: list[float] | None = None
    style: str = "-"
    marker: str = "o"
    colour: str | None = None  # None: the next colour of the palette


def line_chart_png(
    series: Sequence[Series], *, title: str, xlabel: str, ylabel: str,
    reference: float | None = None, size: tuple[float, float] = (7, 4.5),
) -> bytes:
    """A PNG of ``series`` (and a dotted horizontal line at ``reference``)."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=size)
    palette = plt.get_cmap("tab10" if len(series) <= 10 else "tab20")
    for index, line in enumerate(series):
        colour = line.colour or palette(index % palette.N)
        axes.plot(line.x, line.y, line.style, marker=line.marker, markersize=3 if line.sd else 6,
                  color=colour, label=line.name)
        if line.sd is not None:
            low = [y - sd for y, sd in zip(line.y, line.sd, strict=True)]
            high = [y + sd for y, sd in zip(line.y, line.sd, strict=True)]
            axes.fill_between(line.x, low, high, color=colour, alpha=0.12, linewidth=0)
    if reference is not None:
        axes.axhline(reference, color="grey", linewidth=0.8, linestyle=":")
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8 if len(series) > 4 else None, ncol=2 if len(series) > 4 else 1,
                loc="lower right")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def learning_curve_png(points: Sequence[CurvePoint], title: str = "Learning curve") -> bytes:
    series = []
    for strategy in sorted({p.strategy for p in points}):
        curve = sorted((p for p in points if p.strategy == strategy), key=lambda p: p.round)
        series.append(Series(name=strategy, x=[p.labels for p in curve], y=[p.accuracy for p in curve]))
    return line_chart_png(series, title=title, xlabel="training labels", ylabel="test accuracy")


def write_report(out: Path, points: Sequence[CurvePoint]) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    report = out / "report.json"
    report.write_text(json.dumps({"runs": [p.model_dump() for p in points]}, indent=2))
    curve = out / "learning_curve.png"
    curve.write_bytes(learning_curve_png(points))
    return {"report": report, "learning_curve": curve}
