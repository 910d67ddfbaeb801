"""Images of a request: inline base64 `data:` URLs only (the server fetches nothing), bounded in bytes and pixels.

The pixel guard is the training loader's (lntune.data.images): the size is read from the header and checked before
anything is decoded, and every mode is converted to 8-bit RGB the same way (to_rgb).
"""

from __future__ import annotations

import base64
import binascii
import io
import re

from lntune.serve.errors import ServeError

_DATA_URL = re.compile(r"^data:(?P<mime>[^;,]*)(?P<parameters>(?:;[^;,]*)*),(?P<payload>.*)$", re.DOTALL)


def decode_data_url(url: str, where: str, max_bytes: int, max_pixels: int):
    """A `data:image/...;base64,...` URL -> an RGB PIL image, or a ServeError naming `where` (e.g. messages[0].content[1])."""
    from PIL import Image, UnidentifiedImageError

    from lntune.data.images import to_rgb

    param = f"{where}.image_url.url"
    if not url.startswith("data:"):
        scheme = url.split(":", 1)[0] if ":" in url[:16] else "a"
        raise ServeError(f"{where}: {scheme} URLs are not fetched (the server reaches nothing outside itself); send "
                         "the image inline as a base64 data: URL (data:image/png;base64,...)", 400, param,
                         "remote_image_refused")
    match = _DATA_URL.match(url)
    if match is None or ";base64" not in match["parameters"]:
        raise ServeError(f"{where}: a data: URL with base64 content is needed (data:image/png;base64,...)", 400, param,
                         "bad_image")
    if match["mime"] and not match["mime"].startswith("image/"):
        raise ServeError(f"{where}: the data: URL holds {match['mime']!r}, not an image", 400, param, "bad_image")
    payload = "".join(match["payload"].split())
    if len(payload) * 3 // 4 > max_bytes + 2:
        raise ServeError(f"{where}: the image is about {len(payload) * 3 // 4:,} bytes, over the {max_bytes:,}-byte "
                         "limit (--max-image-bytes); send a smaller image", 413, param, "image_too_large")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as error:
        raise ServeError(f"{where}: the image is not valid base64 ({error})", 400, param, "bad_base64") from None
    try:
        image = Image.open(io.BytesIO(data))  # the header only
        with image:
            width, height = image.size
            if width * height > max_pixels:
                raise ServeError(f"{where}: the image is {width}x{height} = {width * height:,} pixels, over the "
                                 f"{max_pixels:,}-pixel guard (--max-image-pixels); send a smaller image", 413, param,
                                 "image_too_large")
            image.load()
            return to_rgb(image)
    except ServeError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise ServeError(f"{where}: cannot read the image: {error}", 400, param, "bad_image") from None
