"""Does the tiny world's model read its context? Loss on colour / shape words, with the right context or a wrong one.

  python bench/grounding_probe.py llm DIR      # the text LLM: the scene described in words, then a question
  python bench/grounding_probe.py mllm DIR     # a built / stage-1 MLLM: the image, then its caption

For each, the mean negative log-likelihood (nats) of the colour and shape words in the answers, given the right
scene and given another sample's scene (images shifted by one). Chance is ln 6 = 1.79 for colours, ln 3 = 1.10
for shapes. A model that reads its context scores well below chance with the right scene and worse than chance
with the wrong one; equal numbers mean the context is ignored. This is how the demo's grounding problem was found
(docs/demo.md): the first tiny LLM could not read colours even from text, so no connector could pass them on.
"""

from __future__ import annotations

import argparse
import math
import random
import sys

import torch


def _word_ids(tokenizer, words) -> torch.Tensor:
    return torch.tensor([tokenizer(" " + word, add_special_tokens=False)["input_ids"][0] for word in words])


def _word_losses(logits, input_ids, labels, groups: dict) -> dict:
    """Mean NLL of the supervised next tokens that are in each group of word ids."""
    target, supervised = input_ids[:, 1:], labels[:, 1:] != -100
    token_nll = -torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, target[..., None])[..., 0]
    return {name: float(token_nll[torch.isin(target, ids) & supervised].mean()) for name, ids in groups.items()}


def probe_llm(model_dir: str, scenes: int = 100) -> dict:
    """The text LLM answering questions and writing captions about scenes described in its prompt."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lntune.demo.files import SCENE_PROMPT
    from lntune.demo.world import COLORS, SHAPES, caption, describe, make_scene, short_questions
    from lntune.prompt import PromptBuilder

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    groups = {"colour": _word_ids(tokenizer, COLORS), "shape": _word_ids(tokenizer, SHAPES)}
    pool = [make_scene(9_000_000 + index) for index in range(scenes)]  # seeds no training set uses
    builder = PromptBuilder(tokenizer, "tokenizer", image_placement="keep")
    results = {}
    for context in ("right", "wrong"):
        totals: dict[str, list[float]] = {}
        for index, scene in enumerate(pool):
            rng = random.Random(index)
            shown = scene if context == "right" else pool[(index + 1) % len(pool)]
            pairs = [("Write a short caption.", caption(scene, rng))]
            pairs += [(q, a) for q, a in short_questions(scene, rng) if q.startswith("What color")][:1]
            for question, answer in pairs:
                chat = [{"role": "user", "content": SCENE_PROMPT.format(description=describe(shown)) + question},
                        {"role": "assistant", "content": answer}]
                sample = builder.encode(chat, "probe")
                ids, labels = torch.tensor([sample.input_ids]), torch.tensor([sample.labels])
                with torch.no_grad():
                    losses = _word_losses(model(input_ids=ids).logits, ids, labels, groups)
                for name, value in losses.items():
                    if not math.isnan(value):
                        totals.setdefault(name, []).append(value)
        results[context] = {name: sum(values) / len(values) for name, values in totals.items()}
    return results


def probe_mllm(model_dir: str, samples: int = 128) -> dict:
    """An MLLM captioning training images (stage-1 layout), with each image and with its neighbour's."""
    from lntune.config import DataConfig, DataSource
    from lntune.data.dataset import SupervisedDataset, collate
    from lntune.data.mixture import build_mixture
    from lntune.demo.backbones_cache import prepare_world
    from lntune.demo.world import COLORS, SHAPES
    from lntune.model.load import load_llava_config, load_model, load_processor

    paths = prepare_world()
    config, processor = load_llava_config(model_dir), load_processor(model_dir)
    model = load_model(model_dir).eval()
    data = DataConfig(sources=(DataSource(str(paths["captions"]), None, samples),), image_folder=str(paths["train_images"]))
    dataset = SupervisedDataset(build_mixture(data, seed=1), processor, config.image_seq_length, data, "pretrain")
    batch = collate([dataset[i] for i in range(len(dataset))], pad_token_id=processor.tokenizer.pad_token_id)
    groups = {"colour": _word_ids(processor.tokenizer, COLORS), "shape": _word_ids(processor.tokenizer, SHAPES)}
    results = {}
    for context, pixels in (("right", batch["pixel_values"]), ("wrong", batch["pixel_values"].roll(1, 0))):
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], pixel_values=pixels).logits
        results[context] = _word_losses(logits, batch["input_ids"], batch["labels"], groups)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["llm", "mllm"])
    parser.add_argument("model", help="the LLM directory (llm) or the MLLM directory (mllm)")
    args = parser.parse_args()
    results = (probe_llm if args.kind == "llm" else probe_mllm)(args.model)
    print(f"{'context':<8} {'colour NLL':>11} {'shape NLL':>10}   (chance: colour {math.log(6):.2f}, shape {math.log(3):.2f})")
    for context, losses in results.items():
        print(f"{context:<8} {losses['colour']:>11.3f} {losses['shape']:>10.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
