"""Tiny benchmark folders in the official layouts, written by the tests (no downloads)."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

COLORS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)]


def _image(path: Path, index: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40 + index, 32), COLORS[index % len(COLORS)]).save(path)


def write_mme(root: Path, split_layout_subtasks=("OCR",), flat_subtasks=("existence", "count")) -> Path:
    """MME_Benchmark_release_version/ with flat subtasks (X.jpg beside X.txt) and split ones (images/ + questions_answers_YN/)."""
    release = root / "MME_Benchmark_release_version"
    for number, subtask in enumerate(flat_subtasks):
        for index in range(2):
            _image(release / subtask / f"{index:03d}.jpg", index + number)
            (release / subtask / f"{index:03d}.txt").write_text(
                "Is there a red object in the image? Please answer yes or no.\tYes\n"
                "Is there a blue object in the image?  Please answer yes or no.\tNo\n")
    for subtask in split_layout_subtasks:
        for index in range(2):
            _image(release / subtask / "images" / f"{index:03d}.png", index)
            (release / subtask / "questions_answers_YN").mkdir(parents=True, exist_ok=True)
            (release / subtask / "questions_answers_YN" / f"{index:03d}.txt").write_text(
                "Is the word in the image 'cat'? Please answer yes or no.\tNo\n"
                "Is the word in the image 'dog'? Please answer yes or no.\tYes\n")
    return release


def write_vqav2(root: Path, count: int = 6, split: str = "val2014") -> tuple[Path, Path]:
    questions, annotations = [], []
    for index in range(count):
        image_id = 100 + index
        _image(root / "images" / split / f"COCO_{split}_{image_id:012d}.jpg", index)
        question_id = image_id * 10
        questions.append({"image_id": image_id, "question": "What color is it?", "question_id": question_id})
        answers = ["red"] * 6 + ["dark red"] * 2 + ["maroon", "red"]
        annotations.append({"question_id": question_id, "image_id": image_id, "question_type": "what color is the",
                            "answer_type": "other", "multiple_choice_answer": "red",
                            "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)]})
    question_file = root / f"v2_OpenEnded_mscoco_{split}_questions.json"
    question_file.write_text(json.dumps({"data_subtype": split, "questions": questions}))
    (root / f"v2_mscoco_{split}_annotations.json").write_text(json.dumps({"annotations": annotations}))
    return question_file, root / "images"


def write_karpathy(root: Path, flavour: str = "coco", count: int = 4) -> tuple[Path, Path]:
    images = []
    for index in range(count + 2):
        filename = f"COCO_val2014_{index:012d}.jpg" if flavour == "coco" else f"{1000 + index}.jpg"
        folder = root / "images" / ("val2014" if flavour == "coco" else "")
        _image(folder / filename, index)
        entry = {"filename": filename, "split": "test" if index < count else "train", "imgid": index,
                 "sentences": [{"raw": f"A {c} square on a plain background."} for c in ("red", "green", "small red")]}
        if flavour == "coco":
            entry.update(filepath="val2014", cocoid=index)
        images.append(entry)
    path = root / f"dataset_{flavour}.json"
    path.write_text(json.dumps({"images": images, "dataset": flavour}))
    return path, root / "images"


POPE_OBJECTS = ("dog", "umbrella", "car", "apple", "person")


def write_pope(root: Path, count: int = 4, images: Path | None = None) -> tuple[Path, Path]:
    """coco_pope_{random,popular,adversarial}.json in root; each split asks about other objects of the images."""
    images = images or root / "images"
    for offset, split in enumerate(("random", "popular", "adversarial")):
        lines = []
        for index in range(count):
            name = f"COCO_val2014_{index:012d}.jpg"
            _image(images / name, index)
            thing = POPE_OBJECTS[(index + offset) % len(POPE_OBJECTS)]
            lines.append({"question_id": index + 1, "image": name, "text": f"Is there a{'n' * (thing[0] in 'aeiou')} "
                          f"{thing} in the image?", "label": "yes" if index % 2 else "no"})
        root.mkdir(parents=True, exist_ok=True)
        (root / f"coco_pope_{split}.json").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return root, images


LLAVA_POPE_ORDER = ("adversarial", "popular", "random")


def write_llava_pope(root: Path, count: int = 4) -> tuple[Path, Path, Path]:
    """LLaVA's layout: pope/llava_pope_test.jsonl (three categories, renumbered ids, the short-answer suffix, no
    labels) beside pope/coco/coco_pope_<category>.json. Returns (question file, label folder, image folder)."""
    labels, images = write_pope(root / "coco", count, images=root / "val2014")
    lines = []
    for number, category in enumerate(LLAVA_POPE_ORDER, start=1):
        for index, record in enumerate(map(json.loads, (labels / f"coco_pope_{category}.json").read_text().splitlines())):
            lines.append({"question_id": number * 10_000_000 + index + 1, "image": record["image"],
                          "text": record["text"] + "\nAnswer the question using a single word or phrase.",
                          "category": category})
    questions = root / "llava_pope_test.jsonl"
    questions.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return questions, labels, images
