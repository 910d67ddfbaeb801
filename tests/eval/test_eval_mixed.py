"""`lntune eval` / `lntune chat` with several `--adapter NAME=DIR`: one pass, batches mixing adapters through the
serving banks, and every adapter's files and greedy answers equal to evaluating it alone with `--adapter DIR`."""

import json

import pytest

from lntune.cli import main
from lntune.data.images import apply_aspect_ratio
from lntune.eval.mixed import MixedAnswerer
from lntune.eval.runner import load_generator
from tests.eval.fixtures import write_pope, write_vqav2
from tests.helpers import make_image
from tests.serve.helpers import write_adapter

TIMING = ("generation_seconds", "items_per_second", "evaluated_with")


@pytest.fixture(scope="module")
def model_dir(built_model):
    return built_model()


@pytest.fixture(scope="module")
def adapters(model_dir, tmp_path_factory):
    """Three adapters asked differently: a layernorm-simple one (the model's template, pad), a layernorm one
    (norms + connector + embeddings + head) recording crop, and one recording another template and system prompt."""
    root = tmp_path_factory.mktemp("mixed-adapters")
    return {
        "simple": str(write_adapter(model_dir, root / "simple", "layernorm-simple", seed=1)),
        "ln-crop": str(write_adapter(model_dir, root / "ln-crop", "layernorm", seed=3, image_aspect_ratio="crop")),
        "plain": str(write_adapter(model_dir, root / "plain", "layernorm-simple", seed=2,
                                   prompt={"template": "plain", "system": None})),
    }


@pytest.fixture(scope="module")
def benchmarks(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed-benches")
    pope, pope_images = write_pope(root / "pope", count=2)
    vqa, vqa_images = write_vqav2(root / "vqa", count=3)
    return ["--bench", "pope", "--data", str(pope), "--images", str(pope_images),
            "--bench", "vqav2", "--data", str(vqa), "--images", str(vqa_images)]


def _eval(model_dir, benchmarks, out, adapter_flags):
    assert main(["eval", "--model", str(model_dir), *adapter_flags, *benchmarks, "--out", str(out),
                 "--batch-size", "4", "--max-new-tokens", "6"]) == 0


def _without_timing(path):
    record = json.loads(path.read_text())
    return {key: value for key, value in record.items() if key not in TIMING}


def test_several_adapters_in_one_pass_equal_each_alone(model_dir, adapters, benchmarks, tmp_path, monkeypatch,
                                                       capsys):
    calls = []
    real_answer = MixedAnswerer.answer
    monkeypatch.setattr(MixedAnswerer, "answer", lambda self, names, *rest: calls.append(list(names))
                        or real_answer(self, names, *rest))
    _eval(model_dir, benchmarks, tmp_path / "mixed", [f"--adapter={name}={folder}" for name, folder in adapters.items()])
    table = capsys.readouterr().out
    assert [line.split(" | ")[0] for line in table.splitlines()[2:5]] == ["| simple", "| ln-crop", "| plain"]
    assert all(len(names) <= 4 for names in calls) and any(len(set(names)) == 3 for names in calls)
    assert sum(map(len, calls)) == 3 * (6 + 3)  # each adapter answered each item once: one pass

    answers = {}
    for name, folder in adapters.items():
        _eval(model_dir, benchmarks, tmp_path / "alone" / name, ["--adapter", folder])
        for bench in ("pope", "vqav2"):
            mixed, alone = tmp_path / "mixed" / name / bench, tmp_path / "alone" / name / bench
            assert (mixed / "predictions.jsonl").read_text() == (alone / "predictions.jsonl").read_text()
            assert (mixed / "settings.json").read_text() == (alone / "settings.json").read_text()
            assert _without_timing(mixed / "metrics.json") == _without_timing(alone / "metrics.json")
            assert json.loads((mixed / "metrics.json").read_text())["evaluated_with"] == sorted(adapters)
            answers.setdefault(name, []).extend(
                json.loads(line)["prediction"] for line in (mixed / "predictions.jsonl").read_text().splitlines())
        assert (tmp_path / "mixed" / name / "report.md").read_text().splitlines()[2].split(" | ")[1:] == \
            (tmp_path / "alone" / name / "report.md").read_text().splitlines()[2].split(" | ")[1:]
    # the adapters do answer differently, so equal files mean each row ran with its own adapter
    assert answers["simple"] != answers["ln-crop"] and answers["simple"] != answers["plain"]
    assert json.loads((tmp_path / "mixed" / "ln-crop" / "pope" / "metrics.json").read_text())[
        "image_aspect_ratio"] == "crop"


def test_an_interrupted_mixed_pass_resumes_each_adapter(model_dir, adapters, benchmarks, tmp_path, monkeypatch):
    two = {name: adapters[name] for name in ("simple", "ln-crop")}
    flags = [f"--adapter={name}={folder}" for name, folder in two.items()]
    _eval(model_dir, benchmarks, tmp_path / "first", flags)
    expected = {name: (tmp_path / "first" / name / "pope" / "predictions.jsonl").read_text() for name in two}
    # one adapter's last two answers lost (killed mid-run): only those are asked again
    lines = expected["ln-crop"].splitlines(keepends=True)
    (tmp_path / "first" / "ln-crop" / "pope" / "predictions.jsonl").write_text("".join(lines[:-2]))
    calls = []
    real_answer = MixedAnswerer.answer
    monkeypatch.setattr(MixedAnswerer, "answer", lambda self, names, *rest: calls.append(list(names))
                        or real_answer(self, names, *rest))
    _eval(model_dir, benchmarks, tmp_path / "first", flags)
    assert calls == [["ln-crop", "ln-crop"]]
    assert {name: (tmp_path / "first" / name / "pope" / "predictions.jsonl").read_text() for name in two} == expected


@pytest.mark.parametrize("flags, message", [
    (["--adapter", "{simple}", "--adapter", "{plain}"], "name each: --adapter NAME=DIR"),
    (["--adapter", "a={simple}", "--adapter", "{plain}"], "has no name while other --adapter flags do"),
    (["--adapter", "a={simple}", "--adapter", "a={plain}"], "--adapter a is given twice"),
    (["--adapter", "a={simple}", "--adapter", "b=/nowhere"], "--adapter b=/nowhere:"),
    (["--adapter", "a={simple}", "--adapter", "b={lora}"], "is a LoRA adapter; only adapters of the model's own"),
])
def test_adapter_flag_mistakes_are_one_line(model_dir, adapters, benchmarks, tmp_path, capsys, flags, message):
    lora = tmp_path / "lora"
    if any("{lora}" in flag for flag in flags):
        write_adapter(model_dir, lora, "lora", seed=5)
    flags = [flag.format(**adapters, lora=lora) for flag in flags]
    assert main(["eval", "--model", str(model_dir), *flags, *benchmarks, "--out", str(tmp_path / "out")]) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and message in error[0]


def test_chat_asks_every_adapter_and_labels_the_answers(model_dir, adapters, tmp_path, capsys):
    make_image(4).save(tmp_path / "picture.png")
    two = {name: adapters[name] for name in ("simple", "plain")}
    assert main(["chat", "--model", str(model_dir), *[f"--adapter={n}={f}" for n, f in two.items()],
                 "--image", str(tmp_path / "picture.png"), "--max-new-tokens", "6", "What is this?"]) == 0
    alone = {}
    for name, folder in two.items():  # what `lntune chat --adapter DIR` asks and answers (its recorded template)
        generator = load_generator(str(model_dir), folder)
        picture = apply_aspect_ratio(generator.processor, make_image(4), generator.image_aspect_ratio)
        alone[name] = generator.answer(["What is this?"], [picture], 6)[0]
    assert alone["simple"] != alone["plain"]
    assert capsys.readouterr().out == f"simple> {alone['simple']}\n plain> {alone['plain']}\n"


def test_a_conversation_with_several_adapters_keeps_a_history_per_adapter(model_dir, adapters, tmp_path, monkeypatch,
                                                                           capsys):
    """Two turns typed at `you> `, then an empty line: each adapter answers both, the second turn asked with its own
    first answer in the history (as `lntune chat --adapter DIR` would ask it alone)."""
    make_image(4).save(tmp_path / "picture.png")
    two = {name: adapters[name] for name in ("simple", "plain")}
    typed = iter(["What is this?", "And its colour?", ""])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(typed))
    assert main(["chat", "--model", str(model_dir), *[f"--adapter={n}={f}" for n, f in two.items()],
                 "--image", str(tmp_path / "picture.png"), "--max-new-tokens", "6"]) == 0
    printed = capsys.readouterr().out
    expected = []
    for name, folder in two.items():
        generator = load_generator(str(model_dir), folder)
        picture = apply_aspect_ratio(generator.processor, make_image(4), generator.image_aspect_ratio)
        first = generator.generate([generator.prompt_ids("What is this?", True, [])], [picture], 6)[0]
        history = [generator.prompts.user_turn("What is this?", True), {"role": "assistant", "content": first}]
        second = generator.generate([generator.prompt_ids("And its colour?", False, history)], [picture], 6)[0]
        expected.append((name, first, second))
    for name, first, second in expected:
        assert f"{name}> {first}\n" in printed and f"{name}> {second}\n" in printed
