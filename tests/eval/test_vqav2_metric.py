"""VQAv2 accuracy: hand-derived cases for every official rule and quirk (the official VQA evaluation code; docs/evaluation.md).

Each expected value is worked out by hand from the rules of the official vqaEval.py; the comment next
to it shows the derivation.
"""

import copy

import pytest

from lntune.errors import LntuneError
from lntune.eval.metrics.vqav2 import (
    CONTRACTIONS,
    MODES,
    llava_answer_processor,
    process_digit_article,
    process_punctuation,
    question_accuracy,
    score_vqav2,
)


def with_matches(matches: int, prediction: str = "cat") -> list[str]:
    """10 answers: `matches` copies of the prediction, then distinct wrong answers."""
    return [prediction] * matches + [f"wrong{index}" for index in range(10 - matches)]


def annotation(question_id: int, answers: list[str], answer_type: str = "other", question_type: str = "what") -> dict:
    return {
        "question_id": question_id,
        "image_id": 1,
        "question_type": question_type,
        "answer_type": answer_type,
        "multiple_choice_answer": answers[0],
        "answers": [
            {"answer": answer, "answer_confidence": "yes", "answer_id": index + 1} for index, answer in enumerate(answers)
        ],
    }


# ---------------------------------------------------------------------------------------------- ladder


@pytest.mark.parametrize(
    ("matches", "expected"),
    [
        (0, 0.0),  # every leave-one-out score is 0/3
        (1, 0.3),  # 9 answers see 1 match (1/3 each), the matching one sees 0: 9 * 1/3 / 10
        (2, 0.6),  # 8 * 2/3 + 2 * 1/3 = 6, / 10
        (3, 0.9),  # 7 * 1 + 3 * 2/3 = 9, / 10
        (4, 1.0),  # 6 * min(1, 4/3) + 4 * 3/3 = 10, / 10
        (7, 1.0),  # every answer sees >= 3 others matching
    ],
)
def test_accuracy_ladder(matches, expected):
    assert question_accuracy("cat", with_matches(matches), mode="official") == pytest.approx(expected)


def test_ladder_is_not_a_plain_matches_over_three():
    # The naive min(1, m/3) would give 1/3 and 2/3 and 1 for m = 1, 2, 3; the leave-one-out mean does not.
    assert question_accuracy("cat", with_matches(1), mode="official") != pytest.approx(1 / 3)
    assert question_accuracy("cat", with_matches(3), mode="official") != pytest.approx(1.0)


def test_ladder_float_is_the_official_sum_in_answer_order():
    # Two matches placed LAST: scores are [2/3] * 8 then [1/3] * 2, summed left to right as vqaEval.py
    # does, then divided by 10. That float is 0.5999999999999999 on CPython 3.11, not 0.6.
    answers = [f"wrong{index}" for index in range(8)] + ["cat", "cat"]
    official_float = sum([2 / 3] * 8 + [1 / 3] * 2) / 10
    assert question_accuracy("cat", answers, mode="official") == official_float
    # Placed first, the sum order gives a different float: the position is part of the official result.
    assert question_accuracy("cat", ["cat", "cat"] + answers[:8], mode="official") == sum([1 / 3] * 2 + [2 / 3] * 8) / 10


def test_fewer_than_ten_answers_average_over_what_is_there():
    # 3 answers, 1 match: [0, 1/3, 1/3] -> 2/9.
    assert question_accuracy("cat", ["cat", "dog", "cow"], mode="official") == pytest.approx(2 / 9)


def test_no_answers_is_a_user_error():
    with pytest.raises(LntuneError, match="at least one human answer"):
        question_accuracy("cat", [], mode="official")


# ------------------------------------------------------------------------------------------ unanimity


def test_unanimous_answers_are_not_normalised_official():
    # All 10 answers are "Yes.": unanimous, so neither side is normalised and "yes" != "Yes." -> 0.
    assert question_accuracy("yes", ["Yes."] * 10, mode="official") == 0.0
    # The exact string still matches all 9 others -> 1.
    assert question_accuracy("Yes.", ["Yes."] * 10, mode="official") == 1.0


def test_unanimous_answers_llava_processes_the_prediction_only():
    # llava: "Yes." -> processor -> "yes"; the unanimous answers stay "Yes." -> no match -> 0.
    # (The official mode gave 1.0 for the same pair just above.)
    assert question_accuracy("Yes.", ["Yes."] * 10, mode="llava") == 0.0
    # "yes" -> processor -> "yes" != "Yes." -> 0, same as official.
    assert question_accuracy("yes", ["Yes."] * 10, mode="llava") == 0.0
    # Answers all "yes", prediction "Yes.": official compares "Yes." with "yes" -> 0; llava turns the
    # prediction into "yes" -> 9 matches for each answer -> 1.
    assert question_accuracy("Yes.", ["yes"] * 10, mode="official") == 0.0
    assert question_accuracy("Yes.", ["yes"] * 10, mode="llava") == 1.0


def test_disagreeing_answers_normalise_both_sides_official():
    # 9 x "Yes." and 1 x "yes": not unanimous, so all become "yes" and so does "YES!" -> 10 matches -> 1.
    assert question_accuracy("YES!", ["Yes."] * 9 + ["yes"], mode="official") == 1.0


def test_unanimity_is_decided_after_strip():
    # "yes " strips to "yes": the answers are unanimous, nothing is normalised, "Yes" != "yes" -> 0.
    # (Deciding before the strip would normalise everything and give 1.)
    assert question_accuracy("Yes", ["yes"] * 9 + ["yes "], mode="official") == 0.0


def test_newline_tab_and_strip_apply_even_when_unanimous():
    # " yes\n" -> "yes" and "yes\t" -> "yes": unanimous "yes", prediction "yes" -> 1.
    assert question_accuracy("yes\t", [" yes\n"] * 10, mode="official") == 1.0


def test_lmms_eval_normalises_even_unanimous_answers():
    # No unanimity rule: "Yes." -> "yes" on both sides -> 1 (official gives 0 for this pair).
    assert question_accuracy("yes", ["Yes."] * 10, mode="lmms-eval") == 1.0
    assert question_accuracy("two", ["2"] * 10, mode="lmms-eval") == 1.0
    assert question_accuracy("two", ["2"] * 10, mode="official") == 0.0


def test_default_mode_is_llava():
    # Only llava gives 1 here (official: "Yes." vs "yes" -> 0).
    assert question_accuracy("Yes.", ["yes"] * 10) == 1.0


# -------------------------------------------------------------------------------------- punctuation


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("yes-no", "yes no"),  # "-" touches no space -> replaced by a space
        ("yes - no", "yes  no"),  # " -" occurs -> deleted, both spaces stay
        ("what?", "what "),  # "?" touches no space -> a space
        ("what ?", "what "),  # " ?" occurs -> deleted
        ("(yes)", " yes "),  # "(" and ")" each touch no space -> spaces
        ("x;-y", "x  y"),  # ";" -> space; "-" is judged on the ORIGINAL "x;-y" (no space) -> space too
        # each mark decided on its own: "/" touches no space -> "a b (c)"; " (" occurs -> "(" deleted
        # -> "a b c)"; neither ") " nor " )" occurs -> ")" becomes " " -> "a b c "
        ("a/b (c)", "a b c "),
    ],
)
def test_punctuation_space_or_delete(text, expected):
    assert process_punctuation(text) == expected


def test_digit_comma_digit_anywhere_deletes_every_mark():
    # "2,5" holds digit,digit: every mark is deleted, even "/" that would otherwise become a space.
    assert process_punctuation("2,5 a/b") == "25 ab"
    assert process_punctuation("a/b") == "a b"
    assert process_punctuation("1,000") == "1000"
    # A comma not between digits: "a,b" -> "a b" (no space next to it, no digit,digit).
    assert process_punctuation("a,b") == "a b"


def test_unlisted_marks_are_kept():
    # Apostrophe, colon, "#", "%" are not in the official list.
    assert process_punctuation("it's 10:30 #1 50%") == "it's 10:30 #1 50%"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("yes.", "yes"),  # period not followed by a digit -> deleted
        ("3.5", "3.5"),  # followed by a digit -> kept
        ("e.g.", "eg"),  # both deleted
        (".5", ".5"),  # the mistyped look-behind never checks the left side: kept like "3.5"
        ("a.5", "a.5"),  # same: only the right side decides
        ("1.", "1"),  # digit on the left does not protect it
    ],
)
def test_period_rule(text, expected):
    assert process_punctuation(text) == expected


def test_period_deletion_is_capped_at_32():
    # re.UNICODE (= 32) is passed as the count: of 40 deletable periods, 32 go and 8 stay.
    assert process_punctuation("." * 40) == "." * 8
    assert process_punctuation("." * 32) == ""
    # The cap counts deletions from the left: 33 "a." pairs keep only the last period.
    assert process_punctuation("a." * 33) == "a" * 32 + "a."


# ----------------------------------------------------------------------------------- digits, articles


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("two", "2"),
        ("Two", "2"),  # lower-cased before the lookup
        ("none", "0"),
        ("zero", "0"),
        ("ten", "10"),
        ("eleven", "eleven"),  # the map stops at ten
        ("twos", "twos"),  # whole words only
        ("the dog", "dog"),
        ("An Apple", "apple"),
        ("a an the", ""),
        ("  many \t  spaces ", "many spaces"),  # split on whitespace, single-space join
    ],
)
def test_numbers_and_articles(text, expected):
    assert process_digit_article(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("dont", "don't"),
        ("isnt", "isn't"),
        ("whats", "what's"),
        ("Dont", "don't"),  # lower-cased first, then looked up
        ("im", "im"),  # the key is "Im"; lower-cased words never reach it
        ("Im", "im"),
        ("ive", "ive"),  # key "Ive", same
        ("somebody'd", "somebodyd"),  # the official entry maps the wrong way
        ("couldn'tve", "couldn't've"),  # keys with an apostrophe do match (the apostrophe is not punctuation)
    ],
)
def test_contractions(text, expected):
    assert process_digit_article(text) == expected


def test_contraction_table_has_the_official_120_entries():
    assert len(CONTRACTIONS) == 120
    assert {"Id've", "I'dve", "Im", "Ive"} <= CONTRACTIONS.keys()


# --------------------------------------------------------------------------------- llava processor


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # lower -> "the dog's bone?" -> drop "?" -> "'s" -> " 's" -> "the dog 's bone" -> drop "the"
        ("The dog's bone?", "dog 's bone"),
        # "?" is deleted outright (glued), where official punctuation would leave a space
        ("what?yes", "whatyes"),
        # "," deleted before punctuation: "1,000" -> "1000"
        ("1,000", "1000"),
        # "yes, two." -> "yes two." -> period deleted -> "yes two" -> "yes 2"
        ("Yes, two.", "yes 2"),
        # lower + newline -> space + number word
        ("Two\nDogs", "2 dogs"),
        # "let's" is split to "let 's", so the contraction key "let's" is never reached
        ("Let's", "let 's"),
        # other marks follow the official rule: "-" with no space -> space
        ("black-white", "black white"),
    ],
)
def test_llava_answer_processor(text, expected):
    assert llava_answer_processor(text) == expected


def test_llava_question_mark_differs_from_official_punctuation():
    assert process_digit_article(process_punctuation("what?yes")) == "what yes"
    assert llava_answer_processor("what?yes") == "whatyes"


# ------------------------------------------------------------------------------------------- scoring


def scoring_fixture():
    annotations = [
        # q1: unanimous "yes", prediction "yes" -> 1 in every mode
        annotation(1, ["yes"] * 10, "yes/no", "is the"),
        # q2: 1 x "yes" among 9 "no" -> 0.3
        annotation(2, ["yes"] + ["no"] * 9, "yes/no", "is there"),
        # q3: 3 x "2", 7 x "3", prediction "two": normalised to "2" (answers disagree) -> 0.9
        annotation(3, ["2"] * 3 + ["3"] * 7, "number", "how many"),
        # q4: unanimous "1", prediction "one": official keeps "one" -> 0; llava makes it "1" -> 1
        annotation(4, ["1"] * 10, "number", "how many"),
        # q5: no prediction -> not scored
        annotation(5, ["red"] * 10, "other", "what color"),
    ]
    predictions = {4: "one", 1: "yes", 2: "yes", 3: "two"}
    return predictions, annotations


def test_score_llava_mode():
    predictions, annotations = scoring_fixture()
    result = score_vqav2(predictions, annotations)  # default llava
    assert result == {
        "accuracy": 80.0,  # 100 * (1 + .3 + .9 + 1) / 4
        "per_answer_type": {"yes/no": 65.0, "number": 95.0},  # (1 + .3) / 2, (.9 + 1) / 2
        "per_question_type": {"is the": 100.0, "is there": 30.0, "how many": 95.0},
        "count": 4,
        "mode": "llava",
    }


def test_score_official_mode():
    predictions, annotations = scoring_fixture()
    result = score_vqav2(predictions, annotations, mode="official")
    assert result["accuracy"] == 55.0  # 100 * (1 + .3 + .9 + 0) / 4
    assert result["per_answer_type"] == {"yes/no": 65.0, "number": 45.0}  # (.9 + 0) / 2
    assert result["per_question_type"]["how many"] == 45.0
    assert result["count"] == 4
    assert result["mode"] == "official"


def test_score_rounds_every_accuracy_to_two_decimals():
    annotations = [
        # "other"/"what color": accuracies 1, 0, 0 -> 100/3 = 33.333.. -> 33.33
        annotation(1, with_matches(4), "other", "what color"),
        annotation(2, with_matches(0), "other", "what color"),
        annotation(3, with_matches(0), "other", "what color"),
        # "yes/no"/"is the": .6, 1, 1 -> 260/3 = 86.666.. -> 86.67
        annotation(4, with_matches(2), "yes/no", "is the"),
        annotation(5, with_matches(5), "yes/no", "is the"),
        annotation(6, with_matches(6), "yes/no", "is the"),
        # "number"/"how many": .3 alone -> 30.0 (100 * 0.3 = 30.000000000000004 before rounding)
        annotation(7, with_matches(1), "number", "how many"),
    ]
    predictions = {question_id: "cat" for question_id in range(1, 8)}
    result = score_vqav2(predictions, annotations, mode="official")
    assert result["per_answer_type"] == {"other": 33.33, "yes/no": 86.67, "number": 30.0}
    assert result["per_question_type"] == {"what color": 33.33, "is the": 86.67, "how many": 30.0}
    # overall: (1 + 0 + 0 + .6 + 1 + 1 + .3) / 7 = 3.9 / 7 = 55.714.. -> 55.71
    assert result["accuracy"] == 55.71
    assert result["count"] == 7


def test_score_does_not_modify_the_annotations():
    # The official code rewrites the answers in place; we must not (annotations are reused across modes).
    predictions, annotations = scoring_fixture()
    before = copy.deepcopy(annotations)
    score_vqav2(predictions, annotations, mode="lmms-eval")
    assert annotations == before


def test_unknown_question_id_is_a_user_error():
    predictions, annotations = scoring_fixture()
    predictions[12345] = "yes"
    with pytest.raises(LntuneError, match="12345"):
        score_vqav2(predictions, annotations)


def test_no_predictions_is_a_user_error():
    _, annotations = scoring_fixture()
    with pytest.raises(LntuneError, match="no predictions"):
        score_vqav2({}, annotations)


@pytest.mark.parametrize("call", ["score", "question"])
def test_unknown_mode_lists_the_valid_modes(call):
    predictions, annotations = scoring_fixture()
    with pytest.raises(LntuneError) as raised:
        if call == "score":
            score_vqav2(predictions, annotations, mode="vqa")
        else:
            question_accuracy("yes", ["yes"] * 10, mode="vqa")
    message = str(raised.value)
    assert "'vqa'" in message
    assert all(mode in message for mode in MODES)
