"""VQAv2: the official questions and annotations files, images under <split>/COCO_<split>_%012d.jpg.

Also LLaVA's question files (llava_vqav2_mscoco_test-dev2015.jsonl style: question_id, image, text ending with
the short-answer instruction) when --annotations names the annotations holding their answers.
"""

from __future__ import annotations

import re
from pathlib import Path

from lntune.errors import LntuneError
from lntune.eval.benchmarks.base import SHORT_ANSWER, Benchmark, EvalItem, fill_prompt
from lntune.eval.benchmarks.files import (
    answered_twice, find_image, read_json, read_numbered_json_lines, refuse_repeats, require_keys, require_list,
)
from lntune.eval.metrics import vqav2 as metric

QUESTION_KEYS = {"image_id": int, "question": str, "question_id": int}
LLAVA_QUESTION_KEYS = {"question_id": int, "image": str, "text": str}
# What scoring reads of an annotation (question_type and answer_type group the accuracies).
ANNOTATION_KEYS = {"question_id": int, "answers": list, "answer_type": str, "question_type": str}
_SPLIT_IN_IMAGE_NAME = re.compile(r"^COCO_([A-Za-z]+\d+)_\d+\.\w+$")


def annotations_path_for(questions: Path) -> Path:
    """v2_OpenEnded_mscoco_val2014_questions.json -> v2_mscoco_val2014_annotations.json beside it."""
    name = questions.name.replace("v2_OpenEnded_mscoco_", "v2_mscoco_").replace("_questions.json", "_annotations.json")
    return questions.with_name(name)


def read_annotations(path: Path) -> dict[int, dict]:
    """question_id -> annotation of v2_mscoco_<split>_annotations.json, every field scoring reads checked."""
    data = read_json(path, "VQAv2 annotations (the v2_mscoco_<split>_annotations.json file)")
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise LntuneError(f"{path}: not a VQAv2 annotations file (no 'annotations' list)")
    by_id: dict[int, dict] = {}
    first_index: dict[int, int] = {}
    for index, annotation in enumerate(data["annotations"]):
        where = f"{path}: annotations[{index}]"
        require_keys(annotation, ANNOTATION_KEYS, where)
        if not annotation["answers"]:
            raise LntuneError(f"{where}: answers is empty (the official files hold 10 per question)")
        for position, answer in enumerate(annotation["answers"]):
            if not (isinstance(answer, dict) and isinstance(answer.get("answer"), str)):  # fast path: all good
                require_keys(answer, {"answer": str}, f"{where}.answers[{position}]")
        question_id = annotation["question_id"]
        if question_id in first_index:
            raise LntuneError(f"{where}: question_id {question_id} again (first at annotations[{first_index[question_id]}]); "
                              "remove one of them")
        first_index[question_id] = index
        by_id[question_id] = annotation
    return by_id


class VQAv2(Benchmark):
    name = "vqav2"
    default_prompt = "{question}" + SHORT_ANSWER
    max_new_tokens = 16
    modes = metric.MODES
    default_mode = "llava"
    scoring_files = ("annotations", "results")

    def load(self, data: Path, images: Path | None, prompt: str | None) -> list[EvalItem]:
        template = prompt or self.default_prompt
        if data.suffix == ".jsonl":
            return self._load_llava_jsonl(data, images, template)
        if data.is_dir():
            found = sorted(data.glob("v2_OpenEnded_mscoco_*_questions.json"))
            if not found:
                raise LntuneError(f"{data}: no v2_OpenEnded_mscoco_<split>_questions.json inside")
            data = found[0]
        questions = read_json(data, "VQAv2 questions")
        if not isinstance(questions, dict) or not isinstance(questions.get("questions"), list):
            raise LntuneError(f"{data}: not a VQAv2 questions file (no 'questions' list)")
        annotation_file = self.annotations or annotations_path_for(data)
        if annotation_file == data:
            raise LntuneError(f"{data}: cannot tell where its annotations are; pass --annotations")
        name_parts = data.name.split("_")
        split = questions.get("data_subtype") or (name_parts[3] if len(name_parts) > 4 else None)
        if split is None:
            raise LntuneError(f"{data}: no data_subtype and not named v2_OpenEnded_mscoco_<split>_questions.json; "
                              "cannot tell the image split")
        for number, question in enumerate(questions["questions"]):
            require_keys(question, QUESTION_KEYS, f"{data}: questions[{number}]")
        _refuse_repeated_questions((question["question_id"], f"{data}: questions[{number}]")
                                   for number, question in enumerate(questions["questions"]))
        by_id = read_annotations(annotation_file)
        items = []
        for number, question in enumerate(questions["questions"]):
            where = f"{data}: question {number}"
            annotation = by_id.get(question["question_id"])
            if annotation is None:
                raise LntuneError(f"{where} (id {question['question_id']}) has no annotation in {annotation_file}")
            file_name = f"COCO_{split}_{question['image_id']:012d}.jpg"
            items.append(EvalItem(
                id=str(question["question_id"]),
                image=find_image(images, [f"{split}/{file_name}", file_name], where),
                prompt=fill_prompt(template, question["question"]),
                reference={"annotation": annotation},
            ))
        return items

    def _load_llava_jsonl(self, data: Path, images: Path | None, template: str) -> list[EvalItem]:
        """LLaVA's question file: the same question ids as the official files, the answers from --annotations."""
        if self.annotations is None:
            raise LntuneError(
                f"{data}: a LLaVA question file holds no answers; pass --annotations v2_mscoco_<split>_annotations.json "
                "(test-dev answers are private: evaluate offline on val2014, test-dev on the evaluation server)"
            )
        records = read_numbered_json_lines(data, "VQAv2 questions")
        for number, record in records:
            require_keys(record, LLAVA_QUESTION_KEYS, f"{data}: line {number}")
        _refuse_repeated_questions((record["question_id"], f"{data}: line {number}") for number, record in records)
        by_id = read_annotations(self.annotations)
        items = []
        for number, record in records:
            where = f"{data}: line {number}"
            annotation = by_id.get(record["question_id"])
            if annotation is None:
                raise LntuneError(f"{where}: question {record['question_id']} has no annotation in {self.annotations}")
            split = _SPLIT_IN_IMAGE_NAME.match(Path(record["image"]).name)
            candidates = [record["image"]] + ([f"{split.group(1)}/{record['image']}"] if split else [])
            items.append(EvalItem(
                id=str(record["question_id"]), image=find_image(images, candidates, where),
                prompt=fill_prompt(template, record["text"]), reference={"annotation": annotation},
            ))
        return items

    def score(self, items: list[EvalItem], predictions: dict[str, str], mode: str) -> dict:
        answered = [item for item in items if item.id in predictions]
        return metric.score_vqav2(
            {int(item.id): predictions[item.id] for item in answered},
            [item.reference["annotation"] for item in answered],
            mode,
        )

    def score_files(self, mode: str, *, annotations: Path, results: Path) -> dict:
        """results ([{question_id, answer}], the evaluation server's format) against the annotations file."""
        answers = require_list(read_json(results, "VQAv2 results"),
                               f"{results} (expected [{{question_id, answer}}, ...])")
        for index, answer in enumerate(answers):
            require_keys(answer, {"question_id": int, "answer": str}, f"{results}: [{index}]")
        refuse_repeats(((a["question_id"], f"[{i}]") for i, a in enumerate(answers)),
                       answered_twice(results, "question_id"))
        by_id = read_annotations(annotations)
        predictions = {a["question_id"]: a["answer"] for a in answers}
        missing = [qid for qid in predictions if qid not in by_id]
        if missing:
            raise LntuneError(f"{results}: question_id {missing[0]} is not in {annotations} ({len(missing)} such)")
        return metric.score_vqav2(predictions, [by_id[qid] for qid in predictions], mode)

    def official_results(self, items: list[EvalItem], predictions: dict[str, str]) -> list[dict]:
        """The results file the VQA evaluation server and tools read."""
        return [{"question_id": int(item.id), "answer": predictions[item.id]} for item in items if item.id in predictions]


def _refuse_repeated_questions(ids_and_places) -> None:
    refuse_repeats(ids_and_places, lambda question_id, first, second:
                   f"{second}: question_id {question_id} again (first at {first}); remove one of them")
