"""`lntune chat`: one answer, or a conversation, about an image; tokens stream as they are generated."""

from __future__ import annotations

import sys


def chat(model: str, adapter: str | None = None, prompt: str | None = None, image_path: str | None = None, *,
         max_new_tokens: int = 256, template: str = "auto", system: str | None = None,
         image_aspect_ratio: str | None = None, max_image_pixels: int | None = None, quantize: str | None = None,
         quantize_vision: bool = False) -> int:
    """Answer `prompt` about the image in `image_path`, or without a prompt hold a conversation on stdin / stdout.

    Template `auto`, system None and image_aspect_ratio None take what finetuning recorded (the adapter, or a
    merged model's config.json), as `lntune eval` does; so do quantize / quantize_vision (the base as training
    loaded it with --quantize).
    """
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
    while True:
        try:
            text = input("you> ").strip()
        except EOFError:
            break
        if not text:
            break
        first = not history
        prompt_ids = generator.prompt_ids(text, has_image=first and image is not None, history=history)
        print("model> ", end="", flush=True)
        # The image stays in the conversation (its placeholder is in the first turn), so every turn passes it.
        answer = generator.generate([prompt_ids], [image], max_new_tokens, streamer=streamer)[0]
        history += [generator.prompts.user_turn(text, first and image is not None), {"role": "assistant", "content": answer}]
    return 0
