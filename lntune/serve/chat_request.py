"""A chat completion request -> a Sequence for the decoder, through the same prompt builder as training and
`lntune eval`.

The conversation becomes the turns `lntune eval` / `lntune chat` give GenerationPrompts: an optional system turn,
earlier user turns (PromptBuilder.user_turn: `<image>\\n` + text when the turn has an image) and assistant answers,
then the last user turn, rendered with the template the served model (base or adapter) records. For one question
about one image the ids are exactly the ids `lntune eval` gives that question; images get the model's recorded
aspect ratio, as in evaluation.
"""

from __future__ import annotations

import threading

from lntune.errors import LntuneError
from lntune.eval.generate import GenerationPrompts
from lntune.serve.adapters import ServedModel
from lntune.serve.decoding import Sequence
from lntune.serve.errors import ServeError
from lntune.serve.images import decode_data_url
from lntune.serve.openai_schema import ChatCompletionRequest, ImagePart, TextPart
from lntune.serve.sampling import SamplingParams
from lntune.serve.settings import ServeSettings

MAX_STOP_STRINGS = 4
OPENAI_DEFAULT_TEMPERATURE = 1.0


def _refuse_unsupported(request: ChatCompletionRequest) -> None:
    if request.n not in (None, 1):
        raise ServeError("n > 1 is not supported; send the request several times (with different seeds)", 400, "n")
    if request.tools:
        raise ServeError("tools are not supported by lntune serve", 400, "tools")
    if request.logprobs:
        raise ServeError("logprobs are not supported by lntune serve", 400, "logprobs")
    if request.response_format and request.response_format.get("type", "text") != "text":
        raise ServeError("only the text response format is supported", 400, "response_format")


def _stop_strings(stop) -> tuple[str, ...]:
    stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
    if len(stops) > MAX_STOP_STRINGS:
        raise ServeError(f"at most {MAX_STOP_STRINGS} stop strings, got {len(stops)}", 400, "stop")
    return tuple(s for s in stops if s)


class RequestBuilder:
    """Turns requests into Sequences for one model directory (its processor and image token count)."""

    def __init__(self, processor, image_seq_length: int, context_length: int, settings: ServeSettings):
        self.processor = processor
        self.image_seq_length = image_seq_length
        self.context_length = context_length
        self.settings = settings
        self._prompts: dict[tuple[str, str | None], GenerationPrompts] = {}
        self._tokenizer_lock = threading.Lock()
        self.image_token = getattr(processor, "image_token", "<image>")

    def prompts(self, served: ServedModel) -> GenerationPrompts:
        """The served model's GenerationPrompts (one per template and system prompt)."""
        key = (served.template, served.system)
        with self._tokenizer_lock:
            return self._prompts_for(key, served)

    def _prompts_for(self, key, served: ServedModel) -> GenerationPrompts:
        if key not in self._prompts:
            try:
                self._prompts[key] = GenerationPrompts(self.processor, self.image_seq_length, served.template,
                                                       served.system)
            except LntuneError as error:
                raise ServeError(f"model {served.name}: {error}", 400, "model") from None
        return self._prompts[key]

    def _content(self, message, index: int, images: list) -> tuple[str, bool]:
        """A message's text (text parts joined by newlines) and whether it carries an image (decoded into `images`)."""
        where = f"messages[{index}]"
        if message.content is None:
            raise ServeError(f"{where}: content is missing", 400, f"{where}.content")
        if isinstance(message.content, str):
            text, has_image = message.content, False
        else:
            texts, pictures = [], 0
            for number, part in enumerate(message.content):
                if isinstance(part, TextPart):
                    texts.append(part.text)
                elif isinstance(part, ImagePart):
                    if message.role != "user":
                        raise ServeError(f"{where}: only user messages may hold images", 400, f"{where}.content")
                    pictures += 1
                    if pictures > 1:
                        raise ServeError(f"{where}: one image per message (the image goes in front of the message's "
                                         "text, as in training); put further images in later messages", 400,
                                         f"{where}.content")
                    if len(images) >= self.settings.max_images:
                        raise ServeError(f"too many images: at most {self.settings.max_images} per request "
                                         "(--max-images)", 400, f"{where}.content", "too_many_images")
                    images.append(decode_data_url(part.image_url.url, f"{where}.content[{number}]",
                                                  self.settings.max_image_bytes, self.settings.max_image_pixels))
            text, has_image = "\n".join(texts), pictures > 0
        if self.image_token in text:
            raise ServeError(f"{where}: the text holds the image placeholder {self.image_token!r}; send images as "
                             "image_url parts", 400, f"{where}.content")
        return text, has_image

    def build(self, request: ChatCompletionRequest, served: ServedModel) -> Sequence:
        """Everything a request can get wrong is found here, before it is queued (4xx, the server unaffected)."""
        from lntune.data.images import pixel_values

        _refuse_unsupported(request)
        settings = self.settings
        max_tokens = request.max_completion_tokens or request.max_tokens or settings.max_tokens_default
        if max_tokens > settings.max_tokens_limit:
            raise ServeError(f"max_tokens {max_tokens} is over this server's limit {settings.max_tokens_limit} "
                             "(--max-tokens-limit)", 400, "max_tokens")
        messages = list(request.messages)
        history: list[dict] = []
        images: list = []
        if messages[0].role in ("system", "developer"):
            text, _ = self._content(messages[0], 0, images)
            history.append({"role": "system", "content": text})
        start = len(history)
        if not messages[start:] or messages[-1].role != "user":
            raise ServeError("the last message must be the user's (the model answers it)", 400, "messages")
        for index, message in enumerate(messages[start:-1], start=start):
            if message.role in ("system", "developer"):
                raise ServeError(f"messages[{index}]: a system message may only come first", 400, "messages")
            text, has_image = self._content(message, index, images)
            history.append(self.prompts(served).builder.user_turn(text, has_image) if message.role == "user"
                           else {"role": "assistant", "content": text})
        text, has_image = self._content(messages[-1], len(messages) - 1, images)
        prompts = self.prompts(served)
        try:
            with self._tokenizer_lock:  # a fast tokenizer may not be used from several threads at once
                ids = prompts.ids(text, has_image, history)
        except LntuneError as error:
            raise ServeError(f"the conversation cannot be rendered with template {served.template!r}: {error}", 400,
                             "messages") from None
        except Exception as error:  # a tokenizer's own Jinja template may raise anything on an unusual conversation
            raise ServeError(f"the conversation cannot be rendered with the model's chat template: {error}", 400,
                             "messages") from None
        image_token_id = prompts.builder.image_token_id
        if sum(token == image_token_id for token in ids) != len(images) * self.image_seq_length:
            raise ServeError(f"template {served.template!r} keeps {sum(t == image_token_id for t in ids) // max(1, self.image_seq_length)} "
                             f"of the request's {len(images)} images; send images only where the template shows "
                             "them", 400, "messages")
        prompt_limit = min(settings.max_prompt_tokens or self.context_length, self.context_length - max_tokens)
        if len(ids) > prompt_limit:
            raise ServeError(f"the prompt is {len(ids)} tokens (images count {self.image_seq_length} each); with "
                             f"max_tokens {max_tokens} at most {max(prompt_limit, 0)} fit (context "
                             f"{self.context_length}" + (f", --max-prompt-tokens {settings.max_prompt_tokens}"
                                                          if settings.max_prompt_tokens else "") +
                             "); shorten the conversation or lower max_tokens", 400, "messages",
                             "context_length_exceeded")
        pixels = None
        if images:
            import torch

            if served.image_aspect_ratio == "pad":  # pasted on a square of its longer side before resizing
                for image in images:
                    side = max(image.size)
                    if side * side > settings.max_image_pixels:
                        raise ServeError(f"an image of {image.size[0]}x{image.size[1]} is padded to a {side}x{side} "
                                         f"square for this model, over the {settings.max_image_pixels:,}-pixel guard "
                                         "(--max-image-pixels); crop it closer to a square", 413, "messages",
                                         "image_too_large")

            pixels = torch.stack([pixel_values(self.processor, image, served.image_aspect_ratio) for image in images])
        temperature = OPENAI_DEFAULT_TEMPERATURE if request.temperature is None else request.temperature
        sampling = SamplingParams(temperature=temperature, top_p=1.0 if request.top_p is None else request.top_p,
                                  seed=request.seed)
        return Sequence(prompt_ids=ids, pixel_values=pixels, model_name=served.name, max_new_tokens=max_tokens,
                        sampling=sampling, stop=_stop_strings(request.stop))
