"""Parameter accounting: the paper's figures from the real LLaMA-2 + CLIP ViT-L/14 configs, on the meta device."""

import json
from pathlib import Path

import pytest

from lntune.cli import main
from lntune.config import MethodConfig
from lntune.methods import METHODS, apply_method
from lntune.model.load import load_model
from lntune.params import config_for_counting, count_parameters, method_reports

REFERENCE = Path(__file__).resolve().parent.parent / "lntune" / "reference_configs"
CLIP_L14 = str(REFERENCE / "clip-vit-large-patch14" / "config.json")


def paper_config(size: str):
    return config_for_counting(llm=str(REFERENCE / f"llama-2-{size}" / "config.json"), vision=CLIP_L14,
                               connector="linear")


@pytest.fixture(scope="module")
def reports_7b():
    return {r.method: r for r in method_reports(paper_config("7b"), [MethodConfig(name=n) for n in METHODS])}


def test_whole_model_size_7b(reports_7b):
    report = reports_7b["layernorm"]
    assert report.components["vision_encoder"].total == 303_179_776  # CLIP ViT-L/14 vision tower at 224 px
    assert report.components["connector"].total == 1024 * 4096 + 4096
    llm = sum(c.total for name, c in report.components.items() if name not in ("vision_encoder", "connector"))
    assert llm == 6_738_415_616  # LLaMA-2-7B


def test_layernorm_simple_7b_is_262144_block_norm_parameters(reports_7b):
    report = reports_7b["layernorm-simple"]
    assert report.components["block_norms"].trainable == 262_144  # 32 blocks x 2 norms x 4096
    assert report.block_norms_by_kind["input_layernorm"].trainable == 131_072
    assert report.block_norms_by_kind["post_attention_layernorm"].trainable == 131_072
    assert report.components["final_norm"].trainable == 4096
    assert round(100 * 262_144 / report.total, 3) == 0.004
    assert round(report.trainable_percent, 3) == 0.004  # the final norm does not change it


def test_layernorm_7b_is_3_78_percent(reports_7b):
    report = reports_7b["layernorm"]
    assert round(report.trainable / 1e6, 1) == 266.6
    assert round(report.trainable_percent, 2) == 3.78


def test_13b_figures():
    reports = {r.method: r for r in method_reports(paper_config("13b"), [MethodConfig(name="layernorm"),
                                                                         MethodConfig(name="layernorm-simple")])}
    assert reports["layernorm-simple"].components["block_norms"].trainable == 409_600
    assert round(reports["layernorm-simple"].trainable_percent, 3) == 0.003
    assert round(reports["layernorm"].trainable / 1e6, 1) == 333.3
    assert round(reports["layernorm"].trainable_percent, 1) == 2.5


def test_lora_counts_rank_times_in_plus_out_per_linear_layer(reports_7b):
    # rank 32: attention 4 x 32 x (4096 + 4096), MLP 3 x 32 x (4096 + 11008), over 32 blocks
    per_block = 4 * 32 * 8192 + 3 * 32 * (4096 + 11008)
    assert reports_7b["lora"].components["lora"].trainable == 32 * per_block
    assert reports_7b["lora"].total == reports_7b["full"].total + 32 * per_block


def test_every_parameter_is_counted_once(reports_7b):
    for report in reports_7b.values():
        assert sum(c.total for c in report.components.values()) == report.total
        assert sum(c.trainable for c in report.components.values()) == report.trainable
        assert report.components["other"].total == 0


def test_meta_count_equals_real_model_count(built_model):
    model_dir = built_model()
    for method in ("layernorm", "lora"):
        config = MethodConfig(name=method)
        meta = method_reports(config_for_counting(model=str(model_dir)), [config])[0]
        real = count_parameters(apply_method(load_model(model_dir), config), method=method)
        assert meta.to_dict() == real.to_dict()


def test_tied_embeddings_counted_once(built_model):
    report = count_parameters(load_model(built_model(llm="qwen3")))
    assert report.tied_embeddings
    assert report.components["output_head"].total == 0
    assert report.components["embeddings"].total > 0


def test_cli_json_on_configs(capsys):
    code = main(["params", "--llm", str(REFERENCE / "llama-2-7b" / "config.json"), "--vision", CLIP_L14,
                 "--connector", "linear", "--method", "layernorm-simple", "--json"])
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert {"total", "trainable", "trainable_percent", "components"} <= set(data)
    assert data["components"]["block_norms"]["trainable"] == 262_144
    assert data["method"] == "layernorm-simple"


def test_cli_table_several_methods_on_built_model(built_model, capsys):
    assert main(["params", "--model", str(built_model()), "--method", "full", "--method", "layernorm"]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0].split()
    assert header == ["component", "total", "full", "layernorm"]
    assert "block_norms" in out and "trainable %" in out


def test_cli_switch_and_json_list(built_model, capsys):
    assert main(["params", "--model", str(built_model()), "--method", "layernorm", "--method", "connector",
                 "--no-train-connector", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [item["method"] for item in data] == ["layernorm", "connector"]
    assert data[0]["components"]["connector"]["trainable"] == 0
    assert data[1]["trainable"] == 0
