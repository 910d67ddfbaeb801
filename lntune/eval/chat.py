"""`lntune chat`: one answer, or a conversation, about an image; tokens stream as they are generated."""

from __future__ import annotations

import sys


def chat(args) -> int:
    from PIL import Image
    from transformers import TextStreamer

    from lntune.data.images import to_rgb
    from lntune.errors import LntuneError
    from lntune.eval.runner import load_generator

    generator = load_generator(args.model, args.adapter, args.template, system=args.system)
    image = None
    if args.image:
        try:
            image = to_rgb(Image.open(args.image))
        except (OSError, ValueError) as error:
            raise LntuneError(f"cannot read image {args.image}: {error}") from None
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
