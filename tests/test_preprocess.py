"""The shared preprocessing (app/contract/preprocess.py): formats, modes, EXIF, limits, crops and normalisation."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from PIL import Image
from serving_helpers import encode, noise_image, png_claiming_size

from app.contract.preprocess import (
    ImageDecodeError,
    ImageTooLargeError,
    PreprocessConfig,
    center_crop,
    crops_for_plan,
    decode_crops,
    decode_image,
    normalize,
    random_scaled_crop,
    resize_shorter_side,
    resized_crop,
    tta_crops,
)

LIMIT = 10_000_000
GRAY = PreprocessConfig(input_size=8, in_chans=1, mean=(0.5,), std=(0.25,), tta_sizes=(8, 12))
COLOUR = PreprocessConfig(
    input_size=8, in_chans=3, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3), interpolation="bicubic", tta_sizes=(8, 10, 12)
)


@pytest.mark.parametrize(
    ("format", "options"),
    [("JPEG", {"quality": 95}), ("PNG", {}), ("WEBP", {"lossless": True}), ("BMP", {}), ("TIFF", {}), ("GIF", {})],
)
@pytest.mark.parametrize("in_chans", [1, 3])
def test_every_format_decodes_to_the_model_mode(format, options, in_chans) -> None:
    data = encode(noise_image(0, (33, 21), "RGB"), format, **options)
    image = decode_image(data, in_chans, LIMIT)
    assert image.mode == ("L" if in_chans == 1 else "RGB")
    assert image.size == (33, 21)


def test_animated_gif_uses_the_first_frame() -> None:
    frames = [Image.new("L", (10, 10), value) for value in (10, 200, 90)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    image = decode_image(data, 1, LIMIT)
    assert np.asarray(image).mean() == pytest.approx(10, abs=1)


def test_transparency_becomes_white_background() -> None:
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 255))
    rgba.putpixel((0, 0), (0, 0, 0, 0))  # fully transparent black
    decoded = np.asarray(decode_image(encode(rgba, "PNG"), 3, LIMIT))
    assert decoded[0, 0].tolist() == [255, 255, 255]
    assert decoded[1, 1].tolist() == [255, 0, 0]

    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    palette.putpixel((0, 0), 0)
    data = encode(palette, "PNG", transparency=0)
    decoded = np.asarray(decode_image(data, 3, LIMIT))
    assert decoded[0, 0].tolist() == [255, 255, 255] and decoded[2, 2].tolist() == [0, 0, 255]

    la = Image.merge("LA", [Image.new("L", (2, 2), 0), Image.new("L", (2, 2), 0)])
    assert np.asarray(decode_image(encode(la, "PNG"), 1, LIMIT)).tolist() == [[255, 255], [255, 255]]


def test_cmyk_and_one_bit_images_convert() -> None:
    cmyk = Image.new("CMYK", (3, 3), (0, 255, 255, 0))  # red
    assert np.asarray(decode_image(encode(cmyk, "JPEG", quality=100), 3, LIMIT))[1, 1].tolist() == pytest.approx(
        [255, 0, 0], abs=3
    )
    bilevel = Image.new("1", (3, 3), 1)
    assert np.asarray(decode_image(encode(bilevel, "PNG"), 1, LIMIT)).tolist() == [[255] * 3] * 3


@pytest.mark.parametrize(
    ("mode", "values", "expected"),
    [
        ("I;16", [0, 32768, 65535], [0, 128, 255]),
        ("I", [0, 1000, 65535], [0, 4, 255]),
        ("F", [-1.0, 0.0, 1.0], [0, 128, 255]),
    ],
)
def test_high_bit_depth_images_scale_to_8_bits(mode, values, expected) -> None:
    image = Image.new(mode, (3, 1))
    for x, value in enumerate(values):
        image.putpixel((x, 0), value)
    decoded = decode_image(encode(image, "TIFF"), 1, LIMIT)
    assert decoded.mode == "L"
    assert np.asarray(decoded)[0].tolist() == expected


def test_exif_orientation_is_applied() -> None:
    image = Image.new("L", (40, 20), 0)
    image.paste(255, (20, 0, 40, 20))  # left half black, right half white
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    decoded = np.asarray(decode_image(encode(image, "JPEG", exif=exif, quality=95), 1, LIMIT))
    assert decoded.shape == (40, 20)  # height 40, width 20 after rotation
    assert decoded[:15].mean() < 30 and decoded[25:].mean() > 225  # the left half is now on top


def test_pixel_limit_is_checked_from_the_header_before_decoding() -> None:
    started = time.perf_counter()
    with pytest.raises(ImageTooLargeError, match="100000x100000"):
        decode_image(png_claiming_size(100_000, 100_000), 1, LIMIT)
    assert time.perf_counter() - started < 0.5
    assert decode_image(encode(noise_image(0, (100, 100))), 1, max_pixels=100 * 100).size == (100, 100)
    with pytest.raises(ImageTooLargeError):
        decode_image(encode(noise_image(0, (100, 101))), 1, max_pixels=100 * 100)


@pytest.mark.parametrize(
    "data",
    [b"", b"plain text", b"\x89PNG\r\n\x1a\n" + b"\0" * 40, encode(noise_image(1, (64, 64), "RGB"), "JPEG")[:300]],
    ids=["empty", "text", "png-signature-only", "truncated-jpeg"],
)
def test_undecodable_bytes_raise_image_decode_error(data) -> None:
    with pytest.raises(ImageDecodeError):
        decode_image(data, 3, LIMIT)


def test_resize_keeps_aspect_and_crop_is_central() -> None:
    image = Image.new("L", (40, 20))
    assert resize_shorter_side(image, 10, "bilinear").size == (20, 10)
    assert resize_shorter_side(Image.new("L", (20, 40)), 10, "nearest").size == (10, 20)
    marked = Image.new("L", (10, 6), 0)
    marked.paste(255, (3, 1, 7, 5))
    assert np.asarray(center_crop(marked, 4)).min() == 255


def test_tta_crops_shape_and_normalisation() -> None:
    uniform = Image.new("RGB", (30, 20), (51, 102, 204))
    crops = tta_crops(uniform, COLOUR, COLOUR.sizes(tta=True))
    assert crops.shape == (3, 3, 8, 8) and crops.dtype == np.float32
    expected = (np.array([51, 102, 204]) / 255 - np.array(COLOUR.mean)) / np.array(COLOUR.std)
    np.testing.assert_allclose(crops[:, :, 4, 4], np.tile(expected, (3, 1)), rtol=1e-5)
    assert tta_crops(uniform, COLOUR, COLOUR.sizes(tta=False)).shape == (1, 3, 8, 8)


def test_tta_sizes_and_config_validation() -> None:
    assert GRAY.sizes(tta=True) == (8, 12) and GRAY.sizes(tta=False) == (8,)
    assert PreprocessConfig(8, 1, (0.5,), (0.5,)).sizes(tta=True) == (8,)
    for bad in (
        {"in_chans": 2, "mean": (0.5, 0.5), "std": (0.5, 0.5)},
        {"mean": (0.5, 0.5)},
        {"interpolation": "cubic-ish"},
        {"tta_sizes": (6, 8)},
    ):
        with pytest.raises(ValueError):
            PreprocessConfig(**{"input_size": 8, "in_chans": 1, "mean": (0.5,), "std": (0.5,), **bad})


def test_decoding_once_in_the_widest_mode_gives_each_member_its_own_crops() -> None:
    data = encode(noise_image(3, (30, 26), "RGB"), "PNG")
    plan = [(GRAY, GRAY.sizes(True)), (COLOUR, COLOUR.sizes(True))]
    shared = decode_crops(data, plan, LIMIT)
    separately = [tta_crops(decode_image(data, config.in_chans, LIMIT), config, sizes) for config, sizes in plan]
    for got, want in zip(shared, separately):
        np.testing.assert_array_equal(got, want)
    assert [crops.shape for crops in crops_for_plan(decode_image(data, 3, LIMIT), plan)] == [(2, 1, 8, 8), (3, 3, 8, 8)]


def test_random_scaled_crop_is_seeded_and_within_tta_range() -> None:
    image = noise_image(4, (30, 24), "RGB")
    first = random_scaled_crop(image, COLOUR, np.random.default_rng(7))
    again = random_scaled_crop(image, COLOUR, np.random.default_rng(7))
    assert first.shape == (3, 8, 8) and first.dtype == np.float32
    np.testing.assert_array_equal(first, again)
    crops = [random_scaled_crop(image, COLOUR, np.random.default_rng(seed)) for seed in range(8)]
    assert len({crop.tobytes() for crop in crops}) > 1


def _photo(size: tuple[int, int], seed: int = 0) -> bytes:
    """A photo-like JPEG (q90): smooth gradients, a few sharp-edged shapes and mild noise."""
    width, height = size
    y, x = np.mgrid[0:height, 0:width] / max(size)
    rng = np.random.default_rng(seed)
    pixels = np.stack([128 + 100 * np.sin(6 * x + c) * np.cos(4 * y - c) for c in range(3)], axis=-1)
    for _ in range(6):
        left, top = rng.integers(0, width // 2), rng.integers(0, height // 2)
        pixels[top : top + height // 4, left : left + width // 4] = rng.integers(0, 256, 3)
    pixels += rng.normal(0, 6, pixels.shape)
    return encode(Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)), "JPEG", quality=90)


PHOTO = PreprocessConfig(
    input_size=224, in_chans=3, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), tta_sizes=(256, 272, 288, 304, 320)
)


def _levels(normalised: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """Normalised crops back in 8-bit levels, to compare paths in the units of the image."""
    return normalised * (255 * np.asarray(config.std, np.float32)[:, None, None])


def _full_resolution_crops(data: bytes, config: PreprocessConfig) -> np.ndarray:
    """The previous path: a full-resolution decode, each size resized whole, then centre-cropped."""
    image = decode_image(data, config.in_chans, LIMIT)
    sizes = config.sizes(tta=True)
    return np.stack([normalize(center_crop(resize_shorter_side(image, s, "bilinear"), config.input_size), config) for s in sizes])


@pytest.mark.parametrize(
    ("size", "decoded"),
    [((640, 480), (480, 360)), ((1024, 768), (512, 384)), ((2048, 1536), (512, 384)), ((3000, 2000), (750, 500))],
)
def test_jpegs_decode_at_the_smallest_scale_that_covers_the_largest_size(size, decoded) -> None:
    # libjpeg-turbo's scales n/8 (3/4, 1/2, 1/4, 1/4 here); tests/test_decode_jpeg.py checks the choice in general
    assert decode_image(_photo(size), 3, LIMIT, shorter_side=320).size == decoded


@pytest.mark.parametrize("size", [(640, 480), (1024, 768), (2048, 1536)])
def test_reduced_scale_crops_match_the_full_resolution_path_on_photos(size) -> None:
    # Tolerance, in 8-bit levels: libjpeg's scaled IDCT is another low-pass filter than the bilinear
    # antialiasing of a full-size decode, so edges differ by a few levels; on average under one (measured:
    # means 0.44-0.73, 99th percentiles 3-7, the 7 at 640x480's 3/4 scale).
    data = _photo(size)
    new = _levels(decode_crops(data, [(PHOTO, PHOTO.sizes(tta=True))], LIMIT)[0], PHOTO)
    old = _levels(_full_resolution_crops(data, PHOTO), PHOTO)
    difference = np.abs(new - old)
    assert difference.mean() < 1.0
    assert np.percentile(difference, 99) < 8.0


def test_cropping_while_resizing_equals_resizing_then_cropping() -> None:
    image = decode_image(_photo((1024, 768)), 3, LIMIT)
    for size in PHOTO.sizes(tta=True):
        whole = np.asarray(center_crop(resize_shorter_side(image, size, "bilinear"), 224), np.int16)
        direct = np.asarray(resized_crop(image, size, None, None, 224, "bilinear"), np.int16)
        assert np.abs(whole - direct).max() <= 2  # the filter weights' rounding, no more
        assert np.abs(whole - direct).mean() < 0.05


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_reduced_scale_decoding_is_a_no_op_for_small_images(mode) -> None:
    # training reads 28x28 images with TTA sizes 28-36: nothing may change there
    data = encode(noise_image(5, (28, 28), mode), "JPEG", quality=90)
    for in_chans in (1, 3):
        plain = np.asarray(decode_image(data, in_chans, LIMIT))
        assert np.array_equal(np.asarray(decode_image(data, in_chans, LIMIT, shorter_side=36)), plain)
    just_covering = encode(noise_image(5, (40, 40), mode), "JPEG")  # 7/8 would give 35 < 36
    assert decode_image(just_covering, 3, LIMIT, shorter_side=36).size == (40, 40)


def test_the_pixel_limit_is_checked_on_the_full_size_before_a_reduced_decode() -> None:
    data = _photo((2048, 1536))
    assert decode_image(data, 3, 2048 * 1536, shorter_side=256).size == (512, 384)
    with pytest.raises(ImageTooLargeError, match="2048x1536"):
        decode_image(data, 3, 2048 * 1536 - 1, shorter_side=256)  # 512x384 decoded would be well under


def test_normalising_by_table_equals_the_arithmetic() -> None:
    image = noise_image(6, (17, 9), "RGB")
    pixels = np.asarray(image, np.float32) / 255.0
    expected = ((pixels - np.asarray(COLOUR.mean, np.float32)) / np.asarray(COLOUR.std, np.float32)).transpose(2, 0, 1)
    np.testing.assert_array_equal(normalize(image, COLOUR), expected)
