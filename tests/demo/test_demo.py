"""The built-in tiny world, its backbones and `lntune demo` (on minimal budgets); `lntune compare`: test_study.py."""

import hashlib
import json

import pytest

from lntune.cli import main
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
