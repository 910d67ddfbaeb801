"""`lntune data show`: the exact training view of samples and the exact generation view of benchmark questions."""

import json

import pytest

from lntune.cli import main
from lntune.config import DataConfig, DataSource
from lntune.data.dataset import SupervisedDataset
from lntune.data.mixture import build_mixture
from lntune.eval.benchmarks import get_benchmark
from lntune.eval.runner import load_generator
from lntune.model.load import load_llava_config, load_processor
from lntune.prompt import IGNORE_INDEX
from tests.eval.fixtures import write_pope
from tests.helpers import write_llava_data


def _show(capsys, *args):
    code = main(["data", "show", *args])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


def test_training_view_is_what_the_trainer_trains_on(built_model, tmp_path, capsys):
    model = built_model()
    data, images = write_llava_data(tmp_path, count=6, text_only=2)
    rows = json.loads(_show(capsys, "--model", str(model), "--data", str(data), "--image-folder", str(images),
                            "--template", "vicuna_v1", "--json"))
    assert [row["index"] for row in rows] == list(range(8)) and rows[0]["id"] == "s0"
    config = DataConfig(sources=(DataSource(str(data)),), image_folder=str(images), template="vicuna_v1")
    mixture = build_mixture(config, 0)
    assert mixture.items == [(0, index) for index in range(8)]  # file order: mixture index == file index here
    dataset = SupervisedDataset(mixture, load_processor(model), load_llava_config(model).image_seq_length, config,
                                "finetune")
    for row in rows:
        example = dataset[row["index"]]
        assert row["input_ids"] == example.input_ids and row["labels"] == example.labels
        assert set(row) == {"index", "id", "text", "input_ids", "labels"}
    image_id = load_llava_config(model).image_token_id
    assert rows[1]["input_ids"].count(image_id) == load_llava_config(model).image_seq_length
    assert rows[0]["text"].count("<image>") == 1 and "USER: <image>\nWhat color is the image?" in rows[0]["text"]
    assert rows[6]["input_ids"].count(image_id) == 0  # text-only


def test_index_selection_and_errors(built_model, tmp_path, capsys):
    data, images = write_llava_data(tmp_path, count=5)
    rows = json.loads(_show(capsys, "--model", str(built_model()), "--data", str(data), "--index", "3", "1",
                            "--index", "4", "--json"))
    assert [row["index"] for row in rows] == [3, 1, 4] and rows[0]["id"] == "s3"
    code = main(["data", "show", "--model", str(built_model()), "--data", str(data), "--index", "5"])
    assert code == 1 and "--index 5 is out of range" in capsys.readouterr().err


def test_readable_view_marks_supervised_spans(built_model, tmp_path, capsys):
    data, images = write_llava_data(tmp_path, count=2, types=("detail",))
    out = _show(capsys, "--model", str(built_model()), "--data", str(data), "--index", "0", "--template", "vicuna_v1")
    image_tokens = load_llava_config(built_model()).image_seq_length
    assert out.startswith("── #0 s0: ") and f"<image × {image_tokens}>" in out
    assert "⟦" in out and "red" in out.split("⟦", 1)[1]  # the answer names the colour


def test_generation_view_is_what_eval_generates_from(built_model, tmp_path, capsys):
    model = built_model()
    folder, images = write_pope(tmp_path / "pope", count=2)
    rows = json.loads(_show(capsys, "--model", str(model), "--bench", "pope", "--data", str(folder), "--images",
                            str(images), "--json"))
    assert len(rows) == 6 and set(rows[0]) == {"index", "question_id", "text", "input_ids"}
    generator = load_generator(str(model))
    items = get_benchmark("pope").load(folder, images, None)
    for row, item in zip(rows, items):
        assert row["question_id"] == item.id
        assert row["input_ids"] == generator.prompt_ids(item.prompt, has_image=True)
    assert rows[0]["text"].endswith("\nAnswer the question using a single word or phrase. ASSISTANT:")
    assert IGNORE_INDEX not in rows[0]["input_ids"]


@pytest.mark.parametrize("extra", [["--template", "nope"], ["--stage", "pretrain", "--template", "plain",
                                                            "--system", "Be brief."]])
def test_bad_template_settings_are_one_line_errors(built_model, tmp_path, capsys, extra):
    data, _ = write_llava_data(tmp_path, count=1)
    code = main(["data", "show", "--model", str(built_model()), "--data", str(data), *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err[-1].startswith("lntune data: error:")
