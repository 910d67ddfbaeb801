"""The built-in tiny world, its backbones, `lntune demo` and `lntune compare` (on minimal budgets)."""

import hashlib
import json

import pytest

from lntune.cli import main
from lntune.demo.compare import run_compare
from lntune.demo.files import WorldSize, write_world
from lntune.eval.benchmarks import get_benchmark

SMALL = WorldSize(train_scenes=24, text_scenes=40, eval_images=4)


def _digest(root):
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode() + path.read_bytes())
    return digest.hexdigest()


def test_world_is_deterministic_and_passes_the_loaders(tmp_path):
    first = write_world(tmp_path / "a", seed=3, size=SMALL)
    write_world(tmp_path / "b", seed=3, size=SMALL)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    write_world(tmp_path / "c", seed=4, size=SMALL)
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")
    counts = {"mme": 4 * 4 * 2, "vqav2": 12, "coco": 4, "flickr30k": 4}
    for bench, count in counts.items():
        images = first.get(f"{bench}_images")
        assert len(get_benchmark(bench).load(first[bench], images, None)) == count
    pope = get_benchmark("pope").load(first["pope"], first["pope_images"], None)
    assert {item.reference["split"] for item in pope} == {"random", "popular", "adversarial"}
    labels = [item.reference["label"] for item in pope]
    assert labels.count("yes") == labels.count("no")  # POPE balances positives and negatives
    instructions = json.loads(first["instructions"].read_text())
    assert {r["type"] for r in instructions} == {"conversation", "detail", "complex_reasoning"}
    assert main(["data", "check", str(first["instructions"]), "--image-folder", str(first["train_images"])]) == 0


def test_eval_scenes_are_held_out(tmp_path):
    from lntune.demo.files import EVAL_SEED_OFFSET

    paths = write_world(tmp_path, seed=0, size=SMALL)
    assert EVAL_SEED_OFFSET > SMALL.train_scenes + 500_000 + SMALL.text_scenes
    train = {r["image"] for r in json.loads(paths["instructions"].read_text())}
    assert all(name.startswith("train/") for name in train)


def test_backbones_load_as_standard_hf_models(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer, CLIPVisionModel

    from lntune.demo.backbones_cache import BackboneBudget, prepare_world

    paths = prepare_world(size=SMALL, budget=BackboneBudget(llm_steps=3, vision_steps=3), root=tmp_path, say=lambda m: None)
    assert AutoModelForCausalLM.from_pretrained(paths["llm"]).config.model_type == "llama"
    tokenizer = AutoTokenizer.from_pretrained(paths["llm"])
    assert "ASSISTANT:" in tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                                          add_generation_prompt=True)
    assert CLIPVisionModel.from_pretrained(paths["vision"]).config.image_size == 48
    again = prepare_world(size=SMALL, budget=BackboneBudget(llm_steps=3, vision_steps=3), root=tmp_path, say=lambda m: None)
    assert again == paths  # served from the cache


@pytest.mark.slow
def test_demo_smoke_fills_every_table_cell(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LNTUNE_CACHE", str(tmp_path / "cache"))
    assert main(["demo", "--out", str(tmp_path / "demo"), "--budget", "smoke"]) == 0
    report = (tmp_path / "demo" / "report.md").read_text()
    rows = [line for line in report.splitlines() if line.startswith("| ") and not line.startswith("| run")]
    assert [row.split("|")[1].strip() for row in rows] == ["image-blind prior", "stage 1 only", "layernorm"]
    for row in rows[1:]:
        assert " - " not in row, row  # every cell of a trained model's row is filled
    assert (tmp_path / "demo" / "loss_curves.png").stat().st_size > 1000
    assert "lntune chat" in capsys.readouterr().out


@pytest.mark.slow
def test_compare_smoke(tmp_path, monkeypatch):
    monkeypatch.setenv("LNTUNE_CACHE", str(tmp_path / "cache"))
    config = tmp_path / "compare.yaml"
    config.write_text(
        "world: tiny\nworld_size: {train_scenes: 24, text_scenes: 40, eval_images: 4}\n"
        "backbones: {llm_steps: 3, vision_steps: 3}\n"
        "budget: {stage1_steps: 2, stage2_steps: 2, batch_size: 4, eval_batch_size: 8}\n"
        "benches: [vqav2, pope]\n"
        "studies:\n  data_types:\n    title: Data types\n    runs:\n"
        "      - {name: conversation, method: layernorm, overrides: ['data.types=[conversation]']}\n"
        "      - {name: random, method: layernorm-simple, overrides: [\"data.sources=[{path: '{instructions}', count: 8}]\"]}\n"
        "      - {name: lora, method: lora}\n"
        "analysis: {n: 4, window: 2}\n")
    assert main(["compare", "--config", str(config), "--out", str(tmp_path / "out")]) == 0
    out = tmp_path / "out"
    report = (out / "report.md").read_text()
    assert "| conversation |" in report and "| random |" in report
    assert (out / "loss_data_types.png").is_file()
    # The analyses: similarity for every run; gradient variance and drift for the runs that train norms.
    analyses = report.split("### Analyses")[1]
    similarity = json.loads((out / "analysis" / "data_types" / "similarity.json").read_text())
    assert set(similarity) == {"conversation", "random", "lora"}
    for name, result in similarity.items():
        assert f"| {name} | {result['mean_off_diagonal']:.4f} |" in analyses
    gradients = json.loads((out / "analysis" / "data_types" / "gradients.json").read_text())
    assert set(gradients) == {"conversation", "random"}
    assert f"| random | {gradients['random']['variance']:.4g} |" in analyses
    assert "No gradient variance or drift for lora" in analyses
    for figure in ("similarity.png", "gradients.png", "drift.png"):
        assert f"(analysis/data_types/{figure})" in analyses
        assert (out / "analysis" / "data_types" / figure).stat().st_size > 5000


def test_compare_refuses_bad_analysis_settings_before_training(tmp_path):
    from lntune.errors import LntuneError

    config = tmp_path / "compare.yaml"
    base = "world: files\nmodel: /nonexistent\nstage1_model: /nonexistent\nstudies: {s: {runs: []}}\n"
    config.write_text(base + "analysis: {data: '{nowhere}'}\n")
    with pytest.raises(LntuneError, match="analysis.data '{nowhere}' names a path that is not defined"):
        run_compare(config, out=str(tmp_path / "out"))
    config.write_text(base + "analysis: {samples: 3}\n")
    with pytest.raises(LntuneError, match="samples"):
        run_compare(config, out=str(tmp_path / "out"))
    config.write_text(base.replace("{runs: []}", "{runs: [], analyse: false}"))
    with pytest.raises(LntuneError, match="study 's': unknown key 'analyse'"):
        run_compare(config, out=str(tmp_path / "out"))
