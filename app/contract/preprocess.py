"""The one definition of image preprocessing, shared by training, evaluation and serving.

Only Pillow, simplejpeg (libjpeg-turbo) and NumPy: the service imports this module, and
so do training's augmentation and evaluation, so what was evaluated is exactly what is served.

Pipeline: ``decode_image`` (bytes -> PIL image in the model's channel mode; a
JPEG at the smallest scale n/8 that still covers the largest resize size) ->
``tta_crops`` (resize the shorter side to each TTA size, centre-crop to the
model input, normalise) -> float32 array ``[n_sizes, C, H, W]``. Each crop is
resampled straight from the decoded image (``resized_crop``): only the pixels
kept are computed, never the whole resized image.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np
import simplejpeg
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from app.contract.errors import DomainError

# Truncated files are bad input, not something to half-decode silently.
ImageFile.LOAD_TRUNCATED_IMAGES = False
# Pillow's own bomb limit is process-wide state; swapping it per call is not thread-safe. Our limit
# (``check_pixels``, a setting) is applied to every image from its header before any pixel is decoded.
Image.MAX_IMAGE_PIXELS = None

INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}

# Resize sizes from which a JPEG may be decoded at any scale n/8 (about 1 grey level from a full decode at 256);
# below it only at Pillow's 1, 1/2, 1/4, 1/8.
FINE_SCALES_FROM = 128

# Product photos are shot on white: transparent pixels become white, not black.
BACKGROUND = 255


class ImageDecodeError(DomainError, ValueError):
    """The bytes are not an image Pillow can decode."""

    status, code = 415, "unsupported_image"


class ImageTooLargeError(DomainError, ValueError):
    """The image has more pixels than allowed."""

    status, code = 413, "image_too_large"


def tta_sizes_fit(input_size: int, tta_sizes: Sequence[int]) -> bool:
    """Whether every TTA resize size can be centre-cropped to ``input_size`` (crops are never padded)."""
    return all(size >= input_size for size in tta_sizes)


@dataclass(frozen=True)
class PreprocessConfig:
    """How a model wants its input: the part of the manifest preprocessing reads."""

    input_size: int
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bilinear"
    tta_sizes: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.in_chans not in (1, 3):
            raise ValueError(f"in_chans must be 1 or 3, got {self.in_chans}")
        if len(self.mean) != self.in_chans or len(self.std) != self.in_chans:
            raise ValueError("mean and std need one value per input channel")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {sorted(INTERPOLATIONS)}")
        if not tta_sizes_fit(self.input_size, self.tta_sizes):
            raise ValueError("every TTA size must be >= input_size (crops are centred, never padded)")

    @classmethod
    def from_dict(cls, data: dict) -> "PreprocessConfig":
        """From its JSON form (lists for the tuples)."""
        return cls(**{key: tuple(value) if isinstance(value, list) else value for key, value in data.items()})

    @property
    def key(self) -> tuple:
        """Members with equal keys share the same crops."""
        return (self.input_size, self.in_chans, self.mean, self.std, self.interpolation)

    def sizes(self, tta: bool) -> tuple[int, ...]:
        """The resize sizes to use: all TTA sizes, or only the first (the single-crop size)."""
        sizes = self.tta_sizes or (self.input_size,)
        return sizes if tta else sizes[:1]


def decode_image(data: bytes, in_chans: int, max_pixels: int, shorter_side: int | None = None) -> Image.Image:
    """Decode bytes to a PIL image in the model's mode ("L" or "RGB").

    Applies EXIF orientation, takes the first frame of animations, composites
    transparency onto white and scales 16-bit/32-bit images to 8 bits. The pixel
    count is checked from the header, before any pixel is decoded. With
    ``shorter_side``, a greyscale or colour JPEG is decoded by libjpeg-turbo at the
    smallest scale n/8 whose shorter side is still at least ``shorter_side``
    (``decode_jpeg_scaled``); a CMYK JPEG at Pillow's DCT scale (1/2, 1/4, 1/8,
    ``draft_scale``); other formats and smaller images decode as they are.
    """
    try:
        image = Image.open(io.BytesIO(data))
        check_pixels(*image.size, max_pixels)
        image.seek(0)
        scaled = decode_jpeg_scaled(data, image, shorter_side)
        if scaled is not None:
            return to_model_mode(scaled, in_chans)
        if shorter_side is not None and draft_scale(image.size, shorter_side) > 1:
            image.draft(image.mode, (shorter_side, shorter_side))  # same mode: only the scale changes
        image.load()
        image = ImageOps.exif_transpose(image)
        return to_model_mode(image, in_chans)
    except (ImageTooLargeError, ImageDecodeError):
        raise
    except MemoryError as exc:
        raise ImageTooLargeError(f"not enough memory to decode the image: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ImageDecodeError("cannot decode image: not a format Pillow recognises (JPEG, PNG, WebP, GIF, BMP, TIFF, ...)") from exc
    except Exception as exc:  # crafted files make Pillow raise struct.error, IndexError, ... too
        raise ImageDecodeError(f"cannot decode image: {type(exc).__name__}: {exc}") from exc


def decode_jpeg_scaled(data: bytes, header: Image.Image, shorter_side: int | None) -> Image.Image | None:
    """``data`` decoded by libjpeg-turbo at the smallest scale n/8 whose shorter side (rounded up) is still
    at least ``shorter_side``, EXIF orientation applied; None where Pillow decodes it instead.

    ``header``: ``data`` opened by Pillow, not loaded. Only greyscale and colour JPEGs, in their own mode
    ("L" or "RGB", as Pillow decodes them), so the pixels are Pillow's wherever the scale is the same.
    """
    # Also at scale 1: Pillow's pixels exactly, as fast at 640x480 and 25-29% less CPU on 28x28 JPEGs.
    if shorter_side is None or header.format != "JPEG" or header.mode not in ("L", "RGB"):
        return None
    width, height = header.size
    if shorter_side < FINE_SCALES_FROM:
        # Small inputs: only Pillow's scales (1, 1/2, 1/4, 1/8). The n/8 scales between them blur a small product
        # (tests/test_photos.py: 8 -> 12 grey levels for a 57-px photo at 28..36 px) and decoding is cheap there.
        shorter_side = math.ceil(min(width, height) / draft_scale(header.size, shorter_side))
    try:
        pixels = simplejpeg.decode_jpeg(
            data,
            colorspace="GRAY" if header.mode == "L" else "RGB",
            min_height=shorter_side if height <= width else 0,
            min_width=shorter_side if width < height else 0,
        )
    except ValueError:  # libjpeg-turbo stops at any warning: Pillow refuses truncated files but tolerates some
        return None
    image = Image.fromarray(pixels[:, :, 0] if header.mode == "L" else pixels)
    image.info.update(header.info)  # the EXIF (or XMP) orientation that exif_transpose reads, as on Pillow's path
    ImageOps.exif_transpose(image, in_place=True)
    return image


def draft_scale(size: tuple[int, int], shorter_side: int) -> int:
    """The DCT scale denominator (1, 2, 4 or 8) libjpeg decodes a ``size`` JPEG at for ``shorter_side``.

    As Pillow's ``JpegImageFile.draft`` chooses it: the largest that keeps the shorter side at least
    ``shorter_side`` (1: the draft would not shrink the image and is not asked for).
    """
    ratio = min(size) // max(1, shorter_side)
    return next(scale for scale in (8, 4, 2, 1) if scale <= max(1, ratio))


def check_pixels(width: int, height: int, max_pixels: int) -> None:
    """``ImageTooLargeError`` when a ``width`` x ``height`` image has more than ``max_pixels`` pixels."""
    if width * height > max_pixels:
        raise ImageTooLargeError(f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}")


def to_model_mode(image: Image.Image, in_chans: int) -> Image.Image:
    """Convert any Pillow mode to "L" (1 channel) or "RGB" (3 channels)."""
    target = "L" if in_chans == 1 else "RGB"
    if image.mode == target:
        return image
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        image = _scale_to_8bit(image)
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (BACKGROUND,) * 3 + (255,))
        image = Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode == "CMYK" or image.mode not in ("L", "RGB"):
        image = image.convert("RGB")
    return image.convert(target) if image.mode != target else image


def _scale_to_8bit(image: Image.Image) -> Image.Image:
    """Map a 16-bit or float single-channel image linearly onto 0..255."""
    pixels = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        low, high = float(np.nanmin(pixels)), float(np.nanmax(pixels))
        if high > low:
            pixels = (pixels - low) / (high - low) * 255.0
        pixels = np.nan_to_num(pixels)
    else:
        maximum = 65535.0 if image.mode.startswith("I;16") or pixels.max() > 255 else 255.0
        pixels = pixels / maximum * 255.0
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), mode="L")


def resized_size(size: tuple[int, int], shorter_side: int) -> tuple[int, int]:
    """The size of an image of ``size`` whose shorter side is resized to ``shorter_side``, aspect kept."""
    width, height = size
    scale = shorter_side / min(width, height)
    return max(shorter_side, round(width * scale)), max(shorter_side, round(height * scale))


def resize_shorter_side(image: Image.Image, size: int, interpolation: str) -> Image.Image:
    """Resize so the shorter side is ``size``, keeping the aspect ratio."""
    new_size = resized_size(image.size, size)
    if new_size == image.size:
        return image
    return image.resize(new_size, INTERPOLATIONS[interpolation])


def crop(image: Image.Image, left: int, top: int, size: int) -> Image.Image:
    """A ``size`` x ``size`` crop at (left, top)."""
    return image.crop((left, top, left + size, top + size))


def center_crop(image: Image.Image, size: int) -> Image.Image:
    """The central ``size`` x ``size`` crop (the image must be at least that large)."""
    width, height = image.size
    return crop(image, (width - size) // 2, (height - size) // 2, size)


def resized_crop(
    image: Image.Image, shorter_side: int, left: int | None, top: int | None, size: int, interpolation: str
) -> Image.Image:
    """``crop(resize_shorter_side(image, shorter_side), left, top, size)`` (centred where left/top is None).

    Only the ``size`` x ``size`` pixels kept are resampled (Pillow's ``resize(box=...)`` with the box
    those pixels cover in ``image``; the filter still reads the pixels around the box), not the
    whole resized image: the same values to within rounding of the filter weights.
    """
    width, height = resized_size(image.size, shorter_side)
    left = (width - size) // 2 if left is None else left
    top = (height - size) // 2 if top is None else top
    if (width, height) == image.size:
        return crop(image, left, top, size)
    x_scale, y_scale = image.width / width, image.height / height
    box = (left * x_scale, top * y_scale, (left + size) * x_scale, (top + size) * y_scale)
    return image.resize((size, size), INTERPOLATIONS[interpolation], box=box)


def normalize(image: Image.Image, config: PreprocessConfig, out: np.ndarray | None = None) -> np.ndarray:
    """PIL image -> float32 ``[C, H, W]`` scaled to 0..1, minus mean, over std (written into ``out`` if given)."""
    pixels = np.asarray(image)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    channels, height, width = pixels.shape[2], pixels.shape[0], pixels.shape[1]
    if out is None:
        out = np.empty((channels, height, width), np.float32)
    # In place, channel-first from the start: the HWC -> CHW copy is the one strided pass (2.6x less CPU than a
    # per-channel table look-up on 224x224 RGB), and the arithmetic is float32's, bit for bit.
    np.copyto(out, pixels.transpose(2, 0, 1), casting="unsafe")
    mean, std = _channel_constants(config.mean, config.std)
    np.divide(out, np.float32(255.0), out=out)
    np.subtract(out, mean, out=out)
    np.divide(out, std, out=out)
    return out


@lru_cache(maxsize=64)
def _channel_constants(mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """``[C, 1, 1]`` float32 mean and std, broadcast over a channel-first image."""
    return np.asarray(mean, np.float32)[:, None, None], np.asarray(std, np.float32)[:, None, None]


def tta_crops(image: Image.Image, config: PreprocessConfig, sizes: Sequence[int]) -> np.ndarray:
    """Multi-crop TTA: for each size, resize the shorter side and centre-crop to the input.

    Returns float32 ``[len(sizes), C, input_size, input_size]``.
    """
    image = to_model_mode(image, config.in_chans)
    crops = np.empty((len(sizes), config.in_chans, config.input_size, config.input_size), np.float32)
    for crop_out, size in zip(crops, sizes):
        normalize(resized_crop(image, size, None, None, config.input_size, config.interpolation), config, crop_out)
    return crops


CropPlan = Sequence[tuple[PreprocessConfig, Sequence[int]]]
"""One (config, resize sizes) pair per crop group; a plain, picklable description of the crops to make."""


def crops_for_plan(image: Image.Image, plan: CropPlan) -> list[np.ndarray]:
    """Crops of one decoded image for each group of ``plan``: ``[n_sizes, C, H, W]`` arrays."""
    return [tta_crops(image, config, sizes) for config, sizes in plan]


def widest_in_chans(plan: CropPlan) -> int:
    """The channel mode to decode in once for every group of ``plan`` (RGB if any group needs it)."""
    return max(config.in_chans for config, _ in plan)


def largest_size(plan: CropPlan) -> int:
    """The largest resize size of ``plan``: what a decode at reduced scale must still cover."""
    return max(max(sizes) for _, sizes in plan)


def decode_crops(data: bytes, plan: CropPlan, max_pixels: int) -> list[np.ndarray]:
    """Bytes -> crops for each group of ``plan`` (decoded once, in the widest channel mode needed,
    at the smallest DCT scale that covers its largest size)."""
    return crops_for_plan(decode_image(data, widest_in_chans(plan), max_pixels, largest_size(plan)), plan)


def random_scaled_crop(
    image: Image.Image,
    config: PreprocessConfig,
    rng: np.random.Generator,
    flip: bool = True,
) -> np.ndarray:
    """Train-time augmentation consistent with TTA: the same resize and crop, randomised.

    The shorter side is resized to a random size between the smallest and the
    largest TTA size, a random ``input_size`` square is cropped from it, and it
    is mirrored left-right with probability 1/2 when ``flip``.
    """
    image = to_model_mode(image, config.in_chans)
    sizes = config.tta_sizes or (config.input_size,)
    size = int(rng.integers(min(sizes), max(sizes) + 1))
    width, height = resized_size(image.size, size)
    left = int(rng.integers(0, width - config.input_size + 1))
    top = int(rng.integers(0, height - config.input_size + 1))
    patch = resized_crop(image, size, left, top, config.input_size, config.interpolation)
    if flip and rng.random() < 0.5:
        patch = patch.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return normalize(patch, config)
