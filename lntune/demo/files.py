"""Write the tiny world to disk: training data in LLaVA format, evaluation sets in the official layouts.

Every file is what a user's real data would be, so the demo runs through the same loaders, templates
and metrics as a real 7B run. Train and evaluation scenes come from disjoint seed ranges.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from lntune.demo.world import (COLORS, NUMBER_WORDS, SAMPLE_TYPES, SHAPES, caption, describe, draw, make_scene,
                               short_questions)
from lntune.eval.benchmarks.base import SHORT_ANSWER
from lntune.prompt import IMAGE_TOKEN

EVAL_SEED_OFFSET = 1_000_000
CAPTION_PROMPTS = ("Describe the image briefly.", "Write a short caption.",
                   "Provide a one-sentence caption for the provided image.")
SCENE_PROMPT = "Scene: {description}\n"


@dataclass(frozen=True)
class WorldSize:
    train_scenes: int = 3000
    text_scenes: int = 6000
    eval_images: int = 60
    """Per evaluation set (MME uses this many images per subtask)."""


def _write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def _image(scene, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    draw(scene).save(path)


def _short(pairs, rng: random.Random):
    """LLaVA-1.5 marks short-answer questions with an instruction; half of ours carry it."""
    return [(q + SHORT_ANSWER if rng.random() < 0.5 else q, a) for q, a in pairs]


def _turns(pairs, first_prefix: str) -> list[dict]:
    conversation = []
    for index, (question, answer) in enumerate(pairs):
        conversation.append({"from": "human", "value": (first_prefix if index == 0 else "") + question})
        conversation.append({"from": "gpt", "value": answer})
    return conversation


def write_text_corpus(root: Path, size: WorldSize, seed: int) -> Path:
    """Text-only chats about scenes described in words: what makes the tiny LLM 'pretrained'.

    Each chat asks several things about one scene (a caption, short questions, one reasoning question), so
    most of what the LLM learns is to read the scene it was given.
    """
    records = []
    for index in range(size.text_scenes):
        scene = make_scene(seed * 7919 + 500_000 + index)
        rng = random.Random(scene.seed)
        pairs = ([(rng.choice(CAPTION_PROMPTS), caption(scene, rng))] + _short(SAMPLE_TYPES["conversation"](scene, rng), rng)
                 + SAMPLE_TYPES["complex_reasoning"](scene, rng)[:1])
        rng.shuffle(pairs)
        records.append({"id": f"text-{index}", "type": "chat",
                        "conversations": _turns(pairs, SCENE_PROMPT.format(description=describe(scene)))})
    return _write_json(root / "text_corpus.json", records)


def write_training_data(root: Path, size: WorldSize, seed: int) -> dict[str, Path]:
    """Stage-1 captions and stage-2 instruction data (each sample tagged with its type), with images."""
    captions, instructions = [], []
    for index in range(size.train_scenes):
        scene = make_scene(seed * 7919 + index)
        rng = random.Random(scene.seed)
        name = f"train/{index:06d}.png"
        _image(scene, root / "images" / name)
        captions.append({"id": f"cap-{index}", "image": name, "conversations": _turns(
            [(rng.choice(CAPTION_PROMPTS), caption(scene, rng))], IMAGE_TOKEN + "\n")})
        instructions += _instruction_records(scene, rng, str(index), name)
    return {"captions": _write_json(root / "pretrain_captions.json", captions),
            "instructions": _write_json(root / "instruct.json", instructions)}


def _instruction_records(scene, rng: random.Random, index: str, image: str) -> list[dict]:
    """One stage-2 sample of each type about `scene` (its image at `image`)."""
    records = []
    for kind, make in SAMPLE_TYPES.items():
        pairs = _short(make(scene, rng), rng) if kind == "conversation" else make(scene, rng)
        if kind == "conversation" and rng.random() < 0.3:
            # Short captions in some conversations (as LLaVA-1.5's mix has COCO captions), so stage 2 keeps captioning.
            pairs.append((rng.choice(CAPTION_PROMPTS), caption(scene, rng)))
        records.append({"id": f"{kind}-{index}", "image": image, "type": kind,
                        "conversations": _turns(pairs, IMAGE_TOKEN + "\n")})
    return records


VALIDATION_SEED_OFFSET = 2_000_000


def write_validation(root: Path, seed: int, samples: int) -> Path:
    """`samples` stage-2 samples of the training distribution from scenes of their own (a seed range no training or
    evaluation scene comes from): the validation split `lntune compare` chooses learning rates on. Images under
    root/images."""
    records = []
    index = 0
    while len(records) < samples:
        scene = make_scene(seed * 7919 + VALIDATION_SEED_OFFSET + index)
        rng = random.Random(scene.seed)
        name = f"validation/{index:06d}.png"
        _image(scene, root / "images" / name)
        rng.choice(CAPTION_PROMPTS), caption(scene, rng)  # the draws a training scene's caption takes first
        records += _instruction_records(scene, rng, f"validation-{index}", name)
        index += 1
    return _write_json(root / "validation.json", records[:samples])


def _eval_scenes(count: int, seed: int, flavour: str, offset: int):
    return [make_scene(EVAL_SEED_OFFSET + seed * 7919 + offset + index, flavour) for index in range(count)]


def write_mme(root: Path, size: WorldSize, seed: int) -> Path:
    """MME folders (flat layout) for existence, count, position, color: one Yes and one No per image."""
    release = root / "MME_Benchmark_release_version"
    suffix = " Please answer yes or no."
    for number, subtask in enumerate(("existence", "count", "position", "color")):
        for index, scene in enumerate(_eval_scenes(size.eval_images, seed, "train", 10_000 * (number + 1))):
            rng = random.Random(scene.seed)
            thing = rng.choice(scene.things)
            if subtask == "existence":
                absent = [s for s in SHAPES if all(t.shape != s for t in scene.things)] or [None]
                yes = f"Is there a {thing.shape} in the image?"
                no = f"Is there a {absent[0]} in the image?" if absent[0] else f"Is there a {rng.choice([c for c in COLORS if c not in {t.color for t in scene.things}])} object in the image?"
            elif subtask == "count":
                n = len(scene.things)
                yes = f"Are there {NUMBER_WORDS[n]} objects in the image?" if n > 1 else "Is there one object in the image?"
                wrong = rng.choice([k for k in NUMBER_WORDS if k != n])
                no = f"Are there {NUMBER_WORDS[wrong]} objects in the image?" if wrong > 1 else "Is there one object in the image?"
            elif subtask == "position":
                yes = f"Is the {thing.name} at the {thing.place}?"
                other = rng.choice([p for p in ("top left", "top right", "bottom left", "bottom right", "center") if p != thing.place])
                no = f"Is the {thing.name} at the {other}?"
            else:
                yes = f"Is the {thing.shape} {thing.color}?" if sum(t.shape == thing.shape for t in scene.things) == 1 \
                    else f"Is there a {thing.color} object in the image?"
                wrong = rng.choice([c for c in COLORS if c not in {t.color for t in scene.things}])
                no = f"Is there a {wrong} object in the image?"
            _image(scene, release / subtask / f"{index:04d}.png")
            (release / subtask / f"{index:04d}.txt").write_text(f"{yes}{suffix}\tYes\n{no}{suffix}\tNo\n")
    return release


def _answer_variants(answer: str, rng: random.Random) -> list[str]:
    """Ten human answers with the variety real annotators show (number words, extra words, a dissenter)."""
    digits = {word: str(n) for n, word in NUMBER_WORDS.items()}
    if answer in digits:
        pool = [digits[answer]] * 7 + [answer] * 2 + [str(rng.randint(1, 4))]
    elif answer in ("yes", "no"):
        pool = [answer] * 9 + ["yes" if answer == "no" else "no"]
    else:
        pool = [answer] * 7 + [f"{answer}."] + [f"the {answer}"] + [rng.choice(list(COLORS))]
    rng.shuffle(pool)
    return pool


def write_vqav2(root: Path, size: WorldSize, seed: int, split: str = "val2014") -> Path:
    questions, annotations = [], []
    for index, scene in enumerate(_eval_scenes(size.eval_images * 3, seed, "train", 50_000)):
        rng = random.Random(scene.seed)
        image_id = 1 + index
        _image(scene, root / "images" / split / f"COCO_{split}_{image_id:012d}.jpg")
        question, answer = rng.choice(short_questions(scene, rng))
        question_id = image_id * 10
        answer_type = "number" if answer in NUMBER_WORDS.values() else "yes/no" if answer in ("yes", "no") else "other"
        questions.append({"image_id": image_id, "question": question, "question_id": question_id})
        annotations.append({
            "question_id": question_id, "image_id": image_id, "question_type": " ".join(question.lower().split()[:3]),
            "answer_type": answer_type, "multiple_choice_answer": answer,
            "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(_answer_variants(answer, rng))],
        })
    _write_json(root / f"v2_mscoco_{split}_annotations.json", {"annotations": annotations})
    return _write_json(root / f"v2_OpenEnded_mscoco_{split}_questions.json",
                       {"data_subtype": split, "questions": questions})


def write_captions(root: Path, size: WorldSize, seed: int, flavour: str) -> Path:
    images = []
    for index, scene in enumerate(_eval_scenes(size.eval_images, seed, flavour, 70_000 if flavour == "coco" else 80_000)):
        rng = random.Random(scene.seed)
        if flavour == "coco":
            entry = {"filepath": "val2014", "filename": f"COCO_val2014_{index:012d}.jpg", "cocoid": index}
            _image(scene, root / "images" / "val2014" / entry["filename"])
        else:
            entry = {"filename": f"{1000 + index}.jpg"}
            _image(scene, root / "images" / entry["filename"])
        entry.update(split="test", imgid=index, sentences=[{"raw": caption(scene, rng)} for _ in range(5)])
        images.append(entry)
    return _write_json(root / f"dataset_{flavour}.json", {"images": images, "dataset": flavour})


def write_pope(root: Path, size: WorldSize, seed: int) -> Path:
    """POPE's three splits: negatives drawn at random, by frequency, and by co-occurrence with what is present."""
    scenes = _eval_scenes(size.eval_images, seed, "train", 90_000)
    frequency = Counter(t.name for s in scenes for t in s.things)
    together = Counter((a.name, b.name) for s in scenes for a in s.things for b in s.things if a is not b)
    names = [f"{c} {s}" for c in COLORS for s in SHAPES]
    for split in ("random", "popular", "adversarial"):
        lines = []
        for index, scene in enumerate(scenes):
            rng = random.Random(f"{scene.seed}:{split}")
            image = f"COCO_val2014_{index:012d}.jpg"
            _image(scene, root / "images" / image)
            present = [t.name for t in scene.things][:3]
            absent = [n for n in names if n not in {t.name for t in scene.things}]
            if split == "random":
                negatives = rng.sample(absent, len(present))
            elif split == "popular":
                negatives = sorted(absent, key=lambda n: (-frequency[n], n))[: len(present)]
            else:
                negatives = sorted(absent, key=lambda n: (-sum(together[(p, n)] for p in present), n))[: len(present)]
            for name, label in [(n, "yes") for n in present] + [(n, "no") for n in negatives]:
                lines.append({"question_id": len(lines) + 1, "image": image, "text": f"Is there a {name} in the image?",
                              "label": label})
        (root / f"coco_pope_{split}.json").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return root


def write_world(root: str | Path, seed: int = 0, size: WorldSize = WorldSize()) -> dict[str, Path]:
    """Everything, under `root`. Returns the paths the demo needs."""
    root = Path(root)
    paths = write_training_data(root / "train", size, seed)
    paths["text_corpus"] = write_text_corpus(root / "text", size, seed)
    paths["train_images"] = root / "train" / "images"
    paths["mme"] = write_mme(root / "eval" / "mme", size, seed)
    paths["vqav2"] = write_vqav2(root / "eval" / "vqav2", size, seed)
    paths["vqav2_images"] = root / "eval" / "vqav2" / "images"
    for flavour in ("coco", "flickr30k"):
        paths[flavour] = write_captions(root / "eval" / flavour, size, seed, flavour)
        paths[f"{flavour}_images"] = root / "eval" / flavour / "images"
    paths["pope"] = write_pope(root / "eval" / "pope", size, seed)
    paths["pope_images"] = root / "eval" / "pope" / "images"
    return paths
