"""POPE metric: the official parser's quirks, metrics on a hand-made confusion matrix, zero-division guards.

Expected values are derived by hand from the official evaluate.py (POPE authors; the same rules as
LLaVA's eval_pope.py) and lmms-eval's pope utils; each case says how.
"""

import pytest

from lntune.errors import LntuneError
from lntune.eval.metrics.pope import MODES, parse_answer, score_pope


@pytest.mark.parametrize("text, expected", [
    ("Yes", "yes"),  # words ["Yes"]: no negative word
    ("No", "no"),  # words ["No"]
    ("No.", "no"),  # first sentence "No"
    ("no", "no"),
    ("NO", "yes"),  # case-sensitive: "NO" is not "No" / "no"
    ("Nope", "yes"),  # whole words only
    ("Not", "yes"),  # "Not" is not "not"
    ("There is not a dog.", "no"),  # words [..., "not", ...]
    ("Yes, no doubt", "no"),  # "," removed -> ["Yes", "no", "doubt"] contains "no"
    ("Yes. No, there is not.", "yes"),  # only "Yes" (before the first ".") is looked at
    ("No, there is none", "no"),  # "," removed -> ["No", "there", ...]
    ("No,there is", "yes"),  # "," removed glues "Nothere": no negative word
    ("No!", "yes"),  # "!" is not removed: the word is "No!"
    ("no\nthere is", "yes"),  # split on " " only: the word is "no\nthere"
    ("I do not know", "no"),
    ("", "yes"),  # nothing negative -> yes
])
def test_official_parsing(text, expected):
    assert parse_answer(text) == expected
    assert parse_answer(text, "official") == expected


@pytest.mark.parametrize("text, expected", [
    (" Yes \n", "yes"),  # lower().strip() == "yes"
    ("NO", "no"),  # lower() -> "no" (officially yes)
    ("No.", "other"),  # "no." is neither
    ("Yes, there is", "other"),
    ("", "other"),
])
def test_lmms_eval_parsing(text, expected):
    assert parse_answer(text, "lmms-eval") == expected


def test_unknown_mode_lists_valid_modes():
    with pytest.raises(LntuneError, match="official") as raised:
        parse_answer("yes", "loose")
    assert "lmms-eval" in str(raised.value)
    with pytest.raises(LntuneError, match="official"):
        score_pope(["yes"], ["yes"], "loose")
    assert MODES == ("official", "lmms-eval")


def test_metrics_on_a_hand_made_confusion_matrix():
    labels = ["yes", "yes", "yes", "no", "no", "no", "yes", "yes"]
    predictions = ["Yes", "Yes, there is.", "Yes", "Yes", "No", "There is no dog.", "No", "NO"]
    # parsed: yes yes yes | yes no no | no yes("NO")  ->  tp 4 (items 0,1,2,7), fp 1 (3), tn 2 (4,5), fn 1 (6)
    result = score_pope(labels, predictions)
    assert (result["tp"], result["fp"], result["tn"], result["fn"], result["count"]) == (4, 1, 2, 1, 8)
    assert result["accuracy"] == 6 / 8  # (4 + 2) / 8
    assert result["precision"] == 4 / 5  # 4 / (4 + 1)
    assert result["recall"] == 4 / 5  # 4 / (4 + 1)
    assert result["f1"] == pytest.approx(0.8)  # 2 * .8 * .8 / 1.6
    assert result["yes_ratio"] == 5 / 8  # 5 answers parsed yes
    assert result["warnings"] == [] and result["other"] == 0 and result["mode"] == "official"


def test_precision_and_recall_differ():
    labels = ["yes", "yes", "yes", "no"]
    predictions = ["yes", "no", "no", "yes"]
    # tp 1, fn 2, fp 1, tn 0 -> precision 1/2, recall 1/3, f1 = 2 * (1/6) / (5/6) = 0.4
    result = score_pope(labels, predictions)
    assert result["precision"] == 0.5
    assert result["recall"] == pytest.approx(1 / 3)
    assert result["f1"] == pytest.approx(0.4)
    assert result["accuracy"] == 0.25 and result["yes_ratio"] == 0.5


def test_no_yes_answer_guards_precision_and_f1():
    # tp = fp = 0: precision 0 / 0 and then f1 0 / 0, both reported as 0.0 with a warning each.
    result = score_pope(["yes", "no"], ["No", "No"])
    assert result["precision"] == 0.0 and result["f1"] == 0.0
    assert result["recall"] == 0.0  # 0 / (0 + 1): defined, no warning
    assert result["accuracy"] == 0.5
    assert len(result["warnings"]) == 2
    assert any(w.startswith("precision is undefined") for w in result["warnings"])
    assert any(w.startswith("f1 is undefined") for w in result["warnings"])


def test_no_yes_label_guards_recall():
    # tp = fn = 0: recall 0 / 0 -> 0.0; precision 0 / 1 = 0 -> f1 0 / 0 as well.
    result = score_pope(["no", "no"], ["Yes", "No"])
    assert result["recall"] == 0.0 and result["precision"] == 0.0 and result["f1"] == 0.0
    assert [w.split()[0] for w in result["warnings"]] == ["recall", "f1"]


def test_empty_lists_are_guarded():
    result = score_pope([], [])
    assert result["count"] == 0 and result["accuracy"] == 0.0 and result["yes_ratio"] == 0.0
    assert {w.split()[0] for w in result["warnings"]} == {"accuracy", "precision", "recall", "f1", "yes_ratio"}


def test_lmms_eval_other_is_wrong_and_outside_the_matrix():
    labels = ["yes", "no", "yes", "no"]
    predictions = ["Yes", "No.", "yes", "no"]
    # parsed: yes, other, yes, no -> tp 2, fp 0, tn 1, fn 0, other 1; accuracy 3/4, precision = recall = 1
    result = score_pope(labels, predictions, "lmms-eval")
    assert (result["tp"], result["fp"], result["tn"], result["fn"], result["other"]) == (2, 0, 1, 0, 1)
    assert result["accuracy"] == 0.75
    assert result["precision"] == 1.0 and result["recall"] == 1.0
    assert result["yes_ratio"] == 0.5
    # officially "No." is no: same matrix without the "other"
    official = score_pope(labels, predictions)
    assert (official["tn"], official["other"], official["accuracy"]) == (2, 0, 1.0)


def test_length_mismatch_and_bad_labels_raise():
    with pytest.raises(LntuneError, match="2 labels but 1 predictions"):
        score_pope(["yes", "no"], ["yes"])
    with pytest.raises(LntuneError, match="label 1 is 'No'"):
        score_pope(["yes", "No"], ["yes", "no"])
