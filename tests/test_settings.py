"""Settings sources and their order: defaults < activeflow.toml < .env < environment < parameters."""

from __future__ import annotations

import pytest

from activeflow.settings import Settings, SettingsError, load_settings


@pytest.fixture(autouse=True)
def _clean_env(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # activeflow.toml and .env are read from the working folder
    for name in list(__import__("os").environ):
        if name.startswith("ACTIVEFLOW_"):
            monkeypatch.delenv(name)


def test_defaults_without_any_source():
    settings = load_settings()
    assert settings.storage.uri == "./activeflow-store"
    assert settings.budget.per_run == 100 and settings.budget.total is None
    assert settings.strategy.name == "margin"
    assert settings.model.backbone == "small_cnn"


def test_each_source_overrides_the_one_below(tmp_path, monkeypatch):
    (tmp_path / "activeflow.toml").write_text(
        '[budget]\nper_run = 10\ntotal = 500\n[strategy]\nname = "entropy"\n'
        '[data]\nclasses = ["cat", "dog"]\n[model]\nhead_epochs = 3\n'
    )
    (tmp_path / ".env").write_text("ACTIVEFLOW_BUDGET__PER_RUN=20\nACTIVEFLOW_MODEL__HEAD_EPOCHS=4\n")
    monkeypatch.setenv("ACTIVEFLOW_BUDGET__PER_RUN", "30")

    settings = load_settings()
    assert settings.budget.per_run == 30  # environment beats .env and toml
    assert settings.model.head_epochs == 4  # .env beats toml
    assert settings.budget.total == 500  # toml beats defaults
    assert settings.strategy.name == "entropy"
    assert settings.data.classes == ["cat", "dog"]

    explicit = load_settings(budget={"per_run": 40})
    assert explicit.budget.per_run == 40  # parameters beat everything
    assert explicit.budget.total == 500  # and leave the rest of the group alone


def test_config_file_given_explicitly(tmp_path):
    config = tmp_path / "elsewhere.toml"
    config.write_text('[storage]\nuri = "s3://my-bucket/al"\nendpoint_url = "http://localhost:9000"\n')
    settings = load_settings(config)
    assert settings.storage.uri == "s3://my-bucket/al"
    assert settings.storage.endpoint_url == "http://localhost:9000"


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(SettingsError, match="nowhere.toml does not exist"):
        load_settings(tmp_path / "nowhere.toml")


@pytest.mark.parametrize(
    ("env", "value", "named"),
    [
        ("ACTIVEFLOW_BUDGET__PER_RUN", "0", "budget.per_run"),
        ("ACTIVEFLOW_BUDGET__PER_RUN", "many", "budget.per_run"),
        ("ACTIVEFLOW_BUDGET__TOTAL", "-5", "budget.total"),
        ("ACTIVEFLOW_STRATEGY__NAME", "oracle", "strategy.name"),
        ("ACTIVEFLOW_MODEL__BACKBONE", "resnet9000", "model.backbone"),
        ("ACTIVEFLOW_MODEL__IMAGE_SIZE", "2", "model.image_size"),
        ("ACTIVEFLOW_STORAGE__URI", "s3://ab/prefix", "storage.uri"),
        ("ACTIVEFLOW_DATA__CLASSES", '["cat", "cat"]', "data.classes"),
        ("ACTIVEFLOW_LABELLING__ALLOWED_LABEL_ROOTS", '["exports"]', "labelling.allowed_label_roots"),
        ("ACTIVEFLOW_MODEL__AUGMENT__INVERT", "1.5", "model.augment.invert: Value error, '1.5' is neither 'auto' nor a share"),
        ("ACTIVEFLOW_MODEL__AUGMENT__INVERT", "sometimes", "model.augment.invert: Value error, 'sometimes' is neither"),
    ],
)
def test_invalid_values_fail_naming_the_setting(monkeypatch, env, value, named):
    monkeypatch.setenv(env, value)
    with pytest.raises(SettingsError, match=f"invalid settings: {named}"):
        load_settings()


def test_invert_is_auto_unless_set_to_a_share(monkeypatch):
    assert load_settings().model.augment.invert == "auto"
    monkeypatch.setenv("ACTIVEFLOW_MODEL__AUGMENT__INVERT", "0.25")
    assert load_settings().model.augment.invert == 0.25


def test_unknown_setting_in_toml_is_refused(tmp_path):
    (tmp_path / "activeflow.toml").write_text("[budget]\nper_rnu = 5\n")
    with pytest.raises(SettingsError, match="budget.per_rnu"):
        load_settings()


def test_zero_epochs_in_both_phases_is_refused():
    with pytest.raises(SettingsError, match="head_epochs \\+ finetune_epochs"):
        load_settings(model={"head_epochs": 0, "finetune_epochs": 0})


def test_settings_round_trip_as_a_flow_parameter():
    settings = load_settings(budget={"per_run": 7}, data={"classes": ["a", "b"]})
    assert Settings.model_validate(settings.model_dump()) == settings


def test_a_toml_syntax_error_names_the_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "activeflow.toml").write_text("[budget\nper_run = 5\n")
    with pytest.raises(SettingsError, match=r"^activeflow.toml: invalid TOML: .*line 1"):
        load_settings()
    custom = tmp_path / "team.toml"
    custom.write_text("per_run = = 5\n")
    with pytest.raises(SettingsError, match=rf"^{custom}: invalid TOML"):
        load_settings(custom)


def test_model_weights_are_checked_at_start(tmp_path):
    # "none" is what people write for no weights (TOML has no null): it means None.
    assert load_settings(model={"weights": "none"}).model.weights is None
    assert load_settings(model={"weights": "imagenet"}).model.weights == "imagenet"
    weights = tmp_path / "backbone.weights.h5"
    weights.write_bytes(b"x")
    assert load_settings(model={"weights": str(weights)}).model.weights == str(weights)
    with pytest.raises(SettingsError, match=r"model.weights: Value error, '/no/such.h5' is neither"):
        load_settings(model={"weights": "/no/such.h5"})
