"""Header cost checks (app.contract.image_cost) on files Pillow writes and on crafted ones."""

from __future__ import annotations

import io
import struct
import time
from dataclasses import replace

import pytest
from PIL import Image
from serving_helpers import encode, noise_image, scan_bomb_jpeg

from app.contract.image_cost import CostLimits, ImageTooComplexError, inspect_image

LIMITS = CostLimits(max_jpeg_scans=100, max_image_frames=1000, max_image_chunks=10_000, max_tiff_strips=65_536)
FOUR_FRAMES = replace(LIMITS, max_image_frames=4)
TWENTY_CHUNKS = replace(LIMITS, max_image_chunks=20)


def rgb(seed: int = 0, size: tuple[int, int] = (40, 30)) -> Image.Image:
    return noise_image(seed, size, "RGB")


def frames(count: int) -> list[Image.Image]:
    return [rgb(seed) for seed in range(count)]


def animated(format: str, count: int) -> bytes:
    first, *rest = frames(count)
    return encode(first, format, save_all=True, append_images=rest)


def refused(data: bytes, limits: CostLimits, *words: str) -> None:
    with pytest.raises(ImageTooComplexError) as caught:
        inspect_image(data, limits)
    assert caught.value.status == 422 and caught.value.code == "image_too_complex"
    for word in words:
        assert word in str(caught.value)


@pytest.mark.parametrize(
    ("format", "options"),
    [
        ("JPEG", {}),
        ("JPEG", {"progressive": True}),
        ("PNG", {}),
        ("GIF", {}),
        ("WEBP", {}),
        ("WEBP", {"lossless": True}),
        ("TIFF", {}),
        ("TIFF", {"big_tiff": True}),
        ("BMP", {}),
    ],
)
def test_size_from_headers_equals_pillows(format: str, options: dict) -> None:
    data = encode(rgb(1, (123, 45)), format, **options)
    cost = inspect_image(data, LIMITS)
    assert (cost.format, cost.width, cost.height, cost.irregular) == (format, 123, 45, False)


def test_size_of_animations_is_the_canvas() -> None:
    for format in ("PNG", "GIF", "WEBP", "TIFF"):
        cost = inspect_image(animated(format, 3), LIMITS)
        assert (cost.width, cost.height, cost.counts.get("frames", cost.counts.get("pages"))) == (40, 30, 3), format


def test_jpeg_scans_are_counted_across_stuffed_bytes_and_restart_markers() -> None:
    photo = rgb(2, (200, 160))  # noise: the entropy-coded data holds many 0xFF00 pairs
    baseline = encode(photo, "JPEG", restart_marker_blocks=1)
    assert baseline.count(b"\xff\x00") > 10 and baseline.count(b"\xff\xd0") > 10
    cost = inspect_image(baseline, LIMITS)
    assert cost.counts == {"segments": 10, "scans": 1} and not cost.irregular  # DRI is one
    assert inspect_image(encode(photo, "JPEG", progressive=True, restart_marker_blocks=1), LIMITS).counts["scans"] == 10
    assert inspect_image(encode(photo.convert("L"), "JPEG", progressive=True), LIMITS).counts["scans"] == 6


def test_jpeg_over_the_scan_limit_is_refused_and_at_it_is_not() -> None:
    assert inspect_image(scan_bomb_jpeg(64, 64, scans=100), LIMITS).counts["scans"] == 100
    refused(scan_bomb_jpeg(64, 64, scans=101), LIMITS, "more than 100 scans", "max_jpeg_scans")


def test_scan_bomb_is_refused_in_well_under_a_millisecond() -> None:
    bomb = scan_bomb_jpeg()
    assert 190_000 < len(bomb) < 220_000
    assert Image.open(io.BytesIO(bomb)).size == (6000, 6000)  # Pillow itself opens it
    started = time.perf_counter()
    refused(bomb, LIMITS, "scans")
    assert time.perf_counter() - started < 0.05  # measured ~0.1 ms: the walk stops at the limit


def test_jpeg_marker_bytes_inside_a_segment_are_not_scans() -> None:
    """An APP segment (an EXIF thumbnail is a whole JPEG) may hold 0xFFDA bytes: they are skipped with it."""
    jpeg = encode(rgb(3), "JPEG")
    app1 = b"\xff\xe1" + struct.pack(">H", 2 + 400) + b"\xff\xda" * 200
    crafted = jpeg[:2] + app1 + jpeg[2:]
    cost = inspect_image(crafted, LIMITS)
    assert cost.counts["scans"] == 1 and not cost.irregular
    assert Image.open(io.BytesIO(crafted)).size == (40, 30)


def test_jpeg_junk_between_segments_is_irregular() -> None:
    jpeg = encode(rgb(4), "JPEG")
    after_app0 = 4 + struct.unpack_from(">H", jpeg, 4)[0]
    cost = inspect_image(jpeg[:after_app0] + b"junk" * 100 + jpeg[after_app0:], LIMITS)
    assert cost.irregular and cost.counts["scans"] == 1 and (cost.width, cost.height) == (40, 30)


def test_jpeg_segment_flood_is_refused() -> None:
    jpeg = encode(rgb(5), "JPEG")
    comments = (b"\xff\xfe\x00\x02") * 50
    refused(jpeg[:2] + comments + jpeg[2:], TWENTY_CHUNKS, "more than 20 segments", "max_image_chunks")


def png_chunk(kind: bytes, data: bytes) -> bytes:
    import zlib

    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def test_png_chunk_flood_is_refused() -> None:
    png = encode(rgb(6), "PNG")
    texts = b"".join(png_chunk(b"tEXt", b"k\x00v") for _ in range(30))
    crafted = png[:33] + texts + png[33:]  # after the signature and IHDR
    assert inspect_image(crafted, LIMITS).counts["chunks"] == 33
    refused(crafted, TWENTY_CHUNKS, "more than 20 chunks", "max_image_chunks")


def test_apng_frames_are_counted_and_a_huge_declared_count_is_refused() -> None:
    refused(animated("PNG", 5), FOUR_FRAMES, "more than 4 frames", "max_image_frames")
    apng = animated("PNG", 2)
    actl = apng.index(b"acTL")
    declared = apng[: actl + 4] + struct.pack(">I", 10**6) + apng[actl + 8 :]  # CRC left wrong: not read
    refused(declared, LIMITS, "more than 1000 frames")


def test_gif_and_webp_frames_are_refused_over_the_limit() -> None:
    for format in ("GIF", "WEBP"):
        assert inspect_image(animated(format, 4), FOUR_FRAMES).counts["frames"] == 4
        refused(animated(format, 5), FOUR_FRAMES, "more than 4 frames", "max_image_frames")


def handmade_tiff(order: str = ">", strips: int = 1, next_ifd: int = 0) -> bytes:
    """A 3 x ``strips`` 8-bit grey TIFF, one row per strip (a big-endian SHORT sits in its field's high bytes)."""
    width, short = 3, 16 if order == ">" else 0
    arrays = 8 + 2 + 7 * 12 + 4  # after the header and the IFD: strip offsets, byte counts, pixels
    pixels = arrays + 8 * strips if strips > 1 else arrays
    offsets = struct.pack(f"{order}{strips}I", *(pixels + width * row for row in range(strips)))
    counts = struct.pack(f"{order}{strips}I", *[width] * strips)
    entries = [(256, 3, 1, width << short), (257, 3, 1, strips << short), (258, 3, 1, 8 << short),
               (262, 3, 1, 1 << short), (273, 4, strips, arrays if strips > 1 else pixels),
               (278, 3, 1, 1 << short), (279, 4, strips, arrays + 4 * strips if strips > 1 else width)]  # fmt: skip
    ifd = struct.pack(order + "H", len(entries)) + b"".join(struct.pack(order + "HHII", *entry) for entry in entries)
    header = (b"MM\x00*" if order == ">" else b"II*\x00") + struct.pack(order + "I", 8)
    arrays_data = offsets + counts if strips > 1 else b""
    return header + ifd + struct.pack(order + "I", next_ifd) + arrays_data + bytes(width * strips)


def test_tiff_pages_and_strips_are_refused_over_the_limit() -> None:
    refused(animated("TIFF", 5), FOUR_FRAMES, "more than 4 pages", "max_image_frames")
    strips = replace(LIMITS, max_tiff_strips=200)
    for order in "<>":
        with Image.open(io.BytesIO(handmade_tiff(order, 201))) as image:
            assert image.size == (3, 201) and len(image.tag_v2[273]) == 201
        assert inspect_image(handmade_tiff(order, 200), strips).height == 200
        refused(handmade_tiff(order, 201), strips, "more than 200 strips or tiles", "max_tiff_strips")


def test_big_endian_tiff_size_and_a_looping_ifd_chain() -> None:
    data = handmade_tiff(">")
    with Image.open(io.BytesIO(data)) as image:
        assert image.size == (3, 1)
        image.load()
    cost = inspect_image(data, LIMITS)
    assert (cost.width, cost.height, cost.counts["pages"]) == (3, 1, 1)
    looping = inspect_image(handmade_tiff(">", next_ifd=8), LIMITS)  # the IFD names itself as the next one
    assert looping.counts["pages"] == 1


def test_tiff_tag_entry_flood_is_refused() -> None:
    entries = 30
    ifd = struct.pack("<H", entries) + b"".join(struct.pack("<HHII", 65000 + i, 3, 1, 0) for i in range(entries))
    refused(b"II*\x00" + struct.pack("<I", 8) + ifd + bytes(4), TWENTY_CHUNKS, "more than 20 tag entries")


@pytest.mark.parametrize("format", ["JPEG", "PNG", "GIF", "WEBP", "TIFF"])
def test_truncated_files_are_irregular_never_an_exception(format: str) -> None:
    data = encode(rgb(8, (64, 48)), format)
    for cut in (12, 20, 40, len(data) // 2):  # past the signature
        cost = inspect_image(data[:cut], LIMITS)
        assert cost.format == format


def test_unknown_formats_are_irregular() -> None:
    for data in (b"", b"not an image", encode(rgb(9), "ICO")):
        cost = inspect_image(data, LIMITS)
        assert (cost.format, cost.pixels, cost.irregular) == ("unknown", None, True)
