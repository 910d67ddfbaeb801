"""`lntune compare` for research: seeds, keyed runs and resume, the learning-rate search on a validation split, the
paired bootstrap, and the report's research sections."""

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from lntune.config import config_to_dict
from lntune.errors import LntuneError
from lntune.study import runner
from lntune.study.bootstrap import paired_bootstrap
from lntune.study.config import load_compare_config
from lntune.study.items import ItemTable, _mean, item_table
from lntune.study.runner import run_compare
from tests.helpers import write_llava_data

BENCHES = ("paths: {mme: m, vqav2: v.json, vqav2_images: vi, coco: c.json, coco_images: ci, flickr30k: f.json,"
           " flickr30k_images: fi, pope: p, pope_images: pi}\n")


# ---- the paired bootstrap -------------------------------------------------------------------------------------

def _table(values):
    values = np.array(values, dtype=float)[:, None]
    return ItemTable(tuple(f"u{i}" for i in range(len(values))), values, _mean)


def test_bootstrap_matches_the_exact_bootstrap_distribution():
    # One seed, three items: a - b per item is (1, 0, 0). The 27 equally likely resamples give the mean difference
    # 0 (8/27), 1/3 (12/27), 2/3 (6/27), 1 (1/27): its 2.5th percentile is 0, its 97.5th is 1 (26/27 < 0.975).
    a, b = _table([1, 0, 1]), _table([0, 0, 1])
    exact = sorted(np.mean([[1, 0, 0][i] for i in draw]) for draw in itertools.product(range(3), repeat=3))
    assert np.percentile(exact, [2.5, 97.5], method="inverted_cdf").tolist() == [0, 1]
    result = paired_bootstrap([a], [b], resamples=4000, seed=0)
    assert result.difference == pytest.approx(1 / 3)
    assert (result.low, result.high) == (0.0, 1.0)
    assert result.within_noise


def test_bootstrap_equals_a_direct_computation_over_seeds_and_items():
    # Two seeds, four items: the documented draw (seeds, then items, from default_rng(seed)) done by hand.
    a = [_table([80, 60, 90, 70]), _table([75, 65, 95, 60])]
    b = [_table([50, 40, 60, 45]), _table([55, 35, 65, 50])]
    rng = np.random.default_rng(7)
    draws = []
    for _ in range(500):
        seeds, items = rng.integers(0, 2, 2), rng.integers(0, 4, 4)
        draws.append(np.mean([a[s].values[items, 0].mean() for s in seeds])
                     - np.mean([b[s].values[items, 0].mean() for s in seeds]))
    result = paired_bootstrap(a, b, resamples=500, seed=7)
    assert result.difference == pytest.approx(np.mean([t.values.mean() for t in a])
                                              - np.mean([t.values.mean() for t in b]))
    assert (result.low, result.high) == tuple(np.percentile(draws, [2.5, 97.5]))
    assert not result.within_noise  # a is 20-30 points above b on every item and seed
    assert paired_bootstrap(a, b, resamples=500, seed=7) == result  # the same seed, the same interval


def test_bootstrap_refuses_unpaired_tables():
    with pytest.raises(LntuneError, match="same seeds"):
        paired_bootstrap([_table([1, 2])], [_table([1, 2]), _table([1, 2])])
    with pytest.raises(LntuneError, match="same items"):
        paired_bootstrap([_table([1, 2])], [_table([1, 2, 3])])


# ---- the config ---------------------------------------------------------------------------------------------

def _write(tmp_path, text):
    path = tmp_path / "compare.yaml"
    path.write_text(text)
    return path


def test_research_config_keys(tmp_path):
    config = load_compare_config(_write(tmp_path, "seeds: [3, 1]\nlr_search: {lora: [1e-3, 3.0e-3], full: default}\n"
                                                  "studies: {s: {runs: [{name: a, method: lora}]}}\n"))
    assert config.seeds == (3, 1) and config.lr_search == {"lora": (1e-3, 3e-3), "full": None}
    config = load_compare_config(_write(tmp_path, "lr_search: default\nstudies: {s: {runs: [{name: a, method: lora},"
                                                  " {name: b, method: full}]}}\n"))
    assert config.lr_search == {"lora": None, "full": None} and config.seeds == (0,)


def test_the_shipped_research_configs():
    """What docs/benchmarks.md measured (demo) and what the GPU config promises: every method searched, 3 seeds, the
    search allowed past a winning edge, the bootstrap against layernorm."""
    configs = Path(__file__).resolve().parents[2] / "configs"
    for name, methods, world in (("demo-research.yaml", {"full", "lora", "layernorm", "layernorm-simple"}, "tiny"),
                                 ("llava-1.5-7b-research.yaml", {"lora", "layernorm", "layernorm-simple"}, "files")):
        config = load_compare_config(configs / name)
        runs = {run.method for study in config.studies.values() for run in study.runs}
        assert config.world == world and runs == methods and set(config.lr_search) == methods, name
        assert config.seeds == (0, 1, 2) and config.lr_extend >= 1 and config.bootstrap.baseline == "layernorm", name
    assert all(grid is None for grid in load_compare_config(configs / "demo-research.yaml").lr_search.values())


@pytest.mark.parametrize("text,message", [
    ("seeds: []\n", "seeds must be a non-empty list"),
    ("seeds: [1, 1]\n", "seeds must be a non-empty list of different"),
    ("seeds: [-1]\n", r"seeds: -1 is not in \[0, 2\*\*32\)"),
    ("lr_search: {lorra: [1]}\n", "lr_search: unknown method 'lorra'"),
    ("lr_search: {lora: []}\n", "lr_search.lora must be a non-empty list"),
    ("lr_search: {lora: [0.1, -1]}\n", r"lr_search.lora: -1 is not a learning rate"),
    ("lr_search: {lora: [0.1, 0.1]}\n", "a rate is given twice"),
    ("validation: {samples: 0}\n", "validation.samples"),
    ("bootstrap: {resamples: 3}\n", "bootstrap.resamples must be >= 10"),
    ("lr_extend: -1\n", "lr_extend must be >= 0, got -1"),
    ("validation: {fraction: 1.5}\nworld: files\n", "validation.fraction must be between 0 and 1"),
    ("validation: {fraction: 0.1}\n", "validation.fraction is for `world: files`"),
])
def test_research_config_mistakes(tmp_path, text, message):
    path = _write(tmp_path, text + "studies: {s: {runs: [{name: a, method: lora}]}}\n")
    with pytest.raises(LntuneError, match=message) as raised:
        load_compare_config(path)
    assert str(path) in str(raised.value)


# ---- seeds, keyed runs and resume (training and evaluation faked: what is asked of them is the test) -------------

class FakeTraining:
    """Stands in for lntune.train.trainer.train: writes what a finished run has; `fail_at` interrupts a call
    halfway (its folder left without summary.json), as a killed compare would."""

    def __init__(self, fail_at=None):
        self.calls, self.fail_at = [], fail_at

    def __call__(self, config, say=None):
        self.calls.append(config)
        out = Path(config.out)
        (out / "adapter").mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
        if len(self.calls) == self.fail_at:
            raise KeyboardInterrupt  # killed mid-run
        (out / "summary.json").write_text("{}")
        return out


def _fake_world(tmp_path, monkeypatch, training):
    import lntune.study.validation as validation
    import lntune.train.trainer as trainer

    instructions, images = write_llava_data(tmp_path / "data", count=12)
    monkeypatch.setattr(trainer, "train", training)
    # The validation loss a run gets: a function of its rate (lowest at 1e-3) and of the validation file's contents.
    def loss(run, model, data, batch_size):
        rate = yaml.safe_load((run / "config.yaml").read_text())["train"]["lr"]
        shift = json.loads(Path(data.sources[0].path).read_text())[0].get("shift", 0)
        return abs(np.log10(rate) + 3 - shift)
    monkeypatch.setattr(validation, "validation_loss", loss)

    def evaluate(model, adapter, paths, out, budget, benches):
        for bench in benches:
            (out / bench).mkdir(parents=True, exist_ok=True)
            (out / bench / "metrics.json").write_text(json.dumps({"metrics": {"accuracy": 50.0}}))
    monkeypatch.setattr(runner, "evaluate", evaluate)
    monkeypatch.setattr(runner, "run_summary", lambda run: {"losses": [(1, 1.0)]})
    return ("world: files\nmodel: /nonexistent\nstage1_model: /stage1\nbenches: [vqav2]\ngallery: 0\n"
            + BENCHES.replace("paths: {", f"paths: {{instructions: {instructions}, train_images: {images}, ")
            + "validation: {samples: 4}\n")


STUDY = ("seeds: [0, 1]\nlr_search: {lora: [1.0e-4, 1.0e-3]}\nbootstrap: {baseline: none}\n"
         "studies: {s: {analysis: false, runs: [{name: a, method: lora}, {name: b, method: layernorm}]}}\n")


def test_seeds_and_search_train_each_config_once(tmp_path, monkeypatch):
    training = FakeTraining()
    config = _write(tmp_path, _fake_world(tmp_path, monkeypatch, training) + STUDY)
    assert run_compare(config, out=str(tmp_path / "out")) == 0
    trained = [(c.method.name, c.train.lr, c.train.seed) for c in training.calls]
    # lora: both rates with seed 0, the chosen 1e-3 with seed 1 (its seed-0 run is the search's); layernorm: 2 seeds
    assert trained == [("lora", 1e-4, 0), ("lora", 1e-3, 0), ("lora", 1e-3, 1), ("layernorm", 1e-2, 0),
                       ("layernorm", 1e-2, 1)]
    folders = [Path(c.out) for c in training.calls]
    assert len(set(folders)) == 5 and all(f.parent == tmp_path / "out" / "runs" for f in folders)
    assert folders[1].name.startswith("lora-lr0.001-seed0-") and folders[2].name.startswith("lora-lr0.001-seed1-")
    # the runs train on the instructions minus the held-out validation split
    assert all(c.data.sources[0].path == str(tmp_path / "out" / "validation" / "train.json") for c in training.calls)
    held_out = json.loads((tmp_path / "out" / "validation" / "validation.json").read_text())
    rest = json.loads((tmp_path / "out" / "validation" / "train.json").read_text())
    assert len(held_out) == 4 and len(rest) == 8 and not {r["id"] for r in held_out} & {r["id"] for r in rest}
    results = json.loads((tmp_path / "out" / "results.json").read_text())["studies"]["s"]
    assert results["a"]["lr"] == 1e-3 and [p["lr"] for p in results["a"]["lr_search"]] == [1e-4, 1e-3]
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| a | 0.001 | 0.0000 | chosen |" in report and "50.0 ± 0.0" in report
    assert (tmp_path / "out" / "lr_s.png").stat().st_size > 5000


def test_an_interrupted_compare_resumes_without_retraining(tmp_path, monkeypatch, capsys):
    training = FakeTraining(fail_at=4)
    config = _write(tmp_path, _fake_world(tmp_path, monkeypatch, training) + STUDY)
    with pytest.raises(KeyboardInterrupt):
        run_compare(config, out=str(tmp_path / "out"))
    first = [c.out for c in training.calls]
    training.calls, training.fail_at = [], None
    assert run_compare(config, out=str(tmp_path / "out")) == 0
    # the three finished runs are reused; the one killed mid-run and the one never started are trained
    assert [c.out for c in training.calls] == first[3:] + [str(Path(first[3]).parent / _last_folder(tmp_path))]
    said = capsys.readouterr().err
    assert all(f"reused: {folder} (finished, same config)" in said for folder in first[:3])
    training.calls = []
    assert run_compare(config, out=str(tmp_path / "out")) == 0
    assert training.calls == []  # everything finished: nothing trains again


def _last_folder(tmp_path):
    return json.loads((tmp_path / "out" / "results.json").read_text())["studies"]["s"]["b"]["runs"][1].split("/")[1]


def test_a_changed_config_trains_again_and_a_stale_run_is_refused(tmp_path, monkeypatch):
    training = FakeTraining()
    world = _fake_world(tmp_path, monkeypatch, training)
    config = _write(tmp_path, world + STUDY)
    run_compare(config, out=str(tmp_path / "out"))
    before = {c.out for c in training.calls}
    training.calls = []
    config.write_text(world + STUDY + "budget: {stage2_steps: 7}\n")
    run_compare(config, out=str(tmp_path / "out"))
    assert len(training.calls) == 5 and not {c.out for c in training.calls} & before
    # a finished run folder whose recorded config is not the one its name stands for is never reused
    folder = Path(training.calls[0].out)
    recorded = yaml.safe_load((folder / "config.yaml").read_text())
    recorded["train"]["max_grad_norm"] = 5.0
    (folder / "config.yaml").write_text(yaml.safe_dump(recorded))
    with pytest.raises(LntuneError, match=f"{folder} holds a finished run made with another config "
                                          r"\(differing: train\)"):
        run_compare(config, out=str(tmp_path / "out"))


def test_the_rate_is_chosen_on_the_validation_split_only(tmp_path, monkeypatch):
    training = FakeTraining()
    world = _fake_world(tmp_path, monkeypatch, training)
    validation = tmp_path / "validation.json"
    validation.write_text(json.dumps([{"shift": 0}]))
    study = STUDY.replace("[1.0e-4, 1.0e-3]", "[1.0e-4, 1.0e-3, 1.0e-2]")
    config = _write(tmp_path, world.replace("paths: {", f"paths: {{validation: {validation}, ") + study)

    def chosen(out):
        run_compare(config, out=str(tmp_path / out))
        return json.loads((tmp_path / out / "results.json").read_text())["studies"]["s"]["a"]["lr"]

    assert chosen("out1") == 1e-3
    (tmp_path / "v.json").write_text("poisoned")  # the benchmark files are never read for the choice
    assert chosen("out2") == 1e-3
    validation.write_text(json.dumps([{"shift": -1}]))  # the validation split decides it
    assert chosen("out3") == 1e-4


def test_overrides_may_not_set_the_seed(tmp_path, monkeypatch):
    world = _fake_world(tmp_path, monkeypatch, FakeTraining())
    config = _write(tmp_path, world + "studies: {s: {runs: [{name: a, method: lora, overrides: ['train.seed=3']}]}}\n")
    with pytest.raises(LntuneError, match="study 's', run 'a': overrides set train.seed, which compare sets from "
                                          "`seeds`"):
        run_compare(config, out=str(tmp_path / "out"))


# ---- real training: seeds ---------------------------------------------------------------------------------------

def test_two_seeds_give_different_runs_and_one_seed_the_same(tmp_path, built_model):
    from safetensors.torch import load_file

    from lntune.demo.pipeline import DemoBudget, stage2_config
    from lntune.study.runner import _train, _with

    data, images = write_llava_data(tmp_path / "data", count=8)
    paths = {"instructions": data, "train_images": images}
    base = stage2_config(built_model(), paths, tmp_path, DemoBudget(stage2_steps=2, batch_size=2), "layernorm")

    def adapter(seed, out):
        run = _train(_with(base, tmp_path / out, 1e-2, seed))
        return load_file(next((run / "adapter").glob("*.safetensors")))

    first, again, other = adapter(0, "a"), adapter(0, "b"), adapter(1, "a")
    assert all(np.array_equal(first[k].numpy(), again[k].numpy()) for k in first)
    assert any(not np.array_equal(first[k].numpy(), other[k].numpy()) for k in first)


# ---- end to end on the tiny world -------------------------------------------------------------------------------

@pytest.mark.slow
def test_research_compare_smoke(tmp_path, monkeypatch):
    monkeypatch.setenv("LNTUNE_CACHE", str(tmp_path / "cache"))
    config = tmp_path / "compare.yaml"
    config.write_text(
        "world: tiny\nworld_size: {train_scenes: 24, text_scenes: 40, eval_images: 4}\n"
        "backbones: {llm_steps: 3, vision_steps: 3}\n"
        "budget: {stage1_steps: 2, stage2_steps: 2, batch_size: 4, eval_batch_size: 8, eval_limit: 8}\n"
        "benches: [vqav2, pope, coco, mme]\nseeds: [0, 1]\nlr_search: {layernorm: [1.0e-3, 1.0e-2]}\n"
        "validation: {samples: 6}\nbootstrap: {resamples: 50}\ngallery: 2\nanalysis: {n: 4, batch_size: 4}\n"
        "studies:\n  m:\n    title: Methods\n    runs:\n"
        "      - {name: layernorm, method: layernorm}\n      - {name: layernorm-simple, method: layernorm-simple}\n")
    out = tmp_path / "out"
    assert run_compare(config, out=str(out)) == 0
    report = (out / "report.md").read_text()
    results = json.loads((out / "results.json").read_text())["studies"]["m"]
    losses = {point["lr"]: point["validation_loss"] for point in results["layernorm"]["lr_search"]}
    assert results["layernorm"]["lr"] == min(losses, key=losses.get)
    assert "**Against layernorm** (paired bootstrap over 2 seeds" in report and "| layernorm-simple | " in report
    assert "**Gallery**" in report and (out / "gallery" / "m").is_dir()
    assert (out / "lr_m.png").is_file()
    # the analyses see every seed's run, each under its own name
    for name in ("layernorm (seed 0)", "layernorm (seed 1)", "layernorm-simple (seed 1)"):
        assert f"| {name} | " in report.split("### Analyses")[1]
    # the validation split is scenes of its own: no image of it is a training or benchmark image
    validation = json.loads((out / "validation" / "validation.json").read_text())
    assert len(validation) == 6 and all(r["image"].startswith("validation/") for r in validation)
    # the per-item tables give the numbers lntune eval reported
    evaluation = out / results["layernorm"]["evaluations"][0]
    for bench, key, scale in (("vqav2", "accuracy", 1), ("pope", "f1", 100), ("mme", "perception", 1),
                              ("coco", "CIDEr_x100", 1)):
        metrics = json.loads((evaluation / bench / "metrics.json").read_text())["metrics"]
        assert item_table(bench, evaluation / bench).score() == pytest.approx(scale * metrics[key], abs=0.01)


def test_a_search_where_every_rate_diverges_stops(tmp_path, monkeypatch):
    import lntune.study.validation as validation

    world = _fake_world(tmp_path, monkeypatch, FakeTraining())
    monkeypatch.setattr(validation, "validation_loss", lambda *args: float("inf"))
    config = _write(tmp_path, world + STUDY)
    with pytest.raises(LntuneError, match=r"study 's', run 'a': every learning rate searched \(0.0001, 0.001\) "
                                          "diverged .*; search lower rates"):
        run_compare(config, out=str(tmp_path / "out"))


# ---- the search past the grid's edge (lr_extend) ---------------------------------------------------------------

def test_the_chosen_rate_and_the_rate_beyond_the_edge():
    from lntune.study.search import chosen_rate, rate_beyond

    search = [(1e-4, 0.5), (3e-4, 0.4), (9e-4, 0.3)]
    assert chosen_rate(search) == 9e-4 and rate_beyond(search, 9e-4) == 2.7e-3  # the top: one x3 step up
    assert rate_beyond(search, 1e-4) == pytest.approx(3.33e-5)  # the bottom: one step down, 3 significant digits
    assert rate_beyond(search, 3e-4) is None  # inside the grid
    assert rate_beyond([(1e-3, 0.1)], 1e-3) is None  # one rate: no step to repeat
    diverged = search + [(2.7e-3, float("nan"))]
    assert chosen_rate(diverged) == 9e-4 and rate_beyond(diverged, 9e-4) is None  # nothing past a diverged rate
    assert chosen_rate([(1e-3, 0.2), (1e-2, 0.2)]) == 1e-3  # a tie: the first searched
    assert chosen_rate([(1e-3, float("inf"))]) is None


@pytest.mark.parametrize("extend, searched, chosen, at_edge", [
    (0, [1e-5, 1e-4], 1e-4, True),
    (1, [1e-5, 1e-4, 1e-3], 1e-3, True),          # one step past the edge finds a better rate, still at the edge
    (3, [1e-5, 1e-4, 1e-3, 1e-2], 1e-3, False),   # the next step is worse: the search stops with 1e-3 inside
])
def test_lr_extend_searches_past_the_edge_until_the_best_rate_is_inside(tmp_path, monkeypatch, extend, searched,
                                                                         chosen, at_edge):
    training = FakeTraining()  # the fake validation loss is lowest at 1e-3
    study = STUDY.replace("[1.0e-4, 1.0e-3]", "[1.0e-5, 1.0e-4]") + f"lr_extend: {extend}\n"
    config = _write(tmp_path, _fake_world(tmp_path, monkeypatch, training) + study)
    assert run_compare(config, out=str(tmp_path / "out")) == 0
    lora = [(c.train.lr, c.train.seed) for c in training.calls if c.method.name == "lora"]
    assert lora == [(rate, 0) for rate in searched] + [(chosen, 1)]
    results = json.loads((tmp_path / "out" / "results.json").read_text())["studies"]["s"]["a"]
    assert results["lr"] == chosen and results["lr_at_edge"] is at_edge
    assert [p["lr"] for p in results["lr_search"]] == searched
    assert ("**At the edge of the rates searched:** a:" in (tmp_path / "out" / "report.md").read_text()) is at_edge


def test_a_held_out_fraction_of_the_users_instructions(tmp_path):
    from lntune.study.validation import _held_out

    instructions = tmp_path / "instruct.json"
    instructions.write_text(json.dumps([{"id": str(i)} for i in range(40)]))
    _held_out(instructions, tmp_path / "a", samples=300, seed=0, fraction=0.1)  # the fraction wins over samples
    held = json.loads((tmp_path / "a" / "validation.json").read_text())
    rest = json.loads((tmp_path / "a" / "train.json").read_text())
    assert len(held) == 4 and len(rest) == 36
    assert {r["id"] for r in held} | {r["id"] for r in rest} == set(map(str, range(40)))
    _held_out(instructions, tmp_path / "b", samples=300, seed=0, fraction=0.1)
    assert json.loads((tmp_path / "b" / "validation.json").read_text()) == held  # seeded: the same draw
    _held_out(instructions, tmp_path / "c", samples=300, seed=1, fraction=0.1)
    assert json.loads((tmp_path / "c" / "validation.json").read_text()) != held
    _held_out(instructions, tmp_path / "d", samples=300, seed=0, fraction=0.001)  # rounds to 0: still one record
    assert len(json.loads((tmp_path / "d" / "validation.json").read_text())) == 1
    with pytest.raises(LntuneError, match="leaves none to train on"):
        _held_out(instructions, tmp_path / "e", samples=1, seed=0, fraction=0.99)
