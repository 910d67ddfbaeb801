"""Chat templates and the one prompt builder: token ids and label masks, with the mask self-check.

A leaf module (it imports only lntune.errors): data, evaluation, build and the demo all take the templates,
the image token, the BOS rule and PromptBuilder from here.

The built-in templates are LLaVA's, byte for byte (docs/llava.md). A conversation is placed (LLaVA's image-first
rule), rendered to one string by a Jinja chat template (the tokenizer's own, or one of TEMPLATES) and tokenised
once; training, evaluation, chat and `lntune data show` all go through PromptBuilder. Which characters are assistant text is found
by rendering growing prefixes of the conversation: the text each assistant turn adds is its span.
A token is supervised when it overlaps an assistant span (by the fast tokenizer's offsets).

The self-check then decodes the supervised tokens of every span and compares them with the span's
text, whitespace aside (tokenizers decode spacing differently). A mismatch is an error naming the sample and showing both texts: never the silent "every label
masked, loss 0" failure.
"""

from __future__ import annotations

from dataclasses import dataclass

from lntune.errors import LntuneError, unknown_key_error

IGNORE_INDEX = -100
IMAGE_TOKEN = "<image>"
"""The image placeholder in conversation text (LLaVA's data) and the special token `lntune build` adds for it."""
IMAGE_PLACEMENTS = ("front", "keep")

# System prompts, byte for byte as LLaVA's conversation templates (llava/conversation.py) have them.
VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
"""LLaVA's conv_vicuna_v1 (`--version v1`). The "curious human ... human's questions" wording is conv_llava_v1, another
template; lntune before 0.2 used it by mistake, and models built then carry it (resolve_template maps them back)."""
LLAMA_2_SYSTEM = (
    "You are a helpful language and vision assistant. You are able to understand the visual content that the user "
    "provides, and assist the user with a variety of tasks using natural language."
)
"""LLaVA's conv_llava_llama_2: its system block is always there."""
_OLD_VICUNA_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)

CONTENT_MACRO = (
    "{% macro content(message) %}{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}{% if part['type'] == 'image' %}{{ '" + IMAGE_TOKEN + "\\n' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}{% endmacro %}"
)
"""The Jinja macro `content(message)` every template here is built on (and the demo's LLM pretraining template):
message content is a string (LLaVA data, with the image token inline) or a list of parts (stock processors'
apply_chat_template: {"type": "image"} / {"type": "text", "text": ...})."""

# LLaVA's conv_vicuna_v1: "SYSTEM USER: q ASSISTANT: a</s>USER: q2 ASSISTANT: a2</s>".
VICUNA_V1 = CONTENT_MACRO + (
    "{% if messages[0]['role'] == 'system' %}{{ content(messages[0]) + ' ' }}"
    "{% else %}{{ \"" + VICUNA_SYSTEM + " \" }}{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ 'USER: ' + content(message) + ' ' }}"
    "{% elif message['role'] == 'assistant' %}{{ 'ASSISTANT: ' + content(message) + eos_token }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

# LLaVA's conv_llava_llama_2: "[INST] <<SYS>>\nSYSTEM\n<</SYS>>\n\nq [/INST] a </s><s>[INST] q2 [/INST] a2 </s>".
# The system block is always there (LLAMA_2_SYSTEM unless a system turn gives another; an empty one drops the block,
# as LLaVA's wrap_sys does); the first turn's <s> is the tokenizer's BOS, not text.
LLAMA_2 = CONTENT_MACRO + (
    "{% if messages[0]['role'] == 'system' %}{% set system = content(messages[0]) %}"
    "{% else %}{% set system = \"" + LLAMA_2_SYSTEM + "\" %}{% endif %}"
    "{% set first_user = namespace(done=false) %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}"
    "{% if first_user.done %}{{ bos_token }}{% endif %}"
    "{{ '[INST] ' }}"
    "{% if not first_user.done and system %}{{ '<<SYS>>\\n' + system + '\\n<</SYS>>\\n\\n' }}{% endif %}"
    "{% set first_user.done = true %}"
    "{{ content(message) + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + content(message) + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)

# Stage 1 (LLaVA's "plain"): the image, then the caption; the human turn's text is dropped.
PLAIN = CONTENT_MACRO + (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '" + IMAGE_TOKEN + "' if '" + IMAGE_TOKEN + "' in content(message) else '' }}"
    "{% elif message['role'] == 'assistant' %}{{ content(message) + eos_token }}{% endif %}"
    "{% endfor %}"
)

TEMPLATES = {"vicuna_v1": VICUNA_V1, "llama_2": LLAMA_2, "plain": PLAIN}
SYSTEM_TEMPLATES = ("vicuna_v1", "llama_2")
"""Built-in templates that render a system prompt (and so take data.system / a system turn)."""

# Models built by lntune carry their template in the tokenizer (lntune build stamps vicuna_v1 on LLMs without one):
# `auto` recognises every text a build has stamped and uses today's built-in, so old models get the fixed template.
_STAMPED = {VICUNA_V1: "vicuna_v1", VICUNA_V1.replace(VICUNA_SYSTEM, _OLD_VICUNA_SYSTEM): "vicuna_v1",
            LLAMA_2: "llama_2", PLAIN: "plain"}


def resolve_template(name: str, tokenizer, stage: str = "finetune") -> tuple[str, str]:
    """(name, Jinja source): `auto` is the tokenizer's own template, else plain (pretrain) / vicuna_v1."""
    if name == "auto":
        if stage == "pretrain":
            return "plain", PLAIN
        own = getattr(tokenizer, "chat_template", None)
        if isinstance(own, str) and own:
            if own in _STAMPED:
                return _STAMPED[own], TEMPLATES[_STAMPED[own]]
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


def place_image_first(text: str) -> str:
    """LLaVA's preprocess_multimodal for one turn: `<image>` removed, the text stripped, `<image>\n` put in front
    ("What is on the table?\n<image>" -> "<image>\nWhat is on the table?"; "<image>" alone stays "<image>")."""
    if IMAGE_TOKEN not in text:
        return text
    return (IMAGE_TOKEN + "\n" + text.replace(IMAGE_TOKEN, "").strip()).strip()


def bos_prefix(tokenizer) -> list[int]:
    """[bos] if the tokenizer adds one by default (LLaMA, Vicuna, Mistral), else [] (Qwen, GPT-2 style)."""
    probe = tokenizer("a")["input_ids"]
    return [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None and probe[:1] == [tokenizer.bos_token_id] else []


@dataclass
class TokenizedSample:
    input_ids: list[int]
    labels: list[int]


def _without_whitespace(text: str) -> str:
    # Tokenizers decode spacing differently (a word-level one gives "red . </s>" for "red .</s>", SentencePiece drops a
    # leading space): the check compares the characters, which a shifted mask still changes.
    return "".join(text.split())


class PromptBuilder:
    """The one way a conversation becomes token ids, for training, `lntune eval`, `lntune chat` and `lntune data show`.

    A conversation is rendered to one string by a chat template (a built-in, byte for byte as LLaVA's, or the
    tokenizer's own), tokenised in one call without special tokens, and given the tokenizer's BOS as an id (never the
    text "<s>": with legacy=false SentencePiece tokenizers the text form changes the next token). The prompt of a
    generation is the same conversation cut before the assistant's answer, so its ids are exactly the training ids up
    to that answer (tests/test_prompt.py proves it for every template and both SentencePiece kinds).
    """

    def __init__(self, tokenizer, template: str = "auto", stage: str = "finetune", system: str | None = None,
                 image_placement: str = "front", image_token: str = IMAGE_TOKEN, template_source: str | None = None):
        """`template`: a name (see resolve_template); `template_source`: a Jinja source of the caller's own instead
        (e.g. the tiny world's LLM pretraining), then named "custom"."""
        if image_placement not in IMAGE_PLACEMENTS:
            raise unknown_key_error("image placement", image_placement, IMAGE_PLACEMENTS)
        self.tokenizer = tokenizer
        if template_source is not None:
            self.template_name, self.template = "custom", template_source
        else:
            self.template_name, self.template = resolve_template(template, tokenizer, stage)
        if system is not None and self.template_name not in SYSTEM_TEMPLATES:
            raise LntuneError(f"a system prompt was given, but template {self.template_name!r} has none; "
                              f"use one of {', '.join(SYSTEM_TEMPLATES)} or drop the system prompt")
        self.system = system
        self.image_placement = image_placement
        self.image_token = image_token
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)
        self.bos = bos_prefix(tokenizer)

    def settings(self) -> dict:
        """What decides the model's view of a conversation (recorded with evaluations and adapters)."""
        return {"template": self.template_name, "system": self.system, "image_placement": self.image_placement}

    def messages(self, turns) -> list[dict]:
        """(role, text) pairs or message dicts -> the messages the template renders: the image placed, the
        configured system prompt added when the conversation has none of its own."""
        messages = [dict(turn) if isinstance(turn, dict) else {"role": turn[0], "content": turn[1]} for turn in turns]
        if self.image_placement == "front":
            for message in messages:
                if message["role"] == "user" and isinstance(message["content"], str):
                    message["content"] = place_image_first(message["content"])
        if self.system is not None and (not messages or messages[0]["role"] != "system"):
            messages.insert(0, {"role": "system", "content": self.system})
        return messages

    def user_turn(self, text: str, has_image: bool) -> dict:
        """A question about an image, laid out as LLaVA's evaluation does (`<image>\n` + question)."""
        return {"role": "user", "content": f"{self.image_token}\n{text}" if has_image else text}

    def _encode_text(self, text: str):
        encoding = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        input_ids, offsets = list(encoding["input_ids"]), list(encoding["offset_mapping"])
        if self.bos and not (input_ids[:1] == self.bos):
            input_ids, offsets = self.bos + input_ids, [(0, 0)] + offsets
        return input_ids, offsets

    def render(self, turns, add_generation_prompt: bool = False) -> str:
        return render(self.tokenizer, self.template, self.messages(turns), add_generation_prompt)

    def encode(self, turns, where: str) -> TokenizedSample:
        """Training view: ids and labels (IGNORE_INDEX outside assistant spans), checked against the assistant text."""
        messages = self.messages(turns)
        text, spans = render_with_spans(self.tokenizer, self.template, messages, where)
        input_ids, offsets = self._encode_text(text)
        labels = [IGNORE_INDEX] * len(input_ids)
        for span_start, span_end in spans:
            supervised = [i for i, (start, end) in enumerate(offsets) if end > span_start and start < span_end and end > start]
            for i in supervised:
                labels[i] = input_ids[i]
            decoded = self.tokenizer.decode([input_ids[i] for i in supervised], skip_special_tokens=False)
            expected = text[span_start:span_end]
            if _without_whitespace(decoded) != _without_whitespace(expected):
                raise LntuneError(
                    f"{where}: label mask self-check failed: the supervised tokens decode to\n  {decoded!r}\n"
                    f"but the assistant turn is\n  {expected!r}\n(tokenizer/template mismatch; try another --template)"
                )
        if all(label == IGNORE_INDEX for label in labels):
            raise LntuneError(f"{where}: no supervised tokens after tokenisation (empty assistant turns?)")
        return TokenizedSample(input_ids, labels)

    def encode_prompt(self, turns) -> list[int]:
        """Generation view: the ids of the conversation up to the assistant's answer (ending with the template's
        generation prompt, e.g. `ASSISTANT:`); equal to the training ids of the same conversation up to that point."""
        return self._encode_text(self.render(turns, add_generation_prompt=True))[0]

    def expand_images(self, input_ids: list[int], labels: list[int] | None, image_seq_length: int):
        """Each image token id repeated image_seq_length times (what the Llava model fills with image features)."""
        labels = labels if labels is not None else [IGNORE_INDEX] * len(input_ids)
        expanded_ids, expanded_labels = [], []
        for token, label in zip(input_ids, labels):
            if token == self.image_token_id:
                expanded_ids.extend([token] * image_seq_length)
                expanded_labels.extend([IGNORE_INDEX] * image_seq_length)
            else:
                expanded_ids.append(token)
                expanded_labels.append(label)
        return expanded_ids, expanded_labels


RECORDABLE_TEMPLATES = ("vicuna_v1", "llama_2", "plain", "tokenizer")
"""Template names a trained adapter may record for evaluation, chat and serving to take up (a caller's own Jinja
source, "custom", cannot be)."""


def recorded_prompt(recorded) -> tuple[str, str | None]:
    """(template, system) from what finetuning recorded (an adapter manifest's `prompt`, a merged model's
    `lntune_prompt`): ("auto", None) where nothing usable was recorded."""
    if not isinstance(recorded, dict):
        return "auto", None
    template = recorded.get("template")
    return (template if template in RECORDABLE_TEMPLATES else "auto"), recorded.get("system")
