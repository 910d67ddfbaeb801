"""POPE: coco_pope_{random,popular,adversarial}.json (JSON Lines despite the name), scored per split."""

from __future__ import annotations

from pathlib import Path

from lntune.errors import LntuneError
from lntune.eval.benchmarks.base import SHORT_ANSWER, EvalItem, find_image, read_json_lines, require_keys
from lntune.eval.metrics import pope as metric

SPLITS = ("random", "popular", "adversarial")


def split_files(data: Path) -> dict[str, Path]:
    if data.is_file():
        split = next((s for s in SPLITS if s in data.stem), data.stem)
        return {split: data}
    found = {split: data / f"coco_pope_{split}.json" for split in SPLITS if (data / f"coco_pope_{split}.json").is_file()}
    if not found:
        raise LntuneError(f"{data}: no coco_pope_random.json / coco_pope_popular.json / coco_pope_adversarial.json inside")
    return found


def _with_labels(records: list[dict], path: Path) -> list[dict]:
    """LLaVA's llava_pope_test.jsonl has no labels: take them from coco_pope_<category>.json beside it."""
    labelled = []
    cache: dict[str, dict] = {}
    for number, record in enumerate(records, start=1):
        require_keys(record, ("question_id", "category"), f"{path}: line {number}")
        category = record["category"]
        if category not in cache:
            source = path.with_name(f"coco_pope_{category}.json")
            cache[category] = {r["question_id"]: r["label"] for r in read_json_lines(source, f"POPE labels for {category}")}
        label = cache[category].get(record["question_id"])
        if label is None:
            raise LntuneError(f"{path}: line {number}: question {record['question_id']} has no label in coco_pope_{category}.json")
        labelled.append(dict(record, label=label))
    return labelled


class POPE:
    name = "pope"
    default_prompt = "{question}" + SHORT_ANSWER
    max_new_tokens = 8
    modes = metric.MODES
    default_mode = "official"

    def load(self, data: Path, images: Path | None, prompt: str | None) -> list[EvalItem]:
        template = prompt or self.default_prompt
        items = []
        for split, path in split_files(data).items():
            records = read_json_lines(path, f"POPE {split} file")
            if records and "label" not in records[0] and "category" in records[0]:
                records = _with_labels(records, path)
            for number, record in enumerate(records):
                where = f"{path}: line {number + 1}"
                require_keys(record, ("question_id", "image", "text", "label"), where)
                if record["label"] not in ("yes", "no"):
                    raise LntuneError(f"{where}: label must be yes or no, got {record['label']!r}")
                items.append(EvalItem(
                    id=f"{record.get('category', split)}/{record['question_id']}",
                    image=find_image(images, [record["image"], f"val2014/{record['image']}"], where),
                    prompt=template.format(question=record["text"]),
                    reference={"split": record.get("category", split), "label": record["label"]},
                ))
        return items

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
