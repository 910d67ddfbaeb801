"""Configs: YAML + dotted overrides -> frozen, validated dataclasses; errors name the key and the source."""

import dataclasses

import pytest

from lntune.config import BuildConfig, MethodConfig, apply_overrides, config_from_dict, config_to_dict, load_yaml
from lntune.errors import LntuneError


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "method.yaml"
    path.write_text("name: lora\nlora_rank: 8\nlora_target_modules: [q_proj, v_proj]\n")
    data = apply_overrides(load_yaml(path), ["lora_rank=64", "train_connector=false"])
    config = config_from_dict(MethodConfig, data, str(path))
    assert config.lora_rank == 64 and config.train_connector is False
    assert config.lora_target_modules == ("q_proj", "v_proj")
    assert config_to_dict(config)["lora_target_modules"] == ["q_proj", "v_proj"]


def test_configs_are_checked_once_and_stay_checked():
    """Validation runs when a config is made: every config class is frozen, so a checked value cannot be changed
    afterwards, and dataclasses.replace (how lntune derives one config from another) checks the new values again."""
    import lntune.config

    classes = [value for value in vars(lntune.config).values()
               if isinstance(value, type) and dataclasses.is_dataclass(value) and value.__module__ == "lntune.config"]
    assert len(classes) >= 6 and all(cls.__dataclass_params__.frozen for cls in classes)
    with pytest.raises(LntuneError, match="lora_dropout"):
        dataclasses.replace(MethodConfig(), lora_dropout=1.5)


def test_unknown_key_lists_valid_keys():
    with pytest.raises(LntuneError, match=r"run.yaml: unknown key 'lora_rnk'.*lora_rank"):
        config_from_dict(MethodConfig, {"lora_rnk": 8}, "run.yaml")


def test_wrong_type_names_the_key():
    with pytest.raises(LntuneError, match="lora_rank must be int"):
        config_from_dict(MethodConfig, {"lora_rank": "big"}, "cli")
    with pytest.raises(LntuneError, match="train_connector must be bool"):
        config_from_dict(MethodConfig, {"train_connector": "yes please"}, "cli")


def test_validation_in_post_init():
    with pytest.raises(LntuneError, match="lora_dropout"):
        MethodConfig(lora_dropout=1.5)
    with pytest.raises(LntuneError, match="unknown connector"):
        BuildConfig(llm="a", vision="b", out="c", connector="resampler")


def test_missing_required_key():
    with pytest.raises(LntuneError, match="missing required key vision"):
        config_from_dict(BuildConfig, {"llm": "a", "out": "c"}, "build.yaml")


def test_invalid_yaml_names_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: lora\nlora_rank: [1,\n")
    with pytest.raises(LntuneError, match=r"bad.yaml:\d+:\d+: invalid YAML"):
        load_yaml(path)


def test_bad_override():
    with pytest.raises(LntuneError, match="key.sub=value"):
        apply_overrides({}, ["lora_rank"])


def test_exponent_floats_without_a_dot(tmp_path):
    # PyYAML reads `1e-3` (no dot) as a string; users write learning rates that way in files and overrides.
    path = tmp_path / "method.yaml"
    path.write_text("lora_alpha: 1e2\n")
    data = apply_overrides(load_yaml(path), ["lora_dropout=5e-2"])
    config = config_from_dict(MethodConfig, data, str(path))
    assert config.lora_alpha == 100.0 and config.lora_dropout == 0.05
    with pytest.raises(LntuneError, match="lora_alpha must be float"):
        config_from_dict(MethodConfig, {"lora_alpha": "high"}, "cli")
