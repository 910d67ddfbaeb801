"""One image path for training, evaluation and chat: load safely, convert to RGB, apply the aspect ratio.

Loading: inside the image folder, bounded in size, converted to 8-bit RGB one way (to_rgb). Then the
aspect-ratio step: `pad` (LLaVA-1.5's finetuning and evaluation setting) pastes the image centred on a square
of the image processor's mean colour before the processor's own resize; `crop` hands the image to the
processor as it is (CLIP: resize the shortest edge, centre crop; SigLIP: resize to the square size).
Training, `lntune eval` and `lntune chat` all go through these functions, so a model sees at evaluation
exactly the pixels it was trained on.
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
from pathlib import Path

from lntune.errors import LntuneError

DEFAULT_MAX_PIXELS = 64_000_000
"""Decompression-bomb guard: a few times a 4K photo; raise it for gigapixel scans on purpose."""

ASPECT_RATIOS = ("pad", "crop")
"""What an image goes through before the image processor (see the module docstring)."""

_RECORDED_NAMES = {"pad": "pad", "crop": "crop", "square": "crop"}
"""Values a model may record as `image_aspect_ratio` -> ours. LLaVA's own default, `square`, hands the image
to the processor as it is: our `crop`."""


class ImageError(LntuneError):
    """A sample's image is missing, unreadable, too large or outside the image folder."""


# ---- paths ------------------------------------------------------------------------------------------

def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def resolve_image_path(image_folder: str | Path, relative: str | Path, where: str) -> Path:
    """The image's path, refusing anything that escapes the image folder (../, absolute paths, symlinks out)."""
    folder = Path(image_folder).expanduser().resolve()
    path = (folder / relative).resolve()
    if not _inside(path, folder):
        raise ImageError(f"{where}: image path {str(relative)!r} points outside the image folder {folder}; refused")
    return path


def confine(path: str | Path, folders, where: str) -> Path:
    """`path` resolved (symlinks followed), refused unless it lies inside one of `folders`."""
    resolved = Path(path).expanduser().resolve()
    roots = [Path(folder).expanduser().resolve() for folder in folders if folder is not None]
    if not any(_inside(resolved, root) for root in roots):
        inside = " or ".join(str(root) for root in roots)
        raise ImageError(f"{where}: image path {str(path)!r} points outside the image folder {inside}; refused")
    return resolved


# ---- loading ----------------------------------------------------------------------------------------

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


_PIL_GUARD_LOCK = threading.Lock()


@contextlib.contextmanager
def _header_without_pil_guard():
    """PIL's own bomb guard refuses, in Image.open, images over 2 x Image.MAX_IMAGE_PIXELS (about 179M pixels)
    with a message that names no setting; `max_pixels` is the guard here (the user may raise it on purpose), so
    PIL's is off while a header is read, and restored at once."""
    from PIL import Image

    with _PIL_GUARD_LOCK:
        limit = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = limit


def open_image(path: str | Path, where: str, max_pixels: int = DEFAULT_MAX_PIXELS, guard: str = "--max-image-pixels"):
    """Decode one image file as 8-bit RGB, refusing more than `max_pixels` before decoding (no folder check:
    `lntune chat --image` takes any file the user names). `guard` names the setting that raises the limit."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{where}: image not found: {path}")
    try:
        with _header_without_pil_guard():
            image = Image.open(path)  # reads the header only
        with image:
            width, height = image.size
            if width * height > max_pixels:
                raise ImageError(
                    f"{where}: image {path} is {width}x{height} = {width * height:,} pixels, over the "
                    f"{max_pixels:,}-pixel guard ({guard}); resize it or raise the guard"
                )
            image.load()
            return to_rgb(image)
    except ImageError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as error:
        raise ImageError(f"{where}: cannot read image {path}: {error}") from None


def load_image(image_folder: str | Path, relative: str, where: str, max_pixels: int = DEFAULT_MAX_PIXELS):
    """A sample's image: confined to the image folder, pixel-guarded, as 8-bit RGB."""
    path = resolve_image_path(image_folder, relative, where)
    return open_image(path, where, max_pixels, guard="--max-image-pixels / data.max_image_pixels")


# ---- aspect ratio -----------------------------------------------------------------------------------

EVALUATION_ASPECT_RATIO = "pad"
"""What evaluation, chat and serving use for a model that records no aspect ratio: LLaVA-1.5 evaluates with pad."""


def resolve_aspect_ratio(setting: str, stage: str) -> str:
    """`auto` -> what LLaVA-1.5 does in `stage`: crop in pretrain (no aspect ratio set), pad in finetune."""
    if setting == "auto":
        return "crop" if stage == "pretrain" else "pad"
    if setting not in ASPECT_RATIOS:
        raise LntuneError(f"unknown image aspect ratio {setting!r}; valid: auto, {', '.join(ASPECT_RATIOS)}")
    return setting


def recorded_aspect_ratio(value, where: str) -> str | None:
    """A model's or adapter's recorded `image_aspect_ratio` in our terms; None when nothing is recorded."""
    if value is None:
        return None
    if value not in _RECORDED_NAMES:
        raise LntuneError(
            f"{where} records image_aspect_ratio {value!r}, which lntune does not implement (it does "
            f"{', '.join(ASPECT_RATIOS)}); choose one with --image-aspect-ratio"
        )
    return _RECORDED_NAMES[value]


def mean_color(processor) -> tuple[int, ...]:
    """The image processor's mean as 0..255 colour, truncated as LLaVA does: int(x * 255) per channel."""
    image_processor = getattr(processor, "image_processor", processor)
    return tuple(int(x * 255) for x in image_processor.image_mean)


def expand2square(image, background):
    """LLaVA's expand2square: the image pasted centred on a square of `background` (the longer side's size)."""
    from PIL import Image

    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    result = Image.new(image.mode, (side, side), background)
    result.paste(image, ((side - width) // 2, (side - height) // 2))
    return result


def apply_aspect_ratio(processor, image, aspect_ratio: str):
    """The PIL image the image processor should get: padded to a square (`pad`) or as it is (`crop`)."""
    if aspect_ratio == "pad":
        return expand2square(image, mean_color(processor))
    if aspect_ratio == "crop":
        return image
    raise LntuneError(f"unknown image aspect ratio {aspect_ratio!r}; valid: {', '.join(ASPECT_RATIOS)}")


def pixel_values(processor, image, aspect_ratio: str):
    """An RGB PIL image -> the model's pixel tensor [3, H, W]: the aspect-ratio step, then the image processor."""
    image_processor = getattr(processor, "image_processor", processor)
    prepared = apply_aspect_ratio(processor, image, aspect_ratio)
    return image_processor(images=prepared, return_tensors="pt")["pixel_values"][0]


# ---- the up-front check (stat calls only) --------------------------------------------------------------

LISTING_THRESHOLD = 32
"""From this many wanted files in one directory on, list the directory once instead of a stat per file: on a
network file system every stat is a round trip to the server, a listing is a few."""


def find_unusable_images(image_folder: str | Path, entries) -> list[tuple[object, str, str]]:
    """(key, relative path) pairs -> (key, relative path, why) for each image that is outside the image folder
    (the same rule as resolve_image_path: `..`, absolute paths and symbolic links out) or is not an existing
    file. Nothing is opened or decoded: decoding every image is `lntune data check`'s job."""
    folder = Path(image_folder).expanduser().resolve()
    if not folder.is_dir():
        problem = "is not a folder" if folder.exists() else "does not exist"
        raise LntuneError(f"image folder {image_folder} {problem} (--image-folder / data.image_folder)")
    root = str(folder)
    prefix = root.rstrip(os.sep) + os.sep
    inside = lambda real: real == root or real.startswith(prefix)  # noqa: E731
    problems, by_directory = [], {}
    for key, relative in entries:
        parts = relative.split("/")
        if os.path.isabs(relative) or ".." in parts or "\x00" in relative:
            # Rare: the exact rule (symbolic links resolved before `..`), one path at a time.
            try:
                path = resolve_image_path(folder, relative, "")
            except (ImageError, ValueError) as error:
                problems.append((key, relative, "points outside the image folder" if isinstance(error, ImageError)
                                 else "is not a valid path"))
                continue
            if not path.is_file():
                problems.append((key, relative, "not found"))
            continue
        directory, _, name = relative.rpartition("/")
        by_directory.setdefault(directory, []).append((key, relative, name))

    def verdict(real_directory: str, name: str, is_link: bool, is_file: bool) -> str | None:
        if is_link:
            target = os.path.realpath(os.path.join(real_directory, name))
            if not inside(target):
                return "points outside the image folder (symbolic link)"
            return None if os.path.isfile(target) else "not found (broken link)"
        return None if is_file else "not a file"

    for directory, wanted in by_directory.items():
        real_directory = os.path.realpath(os.path.join(root, directory)) if directory else root
        if not inside(real_directory):
            problems += [(key, relative, "points outside the image folder (symbolic link)") for key, relative, _ in wanted]
            continue
        if len(wanted) >= LISTING_THRESHOLD:
            try:
                listing = {entry.name: entry for entry in os.scandir(real_directory)}
            except (FileNotFoundError, NotADirectoryError):
                problems += [(key, relative, f"not found (no folder {directory})") for key, relative, _ in wanted]
                continue
            for key, relative, name in wanted:
                entry = listing.get(name)
                why = "not found" if entry is None else verdict(
                    real_directory, name, entry.is_symlink(), entry.is_file(follow_symlinks=False))
                if why:
                    problems.append((key, relative, why))
            continue
        for key, relative, name in wanted:
            try:
                mode = os.lstat(os.path.join(real_directory, name)).st_mode
            except (FileNotFoundError, NotADirectoryError):
                problems.append((key, relative, "not found"))
                continue
            why = verdict(real_directory, name, stat.S_ISLNK(mode), stat.S_ISREG(mode))
            if why:
                problems.append((key, relative, why))
    return problems
