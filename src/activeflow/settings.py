"""One settings tree for activeflow.

Sources, lowest to highest priority: defaults < ``activeflow.toml`` < ``.env`` <
environment variables ``ACTIVEFLOW_<GROUP>__<FIELD>`` < explicit parameters.
Build a ``Settings`` at the entry point (CLI, flow start) and pass it down; nothing
here runs at import time.
"""

from __future__ import annotations

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

from activeflow.strategies import StrategyName

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
    name: StrategyName = Field("margin", description="How a batch is selected.")
    seed: int = Field(0, description="Seed for random selection and cold starts.")


class ModelSettings(_Group):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    backbone: BackboneName = Field("small_cnn", description="Feature extractor under the head.")
    weights: str | None = Field(
        None,
        description='Backbone weights: None (random init), "imagenet", or a local weights file.',
    )
    image_size: int = Field(32, ge=8, le=1024, description="Images are resized to this square.")
    dropout: float = Field(0.2, ge=0.0, lt=1.0, description="Dropout before the softmax head.")
    head_epochs: int = Field(10, ge=0, description="Epochs of phase 1 (head on frozen backbone).")
    finetune_epochs: int = Field(5, ge=0, description="Epochs of phase 2 (whole model).")
    head_learning_rate: float = Field(1e-3, gt=0, description="Adam learning rate in phase 1.")
    finetune_learning_rate: float = Field(1e-4, gt=0, description="Adam learning rate in phase 2.")
    batch_size: int = Field(32, ge=1, description="Training and inference batch size.")
    seed: int = Field(0, description="Seed for weight init and shuffling.")

    @model_validator(mode="after")
    def _trains_at_all(self) -> ModelSettings:
        if self.head_epochs + self.finetune_epochs == 0:
            raise ValueError("head_epochs + finetune_epochs must be at least 1")
        return self


class ScoringSettings(_Group):
    shard_size: int = Field(
        512, ge=1, description="Samples per scoring shard; bounds memory whatever the pool size."
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


class LabelStudioSettings(_Group):
    url: str | None = Field(
        None,
        description="Base URL of a Label Studio server, e.g. http://localhost:8080; None: no Label Studio.",
    )
    api_key: SecretStr | None = Field(
        None,
        description="Personal access token (Label Studio: Account & Settings > Personal Access Token).",
    )
    project_title: str = Field(
        "activeflow", description="Title of the Label Studio project batches go to; made if missing."
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
    scoring: ScoringSettings = Field(default_factory=ScoringSettings)
    data: DataSettings = Field(default_factory=DataSettings)
    label_studio: LabelStudioSettings = Field(default_factory=LabelStudioSettings)

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
