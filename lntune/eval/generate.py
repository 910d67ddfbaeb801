"""Greedy answers from an MLLM, batched with left padding; shared by `lntune eval` and `lntune chat`.

Prompts go through the same chat template as training (lntune.data.chat) and the same BOS rule, so
the model sees at evaluation exactly the token layout it was trained on.
"""

from __future__ import annotations

import torch

from lntune.data.chat import _bos_prefix, render, resolve_template

IMAGE_PLACEHOLDER = "<image>"


class AnswerGenerator:
    def __init__(self, model, processor, template: str = "auto"):
        self.model = model.eval()
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.template_name, self.template = resolve_template(template, self.tokenizer, "finetune")
        self.image_token = getattr(processor, "image_token", IMAGE_PLACEHOLDER)

    def prompt(self, text: str, has_image: bool, history: list[dict] | None = None) -> str:
        """The rendered conversation up to the assistant's turn (BOS included when the tokenizer adds one)."""
        content = f"{self.image_token}\n{text}" if has_image else text
        rendered = render(self.tokenizer, self.template, list(history or []) + [{"role": "user", "content": content}],
                          add_generation_prompt=True)
        if _bos_prefix(self.tokenizer) and not rendered.startswith(self.tokenizer.bos_token):
            rendered = self.tokenizer.bos_token + rendered
        return rendered

    def inputs(self, prompts: list[str], images: list) -> dict:
        self.tokenizer.padding_side = "left"  # generation continues from the right end of every row
        present = [image for image in images if image is not None]
        encoded = self.processor(images=present or None, text=prompts, return_tensors="pt", padding=True,
                                 add_special_tokens=False)
        return {key: value.to(self.model.device) for key, value in encoded.items()}

    @torch.no_grad()
    def answer(self, questions: list[str], images: list, max_new_tokens: int, streamer=None) -> list[str]:
        prompts = [self.prompt(question, image is not None) for question, image in zip(questions, images)]
        return self.generate(prompts, images, max_new_tokens, streamer)

    @torch.no_grad()
    def generate(self, prompts: list[str], images: list, max_new_tokens: int, streamer=None) -> list[str]:
        inputs = self.inputs(prompts, images)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        output = self.model.generate(
            **inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, temperature=None, top_p=None,
            top_k=None, pad_token_id=self.tokenizer.pad_token_id, streamer=streamer,
        )
        new_tokens = output[:, inputs["input_ids"].shape[1]:]
        return [text.strip() for text in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
