"""MME metric: both answer parsers on tricky strings, acc / acc+ and the perception / cognition sums.

Expected values are derived by hand from the official rules (eval_tool/calculation.py and
lmms-eval's mme utils); each case says how.
"""

import random

import pytest

from lntune.errors import LntuneError
from lntune.eval.metrics.mme import COGNITION, MODES, PERCEPTION, parse_answer, score_mme


@pytest.mark.parametrize("response, expected", [
    ("Yes", "yes"),  # lower() -> "yes", exact
    ("NO", "no"),  # lower() -> "no", exact
    ("Yes, it is", "yes"),  # r[:4] = "yes," contains "yes"
    (" yes", "yes"),  # no strip: r[:4] = " yes" still contains "yes"
    ("  yes", "other"),  # no strip: r[:4] = "  ye" holds neither
    ("Nope", "no"),  # r[:4] = "nope" contains "no"
    ("I think yes", "other"),  # r[:4] = "i th"
    ("yesno", "yes"),  # r[:4] = "yesn" contains "yes" (and not "no")
    ("noyes", "no"),  # r[:4] = "noye": contains "no", not "yes"
    ("Not sure", "no"),  # r[:4] = "not "
    ("know", "no"),  # r[:4] = "know" contains "no": a quirk of the 4-character window
    ("...no", "other"),  # r[:4] = "...n"
    ("Y", "other"),  # a lone "y" means nothing officially
    ("", "other"),
    ("yes\n", "yes"),  # not exact, but r[:4] = "yes\n" contains "yes"
])
def test_official_parsing(response, expected):
    assert parse_answer(response) == expected
    assert parse_answer(response, "official") == expected


@pytest.mark.parametrize("response, expected", [
    ("  yes", "yes"),  # strip -> "yes" (officially "other")
    ("Yes.", "yes"),  # "." dropped -> "yes"
    ("...no", "no"),  # "." dropped -> "no" (officially "other")
    ("Y", "yes"),  # single "y"
    ("n.", "no"),  # "." dropped -> single "n"
    ("x", "other"),  # any other single character
    ("Nope", "no"),  # prefix "nope" contains "no", as officially
    ("I think yes", "other"),  # prefix "i th", as officially
    ("y e s", "other"),  # prefix "y e " holds neither
])
def test_lmms_eval_parsing(response, expected):
    assert parse_answer(response, "lmms-eval") == expected


def test_unknown_mode_lists_valid_modes():
    with pytest.raises(LntuneError, match="official") as raised:
        parse_answer("yes", "strict")
    assert "lmms-eval" in str(raised.value) and "'strict'" in str(raised.value)
    with pytest.raises(LntuneError, match="lmms-eval"):
        score_mme([item("existence", "1.jpg", "Yes", "yes")], "strict")
    assert MODES == ("official", "lmms-eval")


def item(subtask, image, answer, prediction):
    return {"subtask": subtask, "image": image, "answer": answer, "prediction": prediction}


EXISTENCE = [
    item("existence", "a.jpg", "Yes", "Yes"), item("existence", "a.jpg", "No", "No, there is not."),  # both right
    item("existence", "b.jpg", "Yes", "Yes"), item("existence", "b.jpg", "No", "Yes"),  # one right
    item("existence", "c.jpg", "Yes", "Maybe"), item("existence", "c.jpg", "No", "Yes"),  # "other" + wrong
]


def test_acc_and_acc_plus_of_one_subtask():
    result = score_mme(EXISTENCE)
    existence = result["subtasks"]["existence"]
    # 3 of 6 questions right -> acc 0.5; only a.jpg has both right -> acc+ 1/3; 50 + 33.33...
    assert existence["acc"] == 0.5
    assert existence["acc_plus"] == pytest.approx(1 / 3)
    assert existence["score"] == pytest.approx(50 + 100 / 3)
    assert (existence["questions"], existence["images"]) == (6, 3)
    assert result["perception"] == pytest.approx(50 + 100 / 3)
    assert result["cognition"] == 0.0
    assert result["mode"] == "official"


def test_other_is_always_wrong_even_against_no():
    # "Maybe" parses as "other": wrong for a No question as well as for a Yes one.
    result = score_mme([item("count", "x.png", "No", "Maybe"), item("count", "x.png", "Yes", "Yes")])
    assert result["subtasks"]["count"]["acc"] == 0.5
    assert result["subtasks"]["count"]["acc_plus"] == 0.0


def test_sums_missing_and_unknown_subtasks():
    items = EXISTENCE + [
        item("count", "1.jpg", "Yes", "yes"), item("count", "1.jpg", "No", "no"),  # 100 + 100 = 200
        item("code_reasoning", "1.png", "Yes", "yes"), item("code_reasoning", "1.png", "No", "yes"),  # 50 + 0 = 50
        item("my_subtask", "1.jpg", "Yes", "yes"), item("my_subtask", "1.jpg", "No", "no"),  # 200, in no sum
    ]
    result = score_mme(items)
    assert result["subtasks"]["count"]["score"] == 200.0
    assert result["subtasks"]["code_reasoning"]["score"] == 50.0
    assert result["subtasks"]["my_subtask"]["score"] == 200.0
    assert result["perception"] == pytest.approx(50 + 100 / 3 + 200)
    assert result["cognition"] == 50.0
    assert result["total"] == pytest.approx(50 + 100 / 3 + 200 + 50)
    present = {"existence", "count", "code_reasoning"}
    assert result["missing_subtasks"] == [name for name in PERCEPTION + COGNITION if name not in present]
    assert "my_subtask" not in result["missing_subtasks"]


def test_questions_group_by_image_whatever_the_order():
    shuffled = EXISTENCE[:]
    random.Random(0).shuffle(shuffled)
    assert score_mme(shuffled) == score_mme(EXISTENCE)


def test_same_image_name_in_two_subtasks_is_two_images():
    items = [item("color", "1.jpg", "Yes", "yes"), item("color", "1.jpg", "No", "no"),
             item("scene", "1.jpg", "Yes", "no"), item("scene", "1.jpg", "No", "no")]
    result = score_mme(items)
    assert result["subtasks"]["color"]["acc_plus"] == 1.0
    assert result["subtasks"]["scene"]["acc_plus"] == 0.0


def test_mode_changes_parsing_not_scoring():
    items = [item("OCR", "1.jpg", "Yes", "  yes"), item("OCR", "1.jpg", "No", "n")]
    # official: "  yes" -> other, "n" -> other: 0 right. lmms-eval: yes and no: both right -> 200.
    assert score_mme(items)["subtasks"]["OCR"]["score"] == 0.0
    lmms = score_mme(items, "lmms-eval")
    assert lmms["subtasks"]["OCR"]["score"] == 200.0 and lmms["mode"] == "lmms-eval"


def test_full_marks_are_2000_and_800():
    items = [item(name, f"{name}.jpg", answer, answer) for name in PERCEPTION + COGNITION for answer in ("Yes", "No")]
    result = score_mme(items)
    assert (result["perception"], result["cognition"], result["total"]) == (2000.0, 800.0, 2800.0)
    assert result["missing_subtasks"] == []


@pytest.mark.parametrize("items, message", [
    ([], "no MME items"),
    ([item("count", "1.jpg", "Maybe", "yes")], r"item 0 \(count/1.jpg\).*Yes or No"),
    ([{"subtask": "count", "image": "1.jpg", "answer": "Yes"}], "item 0: missing key.*prediction"),
    ([item("count", "1.jpg", "Yes", None)], "item 0: prediction must be a string"),
])
def test_bad_items_raise(items, message):
    with pytest.raises(LntuneError, match=message):
        score_mme(items)
