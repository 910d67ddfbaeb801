"""Greedy answers from an MLLM, batched with left padding; shared by `lntune eval` and `lntune chat`.

Prompts are token ids from the same PromptBuilder as training (lntune.prompt): same template, same image
placement, BOS as an id, image tokens expanded the same way. So the ids a question gets here equal the training
ids of the same conversation up to the answer; the processor only turns images into pixel values.
"""

from __future__ import annotations

import torch

from lntune.prompt import IMAGE_TOKEN, PromptBuilder


class GenerationPrompts:
    """Question (+ history) -> the ids generation receives; what `lntune data show --bench` prints, with no model."""

    def __init__(self, processor, image_seq_length: int, template: str = "auto", system: str | None = None):
        image_token = getattr(processor, "image_token", IMAGE_TOKEN)
        # Evaluation always puts the image first, as LLaVA's model_vqa_loader does.
        self.builder = PromptBuilder(processor.tokenizer, template, "finetune", system, "front", image_token)
        self.image_seq_length = image_seq_length

    def ids(self, text: str, has_image: bool, history: list[dict] | None = None) -> list[int]:
        """The ids of the conversation up to the assistant's turn, image tokens expanded."""
        turns = list(history or []) + [self.builder.user_turn(text, has_image)]
        return self.builder.expand_images(self.builder.encode_prompt(turns), None, self.image_seq_length)[0]


class AnswerGenerator:
    def __init__(self, model, processor, template: str = "auto", system: str | None = None):
        self.model = model.eval()
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.questions = GenerationPrompts(processor, model.config.image_seq_length, template, system)
        self.prompts = self.questions.builder
        self.template_name = self.prompts.template_name

    def prompt_ids(self, text: str, has_image: bool, history: list[dict] | None = None) -> list[int]:
        return self.questions.ids(text, has_image, history)

    def inputs(self, prompts: list[list[int]], images: list) -> dict:
        """Left-padded ids (generation continues from the right end of every row) and the images' pixel values."""
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        length = max(len(ids) for ids in prompts)
        input_ids = torch.full((len(prompts), length), pad, dtype=torch.long)
        attention_mask = torch.zeros((len(prompts), length), dtype=torch.long)
        for row, ids in enumerate(prompts):
            input_ids[row, length - len(ids):] = torch.tensor(ids)
            attention_mask[row, length - len(ids):] = 1
        encoded = {"input_ids": input_ids, "attention_mask": attention_mask}
        present = [image for image in images if image is not None]
        if present:
            pixel_values = self.processor.image_processor(images=present, return_tensors="pt")["pixel_values"]
            encoded["pixel_values"] = pixel_values.to(self.model.dtype)
        return {key: value.to(self.model.device) for key, value in encoded.items()}

    @torch.no_grad()
    def answer(self, questions: list[str], images: list, max_new_tokens: int, streamer=None) -> list[str]:
        prompts = [self.prompt_ids(question, image is not None) for question, image in zip(questions, images)]
        return self.generate(prompts, images, max_new_tokens, streamer)

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], images: list, max_new_tokens: int, streamer=None) -> list[str]:
        inputs = self.inputs(prompts, images)
        output = self.model.generate(
            **inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, temperature=None, top_p=None,
            top_k=None, pad_token_id=self.tokenizer.pad_token_id, streamer=streamer,
        )
        new_tokens = output[:, inputs["input_ids"].shape[1]:]
        return [text.strip() for text in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
