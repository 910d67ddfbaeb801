"""A byte-level BPE tokenizer trained on a corpus: any text encodes (no unknown words).

The demo's pretrained LLM (pretrain.py) gets one trained on the tiny world's text; the tests' tiny random
backbones (tests/backbones.py) one trained on a few sentences.
"""

from __future__ import annotations

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")


def build_tokenizer(corpus, vocab_size: int):
    """A fast HF tokenizer with <unk>, <s> and </s>, its BPE merges learnt from the strings in `corpus`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(corpus), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
