"""lntune eval / score / report / chat end to end with a tiny random model."""

import json

import pytest

from lntune.cli import main
from lntune.eval.runner import evaluate_benchmark, load_generator, read_predictions
from tests.eval.fixtures import write_karpathy, write_llava_pope, write_mme, write_pope, write_vqav2
from tests.helpers import make_image


@pytest.fixture(scope="module")
def generator(built_model):
    return load_generator(str(built_model()))


def test_eval_all_five_in_one_call(built_model, tmp_path, capsys):
    mme = write_mme(tmp_path / "mme")
    questions, vqa_images = write_vqav2(tmp_path / "vqa", count=3)
    coco, coco_images = write_karpathy(tmp_path / "coco", "coco", count=2)
    flickr, flickr_images = write_karpathy(tmp_path / "flickr", "flickr30k", count=2)
    pope, pope_images = write_pope(tmp_path / "pope", count=2)
    args = ["eval", "--model", str(built_model()), "--out", str(tmp_path / "out"), "--batch-size", "4",
            "--max-new-tokens", "4"]
    for bench, data, images in (("mme", mme, mme), ("vqav2", questions, vqa_images), ("coco", coco, coco_images),
                                ("flickr30k", flickr, flickr_images), ("pope", pope, pope_images)):
        args += ["--bench", bench, "--data", str(data), "--images", str(images)]
    assert main(args) == 0
    table = capsys.readouterr().out
    assert table.startswith("| run | MME-P | MME-C | VQAv2 |")
    for bench, count in (("mme", 12), ("vqav2", 3), ("coco", 2), ("flickr30k", 2), ("pope", 6)):
        record = json.loads((tmp_path / "out" / bench / "metrics.json").read_text())
        assert record["items"] == count and record["decoding"]["max_new_tokens"] == 4
        assert len(read_predictions(tmp_path / "out" / bench / "predictions.jsonl")) == count
    assert json.loads((tmp_path / "out" / "vqav2" / "results.json").read_text())[0]["question_id"] == 1000
    assert (tmp_path / "out" / "report.md").read_text().strip() == table.strip()


def test_interrupted_eval_resumes_without_redoing(generator, tmp_path, monkeypatch):
    folder, images = write_pope(tmp_path / "pope", count=4)
    out = tmp_path / "out"
    first = evaluate_benchmark(generator, "pope", folder, images, out, batch_size=3, max_new_tokens=3, say=lambda m: None)
    lines = (out / "predictions.jsonl").read_text().splitlines()
    # a kill mid-run: 5 complete lines and half of the sixth
    (out / "predictions.jsonl").write_text("\n".join(lines[:5]) + "\n" + lines[5][:10])
    asked = []
    real_answer = generator.answer
    monkeypatch.setattr(generator, "answer", lambda questions, *a, **k: asked.extend(questions) or real_answer(questions, *a, **k))
    second = evaluate_benchmark(generator, "pope", folder, images, out, batch_size=3, max_new_tokens=3, say=lambda m: None)
    assert len(asked) == 12 - 5
    assert (out / "predictions.jsonl").read_text().splitlines() == lines
    assert second["metrics"] == first["metrics"]


def test_batched_and_unbatched_answers_agree(generator):
    import torch

    questions = ["What is this?", "Describe the colors in detail please.", "Is it red?", "Count them."]
    images = [make_image(0), make_image(1), None, make_image(2)]
    batched = generator.answer(questions, images, max_new_tokens=8)
    single = [generator.answer([q], [i], max_new_tokens=8)[0] for q, i in zip(questions, images)]
    assert batched == single
    # A random model may answer everything alike, so also compare what each row sees: the next-token
    # logits of every row in the left-padded batch equal those of the row alone (images in the right rows).
    prompts = [generator.prompt_ids(q, i is not None) for q, i in zip(questions, images)]
    with torch.no_grad():
        together = generator.model(**generator.inputs(prompts, images)).logits[:, -1]
        alone = [generator.model(**generator.inputs([p], [i])).logits[0, -1] for p, i in zip(prompts, images)]
    for row in range(len(prompts)):
        torch.testing.assert_close(together[row], alone[row], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(alone[0], alone[1], atol=1e-4)  # different images / prompts do differ


def test_resume_refuses_other_settings(generator, tmp_path):
    from lntune.errors import LntuneError

    folder, images = write_pope(tmp_path / "pope", count=2)
    evaluate_benchmark(generator, "pope", folder, images, tmp_path / "out", max_new_tokens=2, say=lambda m: None)
    with pytest.raises(LntuneError, match="other settings.*prompt"):
        evaluate_benchmark(generator, "pope", folder, images, tmp_path / "out", max_new_tokens=2,
                           prompt="Q: {question}", say=lambda m: None)


def test_torn_last_line_without_newline_is_recovered(generator, tmp_path):
    folder, images = write_pope(tmp_path / "pope", count=2)
    out = tmp_path / "out"
    evaluate_benchmark(generator, "pope", folder, images, out, max_new_tokens=2, say=lambda m: None)
    lines = (out / "predictions.jsonl").read_text().splitlines()
    (out / "predictions.jsonl").write_text("\n".join(lines[:3]))  # killed before the newline of line 3
    evaluate_benchmark(generator, "pope", folder, images, out, max_new_tokens=2, say=lambda m: None)
    assert (out / "predictions.jsonl").read_text().splitlines() == lines


@pytest.mark.parametrize("option,message", [({"batch_size": 0}, "batch-size"), ({"limit": 0}, "limit"),
                                            ({"prompt": "Q: {q}"}, "{question}")])
def test_bad_eval_options(generator, tmp_path, option, message):
    from lntune.errors import LntuneError

    folder, images = write_pope(tmp_path / "pope", count=1)
    with pytest.raises(LntuneError, match=message):
        evaluate_benchmark(generator, "pope", folder, images, tmp_path / "out", say=lambda m: None, **option)


def test_limit_keeps_mme_pairs(generator, tmp_path):
    release = write_mme(tmp_path / "mme")
    record = evaluate_benchmark(generator, "mme", release, None, tmp_path / "out", limit=5, max_new_tokens=2,
                                say=lambda m: None)
    lines = read_predictions(tmp_path / "out" / "predictions.jsonl")
    per_image = {}
    for line in lines:
        key = (line["reference"]["subtask"], line["reference"]["image"])
        per_image[key] = per_image.get(key, 0) + 1
    assert set(per_image.values()) == {2} and record["items"] == len(lines) == 6


def test_score_rescores_predictions_and_official_files(generator, tmp_path, capsys):
    questions, images = write_vqav2(tmp_path / "vqa", count=3)
    out = tmp_path / "out"
    record = evaluate_benchmark(generator, "vqav2", questions, images, out, max_new_tokens=3, say=lambda m: None)
    assert main(["score", "vqav2", "--predictions", str(out / "predictions.jsonl"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == record["metrics"]
    results = [{"question_id": 1000, "answer": "Red"}, {"question_id": 1010, "answer": "maroon"}]
    (tmp_path / "r.json").write_text(json.dumps(results))
    assert main(["score", "vqav2", "--annotations", str(tmp_path / "vqa" / "v2_mscoco_val2014_annotations.json"),
                 "--results", str(tmp_path / "r.json"), "--mode", "official", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    # "Red" -> "red" after normalisation (answers differ, so they are normalised): 7 of 10 say red -> 1.0;
    # "maroon": 1 of 10 -> 0.3. Mean 0.65 -> 65.0
    assert metrics["accuracy"] == 65.0 and metrics["count"] == 2


def test_score_pope_and_mme_official_inputs(tmp_path, capsys):
    folder, _ = write_pope(tmp_path / "pope", count=4)  # labels no, yes, no, yes
    answers = [{"question_id": 1, "text": "No, there is not."}, {"question_id": 2, "text": "Yes"},
               {"question_id": 3, "text": "Yes."}, {"question_id": 4, "text": "NO"}]
    (tmp_path / "answers.jsonl").write_text("".join(json.dumps(a) + "\n" for a in answers))
    assert main(["score", "pope", "--labels", str(folder / "coco_pope_random.json"), "--answers",
                 str(tmp_path / "answers.jsonl"), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    # parsed: no, yes, yes, yes ("NO" is not "No"/"no"): tp 2, fp 1, tn 1 -> accuracy 0.75
    assert metrics["accuracy"] == 0.75
    results = tmp_path / "mme_results"
    results.mkdir()
    (results / "color.txt").write_text("a.jpg\tIs it red?\tYes\tYes\na.jpg\tIs it blue?\tNo\tNo\n"
                                       "b.jpg\tIs it red?\tYes\tNo\nb.jpg\tIs it blue?\tNo\tNo\n")
    assert main(["score", "mme", "--results-dir", str(results), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    # acc 3/4 = 75, acc+ 1/2 = 50 -> 125
    assert metrics["subtasks"]["color"]["score"] == pytest.approx(125.0)
    assert metrics["perception"] == pytest.approx(125.0) and "OCR" in metrics["missing_subtasks"]


def test_score_without_inputs_says_what_to_give(capsys):
    assert main(["score", "coco"]) == 1
    assert "--annotations --results" in capsys.readouterr().err


def test_chat_one_shot_streams(built_model, tmp_path, capsys):
    make_image(3).save(tmp_path / "picture.png")
    assert main(["chat", "--model", str(built_model()), "--image", str(tmp_path / "picture.png"),
                 "--max-new-tokens", "5", "What is this?"]) == 0
    assert capsys.readouterr().out.strip() != ""


def test_score_pope_answers_to_llava_question_file(tmp_path, capsys):
    """LLaVA's own answers (renumbered question_ids) score per category, as the official files' answers do."""
    questions, labels, _ = write_llava_pope(tmp_path / "pope", count=4)
    texts = ["No", "Yes", "Yes.", "NO", "no", "yes"]
    llava_answers, by_split = [], {}
    for position, question in enumerate(map(json.loads, questions.read_text().splitlines())):
        text = texts[position % len(texts)]
        llava_answers.append({"question_id": question["question_id"], "text": text})
        by_split.setdefault(question["category"], []).append(text)
    (tmp_path / "llava_answers.jsonl").write_text("".join(json.dumps(a) + "\n" for a in llava_answers))
    assert main(["score", "pope", "--labels", str(questions), "--answers", str(tmp_path / "llava_answers.jsonl"),
                 "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    for split, split_texts in by_split.items():
        answers = [{"question_id": number, "text": text} for number, text in enumerate(split_texts, start=1)]
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(a) + "\n" for a in answers))
        assert main(["score", "pope", "--labels", str(labels / f"coco_pope_{split}.json"), "--answers",
                     str(tmp_path / f"{split}.jsonl"), "--json"]) == 0
        assert metrics["splits"][split] == json.loads(capsys.readouterr().out)
