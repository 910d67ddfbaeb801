"""`lntune chat`: one answer, or a conversation, about an image; tokens stream as they are generated."""

from __future__ import annotations

import sys


def chat(args) -> int:
    from transformers import TextStreamer

    from lntune.data.images import DEFAULT_MAX_PIXELS, apply_aspect_ratio, open_image
    from lntune.eval.runner import load_generator

    max_pixels = getattr(args, "max_image_pixels", None) or DEFAULT_MAX_PIXELS
    image = None
    if args.image:
        # The training loader's pixel guard and RGB conversion; no folder to confine a file the user names.
        image = open_image(args.image, "--image", max_pixels)  # before loading the model: a bad file fails fast
    generator = load_generator(args.model, args.adapter, args.template, system=args.system,
                               image_aspect_ratio=getattr(args, "image_aspect_ratio", None))
    if image is not None:
        image = apply_aspect_ratio(generator.processor, image, generator.image_aspect_ratio)
    streamer = TextStreamer(generator.tokenizer, skip_prompt=True, skip_special_tokens=True)
    if args.prompt:
        generator.answer([args.prompt], [image], args.max_new_tokens, streamer=streamer)
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
        prompt = generator.prompt_ids(text, has_image=first and image is not None, history=history)
        print("model> ", end="", flush=True)
        # The image stays in the conversation (its placeholder is in the first turn), so every turn passes it.
        answer = generator.generate([prompt], [image], args.max_new_tokens, streamer=streamer)[0]
        history += [generator.prompts.user_turn(text, first and image is not None), {"role": "assistant", "content": answer}]
    return 0
