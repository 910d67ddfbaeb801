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
