"""POPE scoring: yes/no answer parsing and the binary metrics with "yes" as the positive class.

The default mode ("official") is the POPE authors' evaluate.py (the same rules as LLaVA's
llava/eval/eval_pope.py), quirks included; "lmms-eval" is lmms-eval's pope task.

Metrics: accuracy = (tp + tn) / count, precision = tp / (tp + fp), recall = tp / (tp + fn),
f1 = 2 * precision * recall / (precision + recall), yes_ratio = predictions parsed as yes / count.
The official script crashes on a zero denominator; here such a metric is reported as 0.0 and a
sentence saying why is added to "warnings". yes_ratio is the fraction of answers parsed as yes in
both modes (lmms-eval's own pope_yes_ratio counts yes labels instead, which says nothing about the
model; that is not reproduced).
"""

from __future__ import annotations

from lntune.errors import LntuneError
from lntune.eval.metrics.modes import check_mode

MODES = ("official", "lmms-eval")

# The official test is case-sensitive and on whole words: "No" and "no" and "not" only.
_NEGATIVE_WORDS = ("No", "not", "no")


def _parse_official(text: str) -> str:
    """evaluate.py's rule: a negative word in the first sentence means no, anything else yes.

    Quirks kept: only the text before the first "." counts ("Yes. No." -> yes); only "," is
    removed, so "No!" stays one word "No!" -> yes; words are split on single spaces only, so
    "No\\nthere is" is one word -> yes; the match is case-sensitive, so "NO", "Nope", "Not" -> yes;
    an empty answer -> yes.
    """
    first_sentence = text.split(".", 1)[0]
    words = first_sentence.replace(",", "").split(" ")
    return "no" if any(word in words for word in _NEGATIVE_WORDS) else "yes"


def _parse_lmms_eval(text: str) -> str:
    """lmms-eval's rule: lower().strip() must be exactly "yes" or "no"; anything else is "other".

    lmms-eval keeps the unmatched text as the prediction, which equals neither label: it counts as
    wrong in accuracy and in none of tp / fp / tn / fn, so precision and recall ignore it. "other"
    reproduces exactly that.
    """
    answer = text.lower().strip()
    return answer if answer in ("yes", "no") else "other"


def parse_answer(text: str, mode: str = "official") -> str:
    """Map a model's raw answer to "yes" or "no" ("other" is possible in mode lmms-eval only)."""
    check_mode(mode, MODES, "POPE mode")
    return _parse_official(text) if mode == "official" else _parse_lmms_eval(text)


def _check_labels(labels: list[str]) -> None:
    """Labels must be "yes" / "no" exactly, as in the official coco_pope_*.json files.

    The official script treats every label other than "no" as yes (so "No" would count as a yes);
    rather than reproduce that silently for a malformed file, refuse it.
    """
    for index, label in enumerate(labels):
        if label not in ("yes", "no"):
            raise LntuneError(f"POPE label {index} is {label!r}: labels must be 'yes' or 'no' (lower-case)")


def _ratio(numerator: int | float, denominator: int | float, name: str, reason: str, warnings: list[str]) -> float:
    """numerator / denominator, or 0.0 with a warning when the denominator is 0."""
    if denominator == 0:
        warnings.append(f"{name} is undefined ({reason}); reported as 0.0")
        return 0.0
    return numerator / denominator


def score_pope(labels: list[str], predictions: list[str], mode: str = "official") -> dict:
    """Score POPE answers against yes/no labels, in the same order; "yes" is the positive class.

    Returns accuracy, precision, recall, f1, yes_ratio, tp, fp, tn, fn, count, other (answers
    parsed as neither yes nor no: always 0 in mode official), warnings (zero denominators) and mode.
    """
    check_mode(mode, MODES, "POPE mode")
    if len(labels) != len(predictions):
        raise LntuneError(
            f"POPE: {len(labels)} labels but {len(predictions)} predictions; they must pair up one to one")
    _check_labels(labels)
    for index, prediction in enumerate(predictions):
        if not isinstance(prediction, str):
            raise LntuneError(f"POPE prediction {index} must be a string, got {type(prediction).__name__}")

    parsed = [parse_answer(prediction, mode) for prediction in predictions]
    pairs = list(zip(parsed, labels))
    tp = pairs.count(("yes", "yes"))
    fp = pairs.count(("yes", "no"))
    tn = pairs.count(("no", "no"))
    fn = pairs.count(("no", "yes"))
    count = len(labels)

    warnings: list[str] = []
    accuracy = _ratio(tp + tn, count, "accuracy", "no items", warnings)
    precision = _ratio(tp, tp + fp, "precision", "no answer was yes", warnings)
    recall = _ratio(tp, tp + fn, "recall", "no item labelled yes got a yes or no answer", warnings)
    f1 = _ratio(2 * precision * recall, precision + recall, "f1", "precision + recall = 0", warnings)
    yes_ratio = _ratio(parsed.count("yes"), count, "yes_ratio", "no items", warnings)
    return {
        "accuracy": accuracy,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "yes_ratio": yes_ratio,
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "count": count,
        "other": parsed.count("other"),
        "warnings": warnings,
        "mode": mode,
    }
