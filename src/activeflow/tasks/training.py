from __future__ import annotations

from prefect import task
from prefect.artifacts import create_image_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from activeflow.core.storage.pool import load_state
from activeflow.core.storage.store import open_store
from activeflow.core.train import monitoring, training
from activeflow.core.train.reporting import learning_curve_png
from activeflow.settings import Settings
from activeflow.tasks.retry import STORE_RETRIES


@task(
    name="train-candidate",
    task_run_name="train a {settings.model.backbone} on every label",
    cache_policy=NO_CACHE,
    **STORE_RETRIES,
)
def train_candidate(settings: Settings) -> training.ModelMetrics:
    store = open_store(settings.storage)
    return training.train_candidate(store, load_state(store), settings)


@task(
    name="promote-if-not-worse",
    task_run_name="gate {metrics.version}",
    cache_policy=NO_CACHE,
    **STORE_RETRIES,
)
def promote_if_not_worse(settings: Settings, metrics: training.ModelMetrics) -> training.PromotionDecision:
    return training.promote_if_not_worse(
        open_store(settings.storage), metrics, settings.model.baseline_tolerance
    )


@task(name="report-training", task_run_name="report {metrics.version}", cache_policy=NO_CACHE)
def report_training(
    settings: Settings, metrics: training.ModelMetrics, decision: training.PromotionDecision
) -> None:
    """Metrics of the new model, and the learning curve of every model so far."""
    create_markdown_artifact(
        monitoring.training_summary(metrics, decision),
        key="model-metrics",
        description=f"{metrics.version}: accuracy {metrics.accuracy:.4f}, "
        + ("promoted" if decision.promoted else "not promoted"),
    )
    rows = monitoring.learning_curve(open_store(settings.storage))
    create_table_artifact(
        monitoring.curve_table(rows),
        key="learning-curve",
        description="Test accuracy against training labels, every model so far",
    )
    png = learning_curve_png(monitoring.curve_points(rows), title="Test accuracy against labels")
    create_image_artifact(
        monitoring.png_data_uri(png),
        key="learning-curve-plot",
        description="Learning curve: every model trained, and the promoted ones",
    )
