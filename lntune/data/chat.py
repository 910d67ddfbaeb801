"""Chat templates, tokenisation and label masks, with the mask self-check.

A conversation is rendered to one string by a Jinja chat template (the tokenizer's own, or one of
TEMPLATES) and tokenised once, exactly as at inference. Which characters are assistant text is found
by rendering growing prefixes of the conversation: the text each assistant turn adds is its span.
A token is supervised when it overlaps an assistant span (by the fast tokenizer's offsets).

The self-check then decodes the supervised tokens of every span and compares them with the span's
text. A mismatch is an error naming the sample and showing both texts: never the silent "every label
masked, loss 0" failure.
"""

from __future__ import annotations

from dataclasses import dataclass

from lntune.errors import LntuneError, unknown_key_error

IGNORE_INDEX = -100

VICUNA_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)

# Message content is a string (LLaVA data, with "<image>" inline) or a list of parts (stock processors'
# apply_chat_template: {"type": "image"} / {"type": "text", "text": ...}); every template accepts both.
_CONTENT = (
    "{% macro content(message) %}{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}{% if part['type'] == 'image' %}{{ '<image>\\n' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}{% endmacro %}"
)

# LLaVA's conv_vicuna_v1: "SYSTEM USER: q ASSISTANT: a</s>USER: q2 ASSISTANT: a2</s>".
VICUNA_V1 = _CONTENT + (
    "{% if messages[0]['role'] == 'system' %}{{ content(messages[0]) + ' ' }}"
    "{% else %}{{ \"" + VICUNA_SYSTEM + " \" }}{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ 'USER: ' + content(message) + ' ' }}"
    "{% elif message['role'] == 'assistant' %}{{ 'ASSISTANT: ' + content(message) + eos_token }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

# LLaMA-2-chat: "[INST] <<SYS>>\nsys\n<</SYS>>\n\nq [/INST] a </s><s>[INST] q2 [/INST] a2 </s>".
LLAMA_2 = _CONTENT + (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}"
    "{% if not loop.first and not (loop.index0 == 1 and messages[0]['role'] == 'system') %}{{ bos_token }}{% endif %}"
    "{{ '[INST] ' }}"
    "{% if loop.index0 == 1 and messages[0]['role'] == 'system' %}"
    "{{ '<<SYS>>\\n' + content(messages[0]) + '\\n<</SYS>>\\n\\n' }}{% endif %}"
    "{{ content(message) + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + content(message) + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)

# Stage 1 (LLaVA's "plain"): the image, then the caption; the human turn's text is dropped.
PLAIN = _CONTENT + (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '<image>' if '<image>' in content(message) else '' }}"
    "{% elif message['role'] == 'assistant' %}{{ content(message) + eos_token }}{% endif %}"
    "{% endfor %}"
)

TEMPLATES = {"vicuna_v1": VICUNA_V1, "llama_2": LLAMA_2, "plain": PLAIN}


def resolve_template(name: str, tokenizer, stage: str = "finetune") -> tuple[str, str]:
    """(name, Jinja source): `auto` is the tokenizer's own template, else plain (pretrain) / vicuna_v1."""
    if name == "auto":
        if stage == "pretrain":
            return "plain", PLAIN
        own = getattr(tokenizer, "chat_template", None)
        if isinstance(own, str) and own:
            return "tokenizer", own
        return "vicuna_v1", VICUNA_V1
    if name == "tokenizer":
        own = getattr(tokenizer, "chat_template", None)
        if not isinstance(own, str) or not own:
            raise LntuneError("template 'tokenizer' asked for, but the tokenizer has no chat_template")
        return name, own
    if name not in TEMPLATES:
        raise unknown_key_error("chat template", name, list(TEMPLATES) + ["auto", "tokenizer"])
    return name, TEMPLATES[name]


def render(tokenizer, template: str, messages: list[dict], add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=False, add_generation_prompt=add_generation_prompt
    )


def render_with_spans(tokenizer, template: str, messages: list[dict], where: str) -> tuple[str, list[tuple[int, int]]]:
    """The full text and the [start, end) character spans of every assistant turn in it."""
    full = render(tokenizer, template, messages)
    spans = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = render(tokenizer, template, messages[:index], add_generation_prompt=True)
        with_answer = render(tokenizer, template, messages[: index + 1])
        if not (with_answer.startswith(prompt) and full.startswith(with_answer)):
            raise LntuneError(
                f"{where}: the chat template does not render conversations prefix by prefix (turn {index}), so "
                "assistant tokens cannot be located; choose a built-in template (vicuna_v1, llama_2, plain)"
            )
        spans.append((len(prompt), len(with_answer)))
    return full, spans


@dataclass
class TokenizedSample:
    input_ids: list[int]
    labels: list[int]


def _normalise(text: str) -> str:
    return " ".join(text.split())


def _bos_prefix(tokenizer) -> list[int]:
    """[bos] if the tokenizer adds one by default (LLaMA) and it is not already in the rendered text."""
    cached = getattr(tokenizer, "_lntune_bos_prefix", None)
    if cached is None:
        probe = tokenizer("a")["input_ids"]
        cached = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None and probe[:1] == [tokenizer.bos_token_id] else []
        tokenizer._lntune_bos_prefix = cached
    return cached


def tokenize_conversation(
    tokenizer, template: str, messages: list[dict], image_token: str, where: str
) -> TokenizedSample:
    """Token ids and labels (IGNORE_INDEX outside assistant spans), checked against the assistant text."""
    text, spans = render_with_spans(tokenizer, template, messages, where)
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids, offsets = list(encoding["input_ids"]), list(encoding["offset_mapping"])
    prefix = _bos_prefix(tokenizer)
    if prefix and not text.startswith(tokenizer.bos_token):
        input_ids, offsets = prefix + input_ids, [(0, 0)] + offsets
    labels = [IGNORE_INDEX] * len(input_ids)
    for span_start, span_end in spans:
        supervised = [i for i, (start, end) in enumerate(offsets) if end > span_start and start < span_end and end > start]
        for i in supervised:
            labels[i] = input_ids[i]
        decoded = tokenizer.decode([input_ids[i] for i in supervised], skip_special_tokens=False)
        expected = text[span_start:span_end]
        if _normalise(decoded) != _normalise(expected):
            raise LntuneError(
                f"{where}: label mask self-check failed: the supervised tokens decode to\n  {decoded!r}\n"
                f"but the assistant turn is\n  {expected!r}\n(tokenizer/template mismatch; try another --template)"
            )
    if all(label == IGNORE_INDEX for label in labels):
        raise LntuneError(f"{where}: no supervised tokens after tokenisation (empty assistant turns?)")
    return TokenizedSample(input_ids, labels)
