"""One settings tree for activeflow.

Sources, lowest to highest priority: defaults < ``activeflow.toml`` < ``.env`` <
environment variables ``ACTIVEFLOW_<GROUP>__<FIELD>`` < explicit parameters.
Build a ``Settings`` at the entry point (CLI, flow start) and pass it down; nothing
here runs at import time.
"""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from activeflow.core.score.strategies import SelectorName, StrategyName  # noqa: F401 (re-exported)

BackboneName = Literal["small_cnn", "mobilenet_v2", "inception_v3"]


class _Group(BaseModel):
    # A misspelt setting is an error, not a silently ignored key.
    model_config = ConfigDict(extra="forbid")


class StorageSettings(_Group):
    uri: str = Field(
        "./activeflow-store",
        description="Root of the object store: a local directory or s3://bucket/prefix.",
    )
    endpoint_url: str | None = Field(
        None, description="S3 endpoint for non-AWS servers (MinIO, SeaweedFS); None for AWS."
    )
    region: str | None = Field(None, description="S3 region; None lets boto3 decide.")
    connect_timeout_seconds: float = Field(
        5, gt=0, description="S3: seconds to wait for a connection, per attempt."
    )
    read_timeout_seconds: float = Field(
        15, gt=0, description="S3: seconds to wait for a response, per attempt."
    )
    max_attempts: int = Field(
        3,
        ge=1,
        le=10,
        description="S3: attempts per request (botocore's standard retries); a frozen endpoint "
        "fails after about max_attempts x (connect + read) seconds.",
    )
    max_concurrency: int = Field(
        16,
        ge=1,
        le=256,
        description="Store reads and writes one task keeps in flight at once (image GETs while "
        "scoring, uploads while ingesting); also the size of the S3 connection pool.",
    )

    @field_validator("uri")
    @classmethod
    def _uri_not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must name a local directory or s3://bucket/prefix")
        if value.startswith("s3://") and len(value[5:].split("/", 1)[0]) < 3:
            raise ValueError(f"{value!r} has no valid bucket name (3+ characters)")
        return value


class BudgetSettings(_Group):
    per_run: int = Field(100, ge=1, description="Most labels one batch may ask for.")
    total: int | None = Field(
        None, ge=1, description="Optional cap on labels over all batches; None means no cap."
    )


class StrategySettings(_Group):
    name: SelectorName = Field("margin", description="How a batch is selected.")
    seed: int = Field(0, description="Seed for random selection and cold starts.")
    random_fraction: float = Field(
        0.1,
        ge=0.0,
        lt=1.0,
        description=(
            "Share of each batch drawn uniformly at random from the pool (at least 1 item when "
            "above 0 and the batch has 2+), for an unbiased estimate of the champion's accuracy "
            "on the pool; 0 turns the random slice off."
        ),
    )
    warm_start_per_class: int = Field(
        0,
        ge=0,
        description="Draw whole batches at random while the training labels number fewer than "
        "this many per class, for when a model trained on a handful of labels ranks uncertainty "
        "poorly (on ten classes of shapes it did not help: README, 'A random first batch'). "
        "0: the strategy chooses from the first scored batch on.",
    )
    mc_passes: int = Field(
        10,
        ge=2,
        le=100,
        description="bald: Monte-Carlo dropout passes T per scored sample (dropout on at inference).",
    )
    candidates: int | None = Field(
        None,
        ge=1,
        description="An export reads the scores part by part and keeps only this many of the "
        "highest-ranked (by the strategy's score; by margin for coreset, badge, margin-diverse "
        "and class-balanced), which the strategy then chooses from. None: 20 x the batch, at "
        "least 1000.",
    )


class AugmentSettings(_Group):
    """Random changes to training images that keep their class."""

    shift: float = Field(
        0.1, ge=0.0, le=0.5, description="Largest random shift, as a share of the image side."
    )
    horizontal_flip: bool = Field(
        False, description="Mirror images at random; off by default, since digits and text must not be."
    )
    intensity: float = Field(
        0.1, ge=0.0, le=0.5, description="Brightness and contrast jitter, as a share of the range."
    )
    grayscale: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="Share of training images turned grey (ITU-R 601 luma, as PIL's 'L'), so a "
        "model cannot tell a few labels apart by their colours alone (torchvision's "
        "RandomGrayscale). 0 where colour is what tells the classes apart; grey images are "
        "unchanged by it.",
    )
    invert: float | Literal["auto"] = Field(
        "auto",
        description="Share of training images inverted (255 - pixel), for data whose objects "
        "are lighter or darker than their background at random (drawings, shapes). 'auto': "
        "0.5 when at least 10 % of the labelled images have the other polarity than the rest "
        "(the image's mean brighter or darker than its border), else 0, and 0 for pretrained "
        "weights; where polarity is fixed (scanned digits) inversion costs accuracy.",
    )

    @field_validator("invert", mode="before")
    @classmethod
    def _share_or_auto(cls, value: object) -> object:
        # One message for the union (pydantic would list each member's complaint).
        if value == "auto":
            return value
        try:
            share = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            share = math.nan
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"{value!r} is neither 'auto' nor a share from 0 to 1")
        return share


class ModelSettings(_Group):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    backbone: BackboneName = Field("small_cnn", description="Feature extractor under the head.")
    weights: str | None = Field(
        None,
        description='Backbone weights: None (random init), "imagenet", or a local weights file.',
    )
    image_size: int = Field(32, ge=8, le=1024, description="Images are resized to this square.")
    dropout: float = Field(0.2, ge=0.0, lt=1.0, description="Dropout before the softmax head.")
    head_epochs: int = Field(
        10,
        ge=0,
        description="Epochs of phase 1 (head on the frozen pretrained backbone); without "
        "pretrained weights the whole model trains head_epochs + finetune_epochs in one phase.",
    )
    finetune_epochs: int = Field(5, ge=0, description="Epochs of phase 2 (whole model).")
    min_steps: int = Field(
        1200,
        ge=0,
        description="Fewest optimizer updates a retrain makes however few the labels, split "
        "between the phases by their epochs. Few labels need many augmented updates (the "
        "README's 'How a retrain trains' has the measurements).",
    )
    head_learning_rate: float = Field(
        3e-3, gt=0, description="Adam peak learning rate in phase 1 (cosine-decayed)."
    )
    finetune_learning_rate: float = Field(
        3e-4, gt=0, description="Adam peak learning rate in phase 2 (cosine-decayed)."
    )
    weight_decay: float = Field(
        1.0,
        ge=0.0,
        description="Decoupled weight decay (AdamW): each update shrinks the weights it trains "
        "by weight_decay x the current learning rate; a pretrained backbone's weights are not "
        "decayed while they fine-tune. On few labels it did more than doubling min_steps (the "
        "README's 'How a retrain trains'); 0 is plain Adam.",
    )
    batch_size: int = Field(32, ge=1, description="Training and inference batch size.")
    augment: AugmentSettings = Field(default_factory=AugmentSettings)
    validation_fraction: float = Field(
        0.2,
        ge=0.0,
        lt=0.5,
        description="Share of each class's labels held out for model selection and early stopping.",
    )
    validation_min_per_class: int = Field(
        50,
        ge=2,
        description="Hold labels out only once every labelled class has this many: below, "
        "a split costs more training labels than its noisy choice of weights gains.",
    )
    patience: int = Field(
        3, ge=1, description="Validation checks (10 a phase) without improvement before stopping."
    )
    baseline_tolerance: float = Field(
        0.1,
        ge=0.0,
        le=1.0,
        description="A candidate this far (accuracy) below the pixel baseline trained on the "
        "same labels is not promoted.",
    )
    seed: int = Field(0, description="Seed for weight init, batches, augmentation and splits.")

    @field_validator("weights")
    @classmethod
    def _known_weights(cls, value: str | None) -> str | None:
        # TOML has no null: "none" is how people write "no pretrained weights".
        if value is None or value.strip().lower() in ("", "none"):
            return None
        if value != "imagenet" and not Path(value).expanduser().is_file():
            raise ValueError(
                f"{value!r} is neither 'none', 'imagenet' nor an existing weights file"
            )
        return value

    @model_validator(mode="after")
    def _trains_at_all(self) -> ModelSettings:
        if self.head_epochs + self.finetune_epochs == 0:
            raise ValueError("head_epochs + finetune_epochs must be at least 1")
        return self


DEFAULT_MAX_PIXELS = 64_000_000


class IngestSettings(_Group):
    max_pixels: int = Field(
        DEFAULT_MAX_PIXELS,
        ge=1,
        description="Largest image (width x height) ingest decodes; larger ones, and "
        "decompression bombs, go to quarantine. Checked on the header, before decoding.",
    )


class ScoringSettings(_Group):
    shard_size: int = Field(
        512, ge=1, description="Samples per scoring shard: one task, retried as a whole; images "
        "are decoded a few hundred at a time, so memory does not grow with it."
    )
    runner: Literal["threads", "dask"] = Field(
        "threads",
        description='Where shards run: "threads" in the flow\'s process, or "dask" on a Dask '
        "cluster (each worker loads the model once).",
    )
    dask_address: str | None = Field(
        None,
        description='runner = "dask": the scheduler of an existing cluster, e.g. '
        '"tcp://scheduler:8786"; None starts a local cluster of dask_workers processes.',
    )
    dask_workers: int = Field(
        2, ge=1, description="Worker processes of the local Dask cluster (no dask_address)."
    )


class DataSettings(_Group):
    classes: list[str] = Field(
        default_factory=list, description="Class names, in the order of the model's outputs."
    )

    @field_validator("classes")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        duplicates = sorted({name for name in value if value.count(name) > 1})
        if duplicates:
            raise ValueError(f"class names must be distinct; repeated: {duplicates}")
        if any(not name.strip() for name in value):
            raise ValueError("class names must not be empty")
        return value


class LabellingSettings(_Group):
    min_agreement: float = Field(
        0.5,
        gt=0,
        le=1,
        description="Share of a sample's annotations its majority label needs; ties never pass.",
    )
    release_after_hours: float | None = Field(
        168,
        gt=0,
        description="Release a batch's unlabelled samples back to the pool after this long "
        "(7 days: when S3 image links expire); None keeps batches open for ever.",
    )
    url_expiry_hours: int = Field(
        168, ge=1, le=168, description="Lifetime of presigned S3 image links (7 days at most)."
    )
    local_files_root: str | None = Field(
        None,
        description="LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT of the Label Studio serving a local "
        "store's images; defaults to the store root.",
    )
    allowed_label_roots: list[str] = Field(
        [],
        description="Folders or s3://bucket/prefix roots, besides the store itself, that a "
        "labels_uri given to a deployment run or event may name.",
    )

    @field_validator("allowed_label_roots")
    @classmethod
    def _absolute_roots(cls, roots: list[str]) -> list[str]:
        for root in roots:
            if not (root.startswith("s3://") and len(root) > len("s3://")) and not Path(root).is_absolute():
                raise ValueError(f"{root!r} is neither an absolute folder nor s3://bucket/prefix")
        return roots


class LabelStudioSettings(_Group):
    url: str | None = Field(
        None,
        description="Label Studio server, e.g. http://localhost:8080; None: not used.",
    )
    api_key: SecretStr | None = Field(
        None,
        description="Personal access token (Account & Settings > Personal Access Token).",
    )
    project_title: str = Field(
        "activeflow", description="Label Studio project that batches go to; made if missing."
    )

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"must start with http:// or https://, got {value!r}")
        return value

    @field_validator("project_title")
    @classmethod
    def _title_not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value


class ScheduleSettings(_Group):
    """How ``activeflow serve`` runs the pipeline unattended."""

    cron: str = Field(
        "0 2 * * *",
        description="When ingest-score-export runs (cron, 5 fields); default nightly at 02:00.",
    )
    timezone: str = Field("UTC", description="IANA time zone the cron expression is read in.")
    source: str | None = Field(
        None,
        description="Folder or s3://bucket/prefix where new images arrive; each scheduled run "
        "ingests what is new there. None: scheduled runs score and export only.",
    )
    watch_interval_seconds: int = Field(
        300, ge=5, description="How often watch-labels looks for dropped label exports."
    )
    labels_drop_prefix: str = Field(
        "incoming-labels/",
        description="Where in the store labellers drop completed exports as <batch-id>.json or .csv.",
    )
    max_workers: int = Field(
        2, ge=1, le=64,
        description="Threads a flow (served or run by the CLI) scores shards with (bounds memory).",
    )

    @field_validator("cron")
    @classmethod
    def _five_fields(cls, value: str) -> str:
        if len(value.split()) != 5:
            raise ValueError(
                f"{value!r} is not a 5-field cron expression (minute hour day month weekday)"
            )
        return value

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not an IANA time zone (e.g. UTC, Europe/Berlin)") from None
        return value

    @field_validator("labels_drop_prefix")
    @classmethod
    def _folder_prefix(cls, value: str) -> str:
        if not value.endswith("/") or value.startswith("/") or "//" in value or len(value) < 2:
            raise ValueError(f"{value!r} must be a relative folder in the store ending in '/'")
        return value


class Settings(BaseSettings):
    """The whole configuration. Groups map to ``ACTIVEFLOW_<GROUP>__<FIELD>``."""

    model_config = SettingsConfigDict(
        env_prefix="ACTIVEFLOW_",
        env_nested_delimiter="__",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="forbid",
        toml_file="activeflow.toml",
        protected_namespaces=(),
    )

    storage: StorageSettings = Field(default_factory=StorageSettings)
    budget: BudgetSettings = Field(default_factory=BudgetSettings)
    strategy: StrategySettings = Field(default_factory=StrategySettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    scoring: ScoringSettings = Field(default_factory=ScoringSettings)
    data: DataSettings = Field(default_factory=DataSettings)
    labelling: LabellingSettings = Field(default_factory=LabellingSettings)
    label_studio: LabelStudioSettings = Field(default_factory=LabelStudioSettings)
    schedule: ScheduleSettings = Field(default_factory=ScheduleSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # First wins: parameters > environment > .env > activeflow.toml > defaults.
        return (
            init_settings,
            env_settings,
            dotenv_settings,
            TomlConfigSettingsSource(settings_cls),
        )


class SettingsError(ValueError):
    """Settings that cannot be used; the message names each bad setting."""


def load_settings(config_file: Path | None = None, **overrides: object) -> Settings:
    """Build the settings from every source, with ``overrides`` (nested dicts) on top.

    Raises ``SettingsError`` naming each invalid setting as ``group.field``.
    """
    try:
        if config_file is not None:
            if not config_file.is_file():
                raise SettingsError(f"config file {config_file} does not exist")

            class _FromFile(Settings):
                model_config = SettingsConfigDict(toml_file=config_file)

            return Settings.model_validate(_FromFile(**overrides).model_dump())
        return Settings(**overrides)
    except ValidationError as error:
        raise SettingsError(describe_validation_error(error)) from None
    except tomllib.TOMLDecodeError as error:
        raise SettingsError(f"{config_file or 'activeflow.toml'}: invalid TOML: {error}") from None


def describe_validation_error(error: ValidationError) -> str:
    problems = [
        f"{'.'.join(str(part) for part in item['loc'])}: {item['msg']}"
        for item in error.errors()
    ]
    return "invalid settings: " + "; ".join(problems)


def required_classes(settings: Settings) -> list[str]:
    """``data.classes``, which training and labelling batches cannot do without."""
    if len(settings.data.classes) < 2:
        raise SettingsError(
            "data.classes must list at least 2 class names (e.g. ACTIVEFLOW_DATA__CLASSES="
            '\'["cat","dog"]\' or [data] classes = [...] in activeflow.toml)'
        )
    return list(settings.data.classes)
