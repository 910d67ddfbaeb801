"""Loading one sample's image safely: inside the image folder, bounded in size, converted to RGB."""

from __future__ import annotations

from pathlib import Path

from lntune.errors import LntuneError

DEFAULT_MAX_PIXELS = 64_000_000
"""Decompression-bomb guard: a few times a 4K photo; raise it for gigapixel scans on purpose."""


class ImageError(LntuneError):
    """A sample's image is missing, unreadable, too large or outside the image folder."""


def resolve_image_path(image_folder: str | Path, relative: str, where: str) -> Path:
    """The image's path, refusing anything that escapes the image folder (../, absolute paths, symlinks out)."""
    folder = Path(image_folder).expanduser().resolve()
    path = (folder / relative).resolve()
    if path != folder and folder not in path.parents:
        raise ImageError(f"{where}: image path {relative!r} points outside the image folder {folder}; refused")
    return path


def to_rgb(image):
    """Convert any PIL mode to 8-bit RGB; transparency is composited on white."""
    from PIL import Image

    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16/32-bit grayscale: rescale the actual value range to 0..255 rather than clipping.
        import numpy as np

        values = np.asarray(image, dtype=np.float64)
        low, high = float(values.min()), float(values.max())
        scaled = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
        image = Image.fromarray(scaled.round().astype(np.uint8), mode="L")
    if image.mode == "P":
        image = image.convert("RGBA") if "transparency" in image.info else image.convert("RGB")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB") if image.mode != "RGB" else image


def load_image(image_folder: str | Path, relative: str, where: str, max_pixels: int = DEFAULT_MAX_PIXELS):
    from PIL import Image, UnidentifiedImageError

    path = resolve_image_path(image_folder, relative, where)
    if not path.is_file():
        raise ImageError(f"{where}: image not found: {path}")
    try:
        with Image.open(path) as image:  # reads the header only
            width, height = image.size
            if width * height > max_pixels:
                raise ImageError(
                    f"{where}: image {path} is {width}x{height} = {width * height:,} pixels, over the "
                    f"{max_pixels:,}-pixel guard (data.max_image_pixels); resize it or raise the guard"
                )
            image.load()
            return to_rgb(image)
    except ImageError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as error:
        raise ImageError(f"{where}: cannot read image {path}: {error}") from None
