"""`lntune score BENCH`: score predictions made elsewhere (or earlier) against the ground truth, no model.

Every input is read, never written, and checked before scoring: a record without a field scoring needs, or a
question answered twice, is an LntuneError naming the file and both places (an answer counted twice would
change the metric unnoticed).
"""

from __future__ import annotations

import json
from pathlib import Path

from lntune.errors import LntuneError
from lntune.eval.benchmarks import get_benchmark
from lntune.eval.benchmarks.base import (
    EvalItem, read_json, read_numbered_json_lines, read_text, refuse_repeats, require_keys, require_list,
)


def load_predictions(path: Path) -> list[dict]:
    """An lntune predictions.jsonl, one record per item; the same answer given twice counts once.

    Unlike the runner's reader it never repairs the file: scoring must not write to a file that a running
    evaluation may still be appending to.
    """
    text = read_text(path, "predictions file")
    lines = text.split("\n")
    kept: dict[str, tuple[int, dict]] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            if number == len(lines):  # no newline after it: cut off mid-write
                raise LntuneError(
                    f"{path}:{number}: the last line is cut off (an evaluation still writing, or one killed "
                    "mid-write); finish it with the same `lntune eval` command, or delete that line"
                ) from None
            raise LntuneError(f"{path}:{number}:{error.colno}: invalid JSON ({error.msg})") from None
        require_keys(record, {"id": str, "prediction": str, "reference": dict},
                     f"{path}: line {number} (an lntune predictions file has id, prediction, reference)")
        if record["id"] in kept:
            first_number, first = kept[record["id"]]
            if (first["prediction"], first["reference"]) != (record["prediction"], record["reference"]):
                raise LntuneError(
                    f"{path}: item {record['id']} is answered on line {first_number} and, differently, on line "
                    f"{number}; delete the line you do not want"
                )
            continue
        kept[record["id"]] = (number, record)
    return [record for _, record in kept.values()]


def from_predictions(bench: str, path: Path, mode: str | None) -> dict:
    """Rescore an lntune predictions.jsonl (each line carries its reference)."""
    benchmark = get_benchmark(bench)
    records = load_predictions(path)
    if not records:
        raise LntuneError(f"{path}: no predictions")
    items = [EvalItem(id=r["id"], image=None, prompt=r.get("prompt", ""), reference=r["reference"]) for r in records]
    return benchmark.score(items, {r["id"]: r["prediction"] for r in records}, mode or benchmark.default_mode)


def _answered_twice(results: Path, field: str, per: str = "question"):
    return lambda key, first, second: (f"{results}: {field} {key} is answered twice, at {first} and {second}; "
                                       f"keep one answer per {per}")


def vqav2(annotations: Path, results: Path, mode: str) -> dict:
    from lntune.eval.benchmarks.vqav2 import read_annotations
    from lntune.eval.metrics.vqav2 import score_vqav2

    answers = require_list(read_json(results, "VQAv2 results"), f"{results} (expected [{{question_id, answer}}, ...])")
    for index, answer in enumerate(answers):
        require_keys(answer, {"question_id": int, "answer": str}, f"{results}: [{index}]")
    refuse_repeats(((a["question_id"], f"[{i}]") for i, a in enumerate(answers)), _answered_twice(results, "question_id"))
    by_id = read_annotations(annotations)
    predictions = {a["question_id"]: a["answer"] for a in answers}
    missing = [qid for qid in predictions if qid not in by_id]
    if missing:
        raise LntuneError(f"{results}: question_id {missing[0]} is not in {annotations} ({len(missing)} such)")
    return score_vqav2(predictions, [by_id[qid] for qid in predictions], mode)


def pope(labels: Path, answers: Path, mode: str) -> dict:
    """Answers ({question_id, text} lines) against coco_pope_<split>.json, or against LLaVA's llava_pope_test.jsonl
    (whose labels are paired from coco_pope_<category>.json; scored per category and averaged, as `lntune eval`)."""
    from lntune.eval.benchmarks.pope import SCORING_KEYS, POPE, is_llava_file, read_labelled, read_llava_questions
    from lntune.eval.metrics.pope import score_pope

    records = read_numbered_json_lines(labels, "POPE labels")
    if is_llava_file(records):
        truth = {record["question_id"]: (category, record["label"])
                 for category, _, record in read_llava_questions(labels, records)}
    else:
        truth = {record["question_id"]: (None, record["label"]) for _, record in read_labelled(labels, SCORING_KEYS, records)}
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
    refuse_repeats(places, _answered_twice(answers, "question_id"))
    if is_llava_file(records):
        items = [EvalItem(id=str(qid), image=None, prompt="", reference={"split": truth[qid][0], "label": truth[qid][1]})
                 for qid, _ in pairs]
        return POPE().score(items, {str(qid): text for qid, text in pairs}, mode)
    return score_pope([truth[qid][1] for qid, _ in pairs], [text for _, text in pairs], mode)


def mme(results_dir: Path, mode: str) -> dict:
    """The MME eval tool's input: one <subtask>.txt per subtask, lines image<TAB>question<TAB>truth<TAB>answer."""
    from lntune.eval.metrics.mme import score_mme

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
            rows.append({"subtask": path.stem, "image": fields[0], "question": fields[1], "answer": fields[2].strip(),
                         "prediction": "\t".join(fields[3:])})
            places.append(((fields[0], fields[1]), f"line {number}"))
        refuse_repeats(places, lambda key, first, second: f"{path}: image {key[0]} question {key[1]!r} is answered "
                                                          f"twice, on {first} and {second}; keep one answer per question")
    return score_mme(rows, mode)


def captions(annotations: Path, results: Path) -> dict:
    from lntune.eval.benchmarks.captions import read_references
    from lntune.eval.metrics.captions import score_captions

    references = {key: entry["references"] for key, entry in read_references(annotations).items()}
    answers = require_list(read_json(results, "caption results"), f"{results} (expected [{{image_id, caption}}, ...])")
    for index, answer in enumerate(answers):
        require_keys(answer, {"image_id": (int, str), "caption": str}, f"{results}: [{index}]")
    # 1 and "1" name the same image (ids are compared as text).
    refuse_repeats(((str(a["image_id"]), f"[{i}]") for i, a in enumerate(answers)), _answered_twice(results, "image_id", "image"))
    return score_captions(references, {str(a["image_id"]): a["caption"] for a in answers})
