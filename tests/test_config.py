"""Config schema: unknown keys, wrong types, dotted overrides, cross-field checks, shipped configs."""
from __future__ import annotations

from pathlib import Path

import pytest

from edgehaze.errors import ConfigError
from edgehaze.train.config import TrainConfig, load_config, parse_value, save_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    return path


def test_unknown_key_names_key_and_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "data: {root: x}\ntrain:\n  lr: 1.0e-4\n  bach_size: 8\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "train.bach_size" in str(err.value) and str(path) in str(err.value)


def test_unknown_top_level_section(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'optimiser'"):
        load_config(_write(tmp_path, "data: {root: x}\noptimiser: {lr: 1}\n"))


@pytest.mark.parametrize(
    "text, key",
    [
        ("train: {batch_size: eight}", "train.batch_size"),
        ("train: {batch_size: 8.5}", "train.batch_size"),
        ("train: {lr: fast}", "train.lr"),
        ("data: {flip: 'yes'}", "data.flip"),
        ("stages: rgb", "stages"),
        ("model: {backbone_kwargs: 3}", "model.backbone_kwargs"),
    ],
)
def test_wrong_type_names_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, text + "\n" + ("" if text.startswith("data:") else "data: {root: x}\n")))
    assert f"'{key}'" in str(err.value)


def test_yaml_exponent_without_dot_is_a_number(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, "data: {root: x}\ntrain: {lr: 4e-4}\n"))
    assert cfg.train.lr == pytest.approx(4e-4)


def test_dotted_overrides(tmp_path: Path) -> None:
    path = _write(tmp_path, "data: {root: a}\ntrain: {lr: 1.0e-3}\n")
    cfg = load_config(
        path,
        TrainConfig,
        ["train.lr=1e-4", "data.root=/data/x", "stages=[fused]", "fused.finetune=depth", "model.depth_kwargs.input_size=70", "data.crop=null"],
    )
    assert cfg.train.lr == pytest.approx(1e-4)
    assert cfg.data.root == "/data/x"
    assert cfg.stages == ["fused"]
    assert cfg.fused.finetune == "depth"
    assert cfg.model.depth_kwargs == {"input_size": 70}
    assert cfg.data.crop is None
    assert cfg.train.batch_size == TrainConfig().train.batch_size  # untouched defaults survive


def test_override_unknown_key_and_bad_syntax(tmp_path: Path) -> None:
    path = _write(tmp_path, "data: {root: a}\n")
    with pytest.raises(ConfigError, match="train.lrate"):
        load_config(path, TrainConfig, ["train.lrate=1"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(path, TrainConfig, ["train.lr"])
    with pytest.raises(ConfigError, match="'train.batch_size'"):
        load_config(path, TrainConfig, ["train.batch_size=big"])


def test_parse_value() -> None:
    assert parse_value("1e-4") == pytest.approx(1e-4)
    assert parse_value("8") == 8 and parse_value("true") is True and parse_value("null") is None
    assert parse_value("[rgb, fused]") == ["rgb", "fused"]
    assert parse_value("dav2-l") == "dav2-l"


@pytest.mark.parametrize(
    "text, needle",
    [
        ("stages: [fused, rgb]", "rgb before fused"),
        ("stages: [rgb, colour]", "'stages'"),
        ("fused: {finetune: half}", "fused.finetune"),
        ("train: {amp: fp8}", "train.amp"),
        ("train: {depth_cache: true, depth_scale: crop}", "depth_cache"),  # per-crop depth with the default random crop
        ("rgb: {steps: 0}", "rgb.steps"),
        ("model: {depth: null}", "model.depth"),
    ],
)
def test_cross_field_checks(tmp_path: Path, text: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_config(_write(tmp_path, "data: {root: x}\n" + text + "\n"))


def test_depth_cache_allowed_without_augmentation(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, "data: {root: x, crop: null, flip: false}\ntrain: {depth_cache: true}\n"))
    assert cfg.train.depth_cache


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(_write(tmp_path, "train: {lr: [1,\n"))


def test_saved_config_round_trips(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, "data: {root: x}\nfused: {finetune: depth, lr: 5.0e-5}\n"))
    save_config(tmp_path / "saved.yaml", cfg)
    assert load_config(tmp_path / "saved.yaml") == cfg


@pytest.mark.parametrize("path", sorted([CONFIGS / "quickstart.yaml", *CONFIGS.glob("train_*.yaml")]), ids=lambda p: p.name)
def test_shipped_configs_validate(path: Path) -> None:
    cfg = load_config(path, TrainConfig, ["data.root=/data/somewhere"])
    assert cfg.stages and cfg.train.batch_size >= 1
