"""Broken evaluation and scoring inputs: one clear error line, exit 1, before any answer is generated, and the
input files left byte for byte as they were."""

import json
from pathlib import Path

import pytest

from lntune.cli import main
from lntune.errors import LntuneError
from lntune.eval.benchmarks.base import SHORT_ANSWER
from lntune.eval.runner import evaluate_benchmark
from tests.eval.fixtures import write_karpathy, write_llava_pope, write_pope, write_vqav2


def snapshot(root: Path) -> dict[Path, bytes]:
    files = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with open(path, "rb") as handle:  # not Path.read_bytes, which a test replaces
                files[path] = handle.read()
    return files


def fails_with_one_line(capsys, root: Path, *argv) -> str:
    """Run `lntune ARGV`; it must exit 1 with exactly one line on stderr and leave every file under root unchanged."""
    before = snapshot(root)
    code = main([str(arg) for arg in argv])
    err = capsys.readouterr().err
    assert code == 1, err
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert snapshot(root) == before
    return err


def vqav2_files(tmp_path, count=3):
    questions, images = write_vqav2(tmp_path, count=count)
    annotations = tmp_path / "v2_mscoco_val2014_annotations.json"
    results = tmp_path / "results.json"
    results.write_text(json.dumps([{"question_id": 1000 + 10 * index, "answer": "red"} for index in range(count)]))
    return questions, images, annotations, results


def break_annotation(annotations: Path, index: int, change) -> None:
    data = json.loads(annotations.read_text())
    change(data["annotations"][index])
    annotations.write_text(json.dumps(data))


@pytest.mark.parametrize("key", ["question_id", "answers", "answer_type", "question_type"])
def test_vqav2_annotation_without_a_field(capsys, tmp_path, key):
    _, _, annotations, results = vqav2_files(tmp_path)
    break_annotation(annotations, 1, lambda annotation: annotation.pop(key))
    err = fails_with_one_line(capsys, tmp_path, "score", "vqav2", "--annotations", annotations, "--results", results)
    assert f"{annotations}: annotations[1]: missing {key} (found keys: " in err


def test_vqav2_answer_without_its_text(capsys, tmp_path):
    _, _, annotations, results = vqav2_files(tmp_path)
    break_annotation(annotations, 2, lambda annotation: annotation["answers"][4].pop("answer"))
    err = fails_with_one_line(capsys, tmp_path, "score", "vqav2", "--annotations", annotations, "--results", results)
    assert f"{annotations}: annotations[2].answers[4]: missing answer" in err


class NoAnswers:
    """A generator that must never be asked: every file problem is found before answering."""

    template_name = "vicuna_v1"

    def answer(self, prompts, images, max_new_tokens):
        raise AssertionError("answers were generated before the benchmark files were checked")


def test_eval_stops_on_a_broken_annotation_before_answering(tmp_path):
    questions, images, annotations, _ = vqav2_files(tmp_path / "vqa")
    break_annotation(annotations, 2, lambda annotation: annotation.pop("answer_type"))
    with pytest.raises(LntuneError, match=r"annotations\[2\]: missing answer_type"):
        evaluate_benchmark(NoAnswers(), "vqav2", questions, images, tmp_path / "out", say=lambda message: None)
    assert not (tmp_path / "out").exists()  # no predictions.jsonl, no settings


def test_eval_stops_on_a_llava_pope_file_that_disagrees_with_its_labels(tmp_path):
    questions, labels, images = write_llava_pope(tmp_path / "pope", count=3)
    (labels / "coco_pope_popular.json").write_text("")
    with pytest.raises(LntuneError, match="has 3 popular questions but .* has 0 labels"):
        evaluate_benchmark(NoAnswers(), "pope", questions, images, tmp_path / "out", say=lambda message: None)
    assert not (tmp_path / "out").exists()


def test_pope_label_file_without_label(capsys, tmp_path):
    folder, _ = write_pope(tmp_path / "pope", count=3)
    labels = folder / "coco_pope_random.json"
    lines = labels.read_text().splitlines()
    lines[1] = json.dumps({key: value for key, value in json.loads(lines[1]).items() if key != "label"})
    labels.write_text("\n".join(lines) + "\n")
    (tmp_path / "answers.jsonl").write_text(json.dumps({"question_id": 1, "text": "yes"}) + "\n")
    err = fails_with_one_line(capsys, tmp_path, "score", "pope", "--labels", labels, "--answers", tmp_path / "answers.jsonl")
    assert f"{labels}: line 2: missing label" in err


def test_llava_pope_label_file_without_label(capsys, tmp_path):
    questions, labels, images = write_llava_pope(tmp_path / "pope", count=3)
    popular = labels / "coco_pope_popular.json"
    popular.write_text(popular.read_text().replace(', "label": "yes"', "", 1))
    answers = tmp_path / "answers.jsonl"
    answers.write_text(json.dumps({"question_id": 10000001, "text": "yes"}) + "\n")
    err = fails_with_one_line(capsys, tmp_path, "score", "pope", "--labels", questions, "--answers", answers)
    assert f"{popular}: line 2: missing label" in err


def test_llava_pope_file_whose_counts_disagree_with_the_labels(capsys, tmp_path):
    questions, labels, images = write_llava_pope(tmp_path / "pope", count=3)
    random = labels / "coco_pope_random.json"
    random.write_text("".join(line + "\n" for line in random.read_text().splitlines()[:2]))
    answers = tmp_path / "answers.jsonl"
    answers.write_text(json.dumps({"question_id": 10000001, "text": "yes"}) + "\n")
    err = fails_with_one_line(capsys, tmp_path, "score", "pope", "--labels", questions, "--answers", answers)
    assert f"{questions} has 3 random questions but {random} has 2 labels" in err
    assert f"the first one without a partner: {questions}:9" in err


def test_non_utf8_results_file(capsys, tmp_path):
    _, _, annotations, results = vqav2_files(tmp_path)
    results.write_bytes(b'[{"question_id": 1000,\n "answer": "caf\xe9"}]')  # Latin-1
    err = fails_with_one_line(capsys, tmp_path, "score", "vqav2", "--annotations", annotations, "--results", results)
    assert f"{results}:2: not UTF-8 (byte 38, 0xe9); re-encode the file as UTF-8" in err


def test_non_utf8_answers_and_predictions(capsys, tmp_path):
    folder, _ = write_pope(tmp_path / "pope", count=2)
    answers = tmp_path / "answers.jsonl"
    answers.write_bytes(b'{"question_id": 1, "text": "yes"}\n{"question_id": 2, "text": "n\xf6"}\n')
    err = fails_with_one_line(capsys, tmp_path, "score", "pope", "--labels", folder / "coco_pope_random.json",
                              "--answers", answers)
    assert f"{answers}:2: not UTF-8" in err and "re-encode" in err
    predictions = tmp_path / "predictions.jsonl"
    predictions.write_bytes(b'{"id": "1", "prediction": "\xff", "reference": {}}\n')
    err = fails_with_one_line(capsys, tmp_path, "score", "pope", "--predictions", predictions)
    assert f"{predictions}:1: not UTF-8 (byte 27, 0xff)" in err


def test_unreadable_file_names_the_os_reason(capsys, tmp_path, monkeypatch):
    _, _, annotations, results = vqav2_files(tmp_path)
    read_bytes = Path.read_bytes

    def refuse(path):
        if path == results:
            raise PermissionError(13, "Permission denied", str(path))
        return read_bytes(path)

    monkeypatch.setattr(Path, "read_bytes", refuse)
    err = fails_with_one_line(capsys, tmp_path, "score", "vqav2", "--annotations", annotations, "--results", results)
    assert f"cannot read VQAv2 results {results}: Permission denied" in err


def test_vqav2_results_answering_a_question_twice(capsys, tmp_path):
    _, _, annotations, results = vqav2_files(tmp_path)
    answers = json.loads(results.read_text())
    results.write_text(json.dumps(answers + [{"question_id": 1010, "answer": "blue"}]))
    err = fails_with_one_line(capsys, tmp_path, "score", "vqav2", "--annotations", annotations, "--results", results)
    assert f"{results}: question_id 1010 is answered twice, at [1] and [3]; keep one answer per question" in err


def test_caption_results_answering_an_image_twice(capsys, tmp_path):
    karpathy, _ = write_karpathy(tmp_path, "coco", count=2)
    results = tmp_path / "captions.json"
    results.write_text(json.dumps([{"image_id": 0, "caption": "red"}, {"image_id": 1, "caption": "green"},
                                   {"image_id": "0", "caption": "a red square"}]))
    err = fails_with_one_line(capsys, tmp_path, "score", "coco", "--annotations", karpathy, "--results", results)
    assert f"{results}: image_id 0 is answered twice, at [0] and [2]; keep one answer per image" in err


def test_pope_answers_answering_a_question_twice(capsys, tmp_path):
    folder, _ = write_pope(tmp_path / "pope", count=3)
    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps({"question_id": qid, "text": "yes"}) + "\n" for qid in (1, 2, 3, 2)))
    err = fails_with_one_line(capsys, tmp_path, "score", "pope", "--labels", folder / "coco_pope_random.json",
                              "--answers", answers)
    assert f"{answers}: question_id 2 is answered twice, at line 2 and line 4" in err


def test_mme_results_answering_a_question_twice(capsys, tmp_path):
    results = tmp_path / "mme_results"
    results.mkdir()
    (results / "color.txt").write_text("a.jpg\tIs it red?\tYes\tYes\na.jpg\tIs it blue?\tNo\tNo\n"
                                       "a.jpg\tIs it red?\tYes\tNo\n")
    err = fails_with_one_line(capsys, tmp_path, "score", "mme", "--results-dir", results)
    assert f"{results / 'color.txt'}: image a.jpg question 'Is it red?' is answered twice, on line 1 and line 3" in err


def _prediction(item_id, prediction, label="yes"):
    return json.dumps({"id": item_id, "prompt": "Is there a dog?" + SHORT_ANSWER, "prediction": prediction,
                       "reference": {"split": "random", "label": label}}) + "\n"


def test_predictions_answering_an_item_twice_differently(capsys, tmp_path):
    predictions = tmp_path / "predictions.jsonl"
    predictions.write_text(_prediction("random/1", "yes") + _prediction("random/2", "no", "no")
                           + _prediction("random/1", "no"))
    err = fails_with_one_line(capsys, tmp_path, "score", "pope", "--predictions", predictions)
    assert f"{predictions}: item random/1 is answered on line 1 and, differently, on line 3" in err


def test_predictions_repeating_an_answer_count_it_once(capsys, tmp_path):
    once, twice = tmp_path / "once.jsonl", tmp_path / "twice.jsonl"
    once.write_text(_prediction("random/1", "yes") + _prediction("random/2", "yes", "no"))
    twice.write_text(_prediction("random/1", "yes") + _prediction("random/2", "yes", "no") + _prediction("random/1", "yes"))
    assert main(["score", "pope", "--predictions", str(once), "--json"]) == 0
    expected = json.loads(capsys.readouterr().out)
    assert main(["score", "pope", "--predictions", str(twice), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == expected and expected["count"] == 2


def test_scoring_never_rewrites_a_predictions_file_cut_off_mid_write(capsys, tmp_path):
    predictions = tmp_path / "predictions.jsonl"
    predictions.write_text(_prediction("random/1", "yes") + _prediction("random/2", "no")[:30])
    err = fails_with_one_line(capsys, tmp_path, "score", "pope", "--predictions", predictions)
    assert f"{predictions}:2: the last line is cut off" in err


def test_scoring_needs_only_the_fields_it_reads(capsys, tmp_path):
    """No false alarm: a label file with just question_id and label is enough to score answers."""
    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(json.dumps({"question_id": qid, "label": label}) + "\n"
                              for qid, label in ((1, "yes"), (2, "no"))))
    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps({"question_id": qid, "text": "yes"}) + "\n" for qid in (1, 2)))
    assert main(["score", "pope", "--labels", str(labels), "--answers", str(answers), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == 0.5
