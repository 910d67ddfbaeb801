"""MME: one folder per subtask, two yes/no questions per image (official layout or LLaVA's jsonl)."""

from __future__ import annotations

import re
from pathlib import Path

from lntune.errors import LntuneError
from lntune.eval.benchmarks.base import SHORT_ANSWER, Benchmark, EvalItem, fill_prompt, without_short_answer
from lntune.eval.benchmarks.files import read_numbered_json_lines, read_text, refuse_repeats, require_keys
from lntune.eval.metrics import mme as metric

IMAGE_SUFFIXES = (".jpg", ".png", ".jpeg", ".JPG", ".PNG")
_YES_NO_SUFFIX = re.compile(r"\s*Please answer yes or no\.\s*$")


class MME(Benchmark):
    name = "mme"
    default_prompt = "{question}" + SHORT_ANSWER
    max_new_tokens = 16
    modes = metric.MODES
    default_mode = "official"
    scoring_files = ("results_dir",)

    def group_of(self, item: EvalItem) -> str:
        """A subset (--limit) keeps both questions of an image: acc+ needs the pair."""
        return f"{item.reference['subtask']}/{item.reference['image']}"

    @staticmethod
    def find_root(path: Path) -> Path:
        """The folder holding the subtask folders (the release folder, or its MME_Benchmark/ child)."""
        for candidate in (path, path / "MME_Benchmark"):
            if candidate.is_dir() and any(_is_subtask(child) for child in candidate.iterdir()):
                return candidate
        raise LntuneError(
            f"{path} is not an MME folder: expected subtask folders (e.g. existence/, OCR/) holding X.txt question "
            f"files beside their images, or images/ and questions_answers_YN/ inside"
        )

    def load(self, data: Path, images: Path | None, prompt: str | None) -> list[EvalItem]:
        template = prompt or self.default_prompt
        if data.suffix == ".jsonl":
            return self._load_llava_jsonl(data, images, template)
        root = self.find_root(data)
        items = []
        for folder in sorted(child for child in root.iterdir() if _is_subtask(child)):
            question_dir = folder / "questions_answers_YN" if (folder / "images").is_dir() else folder
            image_dir = folder / "images" if (folder / "images").is_dir() else folder
            for text_file in sorted(question_dir.glob("*.txt")):
                image = next((image_dir / (text_file.stem + s) for s in IMAGE_SUFFIXES if (image_dir / (text_file.stem + s)).is_file()), None)
                if image is None:
                    raise LntuneError(f"{text_file}: no image {text_file.stem}.jpg/.png in {image_dir}")
                for index, (question, answer) in enumerate(_read_pairs(text_file)):
                    items.append(EvalItem(
                        id=f"{folder.name}/{image.name}/{index}", image=image,
                        prompt=fill_prompt(template, _YES_NO_SUFFIX.sub("", question)),
                        reference={"subtask": folder.name, "image": image.name, "question": question, "answer": answer},
                    ))
        return items

    def _load_llava_jsonl(self, data: Path, images: Path | None, template: str) -> list[EvalItem]:
        """LLaVA's llava_mme.jsonl; the answers come from the MME folder given as --images."""
        if images is None:
            raise LntuneError(f"{data}: with llava_mme.jsonl, pass the MME folder as --images (it holds the answers)")
        root = self.find_root(images)
        answers = {}
        for folder in (child for child in root.iterdir() if _is_subtask(child)):
            question_dir = folder / "questions_answers_YN" if (folder / "images").is_dir() else folder
            for text_file in question_dir.glob("*.txt"):
                for question, answer in _read_pairs(text_file):
                    answers[(folder.name, text_file.stem, question.strip())] = answer
        items = []
        records = read_numbered_json_lines(data, "MME questions")
        for number, record in records:
            require_keys(record, {"question_id": (int, str), "image": str, "text": str, "category": str},
                         f"{data}: line {number}")
        for number, record in records:
            category, image_name = record["category"], Path(record["image"]).name
            # LLaVA's text is the question (its " Please answer yes or no." already replaced) + SHORT_ANSWER.
            question = without_short_answer(record["text"])
            key = (category, Path(image_name).stem, question.strip())
            if key not in answers:
                key = next((k for k in answers if k[:2] == key[:2] and _YES_NO_SUFFIX.sub("", k[2]) == _YES_NO_SUFFIX.sub("", question)), None)
            if key is None:
                raise LntuneError(f"{data}: line {number}: question {record['question_id']} has no answer in {root}")
            image_folder = root / category
            image = image_folder / "images" / image_name if (image_folder / "images").is_dir() else image_folder / image_name
            items.append(EvalItem(
                id=f"{category}/{image_name}/{record['question_id']}", image=image,
                prompt=fill_prompt(template, _YES_NO_SUFFIX.sub("", question)),
                reference={"subtask": category, "image": image_name, "question": question, "answer": answers[key]},
            ))
        return items

    def score(self, items: list[EvalItem], predictions: dict[str, str], mode: str) -> dict:
        rows = [dict(item.reference, prediction=predictions[item.id]) for item in items if item.id in predictions]
        return metric.score_mme(rows, mode)

    def score_files(self, mode: str, *, results_dir: Path) -> dict:
        """The MME eval tool's input: one <subtask>.txt per subtask, lines image<TAB>question<TAB>truth<TAB>answer."""
        files = sorted(results_dir.glob("*.txt"))
        if not files:
            raise LntuneError(f"{results_dir}: no <subtask>.txt result files")
        rows = []
        for path in files:
            places = []
            for number, line in enumerate(read_text(path, "MME results").split("\n"), start=1):
                if not line.strip():
                    continue
                fields = line.rstrip("\r").split("\t")
                if len(fields) < 4:
                    raise LntuneError(f"{path}:{number}: expected image<TAB>question<TAB>truth<TAB>answer")
                rows.append({"subtask": path.stem, "image": fields[0], "question": fields[1],
                             "answer": fields[2].strip(), "prediction": "\t".join(fields[3:])})
                places.append(((fields[0], fields[1]), f"line {number}"))
            refuse_repeats(places, lambda key, first, second: f"{path}: image {key[0]} question {key[1]!r} is "
                                                              f"answered twice, on {first} and {second}; keep one "
                                                              "answer per question")
        return metric.score_mme(rows, mode)


def _is_subtask(folder: Path) -> bool:
    return folder.is_dir() and (any(folder.glob("*.txt")) or (folder / "questions_answers_YN").is_dir())


def _read_pairs(text_file: Path) -> list[tuple[str, str]]:
    pairs = []
    for number, line in enumerate(read_text(text_file, "MME question file").split("\n"), start=1):
        if not line.strip():
            continue
        question, tab, answer = line.rpartition("\t")
        if not tab or answer.strip() not in ("Yes", "No"):
            raise LntuneError(f"{text_file}:{number}: expected 'question<TAB>Yes' or 'question<TAB>No'")
        pairs.append((question, answer.strip()))
    if sorted(answer for _, answer in pairs) != ["No", "Yes"]:
        raise LntuneError(f"{text_file}: expected exactly two questions, one answered Yes and one No")
    return pairs
