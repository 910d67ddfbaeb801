"""Benchmark loaders on small folders in each official layout."""

import json

import pytest

from lntune.errors import LntuneError
from lntune.eval.benchmarks import BENCHMARKS, get_benchmark
from lntune.eval.benchmarks.base import SHORT_ANSWER
from tests.eval.fixtures import LLAVA_POPE_ORDER, write_karpathy, write_llava_pope, write_mme, write_pope, write_vqav2


def test_mme_both_layouts_and_the_extra_level(tmp_path):
    release = write_mme(tmp_path)
    items = get_benchmark("mme").load(release, None, None)
    assert len(items) == 3 * 2 * 2  # 3 subtasks x 2 images x 2 questions
    assert {item.reference["subtask"] for item in items} == {"existence", "count", "OCR"}
    ocr = [item for item in items if item.reference["subtask"] == "OCR"]
    assert all(item.image.parent.name == "images" for item in ocr)
    # " Please answer yes or no." (also with two spaces) -> the short-answer instruction
    assert all(item.prompt.endswith("?\nAnswer the question using a single word or phrase.") for item in items)
    nested = tmp_path / "nested"
    (nested / "MME_Benchmark_release_version").mkdir(parents=True)
    release.rename(nested / "MME_Benchmark_release_version" / "MME_Benchmark")
    assert len(get_benchmark("mme").load(nested / "MME_Benchmark_release_version", None, None)) == 12


def test_mme_bad_files(tmp_path):
    release = write_mme(tmp_path, split_layout_subtasks=(), flat_subtasks=("color",))
    (release / "color" / "000.txt").write_text("Is it red?\tYes\nIs it blue?\tYes\n")
    with pytest.raises(LntuneError, match="one answered Yes and one No"):
        get_benchmark("mme").load(release, None, None)
    (release / "color" / "000.txt").write_text("Is it red? Yes\n")
    with pytest.raises(LntuneError, match=r"000.txt:1: expected 'question<TAB>Yes'"):
        get_benchmark("mme").load(release, None, None)
    with pytest.raises(LntuneError, match="not an MME folder"):
        get_benchmark("mme").load(tmp_path / "nothing", None, None)


def test_vqav2_loader(tmp_path):
    questions, images = write_vqav2(tmp_path, count=3)
    items = get_benchmark("vqav2").load(questions, images, None)
    assert [item.id for item in items] == ["1000", "1010", "1020"]
    assert items[0].image.name == "COCO_val2014_000000000100.jpg"
    assert items[0].prompt == "What color is it?\nAnswer the question using a single word or phrase."
    assert len(items[0].reference["annotation"]["answers"]) == 10
    data = json.loads(questions.read_text())
    data["questions"].append({"image_id": 101, "question": "?", "question_id": 999})
    questions.write_text(json.dumps(data))
    with pytest.raises(LntuneError, match="id 999.*no annotation"):
        get_benchmark("vqav2").load(questions, images, None)


def test_vqav2_missing_image_names_the_paths(tmp_path):
    questions, images = write_vqav2(tmp_path, count=1)
    (images / "val2014" / "COCO_val2014_000000000100.jpg").unlink()
    with pytest.raises(LntuneError, match="image not found; tried .*val2014/COCO_val2014_000000000100.jpg"):
        get_benchmark("vqav2").load(questions, images, None)


@pytest.mark.parametrize("flavour", ["coco", "flickr30k"])
def test_karpathy_test_split_only(tmp_path, flavour):
    path, images = write_karpathy(tmp_path, flavour, count=4)
    items = get_benchmark(flavour).load(path, images, None)
    assert len(items) == 4  # the two train images are left out
    assert items[0].reference["references"][0] == "A red square on a plain background."
    assert items[0].prompt == "Provide a one-sentence caption for the provided image."


def test_blip_and_coco_format_caption_files(tmp_path):
    path, images = write_karpathy(tmp_path, "coco", count=2)
    blip = [{"image": "val2014/COCO_val2014_000000000000.jpg", "caption": ["a red square", "red box"]}]
    (tmp_path / "coco_karpathy_test.json").write_text(json.dumps(blip))
    items = get_benchmark("coco").load(tmp_path / "coco_karpathy_test.json", images, None)
    assert len(items) == 1 and items[0].reference["references"] == ["a red square", "red box"]
    coco_format = {"images": [{"id": 1, "file_name": "val2014/COCO_val2014_000000000001.jpg"}],
                   "annotations": [{"image_id": 1, "caption": "green"}, {"image_id": 1, "caption": "a green one"}]}
    (tmp_path / "captions_val2014.json").write_text(json.dumps(coco_format))
    items = get_benchmark("coco").load(tmp_path / "captions_val2014.json", images, None)
    assert items[0].id == "1" and items[0].reference["references"] == ["green", "a green one"]


def test_pope_splits_and_labels(tmp_path):
    folder, images = write_pope(tmp_path, count=4)
    items = get_benchmark("pope").load(folder, images, None)
    assert len(items) == 12 and {i.reference["split"] for i in items} == {"random", "popular", "adversarial"}
    single = get_benchmark("pope").load(folder / "coco_pope_popular.json", images, None)
    assert len(single) == 4 and single[0].id == "popular/1"
    (folder / "coco_pope_random.json").write_text(json.dumps({"question_id": 1, "image": "x.jpg", "text": "?",
                                                              "label": "maybe"}) + "\n")
    with pytest.raises(LntuneError, match="label must be yes or no"):
        get_benchmark("pope").load(folder / "coco_pope_random.json", images, None)


def test_unknown_benchmark_lists_valid_ones():
    with pytest.raises(LntuneError) as error:
        get_benchmark("gqa")
    assert all(name in str(error.value) for name in BENCHMARKS)


def test_llava_pope_jsonl_takes_labels_from_the_official_files(tmp_path):
    folder, images = write_pope(tmp_path, count=2)
    lines = []
    for split in ("random", "adversarial"):
        for record in map(json.loads, (folder / f"coco_pope_{split}.json").read_text().splitlines()):
            lines.append({k: v for k, v in record.items() if k != "label"} | {"category": split})
    (folder / "llava_pope_test.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    items = get_benchmark("pope").load(folder / "llava_pope_test.jsonl", images, None)
    assert [(i.reference["split"], i.reference["label"]) for i in items] == [
        ("random", "no"), ("random", "yes"), ("adversarial", "no"), ("adversarial", "yes")]
    assert len({item.id for item in items}) == 4


def test_llava_mme_jsonl_takes_answers_from_the_mme_folder(tmp_path):
    release = write_mme(tmp_path, split_layout_subtasks=("OCR",), flat_subtasks=("color",))
    lines = [
        {"question_id": "color/000.jpg", "image": "color/000.jpg", "category": "color",
         "text": "Is there a blue object in the image?\nAnswer the question using a single word or phrase."},
        {"question_id": "OCR/001.png", "image": "OCR/001.png", "category": "OCR",
         "text": "Is the word in the image 'dog'?\nAnswer the question using a single word or phrase."},
    ]
    (tmp_path / "llava_mme.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    items = get_benchmark("mme").load(tmp_path / "llava_mme.jsonl", release, None)
    assert [item.reference["answer"] for item in items] == ["No", "Yes"]
    assert [item.prompt for item in items] == [line["text"] for line in lines]  # the suffix once, as LLaVA asks
    assert items[1].image == release / "OCR" / "images" / "001.png"


def test_the_short_answer_instruction_is_added_once():
    from lntune.eval.benchmarks.base import fill_prompt

    template = get_benchmark("pope").default_prompt
    assert fill_prompt(template, "Is there a dog?") == "Is there a dog?" + SHORT_ANSWER
    assert fill_prompt(template, "Is there a dog?" + SHORT_ANSWER) == "Is there a dog?" + SHORT_ANSWER
    # A template of the user's own gets the question exactly as the file has it.
    assert fill_prompt("Q: {question}", "Is there a dog?" + SHORT_ANSWER) == "Q: Is there a dog?" + SHORT_ANSWER


def _split_positions(items):
    """(split, position within the split) of each item, in item order."""
    seen = {}
    positions = []
    for item in items:
        split = item.reference["split"]
        positions.append((split, seen.get(split, 0)))
        seen[split] = seen.get(split, 0) + 1
    return positions


POPE_ANSWERS = ["Yes", "No, there is not.", "NO", "yes.", "no", "There is a dog"]


def _pope_predictions(items):
    """The same answer for the same (split, position) whatever the file: a different pattern in each split."""
    shift = {"random": 0, "popular": 1, "adversarial": 3}
    return {item.id: POPE_ANSWERS[(3 * position + shift[split]) % len(POPE_ANSWERS)]
            for item, (split, position) in zip(items, _split_positions(items))}


def test_llava_pope_file_scores_exactly_as_the_official_files(tmp_path):
    questions, labels, images = write_llava_pope(tmp_path / "pope", count=6)
    pope = get_benchmark("pope")
    official = pope.load(labels, images, None)
    llava = pope.load(questions, images, None)
    assert [item.id for item in llava[:2]] == ["adversarial/10000001", "adversarial/10000002"]
    assert [item.reference["split"] for item in llava[::6]] == list(LLAVA_POPE_ORDER)
    by_position = dict(zip(_split_positions(official), official))
    for item, place in zip(llava, _split_positions(llava)):
        twin = by_position[place]
        assert (item.prompt, item.image, item.reference) == (twin.prompt, twin.image, twin.reference)
        assert item.prompt.count(SHORT_ANSWER) == 1 and item.prompt.endswith("in the image?" + SHORT_ANSWER)
    for mode in pope.modes:
        expected = pope.score(official, _pope_predictions(official), mode)
        assert pope.score(llava, _pope_predictions(llava), mode) == expected
    assert len({round(split["accuracy"], 6) for split in expected["splits"].values()}) > 1  # the splits differ


def test_llava_pope_labels_may_also_lie_beside_the_question_file(tmp_path):
    questions, labels, images = write_llava_pope(tmp_path / "pope", count=2)
    for label_file in labels.glob("coco_pope_*.json"):
        label_file.rename(questions.parent / label_file.name)
    assert len(get_benchmark("pope").load(questions, images, None)) == 6
    (questions.parent / "coco_pope_random.json").unlink()
    with pytest.raises(LntuneError, match="no labels for category 'random'; looked for .*coco_pope_random.json"):
        get_benchmark("pope").load(questions, images, None)


def test_llava_pope_pairs_that_disagree_name_both_lines(tmp_path):
    questions, labels, images = write_llava_pope(tmp_path / "pope", count=4)
    popular = labels / "coco_pope_popular.json"
    lines = popular.read_text().splitlines()
    popular.write_text("\n".join([lines[0], lines[2], lines[1], lines[3]]) + "\n")  # another order
    with pytest.raises(LntuneError) as error:
        get_benchmark("pope").load(questions, images, None)
    # popular is the second category: its questions start on line 5 of the LLaVA file
    assert f"{questions}:6 and {popular}:2 are not the same question (image" in str(error.value)
    same_image_other_object = json.loads(lines[1]) | {"text": "Is there a giraffe in the image?"}
    popular.write_text("\n".join([lines[0], json.dumps(same_image_other_object), lines[2], lines[3]]) + "\n")
    with pytest.raises(LntuneError, match=r":6 and .*coco_pope_popular.json:2 .*object 'car' vs 'giraffe'"):
        get_benchmark("pope").load(questions, images, None)
    popular.write_text("\n".join(lines[:3]) + "\n")
    with pytest.raises(LntuneError, match=r"has 4 popular questions but .*coco_pope_popular.json has 3 labels "
                                          r"\(the first one without a partner: .*llava_pope_test.jsonl:8\)"):
        get_benchmark("pope").load(questions, images, None)


def test_vqav2_takes_llava_question_files_with_the_annotations(tmp_path):
    questions, images = write_vqav2(tmp_path, count=3)
    official = get_benchmark("vqav2").load(questions, images, None)
    lines = [{"question_id": int(item.id), "image": item.image.name, "category": "default",
              "text": "What color is it?" + SHORT_ANSWER} for item in official]
    llava_file = tmp_path / "llava_vqav2_mscoco_val2014.jsonl"
    llava_file.write_text("".join(json.dumps(line) + "\n" for line in lines))
    annotations = tmp_path / "v2_mscoco_val2014_annotations.json"
    llava = get_benchmark("vqav2", annotations=annotations).load(llava_file, images, None)
    assert [(i.id, i.image, i.prompt, i.reference) for i in llava] == [(i.id, i.image, i.prompt, i.reference) for i in official]
    assert all(item.prompt.count(SHORT_ANSWER) == 1 for item in llava)
    with pytest.raises(LntuneError, match="holds no answers; pass --annotations"):
        get_benchmark("vqav2").load(llava_file, images, None)
