"""Serving copes with photos as users send them: real Fashion-MNIST test images rendered as photos (``training.photo_render``).

Each rendering must reach the model as nearly the crops of the stored 28-px image: colour converted, any size
from the model input to the pixel limit, JPEG/PNG/WebP, a little padding or an off-centre product.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.contract.preprocess import ImageTooLargeError, PreprocessConfig, decode_crops
from bench.photos import render
from training.fashion_mnist import FASHION_MNIST_MEAN, FASHION_MNIST_STD, load_fashion_mnist_as_shot
from training.photo_render import as_photo, encode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from make_samples import write_samples  # noqa: E402

CONFIG = PreprocessConfig(28, 1, (FASHION_MNIST_MEAN,), (FASHION_MNIST_STD,), "bilinear", (28, 32, 36))
PLAN = [(CONFIG, CONFIG.tta_sizes)]
LIMIT = 1000 * 1000


@pytest.fixture(scope="module")
def products(fmnist_dir) -> list[np.ndarray]:
    """The first test image of each class, as shot."""
    _, _, images, labels = load_fashion_mnist_as_shot(fmnist_dir)
    return [images[int(np.flatnonzero(labels == k)[0])] for k in range(10)]


def crops(data: bytes) -> np.ndarray:
    (group,) = decode_crops(data, PLAN, LIMIT)
    return group


def reference(pixels: np.ndarray) -> np.ndarray:
    return crops(encode(as_photo(pixels, 28).convert("L"), "PNG"))


def grey_levels(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two crop stacks, in grey levels (0..255)."""
    return float(np.abs(a - b).mean() * FASHION_MNIST_STD * 255)


@pytest.mark.parametrize("image_format", ["JPEG", "PNG", "WEBP"])
@pytest.mark.parametrize("size", [28, 57, 400, 1000])
def test_a_photo_of_any_size_and_format_gives_the_crops_of_the_stored_image(products, image_format: str, size: int) -> None:
    for pixels in products:
        photo = encode(as_photo(pixels, size), image_format, quality=85)
        assert grey_levels(crops(photo), reference(pixels)) < 12


def test_the_stored_rendering_itself_is_exact(products) -> None:
    for pixels in products:
        exact = crops(encode(Image.fromarray(pixels), "PNG"))
        np.testing.assert_array_equal(exact, reference(pixels))
        assert grey_levels(exact, crops(encode(as_photo(255 - pixels, 400), "JPEG"))) > 60  # the stored negative is not


def test_a_colour_photo_is_converted_to_the_models_grey(products) -> None:
    for pixels in products:
        tinted = crops(encode(as_photo(pixels, 600, colour=(30, 40, 110)), "JPEG", 90))
        correlation = np.corrcoef(tinted.ravel(), reference(pixels).ravel())[0, 1]
        assert tinted.shape == (3, 1, 28, 28) and correlation > 0.95


@pytest.mark.parametrize("padding, shift", [(0.1, (0.0, 0.0)), (0.0, (0.04, -0.04)), (0.06, (-0.03, 0.03))])
def test_padding_or_an_off_centre_product_stays_in_the_crop(products, padding: float, shift: tuple[float, float]) -> None:
    for pixels in products:
        photo = crops(encode(as_photo(pixels, 800, padding, shift), "JPEG", 90))
        ink = lambda stack: float((stack[0] * FASHION_MNIST_STD + FASHION_MNIST_MEAN < 0.9).mean())  # noqa: E731
        shrink = 1 / (1 + 2 * padding) ** 2
        assert ink(photo) > 0.8 * shrink * ink(reference(pixels))


def test_photos_up_to_the_pixel_limit_are_served_and_larger_refused(products) -> None:
    assert crops(encode(as_photo(products[0], 1000), "JPEG")).shape == (3, 1, 28, 28)
    with pytest.raises(ImageTooLargeError):
        crops(encode(as_photo(products[0], 1001), "PNG"))


def test_the_benchmark_renderings_are_seeded_photos_and_the_stored_pixels(products) -> None:
    photo = render(products[0], "photo", np.random.default_rng(5))
    assert photo == render(products[0], "photo", np.random.default_rng(5))
    image = Image.open(io.BytesIO(photo))
    assert image.format == "JPEG" and image.mode == "RGB" and image.width == image.height and 400 <= image.width <= 1000
    stored = Image.open(io.BytesIO(render(products[0], "28px", np.random.default_rng(5))))
    np.testing.assert_array_equal(np.asarray(stored), products[0])


def test_the_samples_are_the_first_test_image_of_each_class_as_photos(products, fmnist_dir, tmp_path) -> None:
    paths = write_samples(fmnist_dir, tmp_path)
    committed = Path(__file__).resolve().parents[1] / "samples"
    assert sorted(p.name for p in paths) == sorted(p.name for p in committed.glob("*.jpg"))
    for label, path in enumerate(paths):
        image = Image.open(path)
        assert image.format == "JPEG" and image.mode == "RGB" and min(image.size) >= 400
        assert path.read_bytes() == (committed / path.name).read_bytes()
        assert grey_levels(crops(path.read_bytes()), reference(products[label])) < 12


def test_the_report_section_replaces_its_earlier_self(tmp_path) -> None:
    from bench.photos import write_section

    result = {
        "repository": "models", "test_images": 10000, "top1_error": {"28px": 0.2, "photo": 0.205}, "photo_minus_28px": 0.005,
        "samples_right": 9, "samples": [{"file": "4_shirt.jpg", "label": "Shirt", "answer": "T-shirt/top"}],
        "calibration": {"resnet": {"temperature": 1.5, "ece_before": 0.1, "ece_after": 0.02, "validation_images": 5000}},
        "average_k_on_validation": {"1": {"threshold": 0.5, "mean_size": 1.02, "size_range": [1, 3], "coverage": 0.8}},
    }  # fmt: skip
    report = tmp_path / "results.md"
    report.write_text("# Results\n\nother text\n")
    write_section(result, report)
    write_section({**result, "samples_right": 8}, report)
    text = report.read_text()
    assert text.startswith("# Results\n\nother text\n") and text.count("## Photos as shot") == 1
    assert "+0.50 points" in text and "8/10 right" in text and "Shirt → T-shirt/top" in text and "| resnet | 1.500 |" in text
