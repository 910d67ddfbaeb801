"""Caption metric: CIDEr / BLEU-4 equal pycocoevalcap's own pipeline; tokenisers; the one-image quirk.

The PTB tokenizer starts a JVM per call, so the java tests share module-scoped fixtures (five
runs in all) and are skipped where java is missing.
"""

import math
import random
import shutil

import pytest

from lntune.errors import LntuneError
from lntune.eval.metrics import captions
from lntune.eval.metrics.captions import normalise_caption, score_captions, tokenize

pycocoevalcap = pytest.importorskip("pycocoevalcap")
from pycocoevalcap.bleu.bleu import Bleu  # noqa: E402
from pycocoevalcap.cider.cider import Cider  # noqa: E402
from pycocoevalcap.tokenizer.ptbtokenizer import PUNCTUATIONS, PTBTokenizer  # noqa: E402

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="the PTB tokenizer needs java")

WORDS = ["a", "man", "woman", "dog", "riding", "horse", "on", "the", "beach", "red", "car", "two", "people",
         "sitting", "bench", "with", "an", "umbrella", "it's", "isn't", "dog's", "black-and-white", "3.5"]
MARKS = ["", "", "", ",", ".", "!", "?", ";", " -", "..."]


def random_caption(rng: random.Random) -> str:
    words = [rng.choice(WORDS) + rng.choice(MARKS) for _ in range(rng.randint(3, 10))]
    words[0] = words[0].capitalize()
    return " ".join(words) + rng.choice([".", "", " .", "!"])


def random_corpus(seed: int, images: int):
    rng = random.Random(seed)
    references = {f"img{seed}-{i}": [random_caption(rng) for _ in range(rng.randint(1, 5))] for i in range(images)}
    # half the predictions copy a reference with a small change, so the scores are far from 0
    predictions = {image_id: (rng.choice(refs).replace("the", "a") if rng.random() < 0.5 else random_caption(rng))
                   for image_id, refs in references.items()}
    return references, predictions


CORPORA = [random_corpus(seed, images) for seed, images in ((1, 3), (2, 6), (3, 10))]


@pytest.fixture(scope="module")
def official_scores():
    """pycocoevalcap's own steps (as COCOEvalCap.evaluate does them) on all corpora: two java runs."""
    gts = {(index, image_id): [{"caption": c} for c in refs]
           for index, (references, _) in enumerate(CORPORA) for image_id, refs in references.items()}
    res = {(index, image_id): [{"caption": c}]
           for index, (_, predictions) in enumerate(CORPORA) for image_id, c in predictions.items()}
    gts, res = PTBTokenizer().tokenize(gts), PTBTokenizer().tokenize(res)
    scores = []
    for index in range(len(CORPORA)):
        keys = [key for key in gts if key[0] == index]
        corpus_gts = {key: gts[key] for key in keys}
        corpus_res = {key: res[key] for key in keys}
        cider, _ = Cider().compute_score(corpus_gts, corpus_res)
        bleu, _ = Bleu(4).compute_score(corpus_gts, corpus_res, verbose=0)
        scores.append((cider, bleu[3]))
    return scores


@needs_java
@pytest.mark.parametrize("index", range(len(CORPORA)))
def test_cider_and_bleu_equal_pycocoevalcap(official_scores, index):
    references, predictions = CORPORA[index]
    result = score_captions(references, predictions, tokenizer="ptb")  # one java run each
    cider, bleu4 = official_scores[index]
    assert cider > 0.1  # the corpora are built to score well above 0, so equality means something
    assert result["CIDEr"] == pytest.approx(cider, rel=1e-12)
    assert result["CIDEr_x100"] == pytest.approx(100 * cider, rel=1e-12)
    assert result["BLEU-4"] == pytest.approx(bleu4, rel=1e-12)
    assert result["count"] == len(predictions)
    assert result["tokenizer"] == "ptb"


def test_cider_by_hand_on_two_images():
    # 2 images, 1 reference each, every n-gram in one image only: idf = log(2) - log(1) for all.
    # Each prediction equals its reference (2 words): cosine 1 for unigrams and bigrams, 0 for 3- and
    # 4-grams (empty vectors), no length penalty -> mean(1, 1, 0, 0) = 0.5, x10 -> 5.0 per image.
    result = score_captions({"a": ["red car"], "b": ["two dogs"]}, {"a": "Red car.", "b": "two dogs"},
                            tokenizer="approximate")
    assert result["CIDEr"] == pytest.approx(5.0)
    assert result["CIDEr_x100"] == pytest.approx(500.0)


def test_one_image_set_scores_zero():
    # A single image: idf = log(1) - log(df = 1) = 0 for every n-gram, so CIDEr is 0 even for a
    # perfect caption (official behaviour), while BLEU-4 of the same caption is 1.
    references = {"only": ["a man riding a horse on the beach"]}
    result = score_captions(references, {"only": "A man riding a horse on the beach."}, tokenizer="approximate")
    assert result["CIDEr"] == 0.0 and result["count"] == 1
    assert result["BLEU-4"] == pytest.approx(1.0)
    # The same image in a two-image set scores > 0: the score depends on the evaluated set.
    references["other"] = ["two dogs on a red bench"]
    paired = score_captions(references, {"only": "A man riding a horse on the beach.", "other": "a cat"},
                            tokenizer="approximate")
    assert paired["CIDEr"] > 1.0


def test_only_predicted_images_are_scored():
    references, predictions = CORPORA[2]
    subset = dict(list(predictions.items())[:4])
    with_extra = score_captions(references, subset, tokenizer="approximate")
    only_subset = score_captions({key: references[key] for key in subset}, subset, tokenizer="approximate")
    assert with_extra == only_subset and with_extra["count"] == 4


def test_cider_matches_direct_computation_with_approximate_tokens():
    references, predictions = CORPORA[1]
    tokenized_refs, _ = tokenize(references, "approximate")
    tokenized_preds, _ = tokenize({key: [value] for key, value in predictions.items()}, "approximate")
    cider, _ = Cider().compute_score(tokenized_refs, tokenized_preds)
    result = score_captions(references, predictions, tokenizer="approximate")
    assert result["CIDEr"] == pytest.approx(cider, rel=1e-12) and cider > 0.1
    assert result["tokenizer"] == "approximate"


def test_normalise_caption():
    assert normalise_caption("a\rb\u2028c\u0085d\ne") == "a b c d e"
    assert normalise_caption("plain, text.") == "plain, text."


SIMPLE = [
    "A man, riding a horse.",
    "Two dogs play in the grass, one is brown.",
    "A woman holding an umbrella on a rainy day?",
    "A group of people standing around a table with food on it .",
    "The man's hat is red...",
    "It's a dog's toy; isn't it?",
    "there are 2 men; one is tall: the other isn't",
    "A black-and-white photo -- of a cat!",
    "3.5 apples cost $4.50, 10,000 people.",
    "Mr. Smith went to Washington D.C. today.",
    '"A man riding a horse."',
    "A cat (black) sitting on a laptop keyboard",
    "The dogs' bowls are 50% full",
    "can't won't don't",
    "an 'odd' quote at 5 p.m.",
    "a cat sitting on a laptop keyboard",
]
LINE_BREAKS = {"cr": "a dog\rruns", "ls": "a dog\u2028runs", "nel": "a dog\u0085runs", "after": "a cat."}


@pytest.fixture(scope="module")
def ptb_tokens():
    """One java run: the simple sentences and the line-break cases."""
    captions_by_id = {index: [text] for index, text in enumerate(SIMPLE)}
    captions_by_id.update({key: [text] for key, text in LINE_BREAKS.items()})
    return tokenize(captions_by_id, "ptb")


@needs_java
def test_ptb_tokenizer_output_and_label(ptb_tokens):
    tokens, name = ptb_tokens
    assert name == "ptb"
    assert tokens[0] == ["a man riding a horse"]
    assert tokens[11] == ["a cat -lrb- black -rrb- sitting on a laptop keyboard"]  # brackets survive (quirk)


@needs_java
def test_line_breaks_do_not_shift_captions(ptb_tokens):
    # Unnormalised, the jar would end a line at \r / U+2028 / U+0085 and every later caption would
    # receive its predecessor's tokens; normalised, each keeps its own.
    tokens, _ = ptb_tokens
    assert [tokens[key] for key in LINE_BREAKS] == [["a dog runs"]] * 3 + [["a cat"]]


@needs_java
def test_approximate_matches_ptb_on_simple_sentences(ptb_tokens):
    tokens, _ = ptb_tokens
    approximate, name = tokenize({index: [text] for index, text in enumerate(SIMPLE)}, "approximate")
    assert name == "approximate"
    assert approximate == {index: tokens[index] for index in range(len(SIMPLE))}


@pytest.mark.parametrize("text, expected", [
    ("A man, riding a horse.", "a man riding a horse"),
    ("It's a dog's toy; isn't it?", "it 's a dog 's toy is n't it"),
    ("A cat (black)", "a cat -lrb- black -rrb-"),
    ("Mr. Smith at 5 p.m. in the U.S.", "mr. smith at 5 p.m. in the u.s."),
    ("a dog\rruns", "a dog runs"),
])
def test_approximate_tokenizer_without_java(text, expected):
    # Expected strings are the jar's outputs for the same sentences (checked with java 17).
    assert tokenize({"x": [text]}, "approximate") == ({"x": [expected]}, "approximate")


def test_punctuation_list_is_pycocoevalcaps():
    assert list(captions.PUNCTUATIONS) == list(PUNCTUATIONS)


def test_auto_picks_by_java(monkeypatch):
    monkeypatch.setattr(captions.shutil, "which", lambda name: None)
    result = score_captions({"a": ["a red car"], "b": ["two dogs"]}, {"a": "a red car", "b": "a dog"})
    assert result["tokenizer"] == "approximate"
    assert captions.resolve_tokenizer("auto") == "approximate"
    with pytest.raises(LntuneError, match="needs java"):
        captions.resolve_tokenizer("ptb")
    monkeypatch.setattr(captions.shutil, "which", lambda name: "/usr/bin/java")
    assert captions.resolve_tokenizer("auto") == "ptb"


@pytest.mark.parametrize("references, predictions, message", [
    ({"a": ["a dog"]}, {}, "no caption predictions"),
    ({"a": ["a dog"]}, {"b": "a dog"}, "image 'b' has no references"),
    ({"a": []}, {"a": "a dog"}, "image 'a' has an empty list"),
    ({"a": ["..."]}, {"a": "a dog"}, "empty after tokenisation"),
])
def test_bad_inputs_raise(references, predictions, message):
    with pytest.raises(LntuneError, match=message):
        score_captions(references, predictions, tokenizer="approximate")


def test_failed_java_run_is_an_error_not_empty_captions(monkeypatch):
    # The official wrapper ignores java's exit status: a failed run yields one empty line, which it
    # would pair with the first caption only. That must stop scoring, not score empty captions.
    monkeypatch.setattr(captions.shutil, "which", lambda name: "/usr/bin/java")
    one_empty_line = lambda self, captions_for_image: {next(iter(captions_for_image)): [""]}  # noqa: E731
    monkeypatch.setattr(PTBTokenizer, "tokenize", one_empty_line)
    with pytest.raises(LntuneError, match="did not return one line per caption"):
        score_captions({"a": ["a dog"], "b": ["a cat"]}, {"a": "a dog", "b": "a cat"}, tokenizer="ptb")


def test_unknown_tokenizer_lists_valid_ones():
    with pytest.raises(LntuneError, match="approximate, auto, ptb"):
        tokenize({"a": ["a dog"]}, "spacy")


def test_scores_are_plain_floats():
    result = score_captions({"a": ["a red car"], "b": ["two dogs"]}, {"a": "a red car", "b": "a dog"},
                            tokenizer="approximate")
    assert type(result["CIDEr"]) is float and type(result["BLEU-4"]) is float
    assert math.isfinite(result["CIDEr"])
