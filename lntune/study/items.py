"""Per-unit scores of an evaluation, from its predictions.jsonl: what the paired bootstrap resamples.

A unit is what a benchmark's number is made of: a question (VQAv2, POPE), an image (captions; MME, whose two
questions per image make its acc+). `aggregate` turns a selection of rows (with repeats: a bootstrap resample) into
the benchmark's number as lntune reports it, so over all rows it gives the number in metrics.json:

- VQAv2: accuracy x100 = the mean of the questions' accuracies x100.
- POPE: F1 x100 per split (yes the positive class) from the rows of that split, averaged over the splits.
- MME perception: per perception subtask acc x100 + acc+ x100 from its images, summed.
- COCO / Flickr30k: CIDEr-D x100 = the mean of the images' CIDEr (idf over the whole evaluated set, held fixed).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from lntune.errors import LntuneError
from lntune.eval.score import load_predictions

COLUMN = {"mme": "MME-P", "vqav2": "VQAv2", "coco": "COCO CIDEr", "flickr30k": "Flickr30k CIDEr", "pope": "POPE F1"}
"""Benchmark -> its column in the results tables (lntune.demo.report.SCORE_COLUMNS)."""


@dataclass(frozen=True)
class ItemTable:
    units: tuple[str, ...]
    """Unit ids, sorted: two runs' tables on one benchmark line up row by row."""
    values: np.ndarray
    """[units, k]: what `aggregate` needs of each unit."""
    aggregate: Callable[[np.ndarray], float]
    """values[rows] -> the benchmark's number."""

    def score(self) -> float:
        return self.aggregate(self.values)


def _mean(values: np.ndarray) -> float:
    return float(values[:, 0].mean())


def _pope_f1(values: np.ndarray) -> float:
    """values: [split index, answered yes, labelled yes] per question."""
    scores = []
    for split in np.unique(values[:, 0]):
        rows = values[values[:, 0] == split]
        tp = float(np.sum((rows[:, 1] == 1) & (rows[:, 2] == 1)))
        fp = float(np.sum((rows[:, 1] == 1) & (rows[:, 2] == 0)))
        fn = float(np.sum((rows[:, 1] == 0) & (rows[:, 2] == 1)))
        precision = tp / (tp + fp) if tp + fp else 0.0  # 0 where undefined, as lntune.eval.metrics.pope
        recall = tp / (tp + fn) if tp + fn else 0.0
        scores.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    return 100 * sum(scores) / len(scores)


def _mme_perception(values: np.ndarray) -> float:
    """values: [subtask index, questions right, questions, all right] per image."""
    total = 0.0
    for subtask in np.unique(values[:, 0]):
        rows = values[values[:, 0] == subtask]
        total += 100 * rows[:, 1].sum() / rows[:, 2].sum() + 100 * rows[:, 3].mean()
    return float(total)


def item_table(bench: str, folder: Path) -> ItemTable:
    """The per-unit scores of the evaluation in `folder` (its predictions.jsonl, scored in metrics.json's mode)."""
    records = load_predictions(folder / "predictions.jsonl")
    mode = json.loads((folder / "metrics.json").read_text())["mode"]
    if bench == "vqav2":
        from lntune.eval.metrics.vqav2 import question_accuracy

        rows = {r["id"]: [100 * question_accuracy(r["prediction"], [a["answer"] for a in
                                                                    r["reference"]["annotation"]["answers"]], mode)]
                for r in records}
        aggregate = _mean
    elif bench == "pope":
        from lntune.eval.metrics.pope import parse_answer

        splits = sorted({r["reference"]["split"] for r in records})
        rows = {r["id"]: [splits.index(r["reference"]["split"]), parse_answer(r["prediction"], mode) == "yes",
                          r["reference"]["label"] == "yes"] for r in records}
        aggregate = _pope_f1
    elif bench == "mme":
        from lntune.eval.metrics.mme import PERCEPTION, score_mme

        images: dict[tuple[str, str], list[dict]] = {}
        for r in records:
            if r["reference"]["subtask"] in PERCEPTION:
                images.setdefault((r["reference"]["subtask"], r["reference"]["image"]), []).append(
                    dict(r["reference"], prediction=r["prediction"]))
        rows = {}
        for (subtask, image), questions in images.items():
            result = score_mme(questions, mode)["subtasks"][subtask]
            rows[f"{subtask}/{image}"] = [PERCEPTION.index(subtask), round(result["acc"] * result["questions"]),
                                          result["questions"], result["acc_plus"]]
        aggregate = _mme_perception
    elif bench in ("coco", "flickr30k"):
        from lntune.eval.metrics.captions import per_image_cider

        scores = per_image_cider({r["id"]: r["reference"]["references"] for r in records},
                                 {r["id"]: r["prediction"] for r in records})
        rows = {image: [score] for image, score in scores.items()}
        aggregate = _mean
    else:
        raise LntuneError(f"no per-item scores for benchmark {bench!r}")
    units = tuple(sorted(rows))
    return ItemTable(units, np.array([rows[unit] for unit in units], dtype=float), aggregate)
