"""MME scoring: yes/no answer parsing and the per-subtask score 100 * acc + 100 * acc+.

The default mode ("official") is the MME authors' eval_tool/calculation.py, quirks included;
"lmms-eval" is the parser of lmms-eval's mme task (taken there from Otter). Both modes score the
same way once an answer is parsed:

- acc of a subtask is the fraction of its questions answered right; acc+ is the fraction of its
  images whose questions (two per image in MME) are all answered right. The subtask score is
  100 * acc + 100 * acc+ (max 200).
- "other" (an answer that parses as neither yes nor no) is never equal to the ground truth, so it
  is always wrong; it still counts in the denominators.
- Perception (10 subtasks, max 2000) and cognition (4 subtasks, max 800) are sums over the
  subtasks present. A local copy may hold only some subtasks: the absent standard ones are listed
  under "missing_subtasks" rather than scored as zero.
"""

from __future__ import annotations

from collections import defaultdict

from lntune.errors import LntuneError
from lntune.eval.metrics.modes import check_mode

PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
MODES = ("official", "lmms-eval")

_ITEM_KEYS = ("subtask", "image", "answer", "prediction")


def _label_from_prefix(text: str) -> str:
    """The rule both modes share: exact "yes"/"no", else what the first four characters contain.

    The official code looks only at text[:4] (four characters cannot hold both words, so the order
    of the two tests never matters): "yesno" -> yes ("yesn"), "nope" -> no, "know" -> no,
    "not sure" -> no, "i think yes" -> other ("i th").
    """
    if text in ("yes", "no"):
        return text
    prefix = text[:4]
    if "yes" in prefix:
        return "yes"
    if "no" in prefix:
        return "no"
    return "other"


def parse_answer(response: str, mode: str = "official") -> str:
    """Map a model's raw response to "yes", "no" or "other" as the chosen MME evaluator does.

    official: lower-case only, NO strip (calculation.py lower-cases the last tab field as read), so
    a leading space shifts the 4-character window: " yes" -> yes but "  yes" -> other.
    lmms-eval: lower-case, strip, delete every "."; a lone "y" / "n" means yes / no (any other single
    character is other); then the shared prefix rule.
    """
    check_mode(mode, MODES, "MME mode")
    text = response.lower()
    if mode == "official":
        return _label_from_prefix(text)
    text = text.strip().replace(".", "")
    if len(text) == 1:
        # lmms-eval decides every one-character answer here, before the prefix rule.
        return {"y": "yes", "n": "no"}.get(text, "other")
    return _label_from_prefix(text)


def _ground_truth(answer, where: str) -> str:
    """The ground-truth label of an item, "yes" or "no" (the files hold "Yes" / "No")."""
    label = answer.strip().lower() if isinstance(answer, str) else None
    if label not in ("yes", "no"):
        raise LntuneError(f"{where}: ground-truth answer must be Yes or No, got {answer!r}")
    return label


def _check_item(item, index: int) -> None:
    """Raise LntuneError unless item is a dict with the four MME keys, all strings."""
    where = f"MME item {index}"
    if not isinstance(item, dict):
        raise LntuneError(f"{where}: expected a dict with keys {', '.join(_ITEM_KEYS)}, got {type(item).__name__}")
    missing = [key for key in _ITEM_KEYS if key not in item]
    if missing:
        raise LntuneError(f"{where}: missing key(s) {', '.join(missing)}")
    for key in ("subtask", "image", "prediction"):
        if not isinstance(item[key], str):
            raise LntuneError(f"{where}: {key} must be a string, got {type(item[key]).__name__}")


def _score_subtask(outcomes: dict[str, list[bool]]) -> dict:
    """Score one subtask from {image: [question right?, ...]}: score, acc, acc_plus and counts."""
    questions = sum(len(results) for results in outcomes.values())
    correct = sum(sum(results) for results in outcomes.values())
    # acc+ needs every question of an image right; MME has exactly two per image (the official
    # code pairs consecutive lines and asserts two), an incomplete pair is judged on what is there.
    images_all_right = sum(all(results) for results in outcomes.values())
    acc = correct / questions
    acc_plus = images_all_right / len(outcomes)
    return {
        # The official sum is acc * 100 then acc_plus * 100, added in that order.
        "score": acc * 100 + acc_plus * 100,
        "acc": acc,
        "acc_plus": acc_plus,
        "questions": questions,
        "images": len(outcomes),
    }


def score_mme(items: list[dict], mode: str = "official") -> dict:
    """Score MME predictions: per subtask, perception and cognition sums, and their total.

    items: {"subtask", "image" (file name; groups the questions of one image), "answer" ("Yes" or
    "No"), "prediction" (the model's raw text)}, in any order. Subtask names outside PERCEPTION and
    COGNITION are scored and listed under "subtasks" but counted in neither sum (nor in "total").
    Standard subtasks with no items are listed in "missing_subtasks" and add nothing to the sums.
    """
    check_mode(mode, MODES, "MME mode")
    if not items:
        raise LntuneError("no MME items to score")
    outcomes: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for index, item in enumerate(items):
        _check_item(item, index)
        where = f"MME item {index} ({item['subtask']}/{item['image']})"
        truth = _ground_truth(item["answer"], where)
        outcomes[item["subtask"]][item["image"]].append(parse_answer(item["prediction"], mode) == truth)

    subtasks = {name: _score_subtask(per_image) for name, per_image in outcomes.items()}
    # Summed in the official subtask order, so the floats add up exactly as calculation.py's do.
    perception = sum(subtasks[name]["score"] for name in PERCEPTION if name in subtasks)
    cognition = sum(subtasks[name]["score"] for name in COGNITION if name in subtasks)
    return {
        "perception": float(perception),
        "cognition": float(cognition),
        "total": float(perception + cognition),
        "subtasks": subtasks,
        "missing_subtasks": [name for name in PERCEPTION + COGNITION if name not in subtasks],
        "mode": mode,
    }
