"""The training dataset: a Mixture's records -> token ids, labels and pixel values, lazily per item.

A sample that cannot be used (over-long under the `skip` policy, or an unreadable image under
`skip_invalid`) is replaced by the next usable one, so batch shapes never change and no process of a
distributed run waits on a batch that never comes. Every replacement is reported in the item itself
(`skipped`) and counted by the trainer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from lntune.config import DataConfig
from lntune.data.images import ImageError, load_image, pixel_values, resolve_aspect_ratio
from lntune.data.mixture import Mixture
from lntune.errors import LntuneError
from lntune.prompt import IGNORE_INDEX, IMAGE_TOKEN, PromptBuilder

MAX_REPLACEMENTS = 50


class SkipSample(Exception):
    """Internal: this sample is skipped by policy (the message says why)."""


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]
    pixel_values: torch.Tensor | None
    sample_id: str
    truncated: bool = False
    skipped: list[str] = field(default_factory=list)


class SupervisedDataset(torch.utils.data.Dataset):
    def __init__(self, mixture: Mixture, processor, image_seq_length: int, config: DataConfig, stage: str):
        self.mixture = mixture
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.image_token = getattr(processor, "image_token", IMAGE_TOKEN)
        self.image_token_id = self.tokenizer.convert_tokens_to_ids(self.image_token)
        self.image_seq_length = image_seq_length
        self.config = config
        self.prompts = PromptBuilder(self.tokenizer, config.template, stage, config.system, config.image_placement,
                                     self.image_token)
        self.aspect_ratio = resolve_aspect_ratio(config.image_aspect_ratio, stage)
        """pad or crop: what every image goes through before the image processor (recorded with the adapter)."""

    def __len__(self) -> int:
        return len(self.mixture)

    def __getitem__(self, index: int) -> Example:
        skipped = []
        for attempt in range(MAX_REPLACEMENTS):
            try:
                example = self.build(self.mixture.record((index + attempt) % len(self.mixture)))
                example.skipped = skipped
                return example
            except SkipSample as reason:
                skipped.append(str(reason))
        raise LntuneError(f"{MAX_REPLACEMENTS} samples in a row were skipped; last: {skipped[-1]}")

    def vision_placeholder(self) -> Example:
        """A row of image tokens for a blank image, nothing supervised. Training with several processes needs the
        same collectives in every process (DDP's gradient buckets, FSDP2 / ZeRO gathers and reductions), so a batch
        of text-only samples still runs the vision encoder and the connector, on this row; it adds no loss, so their
        gradient from it is exactly zero. (LLaVA does the same with a blank image per text-only sample.)"""
        from PIL import Image

        blank = Image.new("RGB", (64, 64))
        return Example([self.image_token_id] * self.image_seq_length, [IGNORE_INDEX] * self.image_seq_length,
                       pixel_values(self.processor, blank, self.aspect_ratio), "vision-placeholder")

    def tokenize(self, record):
        """Token ids / labels with each <image> expanded to the image's token count."""
        sample = self.prompts.encode(record.messages, record.where)
        return self.prompts.expand_images(sample.input_ids, sample.labels, self.image_seq_length)

    def tokens(self, record) -> tuple[list[int], list[int], bool]:
        """The training view of a record's text: ids and labels, image tokens expanded, the over-length policy
        applied (SkipSample when it drops the sample). `lntune data show` prints exactly this."""
        input_ids, labels = self.tokenize(record)
        truncated = False
        if len(input_ids) > self.config.max_length:
            if self.config.overlong == "skip":
                raise SkipSample(f"{record.where}: {len(input_ids)} tokens > max_length {self.config.max_length}")
            last_image = max((i for i, t in enumerate(input_ids) if t == self.image_token_id), default=-1)
            if last_image >= self.config.max_length:
                raise SkipSample(f"{record.where}: the image does not fit in max_length {self.config.max_length}")
            input_ids, labels = input_ids[: self.config.max_length], labels[: self.config.max_length]
            truncated = True
            if all(label == IGNORE_INDEX for label in labels):
                raise SkipSample(f"{record.where}: nothing supervised left after truncation to {self.config.max_length}")
        return input_ids, labels, truncated

    def build(self, record) -> Example:
        input_ids, labels, truncated = self.tokens(record)
        pixels = None
        if record.image:
            if self.config.image_folder is None:
                raise LntuneError(f"{record.where}: the sample has an image but no image folder was given (--image-folder)")
            try:
                image = load_image(self.config.image_folder, record.image, record.where, self.config.max_image_pixels)
            except ImageError as error:
                if not self.config.skip_invalid:
                    raise LntuneError(f"{error} (or pass --skip-invalid to skip and count such samples)") from None
                raise SkipSample(str(error)) from None
            pixels = pixel_values(self.processor, image, self.aspect_ratio)  # [3, H, W]
        return Example(input_ids, labels, pixels, record.id, truncated)


def collate(examples: list[Example], pad_token_id: int, placeholder: Example | None = None) -> dict:
    """Right-padded batch; pixel values stacked in the order their image tokens appear. A batch without any image
    gets `placeholder` as an extra row (see SupervisedDataset.vision_placeholder), when one is given."""
    if placeholder is not None and all(example.pixel_values is None for example in examples):
        examples = [*examples, placeholder]
    length = max(len(example.input_ids) for example in examples)
    input_ids = torch.full((len(examples), length), pad_token_id, dtype=torch.long)
    labels = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), length), dtype=torch.long)
    for row, example in enumerate(examples):
        size = len(example.input_ids)
        input_ids[row, :size] = torch.tensor(example.input_ids)
        labels[row, :size] = torch.tensor(example.labels)
        attention_mask[row, :size] = 1
    batch = {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
    images = [example.pixel_values for example in examples if example.pixel_values is not None]
    if images:
        batch["pixel_values"] = torch.stack(images)  # [N_images, 3, H, W]
    batch["skipped"] = [reason for example in examples for reason in example.skipped]
    batch["truncated"] = sum(example.truncated for example in examples)
    return batch
