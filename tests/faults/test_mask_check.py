"""The label-mask self-check: no false alarm when a tokenizer decodes spacing its own way (a word-level tokenizer
gives "red . </s>" for "red .</s>"), and still an error naming the sample when the mask is shifted."""

import pytest

from lntune.errors import LntuneError
from lntune.prompt import IGNORE_INDEX, PromptBuilder, VICUNA_SYSTEM
from tests.helpers import shifted_offsets

CONVERSATION = [("user", "<image>\nWhat colour is the ball?"), ("assistant", "It is red ."),
                ("user", "And the box?"), ("assistant", "blue , I think .")]


def _word_level_tokenizer():
    """Whole words and punctuation marks as tokens; decoding joins them with single spaces."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    text = " ".join([VICUNA_SYSTEM, "USER: ASSISTANT:"] + [turn for _, turn in CONVERSATION])
    words = sorted({word for word, _ in pre_tokenizers.Whitespace().pre_tokenize_str(text.replace("<image>", ""))})
    vocab = {token: index for index, token in enumerate(["<unk>", "<s>", "</s>", "<image>", *words])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces, as word-level ones do
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    return tokenizer


def test_word_level_spacing_is_no_template_mismatch():
    tokenizer = _word_level_tokenizer()
    assert tokenizer.decode(tokenizer("red .</s>", add_special_tokens=False)["input_ids"]) == "red . </s>"
    sample = PromptBuilder(tokenizer, "vicuna_v1").encode(CONVERSATION, "data.json: sample 7")
    supervised = [token for token, label in zip(tokenizer.convert_ids_to_tokens(sample.input_ids), sample.labels)
                  if label != IGNORE_INDEX]
    assert supervised == ["It", "is", "red", ".", "</s>", "blue", ",", "I", "think", ".", "</s>"]


def test_a_shifted_mask_is_still_caught():
    tokenizer = _word_level_tokenizer()
    with shifted_offsets(tokenizer, 3), pytest.raises(LntuneError, match="sample 7.*self-check failed"):
        PromptBuilder(tokenizer, "vicuna_v1").encode(CONVERSATION, "data.json: sample 7")
