"""Caption scoring: CIDEr-D (and BLEU-4) with pycocoevalcap, after COCO's PTB tokenisation.

This is what pycocoevalcap's COCOEvalCap.evaluate() does for these two metrics, without calling it
(its SPICE scorer downloads a model):

1. Tokenise references and predictions with Stanford's PTBTokenizer (the jar shipped inside
   pycocoevalcap, run with java): lower-cased, punctuation tokens dropped. Without java, an
   approximate pure-Python imitation is used instead and the result says tokenizer "approximate".
2. Score with pycocoevalcap's Cider and Bleu(4) classes over the images that have a prediction.

CIDEr depends on the evaluated set: its idf comes from the references of the scored images only,
log(number of images) - log(document frequency). A single-image set therefore scores exactly 0 (every
n-gram has idf log(1) - log(1) = 0); that is the official behaviour and is kept.
"""

from __future__ import annotations

import importlib
import re
import shutil

from lntune.errors import LntuneError, unknown_key_error

TOKENIZERS = ("auto", "ptb", "approximate")

# pycocoevalcap's ptbtokenizer.PUNCTUATIONS: the tokens it deletes after tokenising. The list is
# upper-case for brackets (-LRB- ...) while the jar runs with -lowerCase and emits "-lrb-", so
# bracket tokens are never deleted: an official quirk the approximate tokenizer keeps.
PUNCTUATIONS = ("''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-",
                ".", "?", "!", ",", ":", "-", "--", "...", ";")

# The official wrapper joins all captions with "\n" (after replacing "\n" in each) and pairs the
# jar's output lines with the captions; the jar (-preserveLines) also ends a line at \r, U+2028,
# U+0085 and, checked with the jar, at \v, \f and U+2029, which would shift every later caption
# onto the wrong image. Spaces keep the tokens apart and the lines aligned.
_LINE_BREAKS = re.compile("[\r\n\x0b\x0c\x85\u2028\u2029]")

# ---- the approximate tokenizer ---------------------------------------------------------------
# It imitates PTBTokenizer -preserveLines -lowerCase followed by the PUNCTUATIONS filter on
# ordinary caption text; it is not the full PTB lexer (no SGML, no fractions, few abbreviations).
_BRACKETS = {"(": " -lrb- ", ")": " -rrb- ", "[": " -lsb- ", "]": " -rsb- ", "{": " -lcb- ", "}": " -rcb- "}
_CHARACTER_MAP = str.maketrans({
    **_BRACKETS,
    '"': " '' ",  # the jar turns double quotes into `` or '': both are deleted
    "`": " ` ",
    "\u20ac": "$",  # PTB normalises currency: euro -> $, pound -> #
    "\u00a3": "#",
})
_SPLIT_RULES = (
    (re.compile(r"\.\.\.+"), " ... "),  # an ellipsis is one token (deleted)
    (re.compile(r"--+"), " -- "),
    (re.compile(r"[?!]+"), r" \g<0> "),  # "?!" and "!!" stay one token (and are not deleted)
    (re.compile(r"[;=+*^|~%$]"), r" \g<0> "),
    (re.compile(r"#(?=\d)"), " # "),  # "#1" -> "# 1", "#hashtag" stays
    (re.compile(r",(?!\d)|(?<!\d),"), " , "),  # "10,000" stays one number
    (re.compile(r":(?!\d)|(?<!\d):"), " : "),  # "10:30" stays one time
    (re.compile(r"(?<=\w)(n't)\b"), r" \1"),  # "isn't" -> "is n't", "can't" -> "ca n't"
    (re.compile(r"(?<=\w)('s|'m|'d|'re|'ve|'ll)\b"), r" \1"),  # clitics: "dog's" -> "dog 's"
)
_CLITICS = {"'s", "'m", "'d", "'re", "'ve", "'ll", "n't"}
_SPLIT_WORDS = {"cannot": "can not", "gonna": "gon na", "gotta": "got ta", "wanna": "wan na",
                "gimme": "gim me", "lemme": "lem me"}
_ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "st", "jr", "sr", "prof", "etc", "vs", "inc", "co", "corp", "ltd",
                  "mt", "ave", "rd", "blvd", "gen", "ft", "jan", "feb", "aug", "sept", "oct", "nov", "dec", "ph.d"}
_ACRONYM = re.compile(r"(?:[a-z]\.)+[a-z]")  # "u.s" of "u.s.", "p.m" of "p.m.": the period stays


def normalise_caption(text: str) -> str:
    """Turn line-breaking characters (\\r, U+2028, U+0085, \\n, \\v, \\f, U+2029) into spaces."""
    return _LINE_BREAKS.sub(" ", text)


def _split_quotes(word: str) -> list[str]:
    """Peel single quotes used as quotation marks off a word: "'odd'" -> ', odd, '."""
    if word in _CLITICS or len(word) < 2:
        return [word]
    head = []
    if word[0] == "'" and word[1].isalpha():  # an opening quote; "'90s" keeps its apostrophe
        head, word = ["'"], word[1:]
    if len(word) > 1 and word[-1] == "'":  # a closing quote or a plural possessive: "dogs'"
        return head + [word[:-1], "'"]
    return head + [word]


def _split_period(word: str) -> list[str]:
    """Split a final period off a word unless the word is an abbreviation or acronym."""
    if len(word) < 2 or not word.endswith(".") or set(word) == {"."}:
        return [word]
    body = word[:-1]
    if body in _ABBREVIATIONS or _ACRONYM.fullmatch(body):
        return [word]
    return [body, "."]


def _approximate_tokens(text: str) -> str:
    """One caption through the approximate tokenizer, punctuation tokens deleted."""
    # Java's PTBLexer cannot tokenise characters beyond U+FFFF (it sees surrogate halves) and drops them.
    text = "".join(character for character in text if ord(character) <= 0xFFFF)
    text = normalise_caption(text).lower().translate(_CHARACTER_MAP)
    for pattern, replacement in _SPLIT_RULES:
        text = pattern.sub(replacement, text)
    tokens = []
    for word in text.split():
        # Period first, so that "dog's." leaves the clitic "'s" whole for the quote rule.
        for piece in _split_period(word):
            for token in _split_quotes(piece):
                tokens.extend(_SPLIT_WORDS.get(token, token).split())
    return " ".join(token for token in tokens if token not in PUNCTUATIONS)


def _approximate_tokenize(captions: dict) -> dict:
    return {key: [_approximate_tokens(caption) for caption in texts] for key, texts in captions.items()}


def _ptb_tokenize(captions: dict) -> dict:
    """pycocoevalcap's PTBTokenizer on normalised captions, checked to give one line per caption."""
    tokenizer_class = _pycocoevalcap("tokenizer.ptbtokenizer", "PTBTokenizer")
    official_input = {key: [{"caption": normalise_caption(text)} for text in texts] for key, texts in captions.items()}
    try:
        tokenized = tokenizer_class().tokenize(official_input) if official_input else {}
    except OSError as error:
        # e.g. a read-only site-packages: the wrapper writes its temporary file next to the jar.
        raise LntuneError(f"the PTB tokenizer could not run ({error}); use tokenizer 'approximate'") from None
    # The wrapper ignores java's exit status; a failed run shows up as lines missing here.
    for key, texts in captions.items():
        if texts and len(tokenized.get(key, [])) != len(texts):
            raise LntuneError("the PTB tokenizer (java -cp stanford-corenlp-3.4.1.jar) did not return one line per "
                              "caption: check its message above, or use tokenizer 'approximate'")
    return {key: tokenized.get(key, []) for key in captions}


def _pycocoevalcap(module: str, name: str):
    """Import one class from pycocoevalcap, with a user-facing error if it is not installed."""
    try:
        imported = importlib.import_module(f"pycocoevalcap.{module}")
    except ImportError:
        raise LntuneError("caption scoring needs pycocoevalcap: pip install pycocoevalcap") from None
    return getattr(imported, name)


def resolve_tokenizer(tokenizer: str = "auto") -> str:
    """"ptb" or "approximate": "auto" picks ptb exactly when java is on PATH."""
    if tokenizer not in TOKENIZERS:
        raise unknown_key_error("caption tokenizer", tokenizer, TOKENIZERS)
    java = shutil.which("java") is not None
    if tokenizer == "auto":
        return "ptb" if java else "approximate"
    if tokenizer == "ptb" and not java:
        raise LntuneError("caption tokenizer 'ptb' needs java on PATH (not found): install a JRE, "
                          "or use tokenizer 'approximate'")
    return tokenizer


def tokenize(captions: dict, tokenizer: str = "auto") -> tuple[dict, str]:
    """Tokenise {id: [caption, ...]} as COCO does; returns ({id: [tokenised, ...]}, "ptb" | "approximate").

    Each tokenised caption is lower-case tokens joined by single spaces, punctuation tokens deleted
    ("A man, riding a horse." -> "a man riding a horse"). One java run covers the whole dict.
    """
    name = resolve_tokenizer(tokenizer)
    for key, texts in captions.items():
        if not isinstance(texts, list) or not all(isinstance(text, str) for text in texts):
            raise LntuneError(f"captions of {key!r} must be a list of strings")
    return (_ptb_tokenize(captions) if name == "ptb" else _approximate_tokenize(captions)), name


def _check_inputs(references: dict, predictions: dict) -> None:
    if not predictions:
        raise LntuneError("no caption predictions to score")
    for image_id, caption in predictions.items():
        if image_id not in references:
            raise LntuneError(f"caption prediction for image {image_id!r} has no references")
        if not isinstance(caption, str):
            raise LntuneError(
                f"caption prediction for image {image_id!r} must be a string, got {type(caption).__name__}")
        if not references[image_id]:
            raise LntuneError(f"image {image_id!r} has an empty list of reference captions")


def _tokenized(references: dict, predictions: dict, tokenizer: str) -> tuple[dict, dict, str]:
    """Checked inputs of the images with a prediction, tokenized as pycocoevalcap takes them: (gts, res, tokenizer
    name), both keyed by image id in the predictions' order."""
    _check_inputs(references, predictions)
    image_ids = list(predictions)
    # One tokenizer run for both sides; the tuple keys cannot collide whatever the ids are.
    combined = {("reference", image_id): list(references[image_id]) for image_id in image_ids}
    combined.update({("prediction", image_id): [predictions[image_id]] for image_id in image_ids})
    tokenized, name = tokenize(combined, tokenizer)
    gts = {image_id: tokenized["reference", image_id] for image_id in image_ids}
    res = {image_id: tokenized["prediction", image_id] for image_id in image_ids}
    if not any(reference.split() for references_of_image in gts.values() for reference in references_of_image):
        # pycocoevalcap's Cider would fail on max() of an empty document frequency.
        raise LntuneError("every reference caption is empty after tokenisation: nothing to score against")
    return gts, res, name


def score_captions(references: dict, predictions: dict, tokenizer: str = "auto") -> dict:
    """CIDEr-D and BLEU-4 of {image id: caption} against {image id: [reference, ...]}.

    Only images with a prediction are scored (references of other images are ignored, and they do
    not enter CIDEr's document frequency). Returns CIDEr as pycocoevalcap gives it (e.g. 1.05),
    CIDEr_x100 (as papers print it), BLEU-4, count (images scored) and tokenizer.
    """
    gts, res, name = _tokenized(references, predictions, tokenizer)
    image_ids = list(gts)
    cider, _ = _pycocoevalcap("cider.cider", "Cider")().compute_score(gts, res)
    bleu, _ = _pycocoevalcap("bleu.bleu", "Bleu")(4).compute_score(gts, res, verbose=0)
    return {
        "CIDEr": float(cider),
        "CIDEr_x100": float(cider) * 100,
        "BLEU-4": float(bleu[3]),
        "count": len(image_ids),
        "tokenizer": name,
    }


def per_image_cider(references: dict, predictions: dict, tokenizer: str = "auto") -> dict:
    """{image id: CIDEr-D x100 of its caption}, the idf taken over all the images given (so the mean of the values is
    score_captions' CIDEr_x100): what a bootstrap over images resamples."""
    gts, res, _ = _tokenized(references, predictions, tokenizer)
    _, scores = _pycocoevalcap("cider.cider", "Cider")().compute_score(gts, res)
    # Cider scores the images in the order of gts' keys
    return {image_id: float(score) * 100 for image_id, score in zip(gts, scores)}
