"""VQAv2: the official questions and annotations files, images under <split>/COCO_<split>_%012d.jpg."""

from __future__ import annotations

from pathlib import Path

from lntune.errors import LntuneError
from lntune.eval.benchmarks.base import SHORT_ANSWER, EvalItem, find_image, read_json, require_keys
from lntune.eval.metrics import vqav2 as metric


def annotations_path_for(questions: Path) -> Path:
    """v2_OpenEnded_mscoco_val2014_questions.json -> v2_mscoco_val2014_annotations.json beside it."""
    name = questions.name.replace("v2_OpenEnded_mscoco_", "v2_mscoco_").replace("_questions.json", "_annotations.json")
    return questions.with_name(name)


class VQAv2:
    name = "vqav2"
    default_prompt = "{question}" + SHORT_ANSWER
    max_new_tokens = 16
    modes = metric.MODES
    default_mode = "llava"

    def __init__(self, annotations: Path | None = None):
        self.annotations = annotations

    def load(self, data: Path, images: Path | None, prompt: str | None) -> list[EvalItem]:
        if data.is_dir():
            found = sorted(data.glob("v2_OpenEnded_mscoco_*_questions.json"))
            if not found:
                raise LntuneError(f"{data}: no v2_OpenEnded_mscoco_<split>_questions.json inside")
            data = found[0]
        questions = read_json(data, "VQAv2 questions")
        if not isinstance(questions, dict) or "questions" not in questions:
            raise LntuneError(f"{data}: not a VQAv2 questions file (no 'questions' list)")
        annotation_file = self.annotations or annotations_path_for(data)
        if annotation_file == data:
            raise LntuneError(f"{data}: cannot tell where its annotations are; pass --annotations")
        annotations = read_json(annotation_file, "VQAv2 annotations (the v2_mscoco_<split>_annotations.json file)")
        if not isinstance(annotations, dict) or not isinstance(annotations.get("annotations"), list):
            raise LntuneError(f"{annotation_file}: not a VQAv2 annotations file (no 'annotations' list)")
        by_id = {a["question_id"]: a for a in annotations["annotations"]}
        name_parts = data.name.split("_")
        split = questions.get("data_subtype") or (name_parts[3] if len(name_parts) > 4 else None)
        if split is None:
            raise LntuneError(f"{data}: no data_subtype and not named v2_OpenEnded_mscoco_<split>_questions.json; "
                              "cannot tell the image split")
        template = prompt or self.default_prompt
        items = []
        for number, question in enumerate(questions["questions"]):
            where = f"{data}: question {number}"
            require_keys(question, ("image_id", "question", "question_id"), where)
            annotation = by_id.get(question["question_id"])
            if annotation is None:
                raise LntuneError(f"{where} (id {question['question_id']}) has no annotation in {annotation_file}")
            file_name = f"COCO_{split}_{question['image_id']:012d}.jpg"
            items.append(EvalItem(
                id=str(question["question_id"]),
                image=find_image(images, [f"{split}/{file_name}", file_name], where),
                prompt=template.format(question=question["question"]),
                reference={"annotation": annotation},
            ))
        return items

    def score(self, items: list[EvalItem], predictions: dict[str, str], mode: str) -> dict:
        answered = [item for item in items if item.id in predictions]
        return metric.score_vqav2(
            {int(item.id): predictions[item.id] for item in answered},
            [item.reference["annotation"] for item in answered],
            mode,
        )

    @staticmethod
    def official_results(items: list[EvalItem], predictions: dict[str, str]) -> list[dict]:
        """The results file the VQA evaluation server and tools read."""
        return [{"question_id": int(item.id), "answer": predictions[item.id]} for item in items if item.id in predictions]
