"""JPEGs decoded by libjpeg-turbo (simplejpeg) at scale n/8 in ``decode_image``: the same pixels as Pillow's
path where the scale is the same, close where it is finer; orientation, modes, fallbacks and refusals."""

from __future__ import annotations

import struct
import time
from contextlib import contextmanager

import numpy as np
import pytest
from PIL import Image
from serving_helpers import encode, noise_image

from app.contract import preprocess
from app.contract.preprocess import (
    ImageDecodeError,
    ImageTooLargeError,
    PreprocessConfig,
    decode_crops,
    decode_image,
    draft_scale,
)

LIMIT = 10_000_000
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
PLAIN, TTA = (256,), (256, 272, 288, 304, 320)
XMP_ROTATE = (
    b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
    b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>'
)


@pytest.fixture(scope="module")
def photos() -> dict[tuple[int, int], list[bytes]]:
    """scikit-image's photographs as q90 JPEGs (the photo case's), by size."""
    pytest.importorskip("skimage")
    from bench.serving.photos import PHOTO_SIZES, skimage_photos

    return {size: skimage_photos(sizes=(size,)) for size in PHOTO_SIZES}


def refuse(*args, **kwargs):
    raise ValueError("refused by the test")


@contextmanager
def pillow_path(monkeypatch):
    """Every JPEG on Pillow's path, as before simplejpeg: libjpeg-turbo refuses, so Pillow decides."""
    with monkeypatch.context() as patch:
        patch.setattr(preprocess.simplejpeg, "decode_jpeg", refuse)
        yield


@pytest.fixture
def no_simplejpeg(monkeypatch):
    """simplejpeg must not be asked at all."""

    def called(*args, **kwargs):
        raise AssertionError("simplejpeg.decode_jpeg was called")

    monkeypatch.setattr(preprocess.simplejpeg, "decode_jpeg", called)


def eighths(size: tuple[int, int], shorter_side: int) -> int:
    """The expected scale n (of n/8): the smallest whose shorter side, rounded up, covers ``shorter_side``."""
    return next((n for n in range(1, 9) if -(-min(size) * n // 8) >= shorter_side), 8)


def plan(sizes: tuple[int, ...]) -> list:
    return [(PreprocessConfig(224, 3, *IMAGENET, "bicubic", sizes), sizes)]


def photo(size: tuple[int, int], mode: str = "RGB", **save_options) -> bytes:
    """A smooth photo-like JPEG (q90) of ``size`` in ``mode``, its left half darker than its right."""
    width, height = size
    y, x = np.mgrid[0:height, 0:width] / max(size)
    pixels = np.stack([128 + 90 * np.sin(7 * x + c) * np.cos(5 * y - c) for c in range(3)], axis=-1)
    pixels[:, : width // 2] *= 0.3
    image = Image.fromarray(pixels.astype(np.uint8)).convert(mode)
    return encode(image, "JPEG", quality=90, **save_options)


def pillow_decode(monkeypatch, data: bytes, in_chans: int, shorter_side: int) -> np.ndarray:
    with pillow_path(monkeypatch):
        return np.asarray(decode_image(data, in_chans, LIMIT, shorter_side))


@pytest.mark.parametrize(
    "size", [(640, 480), (480, 640), (1024, 768), (2048, 1536), (1000, 333), (333, 1000), (100, 80)]
)
@pytest.mark.parametrize("shorter_side", [36, 256, 320])
def test_the_smallest_eighth_scale_that_covers_the_shorter_side(size, shorter_side) -> None:
    decoded = decode_image(photo(size), 3, LIMIT, shorter_side)
    n = eighths(size, shorter_side)
    assert decoded.size == tuple(-(-side * n // 8) for side in size)  # aspect kept, rounded up as libjpeg does
    assert min(decoded.size) >= min(shorter_side, min(size))
    assert n == 1 or -(-min(size) * (n - 1) // 8) < shorter_side  # one eighth less would not cover it


@pytest.mark.parametrize("size", [(640, 480), (1024, 768), (2048, 1536)])
@pytest.mark.parametrize("sizes", [PLAIN, TTA], ids=["plain", "tta"])
def test_crops_match_pillows_draft_path_on_photos(photos, monkeypatch, size, sizes) -> None:
    for data in photos[size]:
        new = decode_crops(data, plan(sizes), LIMIT)[0]
        with pillow_path(monkeypatch):
            old = decode_crops(data, plan(sizes), LIMIT)[0]
        n = eighths(size, max(sizes))
        if 8 % n == 0 and 8 // n == draft_scale(size, max(sizes)):  # Pillow's scale: its pixels
            np.testing.assert_array_equal(new, old)
        # A finer scale than Pillow's (5/8 for 640x480 at 256, 3/8 for 1024x768): another low-pass filter before
        # the bicubic resize, so sharp edges differ by some levels (measured: means 0.5-1.05, 99th pct 2-7).
        levels = np.abs(new - old) * 255 * np.asarray(IMAGENET[1], np.float32)[:, None, None]
        assert levels.mean() < 1.5
        assert np.percentile(levels, 99) < 10


@pytest.mark.parametrize("in_chans", [1, 3])
@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_the_same_pixels_as_pillow_where_the_scale_is_the_same(monkeypatch, mode, in_chans) -> None:
    for size, shorter_side in (((640, 480), 480), ((640, 480), 240), ((1024, 768), 192), ((96, 64), 256)):
        data = photo(size, mode)
        decoded = decode_image(data, in_chans, LIMIT, shorter_side)
        assert decoded.mode == ("L" if in_chans == 1 else "RGB")
        np.testing.assert_array_equal(np.asarray(decoded), pillow_decode(monkeypatch, data, in_chans, shorter_side))
        if eighths(size, shorter_side) == 8:  # scale 1: Pillow's full decode, as without a shorter side
            np.testing.assert_array_equal(np.asarray(decoded), np.asarray(decode_image(data, in_chans, LIMIT)))


@pytest.mark.parametrize("tag", ["exif", "xmp"])
def test_orientation_is_applied_as_on_pillows_path(monkeypatch, tag) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    options = {"exif": exif} if tag == "exif" else {"xmp": XMP_ROTATE}
    data = photo((640, 480), **options)
    decoded = np.asarray(decode_image(data, 3, LIMIT, 240))  # scale 1/2, Pillow's too
    assert decoded.shape == (320, 240, 3)  # rotated: the left (dark) half is now on top
    assert decoded[:150].mean() < decoded[170:].mean() - 40
    np.testing.assert_array_equal(decoded, pillow_decode(monkeypatch, data, 3, 240))
    assert decode_image(data, 3, LIMIT, 256).size == (300, 400)  # scale 5/8, then rotated


def test_cmyk_jpegs_stay_on_pillows_path(no_simplejpeg) -> None:
    data = encode(Image.new("CMYK", (1024, 768), (0, 255, 255, 0)), "JPEG", quality=95)
    decoded = decode_image(data, 3, LIMIT, 256)
    assert draft_scale((1024, 768), 256) == 2 and decoded.mode == "RGB" and decoded.size == (512, 384)
    assert np.asarray(decoded)[5, 5].tolist() == pytest.approx([255, 0, 0], abs=3)


def test_without_a_shorter_side_and_other_formats_stay_on_pillows_path(no_simplejpeg) -> None:
    assert decode_image(photo((640, 480)), 3, LIMIT).size == (640, 480)
    assert decode_image(encode(noise_image(0, (640, 480), "RGB")), 3, LIMIT, 256).size == (640, 480)  # PNG


@pytest.mark.parametrize("cut", [300, 0.5, -2], ids=["in-the-header", "half", "no-end-marker"])
@pytest.mark.parametrize("shorter_side", [None, 256, 480])
def test_truncated_jpegs_are_refused_never_half_decoded(cut, shorter_side) -> None:
    data = photo((640, 480))
    with pytest.raises(ImageDecodeError):
        decode_image(data[: int(len(data) * cut) if isinstance(cut, float) else cut], 3, LIMIT, shorter_side)


def test_a_jpeg_libjpeg_turbo_refuses_but_pillow_tolerates_still_decodes(monkeypatch) -> None:
    data = photo((640, 480))
    table = data.index(b"\xff\xc4")
    damaged = data[:table] + b"\x12\x34\x56" + data[table:]  # "3 extraneous bytes before marker": a warning
    with pytest.raises(ValueError):
        preprocess.simplejpeg.decode_jpeg(damaged)
    decoded = np.asarray(decode_image(damaged, 3, LIMIT, 256))
    np.testing.assert_array_equal(decoded, pillow_decode(monkeypatch, data, 3, 256))


def test_the_pixel_limit_refuses_a_huge_header_before_decoding(no_simplejpeg) -> None:
    data = bytearray(photo((64, 48)))
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, 60_000, 60_000)  # 3.6 GP claimed by a 2 KB file
    started = time.perf_counter()
    with pytest.raises(ImageTooLargeError, match="60000x60000"):
        decode_image(bytes(data), 3, LIMIT, 256)
    assert time.perf_counter() - started < 0.5


@pytest.mark.parametrize("size, shorter_side, expected", [((57, 57), 36, (57, 57)), ((100, 80), 36, (50, 40)), ((600, 450), 36, (75, 57))])
def test_small_inputs_decode_only_at_pillows_scales(size, shorter_side, expected) -> None:
    """Under FINE_SCALES_FROM the n/8 scales between 1, 1/2, 1/4 and 1/8 are not used (they blur small products)."""
    assert shorter_side < preprocess.FINE_SCALES_FROM
    assert decode_image(photo(size), 3, LIMIT, shorter_side).size == expected
