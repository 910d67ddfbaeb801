"""POPE: coco_pope_{random,popular,adversarial}.json (JSON Lines despite the name), scored per split.

Also LLaVA's llava_pope_test.jsonl: the three splits in one file, a `category` field naming each question's
split, question_ids renumbered (10000001... for one split) and no labels. LLaVA's eval_pope.py takes the labels
from coco_pope_<category>.json, pairing them with that category's questions by position; so does this loader,
and it checks every pair (same image, same object asked about) so a file in another order cannot be scored
against the wrong labels.
"""

from __future__ import annotations

import re
from pathlib import Path

from lntune.errors import LntuneError
from lntune.eval.benchmarks.base import SHORT_ANSWER, Benchmark, EvalItem, fill_prompt, without_short_answer
from lntune.eval.benchmarks.files import (
    answered_twice, find_image, read_numbered_json_lines, refuse_repeats, require_keys,
)
from lntune.eval.metrics import pope as metric

SPLITS = ("random", "popular", "adversarial")
# What each use of a labelled record reads: asking the question, pairing it with a LLaVA question, scoring.
QUESTION_KEYS = {"question_id": (int, str), "image": str, "text": str, "label": str}
PAIRING_KEYS = {"image": str, "label": str}
SCORING_KEYS = {"question_id": (int, str), "label": str}
LLAVA_KEYS = {"question_id": (int, str), "image": str, "text": str, "category": str}
_OBJECT = re.compile(r"^\s*Is there an? (.+?) in the image\?")


def split_files(data: Path) -> dict[str, Path]:
    if data.is_file():
        split = next((s for s in SPLITS if s in data.stem), data.stem)
        return {split: data}
    found = {split: data / f"coco_pope_{split}.json" for split in SPLITS if (data / f"coco_pope_{split}.json").is_file()}
    if not found:
        raise LntuneError(f"{data}: no coco_pope_random.json / coco_pope_popular.json / coco_pope_adversarial.json inside")
    return found


def label_file_for(questions: Path, category: str) -> Path:
    """coco_pope_<category>.json beside LLaVA's question file, or in coco/ beside it (LLaVA's playground layout)."""
    candidates = [questions.with_name(f"coco_pope_{category}.json"), questions.parent / "coco" / f"coco_pope_{category}.json"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise LntuneError(f"{questions}: no labels for category {category!r}; looked for {' and '.join(map(str, candidates))}")


def read_labelled(path: Path, keys: dict, records: list[tuple[int, dict]] | None = None) -> list[tuple[int, dict]]:
    """(line number, record) of an official coco_pope_<split>.json, every record checked for `keys`."""
    records = read_numbered_json_lines(path, "POPE label file") if records is None else records
    for number, record in records:
        where = f"{path}: line {number}"
        require_keys(record, keys, where)
        if record["label"] not in ("yes", "no"):
            raise LntuneError(f"{where}: label must be yes or no, got {record['label']!r}")
    return records


def is_llava_file(records: list[tuple[int, dict]]) -> bool:
    first = records[0][1] if records else None
    return isinstance(first, dict) and "category" in first and "label" not in first


def read_llava_questions(path: Path, records: list[tuple[int, dict]]) -> list[tuple[str, str, dict]]:
    """(category, where, question with its label) for LLaVA's llava_pope_test.jsonl, paired as eval_pope.py does."""
    by_category: dict[str, list[tuple[int, dict]]] = {}
    for number, record in records:
        require_keys(record, LLAVA_KEYS, f"{path}: line {number}")
        by_category.setdefault(record["category"], []).append((number, record))
    labelled = []
    for category, questions in by_category.items():
        label_file = label_file_for(path, category)
        labels = read_labelled(label_file, PAIRING_KEYS)
        for (number, question), (label_number, label) in zip(questions, labels):
            difference = _difference(question, label)
            if difference:
                raise LntuneError(
                    f"{path}:{number} and {label_file}:{label_number} are not the same question ({difference}); the "
                    f"labels are paired with the {category} questions by position, so both files must list them in "
                    "the same order"
                )
            labelled.append((category, f"{path}: line {number}", dict(question, label=label["label"])))
        if len(questions) != len(labels):
            longer, line = (path, questions[len(labels)][0]) if len(questions) > len(labels) else \
                (label_file, labels[len(questions)][0])
            raise LntuneError(
                f"{path} has {len(questions)} {category} questions but {label_file} has {len(labels)} labels "
                f"(the first one without a partner: {longer}:{line}); the labels are paired with the questions "
                "by position, so both files must hold the same questions"
            )
    return labelled


def _difference(question: dict, label: dict) -> str | None:
    """Why a LLaVA question and an official label record are not the same question, or None."""
    if Path(question["image"]).name != Path(label["image"]).name:
        return f"image {question['image']} vs {label['image']}"
    label_text = label.get("text")
    asked = _OBJECT.match(without_short_answer(question["text"]))
    labelled = _OBJECT.match(label_text) if isinstance(label_text, str) else None
    if asked and labelled and asked.group(1) != labelled.group(1):
        return f"object {asked.group(1)!r} vs {labelled.group(1)!r}"
    return None


def read_pope(data: Path) -> list[tuple[str, str, dict]]:
    """(split, where, record with label) from a folder of official files, one of them, or LLaVA's question file."""
    questions = []
    for split, path in split_files(data).items():
        records = read_numbered_json_lines(path, f"POPE {split} file")
        if is_llava_file(records):
            questions += read_llava_questions(path, records)
            continue
        for number, record in read_labelled(path, QUESTION_KEYS, records):
            questions.append((record.get("category", split), f"{path}: line {number}", record))
    return questions


class POPE(Benchmark):
    name = "pope"
    default_prompt = "{question}" + SHORT_ANSWER
    max_new_tokens = 8
    modes = metric.MODES
    default_mode = "official"
    scoring_files = ("labels", "answers")

    def load(self, data: Path, images: Path | None, prompt: str | None) -> list[EvalItem]:
        template = prompt or self.default_prompt
        questions = read_pope(data)
        refuse_repeats(
            ((f"{split}/{record['question_id']}", where) for split, where, record in questions),
            lambda key, first, second: f"{second}: question {key} again, first at {first}; remove one of them",
        )
        return [
            EvalItem(
                id=f"{split}/{record['question_id']}",
                image=find_image(images, [record["image"], f"val2014/{record['image']}"], where),
                prompt=fill_prompt(template, record["text"]),
                reference={"split": split, "label": record["label"]},
            )
            for split, where, record in questions
        ]

    def score(self, items: list[EvalItem], predictions: dict[str, str], mode: str) -> dict:
        splits = {}
        for item in items:
            if item.id in predictions:
                labels, answers = splits.setdefault(item.reference["split"], ([], []))
                labels.append(item.reference["label"])
                answers.append(predictions[item.id])
        result = {"splits": {split: metric.score_pope(labels, answers, mode) for split, (labels, answers) in splits.items()},
                  "mode": mode}
        for key in ("accuracy", "precision", "recall", "f1", "yes_ratio"):
            result[key] = sum(s[key] for s in result["splits"].values()) / max(len(result["splits"]), 1)
        result["count"] = sum(s["count"] for s in result["splits"].values())
        return result

    def score_files(self, mode: str, *, labels: Path, answers: Path) -> dict:
        """Answers ({question_id, text} lines) against coco_pope_<split>.json, or against LLaVA's llava_pope_test.jsonl
        (whose labels are paired from coco_pope_<category>.json; scored per category and averaged, as `lntune eval`)."""
        records = read_numbered_json_lines(labels, "POPE labels")
        llava = is_llava_file(records)
        if llava:
            truth = {record["question_id"]: (category, record["label"])
                     for category, _, record in read_llava_questions(labels, records)}
        else:
            truth = {record["question_id"]: (None, record["label"])
                     for _, record in read_labelled(labels, SCORING_KEYS, records)}
        pairs, places = [], []
        for number, record in read_numbered_json_lines(answers, "POPE answers"):
            where = f"{answers}: line {number}"
            require_keys(record, {"question_id": (int, str)}, where)
            text = next((record[key] for key in ("text", "prediction", "answer") if key in record), None)
            if not isinstance(text, str):
                raise LntuneError(f"{where}: needs the answer as a string in text (or prediction, or answer)")
            if record["question_id"] not in truth:
                raise LntuneError(f"{where}: question_id {record['question_id']} is not in {labels}")
            pairs.append((record["question_id"], text))
            places.append((record["question_id"], f"line {number}"))
        refuse_repeats(places, answered_twice(answers, "question_id"))
        if llava:
            items = [EvalItem(id=str(qid), image=None, prompt="",
                              reference={"split": truth[qid][0], "label": truth[qid][1]}) for qid, _ in pairs]
            return self.score(items, {str(qid): text for qid, text in pairs}, mode)
        return metric.score_pope([truth[qid][1] for qid, _ in pairs], [text for _, text in pairs], mode)
