"""What a retrain reports about its training: plain records, without TensorFlow, so reading
a model's metrics (export reports, class-balanced selection) does not import it."""

from __future__ import annotations

from pydantic import BaseModel


class PhaseReport(BaseModel):
    name: str
    steps_planned: int
    steps_run: int
    learning_rate: float
    backbone_trainable: bool


class TrainingHistory(BaseModel):
    head_loss: list[float]  # mean training loss per evaluation interval, first phase
    finetune_loss: list[float]  # the same, fine-tuning phase (empty without one)
    phases: list[PhaseReport] = []
    train_size: int = 0
    validation_size: int = 0
    validation_note: str = ""
    validation_accuracy: float | None = None  # of the kept weights
    best_step: int | None = None  # step (over all phases) of the kept weights, with validation
    stopped_early: bool = False
    class_weights: list[float] | None = None  # per class index, when labels are imbalanced
    invert: float = 0.0  # share of training images inverted (augment.invert, "auto" resolved)
