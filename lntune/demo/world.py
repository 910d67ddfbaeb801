"""The tiny world: synthetic scenes of coloured shapes, and everything written about them.

A scene is 1-4 objects (shape, colour, size) in distinct cells of a 3x3 grid on a tinted, noisy
background. From scenes come: images; a text-only corpus (scenes described in words, then questions
and answers) that teaches the tiny LLM the language and the reasoning without any image; LLaVA-format
captions and instruction data of the paper's three types; and evaluation sets in the official layouts
of MME, VQAv2, Karpathy captions (a `coco` and a `flickr30k` flavour) and POPE. Everything is a pure
function of a seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

COLORS = {"red": (210, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 210), "yellow": (225, 200, 30),
          "purple": (140, 60, 170), "orange": (235, 130, 30)}
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "large")
ROWS = ("top", "middle", "bottom")
COLUMNS = ("left", "center", "right")
BACKGROUNDS = {"gray": (150, 150, 150), "white": (235, 235, 230), "beige": (220, 205, 170), "sky": (175, 205, 230)}
NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}
IMAGE_SIZE = 48


@dataclass(frozen=True)
class Thing:
    shape: str
    color: str
    size: str
    row: int
    column: int

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape}"

    @property
    def place(self) -> str:
        row, column = ROWS[self.row], COLUMNS[self.column]
        if row == "middle" and column == "center":
            return "center"
        return f"{row} {column}" if row != "middle" else f"middle {column}"

    def phrase(self) -> str:
        return f"a {self.size} {self.color} {self.shape}"


@dataclass(frozen=True)
class Scene:
    things: tuple[Thing, ...]
    background: str
    seed: int


FLAVOURS = {
    # coco: busier scenes, all colours; flickr30k: sparser scenes, warm colours, light backgrounds
    "coco": {"counts": (1, 2, 3, 4), "weights": (1, 3, 3, 2), "colors": tuple(COLORS), "backgrounds": tuple(BACKGROUNDS)},
    "flickr30k": {"counts": (1, 2), "weights": (1, 1), "colors": ("red", "orange", "yellow", "purple", "blue"),
                  "backgrounds": ("white", "beige")},
    "train": {"counts": (1, 2, 3, 4), "weights": (2, 3, 3, 2), "colors": tuple(COLORS), "backgrounds": tuple(BACKGROUNDS)},
}


def make_scene(seed: int, flavour: str = "train") -> Scene:
    rng = random.Random(seed)
    spec = FLAVOURS[flavour]
    count = rng.choices(spec["counts"], spec["weights"])[0]
    cells = rng.sample([(r, c) for r in range(3) for c in range(3)], count)
    things, used = [], set()
    for row, column in cells:
        while True:  # distinct (colour, shape) pairs, so "the red circle" names one object
            shape, color = rng.choice(SHAPES), rng.choice(spec["colors"])
            if (shape, color) not in used:
                used.add((shape, color))
                break
        things.append(Thing(shape, color, rng.choice(SIZES), row, column))
    return Scene(tuple(things), rng.choice(spec["backgrounds"]), seed)


def draw(scene: Scene, size: int = IMAGE_SIZE):
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(scene.seed)
    base = np.array(BACKGROUNDS[scene.background], dtype=np.float64)
    pixels = np.clip(base + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    pen = ImageDraw.Draw(image)
    cell = size / 3
    for thing in scene.things:
        radius = cell * (0.42 if thing.size == "large" else 0.24)
        cx, cy = (thing.column + 0.5) * cell, (thing.row + 0.5) * cell
        box = (cx - radius, cy - radius, cx + radius, cy + radius)
        color = COLORS[thing.color]
        if thing.shape == "circle":
            pen.ellipse(box, fill=color)
        elif thing.shape == "square":
            pen.rectangle(box, fill=color)
        else:
            pen.polygon([(cx, cy - radius), (cx - radius, cy + radius), (cx + radius, cy + radius)], fill=color)
    return image


# ---- words about a scene --------------------------------------------------------------------------

def count_phrase(n: int) -> str:
    return f"{NUMBER_WORDS[n]} object{'s' if n > 1 else ''}"


def describe(scene: Scene) -> str:
    """The long description: the text-only stand-in for the image, and the `detail` answer."""
    parts = [f"There {'is' if len(scene.things) == 1 else 'are'} {count_phrase(len(scene.things))} on a {scene.background} background."]
    for thing in scene.things:
        parts.append(f"{thing.phrase().capitalize()} is at the {thing.place}.")
    return " ".join(parts)


def caption(scene: Scene, rng: random.Random) -> str:
    things = list(scene.things)
    rng.shuffle(things)
    names = [thing.phrase() if rng.random() < 0.7 else f"a {thing.name}" for thing in things]
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    style = rng.randrange(3)
    if style == 0:
        return f"{listed} on a {scene.background} background."
    if style == 1:
        return f"a picture of {listed}."
    return f"{count_phrase(len(things))}: {listed}."


def short_questions(scene: Scene, rng: random.Random) -> list[tuple[str, str]]:
    """Single-word / short-phrase questions and answers (conversation data, VQA)."""
    qa = [("How many objects are there?", NUMBER_WORDS[len(scene.things)])]
    present = {(t.shape, t.color) for t in scene.things}
    for thing in scene.things:
        if sum(t.shape == thing.shape for t in scene.things) == 1:
            qa.append((f"What color is the {thing.shape}?", thing.color))
        qa.append((f"Where is the {thing.name}?", thing.place))
        qa.append((f"Is the {thing.name} large or small?", thing.size))
    shape, color = rng.choice(SHAPES), rng.choice(tuple(COLORS))
    qa.append((f"Is there a {color} {shape}?", "yes" if (shape, color) in present else "no"))
    qa.append((f"Is there a {rng.choice(SHAPES)}?", "yes"))  # replaced below when absent
    asked_shape = qa[-1][0].split()[-1].rstrip("?")
    qa[-1] = (qa[-1][0], "yes" if any(t.shape == asked_shape for t in scene.things) else "no")
    qa.append(("What is the background color?", scene.background))
    # Yes/no forms as MME and POPE ask them, true and false in equal measure.
    thing = rng.choice(scene.things)
    other_place = rng.choice([p for p in ("top left", "top right", "bottom left", "bottom right", "center") if p != thing.place])
    qa.append((f"Is the {thing.name} at the {rng.choice([thing.place, other_place])}?", None))
    qa[-1] = (qa[-1][0], "yes" if qa[-1][0].endswith(f"at the {thing.place}?") else "no")
    n = len(scene.things)
    asked = rng.choice([n, rng.choice([k for k in NUMBER_WORDS if k != n])])
    qa.append((f"Are there {NUMBER_WORDS[asked]} objects in the image?" if asked > 1 else "Is there one object in the image?",
               "yes" if asked == n else "no"))
    name = rng.choice([thing.name, f"{rng.choice(tuple(COLORS))} {rng.choice(SHAPES)}"])
    qa.append((f"Is there a {name} in the image?", "yes" if any(t.name == name for t in scene.things) else "no"))
    return qa


def reasoning_questions(scene: Scene, rng: random.Random) -> list[tuple[str, str]]:
    """Relations, conditional counting, comparisons, with the reason in the answer."""
    qa = []
    color = rng.choice([t.color for t in scene.things] + [rng.choice(tuple(COLORS))])
    matching = [t for t in scene.things if t.color == color]
    qa.append((f"How many {color} objects are there, and what are they?",
               f"There {'is' if len(matching) == 1 else 'are'} {NUMBER_WORDS.get(len(matching), 'no')} {color} object"
               f"{'' if len(matching) == 1 else 's'}" + (": " + ", ".join(t.phrase() for t in matching) + "." if matching else ".")))
    large = [t for t in scene.things if t.size == "large"]
    listed = " and ".join(f"the {t.name}" for t in large)
    qa.append(("How many large objects are there?",
               f"{NUMBER_WORDS.get(len(large), 'none').capitalize()}" + (f": {listed}." if large else ".")))
    if len(scene.things) >= 2:
        a, b = rng.sample(scene.things, 2)
        if a.column != b.column:
            left = a if a.column < b.column else b
            qa.append((f"Is the {a.name} to the left of the {b.name}?",
                       f"{'Yes' if left is a else 'No'}, the {a.name} is at the {a.place} and the {b.name} is at the {b.place}."))
        if a.size != b.size:
            bigger = a if a.size == "large" else b
            qa.append((f"Which is bigger, the {a.name} or the {b.name}?", f"The {bigger.name} is bigger, because it is large."))
        elif a.row != b.row:
            higher = a if a.row < b.row else b
            qa.append((f"Which is higher, the {a.name} or the {b.name}?", f"The {higher.name} is higher, at the {higher.place}."))
    return qa


# ---- datasets -------------------------------------------------------------------------------------

def conversation_sample(scene: Scene, rng: random.Random, turns: int = 3) -> list[tuple[str, str]]:
    qa = short_questions(scene, rng)
    return rng.sample(qa, min(turns, len(qa)))


def detail_sample(scene: Scene, rng: random.Random) -> list[tuple[str, str]]:
    prompt = rng.choice(["Describe the image in detail.", "What is in this picture? Give a full description.",
                         "Describe everything you see."])
    return [(prompt, describe(scene))]


def reasoning_sample(scene: Scene, rng: random.Random) -> list[tuple[str, str]]:
    qa = reasoning_questions(scene, rng)
    return rng.sample(qa, min(2, len(qa)))


SAMPLE_TYPES = {"conversation": conversation_sample, "detail": detail_sample, "complex_reasoning": reasoning_sample}
