"""Tiny *pretrained* backbones for the tiny world, in standard HF architectures, built in a minute on a CPU.

- The LLM (Llama architecture, own byte-level BPE tokenizer and chat template) is trained on the
  text-only corpus: scenes described in words, then chats about them. It knows the language and the
  reasoning, but has never seen an image.
- The vision encoder (CLIP vision tower) is trained on its own to tell, for every patch, which colour,
  shape and size of object covers it, plus the scene's background and object count from its CLS token.

Both are saved as ordinary HF model directories, so `lntune build` uses them like any checkpoint.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import torch

from lntune.demo.world import BACKGROUNDS, COLORS, IMAGE_SIZE, SHAPES, draw, make_scene
from lntune.prompt import CONTENT_MACRO

PATCH = 16  # one patch per cell of the scenes' 3x3 grid: 9 image tokens, each one cell's contents
CHAT_TEMPLATE = CONTENT_MACRO + (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ 'USER: ' + content(message) + '\\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ 'ASSISTANT: ' + content(message) + eos_token + '\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


def _cosine(step: int, total: int, peak: float, warmup: int = 50) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def train_tokenizer(texts: list[str], vocab_size: int = 800):
    from lntune.demo.tokenizer import build_tokenizer

    tokenizer = build_tokenizer(texts, vocab_size=vocab_size)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def pretrain_llm(corpus_file: Path, out: Path, steps: int = 1000, batch_size: int = 32, seed: int = 0,
                 hidden_size: int = 128, layers: int = 4, progress=None) -> Path:
    """Train a tiny Llama on the text corpus and save it with its tokenizer.

    The loss is on the assistant turns only (the scene descriptions are random: predicting them teaches
    nothing), so every step trains what a multimodal model needs later: reading the scene in the context
    to answer. The earlier LLM, trained on every token of a sparser corpus, ignored its context (docs/demo.md).
    Batches are runs of similar-length chats, so little compute goes to padding.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    from lntune.eval.benchmarks.base import SHORT_ANSWER
    from lntune.prompt import IGNORE_INDEX, IMAGE_TOKEN, PromptBuilder

    records = json.loads(Path(corpus_file).read_text())
    messages = [[{"role": "user" if t["from"] == "human" else "assistant", "content": t["value"]}
                 for t in record["conversations"]] for record in records]
    extra = ["Provide a one-sentence caption for the provided image.",
             SHORT_ANSWER.strip() + " Please answer yes or no.", IMAGE_TOKEN]
    tokenizer = train_tokenizer([m["content"] for chat in messages for m in chat] + extra)
    builder = PromptBuilder(tokenizer, template_source=CHAT_TEMPLATE, image_placement="keep")
    encoded = [builder.encode(chat, f"{corpus_file}: {record['id']}")
               for chat, record in zip(messages, records)]
    encoded.sort(key=lambda sample: len(sample.input_ids))
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=3 * hidden_size,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=512, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    rng = random.Random(seed)
    model.train()
    for step in range(steps):
        start = rng.randrange(max(1, len(encoded) - batch_size + 1))
        batch = encoded[start:start + batch_size]
        length = max(len(sample.input_ids) for sample in batch)
        input_ids = torch.full((len(batch), length), tokenizer.eos_token_id)
        labels = torch.full((len(batch), length), IGNORE_INDEX)
        mask = torch.zeros((len(batch), length), dtype=torch.long)
        for row, sample in enumerate(batch):
            input_ids[row, : len(sample.input_ids)] = torch.tensor(sample.input_ids)
            labels[row, : len(sample.labels)] = torch.tensor(sample.labels)
            mask[row, : len(sample.input_ids)] = 1
        for group in optimizer.param_groups:
            group["lr"] = _cosine(step, steps, 3e-3)
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if progress:
            progress(step, loss.item())
    model.generation_config.pad_token_id = tokenizer.eos_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return Path(out)


def _patch_targets(scene, patch: int) -> tuple[list[int], int, int]:
    """Per patch: 0 = background, else 1 + 2 * (colour * 3 + shape) + size; plus background and count classes."""
    grid = IMAGE_SIZE // patch
    cell = IMAGE_SIZE / 3
    targets = [0] * (grid * grid)
    for thing in scene.things:
        radius = cell * (0.42 if thing.size == "large" else 0.24)
        cx, cy = (thing.column + 0.5) * cell, (thing.row + 0.5) * cell
        label = 1 + 2 * (list(COLORS).index(thing.color) * len(SHAPES) + SHAPES.index(thing.shape)) + SIZES_INDEX[thing.size]
        for row in range(grid):
            for column in range(grid):
                overlap_x = min(cx + radius, (column + 1) * patch) - max(cx - radius, column * patch)
                overlap_y = min(cy + radius, (row + 1) * patch) - max(cy - radius, row * patch)
                if overlap_x > 0 and overlap_y > 0:
                    targets[row * grid + column] = label
    return targets, list(BACKGROUNDS).index(scene.background), len(scene.things) - 1


SIZES_INDEX = {"small": 0, "large": 1}
PATCH_CLASSES = 1 + 2 * len(COLORS) * len(SHAPES)


def pretrain_vision(out: Path, steps: int = 600, batch_size: int = 64, scenes: int = 4000, seed: int = 0,
                    hidden_size: int = 96, layers: int = 4, patch_size: int = PATCH, progress=None) -> Path:
    """Train a tiny CLIP vision tower to see the world (patch contents, background, count) and save it."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    processor = CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    pool = [make_scene(seed * 7919 + 2_000_000 + index) for index in range(scenes)]
    pixels = processor(images=[draw(scene) for scene in pool], return_tensors="pt")["pixel_values"]
    targets = [_patch_targets(scene, patch_size) for scene in pool]
    patch_targets = torch.tensor([t[0] for t in targets])
    background_targets = torch.tensor([t[1] for t in targets])
    count_targets = torch.tensor([t[2] for t in targets])

    torch.manual_seed(seed)
    config = CLIPVisionConfig(hidden_size=hidden_size, intermediate_size=4 * hidden_size, num_hidden_layers=layers,
                              num_attention_heads=4, image_size=IMAGE_SIZE, patch_size=patch_size, projection_dim=hidden_size)
    model = CLIPVisionModel(config)
    heads = torch.nn.ModuleDict({"patch": torch.nn.Linear(hidden_size, PATCH_CLASSES),
                                 "background": torch.nn.Linear(hidden_size, len(BACKGROUNDS)),
                                 "count": torch.nn.Linear(hidden_size, 4)})
    parameters = list(model.parameters()) + list(heads.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=2e-3, weight_decay=0.01)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for step in range(steps):
        index = torch.randint(0, scenes, (batch_size,), generator=generator)
        hidden = model(pixel_values=pixels[index]).last_hidden_state  # [B, 1 + patches, D]
        cross_entropy = torch.nn.functional.cross_entropy
        loss = (cross_entropy(heads["patch"](hidden[:, 1:]).flatten(0, 1), patch_targets[index].flatten())
                + cross_entropy(heads["background"](hidden[:, 0]), background_targets[index])
                + cross_entropy(heads["count"](hidden[:, 0]), count_targets[index]))
        for group in optimizer.param_groups:
            group["lr"] = _cosine(step, steps, 2e-3)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if progress:
            progress(step, loss.item())
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return Path(out)
