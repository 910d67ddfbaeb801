"""`lntune compare`: the config file (checked on loading, and every run's config before anything trains) and a
smoke run of a study on the tiny world."""

import json
from pathlib import Path

import pytest

from lntune.cli import main
from lntune.errors import LntuneError
from lntune.study.config import AnalysisSettings, StudyRun, load_compare_config
from lntune.study.runner import run_compare

REPOSITORY = Path(__file__).resolve().parents[2]
# No tiny world, no model building, no stage 1: a run of this config starts by training stage 2, so any error it
# raises first was found before anything trained.
FILES_WORLD = "world: files\nmodel: /nonexistent\nstage1_model: /nonexistent\n"
BENCH_PATHS = ("paths: {instructions: i.json, train_images: img, mme: m, vqav2: v.json, vqav2_images: vi,"
               " coco: c.json, coco_images: ci, flickr30k: f.json, flickr30k_images: fi, pope: p, pope_images: pi}\n")


def _write(tmp_path, text):
    config = tmp_path / "compare.yaml"
    config.write_text(text)
    return config


@pytest.mark.parametrize("name", ["demo-compare.yaml", "llama-2-7b-compare.yaml"])
def test_shipped_configs_load(name):
    config = load_compare_config(REPOSITORY / "configs" / name)
    assert "methods" in config.studies and "data_types" in config.studies
    methods = config.studies["methods"]
    assert methods.title and all(isinstance(run, StudyRun) for run in methods.runs)
    assert config.world == ("tiny" if name.startswith("demo") else "files")


def test_demo_config_values():
    config = load_compare_config(REPOSITORY / "configs" / "demo-compare.yaml")
    assert config.budget.stage2_steps == 600 and config.analysis == AnalysisSettings(n=100, window=50)
    assert config.studies["methods"].baselines and not config.studies["data_types"].baselines
    connector = config.studies["connector"].runs[0]
    assert (connector.name, connector.method, connector.overrides) == (
        "layernorm + connector", "layernorm-simple", ("method.train_connector=true",))
    assert connector.folder == "layernorm_plus_connector"


def test_empty_sections_mean_the_defaults(tmp_path):
    config = load_compare_config(_write(tmp_path, "analysis:\nbudget:\npaths:\nstudies: {s: {runs: []}}\n"))
    assert config.analysis == AnalysisSettings() and config.paths == {}


@pytest.mark.parametrize("text,message", [
    ("studies: {}\n", "no studies"),
    ("studies: [a, b]\n", "studies must be a mapping"),
    ("studys: {}\nstudies: {s: {runs: []}}\n", "unknown key 'studys'"),
    ("studies: {s: {runs: [{name: a}]}}\n", "study 's': missing required key runs.method"),
    ("studies: {s: {runs: [{name: a, method: layernrom}]}}\n", "study 's', run 'a': unknown method 'layernrom'"),
    ("studies: {s: {runs: [{name: a b, method: lora}, {name: a_b, method: full}]}}\n",
     "study 's': runs 'a b' and 'a_b' would share the folder 'a_b'"),
    ("world: real\nstudies: {s: {runs: []}}\n", "unknown world 'real'; valid: tiny, files"),
    ("world_size: {scenes: 3}\nstudies: {s: {runs: []}}\n", "unknown key world_size.'scenes'"),
    ("paths: {captions: 3}\nstudies: {s: {runs: []}}\n", "paths.captions must be a file or folder, got 3"),
    ("benches: [vqav2, gqa]\nstudies: {s: {runs: []}}\n", "benches: unknown benchmark 'gqa'"),
    ("budget: {stage2_steps: many}\nstudies: {s: {runs: []}}\n", "budget.stage2_steps must be int"),
])
def test_config_mistakes_name_the_key(tmp_path, text, message):
    config = _write(tmp_path, text)
    with pytest.raises(LntuneError, match=message) as raised:
        load_compare_config(config)
    assert str(config) in str(raised.value)


def test_compare_refuses_bad_analysis_settings_before_training(tmp_path):
    base = FILES_WORLD + "studies: {s: {runs: []}}\n"
    config = _write(tmp_path, base + "analysis: {data: '{nowhere}'}\n")
    with pytest.raises(LntuneError, match="analysis.data '{nowhere}' names a path that is not defined"):
        run_compare(config, out=str(tmp_path / "out"))
    config.write_text(base + "analysis: {samples: 3}\n")
    with pytest.raises(LntuneError, match="samples"):
        run_compare(config, out=str(tmp_path / "out"))
    config.write_text(base.replace("{runs: []}", "{runs: [], analyse: false}"))
    with pytest.raises(LntuneError, match="study 's': unknown key 'analyse'"):
        run_compare(config, out=str(tmp_path / "out"))


@pytest.mark.parametrize("run,message", [
    ("{name: a, method: lora, overrides: ['train.lrr=1']}", "study 's', run 'a': overrides: unknown key train.'lrr'"),
    ("{name: a, method: lora, overrides: ['train.lr=-1']}", "study 's', run 'a': train.lr must be a number > 0"),
    ("{name: a, method: lora, overrides: ['train.lr']}", "study 's', run 'a': override 'train.lr' must look like"),
    ("{name: a, method: lora, overrides: ['out=/tmp/x']}", "study 's', run 'a': overrides set `model` or `out`"),
])
def test_every_run_config_is_checked_before_training(tmp_path, run, message):
    # The good run comes first: had it trained, the nonexistent stage-1 model would have failed it first.
    runs = f"[{{name: good, method: layernorm}}, {run}]"
    config = _write(tmp_path, FILES_WORLD + BENCH_PATHS + f"studies: {{s: {{runs: {runs}}}}}\n")
    with pytest.raises(LntuneError, match=message):
        run_compare(config, out=str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_paths_the_runs_need_are_checked_before_training(tmp_path):
    config = _write(tmp_path, "world: files\npaths: {captions: c.json, train_images: img}\n"
                              "studies: {s: {runs: [{name: a, method: lora}]}}\n")
    with pytest.raises(LntuneError, match=r"paths.llm is not defined, and building the model \(or give `model`\) "
                                          r"reads it; defined: captions, train_images \(also missing: vision, "
                                          r"instructions, mme, vqav2, vqav2_images"):
        run_compare(config, out=str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_compare_smoke(tmp_path, monkeypatch):
    monkeypatch.setenv("LNTUNE_CACHE", str(tmp_path / "cache"))
    config = tmp_path / "compare.yaml"
    config.write_text(
        "world: tiny\nworld_size: {train_scenes: 24, text_scenes: 40, eval_images: 4}\n"
        "backbones: {llm_steps: 3, vision_steps: 3}\n"
        "budget: {stage1_steps: 2, stage2_steps: 2, batch_size: 4, eval_batch_size: 8}\n"
        "benches: [vqav2, pope, coco]\n"
        "studies:\n  data_types:\n    title: Data types\n    baselines: true\n    runs:\n"
        "      - {name: conversation, method: layernorm, overrides: ['data.types=[conversation]']}\n"
        "      - {name: random, method: layernorm-simple, overrides: [\"data.sources=[{path: '{instructions}', count: 8}]\"]}\n"
        "      - {name: lora, method: lora}\n"
        "analysis: {n: 4, window: 2}\n")
    assert main(["compare", "--config", str(config), "--out", str(tmp_path / "out")]) == 0
    out = tmp_path / "out"
    report = (out / "report.md").read_text()
    assert report.startswith("# lntune compare: compare.yaml\n\nSame stage-1 model, seed 0 and budget for every run: "
                             "2 steps of 4 samples.\n\n## Data types\n\n| run |")
    results = report.split("**Gallery**")[0]
    rows = [line.split("|")[1].strip() for line in results.splitlines() if line.startswith("| ")]
    assert rows == ["run", "image-blind prior", "stage 1 only", "conversation", "random", "lora"]
    assert "No paired bootstrap: the study has no run named 'layernorm'" in results
    # the gallery: held-out VQAv2 and COCO images with each run's answer (one seed: no ± in the table)
    gallery = report.split("**Gallery**")[1].split("### Analyses")[0]
    assert "| image | question | reference | conversation | random | lora |" in gallery
    assert len(list((out / "gallery" / "data_types").glob("*.png"))) == 2 * 3 and " ± " not in results
    assert (out / "loss_data_types.png").is_file()
    # The analyses: similarity for every run; gradient variance and drift for the runs that train norms.
    analyses = report.split("### Analyses")[1]
    similarity = json.loads((out / "analysis" / "data_types" / "similarity.json").read_text())
    assert set(similarity) == {"stage 1 only", "conversation", "random", "lora"}
    for name, result in similarity.items():
        assert f"| {name} | {result['mean_off_diagonal']:.4f} |" in analyses
    gradients = json.loads((out / "analysis" / "data_types" / "gradients.json").read_text())
    assert set(gradients) == {"conversation", "random"}
    assert f"| random | {gradients['random']['variance']:.4g} |" in analyses
    assert "No gradient variance or drift for lora" in analyses
    for figure in ("similarity.png", "gradients.png", "drift.png"):
        assert f"(analysis/data_types/{figure})" in analyses
        assert (out / "analysis" / "data_types" / figure).stat().st_size > 5000
