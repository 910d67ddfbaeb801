"""`lntune chat`: one answer, or a conversation, about an image; tokens stream as they are generated."""

from __future__ import annotations

import sys


def chat(model: str, adapter: str | dict[str, str] | None = None, prompt: str | None = None,
         image_path: str | None = None, *, max_new_tokens: int = 256, template: str = "auto",
         system: str | None = None, image_aspect_ratio: str | None = None, max_image_pixels: int | None = None,
         quantize: str | None = None, quantize_vision: bool = False) -> int:
    """Answer `prompt` about the image in `image_path`, or without a prompt hold a conversation on stdin / stdout.

    Template `auto`, system None and image_aspect_ratio None take what finetuning recorded (the adapter, or a
    merged model's config.json), as `lntune eval` does. quantize / quantize_vision: the base loaded as training loaded
    it with --quantize (one adapter only). `adapter` a dict (name -> folder): every adapter answers each question,
    decoded together on the full-precision base (lntune.eval.mixed), one labelled answer per adapter.
    """
    if isinstance(adapter, dict):
        if quantize or quantize_vision:
            from lntune.errors import LntuneError

            raise LntuneError("--quantize takes one adapter at a time; several adapters are decoded together on the "
                              "full-precision base")
        return _chat_mixed(model, adapter, prompt, image_path, max_new_tokens=max_new_tokens, template=template,
                           system=system, image_aspect_ratio=image_aspect_ratio, max_image_pixels=max_image_pixels)
    from transformers import TextStreamer

    from lntune.data.images import DEFAULT_MAX_PIXELS, apply_aspect_ratio, open_image
    from lntune.eval.runner import load_generator

    image = None
    if image_path:
        # The training loader's pixel guard and RGB conversion; no folder to confine a file the user names.
        # Before loading the model: a bad file fails fast.
        image = open_image(image_path, "--image", max_image_pixels or DEFAULT_MAX_PIXELS)
    generator = load_generator(model, adapter, template, system=system, image_aspect_ratio=image_aspect_ratio,
                               quantize=quantize, quantize_vision=quantize_vision)
    if image is not None:
        image = apply_aspect_ratio(generator.processor, image, generator.image_aspect_ratio)
    streamer = TextStreamer(generator.tokenizer, skip_prompt=True, skip_special_tokens=True)
    if prompt:
        generator.answer([prompt], [image], max_new_tokens, streamer=streamer)
        return 0
    history: list[dict] = []
    print("chat: type a message (empty line or Ctrl-D to quit)", file=sys.stderr)
    for text in _user_messages():
        first = not history
        prompt_ids = generator.prompt_ids(text, has_image=first and image is not None, history=history)
        print("model> ", end="", flush=True)
        # The image stays in the conversation (its placeholder is in the first turn), so every turn passes it.
        answer = generator.generate([prompt_ids], [image], max_new_tokens, streamer=streamer)[0]
        history += [generator.prompts.user_turn(text, first and image is not None), {"role": "assistant", "content": answer}]
    return 0


def _chat_mixed(model: str, adapters: dict[str, str], prompt: str | None, image_path: str | None, *,
                max_new_tokens: int, template: str, system: str | None, image_aspect_ratio: str | None,
                max_image_pixels: int | None) -> int:
    """Every adapter answers the same question in one batch; the answers print as `NAME> answer`, in the order the
    adapters were given. In a conversation each adapter keeps its own history (its own earlier answers)."""
    from lntune.data.images import DEFAULT_MAX_PIXELS, apply_aspect_ratio, open_image
    from lntune.eval.mixed import load_mixed

    image = open_image(image_path, "--image", max_image_pixels or DEFAULT_MAX_PIXELS) if image_path else None
    mixed = load_mixed(model, adapters, template, system=system, image_aspect_ratio=image_aspect_ratio)
    names = list(adapters)
    images = [None if image is None else apply_aspect_ratio(mixed.processor, image,
                                                            mixed.generators[name].image_aspect_ratio)
              for name in names]
    width = max(len(name) for name in names)

    def show(answers: list[str]) -> None:
        for name, answer in zip(names, answers):
            print(f"{name:>{width}}> {answer}", flush=True)

    if prompt:
        show(mixed.answer(names, [prompt] * len(names), images, max_new_tokens))
        return 0
    histories: dict[str, list[dict]] = {name: [] for name in names}
    print(f"chat: {len(names)} adapters answer each message ({', '.join(names)}); empty line or Ctrl-D to quit",
          file=sys.stderr)
    for text in _user_messages():
        with_image = image is not None and not histories[names[0]]
        prompts = [mixed.generators[name].prompt_ids(text, with_image, histories[name]) for name in names]
        answers = mixed.generate(names, prompts, images, max_new_tokens)
        show(answers)
        for name, answer in zip(names, answers):
            turn = mixed.generators[name].prompts.user_turn(text, with_image)
            histories[name] += [turn, {"role": "assistant", "content": answer}]
    return 0


def _user_messages():
    """The lines typed at `you> `, until an empty line or Ctrl-D."""
    while True:
        try:
            text = input("you> ").strip()
        except EOFError:
            return
        if not text:
            return
        yield text
