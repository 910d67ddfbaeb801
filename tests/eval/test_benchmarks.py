"""Benchmark loaders on small folders in each official layout."""

import json

import pytest

from lntune.errors import LntuneError
from lntune.eval.benchmarks import BENCHMARKS, get_benchmark
from tests.eval.fixtures import write_karpathy, write_mme, write_pope, write_vqav2


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
    assert items[1].image == release / "OCR" / "images" / "001.png"
