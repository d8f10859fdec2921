"""Real photographs for the photo case: scikit-image's bundled pictures as 4:3 JPEGs at three sizes."""

from __future__ import annotations

import io
from typing import Sequence

import numpy as np
from PIL import Image

PHOTO_NAMES = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field")
PHOTO_SIZES = ((640, 480), (1024, 768), (2048, 1536))
PHOTO_QUALITY = 90


def _centre_4_3(image: Image.Image) -> Image.Image:
    """The largest centred 4:3 crop."""
    width, height = image.size
    if width * 3 > height * 4:
        new_width = height * 4 // 3
        left = (width - new_width) // 2
        return image.crop((left, 0, left + new_width, height))
    new_height = width * 3 // 4
    top = (height - new_height) // 2
    return image.crop((0, top, width, top + new_height))


def jpeg(image: Image.Image, quality: int = PHOTO_QUALITY) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def skimage_photos(
    names: Sequence[str] = PHOTO_NAMES, sizes: Sequence[tuple[int, int]] = PHOTO_SIZES
) -> list[bytes]:
    """Each photograph cropped to 4:3 and resized (bicubic) to each size, JPEG q90; sizes interleaved."""
    from skimage import data  # the bench extra; bundled with the package, no download

    pictures = [_centre_4_3(Image.fromarray(np.asarray(getattr(data, name)())).convert("RGB")) for name in names]
    return [jpeg(picture.resize(size, Image.Resampling.BICUBIC)) for size in sizes for picture in pictures]


def fashion_photo(pixels: np.ndarray, size: int) -> bytes:
    """A Fashion-MNIST image as a product photo: negated (the stored files are light on black; products are
    shot dark on white), upscaled (bicubic) to ``size`` x ``size`` RGB, JPEG q90."""
    product = Image.fromarray(255 - pixels).convert("RGB")
    return jpeg(product.resize((size, size), Image.Resampling.BICUBIC))
