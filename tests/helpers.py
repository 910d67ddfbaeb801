"""Small helpers the tests share (images, processor inputs)."""


def make_image(seed: int = 0, size=(40, 48)):
    """A small random RGB image (deliberately not square: the processor must resize and crop)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(size[0], size[1], 3), dtype=np.uint8))


def image_inputs(model_dir, text="USER: <image>\nWhat is this? ASSISTANT:", images=1, seed=0):
    """Processor inputs for one prompt with `images` random images."""
    from lntune.model.load import load_processor

    processor = load_processor(model_dir)
    pictures = [make_image(seed + index) for index in range(images)]
    return processor(images=pictures, text=text, return_tensors="pt")


COLORS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 60, 220), "yellow": (230, 210, 40)}


def write_llava_data(root, count=16, text_only=0, types=("conversation", "detail"), jsonl=False, name="data"):
    """A small LLaVA-format dataset: coloured-square images + conversations; returns (data file, image folder)."""
    import json
    from pathlib import Path

    from PIL import Image

    root = Path(root)
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    records = []
    colors = list(COLORS)
    for index in range(count):
        color = colors[index % len(colors)]
        Image.new("RGB", (36, 30), COLORS[color]).save(images / f"{index:04d}.png")
        sample_type = types[index % len(types)]
        if sample_type == "detail":
            conversations = [{"from": "human", "value": "<image>\nDescribe the image in detail."},
                             {"from": "gpt", "value": f"The image is filled with the color {color}."}]
        else:
            conversations = [{"from": "human", "value": "What color is the image?\n<image>"},
                             {"from": "gpt", "value": color},
                             {"from": "human", "value": "Is it dark?"},
                             {"from": "gpt", "value": "no" if color == "yellow" else "a little"}]
        records.append({"id": f"s{index}", "image": f"{index:04d}.png", "type": sample_type, "conversations": conversations})
    for index in range(text_only):
        records.append({"id": f"t{index}", "type": "text",
                        "conversations": [{"from": "human", "value": f"What is {index} plus one?"},
                                          {"from": "gpt", "value": str(index + 1)}]})
    path = root / (f"{name}.jsonl" if jsonl else f"{name}.json")
    if jsonl:
        path.write_text("".join(json.dumps(record) + "\n" for record in records))
    else:
        path.write_text(json.dumps(records, indent=1))
    return path, images
