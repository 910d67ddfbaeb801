"""VQAv2 accuracy, exactly as the official VQA evaluation computes it (``vqaEval.py`` of GT-Vision-Lab/VQA).

One question has 10 human answers. After the official cleaning (strip, newline/tab -> space) and, only
when the humans disagree, the official normalisation (punctuation, then number words / articles /
contractions), a prediction scores, for each human answer, min(1, matches among the OTHER nine / 3);
the question's accuracy is the mean of those 10 numbers (0, .3, .6, .9, 1 for 0, 1, 2, 3, >=4 matches).
Overall, per-answer-type and per-question-type accuracies are round(100 * mean, 2).

Modes (docs/evaluation.md, "vqav2"):
- ``official``: the rule above, applied to the raw prediction.
- ``llava`` (lntune's default): the prediction first goes through LLaVA's ``EvalAIAnswerProcessor``
  (llava/eval/m4c_evaluator.py), as LLaVA's submission script does, then the official rule scores it.
- ``lmms-eval``: both sides are always normalised; there is no unanimity rule.

The odd-looking rules below are the official behaviour, kept on purpose; each one says where it comes
from. Everything here is a pure function: no I/O, no state, inputs are never modified (the official
code rewrites the annotations' answers in place; we do not).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from lntune.errors import LntuneError
from lntune.eval.metrics.modes import check_mode

MODES = ("official", "llava", "lmms-eval")
DEFAULT_MODE = "llava"

# vqaEval.py `self.punct`, in its order. The order matters: each mark is decided and replaced in turn.
# Marks not listed here (the apostrophe, ":", "#", "%", "&", "*", ...) are never touched.
PUNCTUATION_MARKS = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")

# vqaEval.py `self.commaStrip`: a comma between two digits ("1,000"). It is only ever searched for,
# never substituted: its presence anywhere switches every mark to deletion (see process_punctuation).
DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")

# vqaEval.py `self.periodStrip` is "(?!<=\d)(\.)(?!\d)". The leading group was meant as a look-behind
# "(?<!\d)" but is a look-ahead for the two characters "<=" followed by a digit, which can never be
# where a "." is; so it always passes and the rule is just "a period not followed by a digit". That is
# why ".5" and "a.5" keep their period, exactly as "3.5" does.
PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")

# vqaEval.py calls `periodStrip.sub("", text, re.UNICODE)`: the third positional argument of
# Pattern.sub is `count`, and re.UNICODE is the flag value 32, so at most 32 periods are deleted.
PERIOD_DELETION_LIMIT = 32

# vqaEval.py `self.manualMap`. Only whole words, after lower-casing; "eleven" and up stay words.
NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}

# vqaEval.py `self.articles`.
ARTICLES = frozenset({"a", "an", "the"})

# vqaEval.py `self.contractions`: 120 entries, straight apostrophes (the current official file; an old
# revision used curly ones). Kept verbatim, quirks included:
# - the keys "Id've", "I'dve", "Im" and "Ive" are capitalised, and words are lower-cased before the
#   lookup, so these four can never match ("im" stays "im");
# - "somebody'd" maps the wrong way, to "somebodyd";
# - "let's", "she's" map to themselves.
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've",
    "hasnt": "hasn't", "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've",
    "hes": "he's", "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've",
    "I'dve": "I'd've", "Im": "I'm", "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've",
    "it'dve": "it'd've", "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't",
    "mustve": "must've", "neednt": "needn't", "notve": "not've", "oclock": "o'clock",
    "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at",
    "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's",
    "shouldve": "should've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd", "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've", "somebodyll": "somebody'll", "somebodys": "somebody's",
    "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've",
    "werent": "weren't", "whatll": "what'll", "whatre": "what're", "whats": "what's",
    "whatve": "what've", "whens": "when's", "whered": "where'd", "wheres": "where's",
    "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're",
    "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've",
    "y'all'dve": "y'all'd've", "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've",
    "youll": "you'll", "youre": "you're", "youve": "you've",
}  # fmt: skip

# The official per-answer score saturates at this many matching other answers.
MATCHES_FOR_FULL_CREDIT = 3


def clean_whitespace(text: str) -> str:
    """The cleaning vqaEval.py applies to every answer and prediction: newline/tab -> space, then strip.

    Inner runs of spaces are kept: they only disappear in process_digit_article's split/join, which
    unanimous answers never reach.
    """
    return text.replace("\n", " ").replace("\t", " ").strip()


def process_punctuation(text: str) -> str:
    """vqaEval.py `processPunctuation`: remove or space out punctuation, then drop periods.

    For each mark of PUNCTUATION_MARKS in turn: delete it when it stands next to a space (mark + " " or
    " " + mark) in the ORIGINAL text, or when the original text holds a digit,digit comma anywhere;
    otherwise replace it with a space. The tests look at the original text, not at the text as earlier
    marks have already changed it: in "x;-y" the ";" becomes a space, yet the "-" (now next to that
    space) is still replaced by a space, giving "x  y". Then every "." not followed by a digit is
    deleted, the first PERIOD_DELETION_LIMIT of them only.
    """
    delete_every_mark = DIGIT_COMMA_DIGIT.search(text) is not None
    result = text
    for mark in PUNCTUATION_MARKS:
        next_to_space = mark + " " in text or " " + mark in text
        result = result.replace(mark, "" if next_to_space or delete_every_mark else " ")
    return PERIOD_NOT_BEFORE_DIGIT.sub("", result, count=PERIOD_DELETION_LIMIT)


def process_digit_article(text: str) -> str:
    """vqaEval.py `processDigitArticle`: lower-case, split on whitespace, number words -> digits,
    drop articles, expand contractions, join with single spaces.

    The order is the official one: a word is mapped to a digit before the article test, and the
    contraction map is looked up on the lower-cased word (so its capitalised keys never match).
    """
    words = [NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    kept = [word for word in words if word not in ARTICLES]
    return " ".join(CONTRACTIONS.get(word, word) for word in kept)


def normalize_answer(text: str) -> str:
    """The official normalisation of one answer: punctuation first, then digits/articles."""
    return process_digit_article(process_punctuation(text))


def llava_answer_processor(text: str) -> str:
    """LLaVA's `EvalAIAnswerProcessor.__call__` (llava/eval/m4c_evaluator.py, from MMF).

    Its own tokenisation first: lower-case, delete every "," and "?" (glued to the neighbours, where the
    official rule would put a space), split "'s" off as " 's", strip; then newline/tab -> space and
    strip; then the official punctuation and digit/article steps. LLaVA's comma regex differs slightly
    from the official one ("(?<=\\d)(\\,)+(?=\\d)"), but every comma is gone by then, so neither can
    ever fire here and the official process_punctuation gives the same result.
    """
    tokenized = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    return normalize_answer(clean_whitespace(tokenized))


def leave_one_out_accuracy(prediction: str, answers: list[str]) -> float:
    """vqaEval.py's averaging: for each human answer, min(1, matches among the others / 3); the mean.

    With m matching answers out of 10 this is 0, .3, .6, .9, 1 for m = 0, 1, 2, 3, >=4 (up to float
    rounding). The sum is taken in answer order and then divided, as the official code does, so the
    float is the official one bit for bit. The official code leaves an answer out by comparing whole
    answer dicts (`item != gtAnsDatum`); answer_id makes the 10 dicts distinct, so leaving out by
    position is the same thing.
    """
    if not answers:
        raise LntuneError("a VQAv2 question needs at least one human answer to be scored")
    per_answer = []
    for left_out in range(len(answers)):
        matches = sum(1 for index, answer in enumerate(answers) if index != left_out and answer == prediction)
        per_answer.append(min(1.0, matches / MATCHES_FOR_FULL_CREDIT))
    return float(sum(per_answer)) / len(per_answer)


def question_accuracy(prediction: str, answers: list[str], mode: str = DEFAULT_MODE) -> float:
    """Accuracy (0.0 .. 1.0) of one prediction against one question's human answers."""
    check_mode(mode, MODES, "VQAv2 scoring mode")
    if mode == "llava":
        prediction = llava_answer_processor(prediction)
    prediction = clean_whitespace(prediction)
    answers = [clean_whitespace(answer) for answer in answers]
    # Official quirk: when the humans all wrote the same string (after cleaning), nothing is normalised,
    # neither the answers nor the prediction: "Yes." then only matches the exact string "Yes.".
    humans_disagree = len(set(answers)) > 1
    if mode == "lmms-eval" or humans_disagree:
        prediction = normalize_answer(prediction)
        answers = [normalize_answer(answer) for answer in answers]
    return leave_one_out_accuracy(prediction, answers)


def rounded_percent(accuracies: list[float]) -> float:
    """vqaEval.py `setAccuracy`: round(100 * sum / count, 2), computed in that order."""
    return round(100 * float(sum(accuracies)) / len(accuracies), 2)


def missing_annotation_error(question_ids: Iterable[int]) -> LntuneError:
    """The error for predictions whose question_id is not in the annotation file."""
    missing = list(question_ids)
    shown = ", ".join(str(question_id) for question_id in missing[:5])
    more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
    return LntuneError(
        f"VQAv2: no annotation for the predicted question_id {shown}{more}; "
        "score against the annotation file of the split the questions came from"
    )


def score_vqav2(predictions: Mapping[int, str], annotations: list[dict], mode: str = DEFAULT_MODE) -> dict:
    """Score predictions {question_id: answer} against official annotation dicts.

    Only questions with a prediction are scored, in annotation order (the official summation order).
    Returns {"accuracy", "per_answer_type", "per_question_type", "count", "mode"}; every accuracy is
    round(100 * mean, 2) as in vqaEval.py.
    """
    check_mode(mode, MODES, "VQAv2 scoring mode")
    # A dict like the official index: a repeated question_id keeps its last annotation.
    annotation_by_id = {annotation["question_id"]: annotation for annotation in annotations}
    unknown = [question_id for question_id in predictions if question_id not in annotation_by_id]
    if unknown:
        raise missing_annotation_error(unknown)
    if not predictions:
        raise LntuneError("VQAv2: there are no predictions to score")

    overall: list[float] = []
    by_answer_type: dict[str, list[float]] = {}
    by_question_type: dict[str, list[float]] = {}
    for question_id, annotation in annotation_by_id.items():
        if question_id not in predictions:
            continue
        answers = [entry["answer"] for entry in annotation["answers"]]
        accuracy = question_accuracy(predictions[question_id], answers, mode)
        overall.append(accuracy)
        by_answer_type.setdefault(annotation["answer_type"], []).append(accuracy)
        by_question_type.setdefault(annotation["question_type"], []).append(accuracy)

    return {
        "accuracy": rounded_percent(overall),
        "per_answer_type": {name: rounded_percent(values) for name, values in by_answer_type.items()},
        "per_question_type": {name: rounded_percent(values) for name, values in by_question_type.items()},
        "count": len(overall),
        "mode": mode,
    }
