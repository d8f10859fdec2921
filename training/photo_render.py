"""Fashion-MNIST images rendered as the photos users send: RGB, hundreds of pixels, JPEG/PNG/WebP, on white.

Used by ``scripts/make_samples.py``, ``python -m bench.photos`` and the serving tests.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

WHITE = (255, 255, 255)


def as_photo(
    pixels: np.ndarray,
    size: int,
    padding: float = 0.0,
    shift: tuple[float, float] = (0.0, 0.0),
    colour: tuple[int, int, int] = (0, 0, 0),
) -> Image.Image:
    """A ``size`` x ``size`` RGB photo of a 28-px image as shot (the product dark on white).

    ``padding``: extra white margin on each side, as a fraction of the product's square;
    ``shift``: the product moved by this fraction of the photo (x, y), white filling in;
    ``colour``: the product's darkest colour (black leaves it grey, any other tints it).
    """
    grey = np.asarray(pixels, dtype=np.float32)[..., None] / 255.0
    rgb = grey * 255.0 + (1.0 - grey) * np.asarray(colour, dtype=np.float32)
    product = Image.fromarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8), "RGB")
    inner = max(1, round(size / (1.0 + 2.0 * padding)))
    product = product.resize((inner, inner), Image.Resampling.BICUBIC)
    canvas = Image.new("RGB", (size, size), WHITE)
    left = (size - inner) // 2 + round(shift[0] * size)
    top = (size - inner) // 2 + round(shift[1] * size)
    canvas.paste(product, (left, top))
    return canvas


def encode(image: Image.Image, image_format: str = "JPEG", quality: int = 90) -> bytes:
    """The image as a file in ``image_format`` (JPEG, PNG or WebP)."""
    buffer = io.BytesIO()
    options = {"quality": quality} if image_format in ("JPEG", "WEBP") else {}
    image.save(buffer, image_format, **options)
    return buffer.getvalue()
