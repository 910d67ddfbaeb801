"""`lntune score BENCH`: score predictions made elsewhere (or earlier) against the ground truth, no model.

Two inputs: an lntune predictions.jsonl (from_predictions; each line carries its reference), or another tool's
result files (from_files: the benchmark's own score_files). Every input is read, never written, and checked
before scoring: a record without a field scoring needs, or a question answered twice, is an LntuneError naming
the file and both places (an answer counted twice would change the metric unnoticed).
"""

from __future__ import annotations

import json
from pathlib import Path

from lntune.errors import LntuneError
from lntune.eval.benchmarks import get_benchmark
from lntune.eval.benchmarks.base import EvalItem
from lntune.eval.benchmarks.files import read_text, require_keys


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


def from_files(bench: str, mode: str, **files: Path) -> dict:
    """Score another tool's result files; `files` are the `lntune score` options the benchmark's scoring_files names
    (others given are not read)."""
    benchmark = get_benchmark(bench)
    missing = [option for option in benchmark.scoring_files if not files.get(option)]
    if missing:
        needed = " ".join("--" + option.replace("_", "-") for option in benchmark.scoring_files)
        raise LntuneError(f"{bench}: to score result files give {needed} (missing: "
                          f"{', '.join('--' + option.replace('_', '-') for option in missing)})")
    return benchmark.score_files(mode, **{option: Path(files[option]) for option in benchmark.scoring_files})


# What `lntune score` calls per benchmark; each is the benchmark's own score_files.
def vqav2(annotations: Path, results: Path, mode: str) -> dict:
    return from_files("vqav2", mode, annotations=annotations, results=results)


def pope(labels: Path, answers: Path, mode: str) -> dict:
    return from_files("pope", mode, labels=labels, answers=answers)


def mme(results_dir: Path, mode: str) -> dict:
    return from_files("mme", mode, results_dir=results_dir)


def captions(annotations: Path, results: Path, bench: str = "coco") -> dict:
    return from_files(bench, get_benchmark(bench).default_mode, annotations=annotations, results=results)
