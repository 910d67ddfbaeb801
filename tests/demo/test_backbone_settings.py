"""The tiny world's LLM shape as a setting (`backbones: {llm_layers, llm_hidden_size, preset}`): it reaches the built
LLM, it keys the cache, and a compare config's mistakes in it name the key."""

import json

import pytest
from transformers import AutoConfig

from lntune.demo.backbones_cache import BACKBONE_PRESETS, BackboneBudget, cache_key, prepare_world
from lntune.demo.files import WorldSize
from lntune.errors import LntuneError
from lntune.study.config import load_compare_config

SMALL = WorldSize(train_scenes=24, text_scenes=40, eval_images=4)


def test_the_llm_shape_reaches_the_built_llm(tmp_path, monkeypatch):
    import lntune.demo.pretrain

    # the vision encoder is not what this test is about: an empty folder in its place saves most of the build
    monkeypatch.setattr(lntune.demo.pretrain, "pretrain_vision", lambda out, **settings: out)
    budget = BackboneBudget(llm_steps=2, vision_steps=2, llm_layers=2, llm_hidden_size=32)
    paths = prepare_world(size=SMALL, budget=budget, root=tmp_path, say=lambda message: None)
    config = AutoConfig.from_pretrained(paths["llm"])
    assert (config.num_hidden_layers, config.hidden_size, config.intermediate_size) == (2, 32, 96)
    marker = json.loads((tmp_path / cache_key(0, SMALL, budget) / "complete.json").read_text())
    assert marker["budget"]["llm_layers"] == 2 and marker["llm_final_loss"] > 0


def test_the_cache_key_holds_the_llm_shape_and_keeps_the_default_key():
    size = WorldSize()
    # the key every cache written before the shape was a setting has: a default world must still be found there
    assert cache_key(0, size, BackboneBudget()) == "tiny-world-v4-seed0-3000-6000-60-1000-300"
    keys = {cache_key(0, size, budget) for budget in (
        BackboneBudget(), BACKBONE_PRESETS["deep"], BackboneBudget(llm_layers=8, llm_hidden_size=64),
        BackboneBudget(llm_hidden_size=64))}
    assert len(keys) == 4  # never a 4-block LLM for an 8-block request, nor one width for another


def _block_parameters(layers: int, hidden: int) -> int:
    return layers * (4 * hidden * hidden + 3 * hidden * 3 * hidden)  # attention q, k, v, o + MLP gate, up, down


def test_the_deep_preset_has_eight_blocks_and_about_the_default_size():
    deep, default = BACKBONE_PRESETS["deep"], BACKBONE_PRESETS["default"]
    assert default == BackboneBudget() and deep.llm_layers >= 8
    ratio = _block_parameters(deep.llm_layers, deep.llm_hidden_size) / _block_parameters(4, 128)
    assert 0.9 < ratio < 1.25  # depth is what changes, not the size


def _load(tmp_path, backbones: str):
    config = tmp_path / "compare.yaml"
    config.write_text(f"backbones: {backbones}\nstudies: {{s: {{runs: []}}}}\n")
    return load_compare_config(config)


def test_a_compare_config_names_a_preset_and_overrides_its_values(tmp_path):
    assert _load(tmp_path, "{preset: deep}").backbones == BACKBONE_PRESETS["deep"]
    assert _load(tmp_path, "{preset: deep, llm_steps: 5}").backbones == BackboneBudget(
        llm_steps=5, llm_layers=BACKBONE_PRESETS["deep"].llm_layers, llm_hidden_size=BACKBONE_PRESETS["deep"].llm_hidden_size)
    assert _load(tmp_path, "{llm_layers: 6, llm_hidden_size: 64}").backbones == BackboneBudget(
        llm_layers=6, llm_hidden_size=64)


@pytest.mark.parametrize("backbones,message", [
    ("{preset: deeper}", r"compare.yaml: backbones.preset: unknown backbones preset 'deeper'; valid: deep, default"),
    ("{llm_layers: 0}", r"backbones.llm_layers must be >= 1, got 0"),
    ("{preset: deep, llm_hidden_size: 130}", r"backbones.llm_hidden_size must be a multiple of the LLM's 4"),
    ("{llm_layers: eight}", r"backbones.llm_layers must be int"),
    ("{llm_blocks: 8}", r"unknown key backbones.'llm_blocks'"),
])
def test_backbones_mistakes_name_the_key(tmp_path, backbones, message):
    with pytest.raises(LntuneError, match=message):
        _load(tmp_path, backbones)


@pytest.mark.parametrize("budget,steps", [("smoke", 3), ("default", BACKBONE_PRESETS["deep"].llm_steps)])
def test_demo_backbones_flag_picks_the_preset(tmp_path, monkeypatch, budget, steps):
    import lntune.demo.backbones_cache
    from lntune.cli import main

    seen = {}

    def stop_after_recording(**settings):
        seen.update(settings)
        raise LntuneError("stop here: the world is not what this test is about")

    monkeypatch.setattr(lntune.demo.backbones_cache, "prepare_world", stop_after_recording)
    assert main(["demo", "--out", str(tmp_path / "demo"), "--backbones", "deep", "--budget", budget]) == 1
    assert seen["budget"].llm_layers == 8 and seen["budget"].llm_steps == steps  # smoke: the shape, not the steps


def test_the_shipped_deep_compare_config():
    from pathlib import Path

    config = load_compare_config(Path(__file__).resolve().parents[2] / "configs" / "demo-deep-compare.yaml")
    deep = BACKBONE_PRESETS["deep"]
    assert (config.backbones.llm_layers, config.backbones.llm_hidden_size) == (deep.llm_layers, deep.llm_hidden_size)
    assert config.backbones.llm_steps == deep.llm_steps  # the preset as it is: what docs/benchmarks.md measured
    runs = [run for study in config.studies.values() for run in study.runs]
    assert {run.method for run in runs} == {"full", "lora", "layernorm", "layernorm-simple"}
    assert len(config.seeds) >= 2 and all(not run.overrides for run in runs)  # the seeds are `seeds`
