"""`lntune score BENCH`: score predictions made elsewhere (or earlier) against the ground truth, no model."""

from __future__ import annotations

from pathlib import Path

from lntune.errors import LntuneError
from lntune.eval.benchmarks import get_benchmark
from lntune.eval.benchmarks.base import EvalItem, read_json, read_json_lines
from lntune.eval.runner import read_predictions


def from_predictions(bench: str, path: Path, mode: str | None) -> dict:
    """Rescore an lntune predictions.jsonl (each line carries its reference)."""
    benchmark = get_benchmark(bench)
    records = read_predictions(path)
    if not records:
        raise LntuneError(f"{path}: no predictions")
    items = [EvalItem(id=r["id"], image=None, prompt=r.get("prompt", ""), reference=r["reference"]) for r in records]
    return benchmark.score(items, {r["id"]: r["prediction"] for r in records}, mode or benchmark.default_mode)


def vqav2(annotations: Path, results: Path, mode: str) -> dict:
    from lntune.eval.metrics.vqav2 import score_vqav2

    answers = read_json(results, "VQAv2 results")
    if not isinstance(answers, list) or any("question_id" not in a or "answer" not in a for a in answers):
        raise LntuneError(f"{results}: expected a list of {{\"question_id\", \"answer\"}}")
    by_id = {a["question_id"]: a for a in read_json(annotations, "VQAv2 annotations").get("annotations", [])}
    predictions = {a["question_id"]: a["answer"] for a in answers}
    missing = [qid for qid in predictions if qid not in by_id]
    if missing:
        raise LntuneError(f"{results}: question_id {missing[0]} is not in {annotations} ({len(missing)} such)")
    return score_vqav2(predictions, [by_id[qid] for qid in predictions], mode)


def pope(labels: Path, answers: Path, mode: str) -> dict:
    from lntune.eval.metrics.pope import score_pope

    truth = {r["question_id"]: r["label"] for r in read_json_lines(labels, "POPE labels")}
    given = read_json_lines(answers, "POPE answers")
    pairs = []
    for number, record in enumerate(given, start=1):
        question_id = record.get("question_id")
        text = record.get("text", record.get("prediction", record.get("answer")))
        if question_id not in truth or text is None:
            raise LntuneError(f"{answers}:{number}: needs a question_id from {labels} and a text (or prediction)")
        pairs.append((truth[question_id], text))
    return score_pope([label for label, _ in pairs], [text for _, text in pairs], mode)


def mme(results_dir: Path, mode: str) -> dict:
    """The MME eval tool's input: one <subtask>.txt per subtask, lines image<TAB>question<TAB>truth<TAB>answer."""
    from lntune.eval.metrics.mme import score_mme

    files = sorted(results_dir.glob("*.txt"))
    if not files:
        raise LntuneError(f"{results_dir}: no <subtask>.txt result files")
    rows = []
    for path in files:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) < 4:
                raise LntuneError(f"{path}:{number}: expected image<TAB>question<TAB>truth<TAB>answer")
            rows.append({"subtask": path.stem, "image": fields[0], "question": fields[1], "answer": fields[2].strip(),
                         "prediction": "\t".join(fields[3:])})
    return score_mme(rows, mode)


def captions(annotations: Path, results: Path) -> dict:
    from lntune.eval.benchmarks.captions import read_references
    from lntune.eval.metrics.captions import score_captions

    references = {key: entry["references"] for key, entry in read_references(annotations).items()}
    answers = read_json(results, "caption results")
    if not isinstance(answers, list) or any("image_id" not in a or "caption" not in a for a in answers):
        raise LntuneError(f"{results}: expected a list of {{\"image_id\", \"caption\"}}")
    return score_captions(references, {str(a["image_id"]): a["caption"] for a in answers})
