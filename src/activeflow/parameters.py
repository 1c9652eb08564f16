"""Per-run overrides of the settings, as the deployments' parameter models.

The Prefect UI renders each model as the form of a manual run (field descriptions
included); an empty field means "as in the settings". ``overrides()`` gives the nested
dict ``load_settings`` puts on top of every other source.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from activeflow.core.score.strategies import SelectorName
from activeflow.settings import Settings


class ExportOptions(BaseModel):
    """Overrides for one ingest-score-export run."""

    model_config = ConfigDict(extra="forbid")

    source: str | None = Field(
        None,
        description="Folder or s3://bucket/prefix of new images to ingest first. "
        "Empty: schedule.source from the settings (no ingest if that is unset too).",
    )
    budget_per_run: int | None = Field(
        None, ge=1, description="Most labels this run's batch may ask for. Empty: budget.per_run."
    )
    budget_total: int | None = Field(
        None,
        ge=1,
        description="Cap on labels over all batches, this one included. Empty: budget.total.",
    )
    strategy: SelectorName | None = Field(
        None, description="How the batch is selected. Empty: strategy.name."
    )

    def overrides(self) -> dict[str, Any]:
        return _nested(
            {
                ("budget", "per_run"): self.budget_per_run,
                ("budget", "total"): self.budget_total,
                ("strategy", "name"): self.strategy,
                ("schedule", "source"): self.source,
            }
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> ExportOptions:
        """What a run of ``settings`` would use, spelt out (shown on the schedule)."""
        return cls(
            source=settings.schedule.source,
            budget_per_run=settings.budget.per_run,
            budget_total=settings.budget.total,
            strategy=settings.strategy.name,
        )


class RetrainOptions(BaseModel):
    """Overrides for one import-and-retrain run."""

    model_config = ConfigDict(extra="forbid")

    retrain: bool = Field(
        True,
        description="Retrain (and promote if not worse) once the labels are in. "
        "Off: import the labels only.",
    )
    head_epochs: int | None = Field(
        None, ge=0, description="Epochs of the head on the frozen backbone. Empty: model.head_epochs."
    )
    finetune_epochs: int | None = Field(
        None, ge=0, description="Epochs of whole-model fine-tuning. Empty: model.finetune_epochs."
    )

    def overrides(self) -> dict[str, Any]:
        return _nested(
            {
                ("model", "head_epochs"): self.head_epochs,
                ("model", "finetune_epochs"): self.finetune_epochs,
            }
        )


def _nested(values: dict[tuple[str, str], object]) -> dict[str, Any]:
    nested: dict[str, dict[str, object]] = {}
    for (group, field), value in values.items():
        if value is not None:
            nested.setdefault(group, {})[field] = value
    return nested
