"""What an image will cost to decode, read from its headers without decoding anything.

A decoder's time grows with more than the pixel count: libjpeg walks every block
once per progressive scan, Pillow reads PNG chunks and TIFF tags one by one in
Python, and libtiff pays per strip. ``inspect_image`` walks the file's structure
(JPEG segments, PNG chunks, GIF blocks, WebP chunks, TIFF directories) with
``struct`` and one C-level regular expression, counts those cost drivers, and
refuses the file as soon as a count passes its limit, so the walk itself stays
bounded. It also reads the width and height, which set the decode's time budget.

Pure Python and the standard library: it runs in the service's event loop, before
a decode worker is taken, so a refused file never occupies one.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field

from app.contract.errors import DomainError


class ImageTooComplexError(DomainError, ValueError):
    """The file's structure (scans, chunks, frames, strips) would cost too much to decode."""

    status, code = 422, "image_too_complex"


@dataclass(frozen=True)
class CostLimits:
    """The most of each cost driver a file may have (the service takes them from its settings)."""

    max_jpeg_scans: int
    max_image_frames: int
    max_image_chunks: int
    max_tiff_strips: int


@dataclass(frozen=True)
class ImageCost:
    """What the headers say: the format, the size (None where unknown) and whether the structure was odd."""

    format: str  # "JPEG", "PNG", "GIF", "WEBP", "TIFF", "BMP" or "unknown"
    width: int | None = None
    height: int | None = None
    irregular: bool = False  # junk between segments, or a structure the walk could not follow
    counts: dict[str, int] = field(default_factory=dict, compare=False)  # scans, chunks, frames, ... seen

    @property
    def pixels(self) -> int | None:
        return self.width * self.height if self.width is not None and self.height is not None else None


class _Counter:
    """Counts of one file's cost drivers; raises once one passes its limit."""

    def __init__(self, format: str, limits: CostLimits) -> None:
        self.format = format
        self.limits = limits
        self.counts: dict[str, int] = {}

    def add(self, what: str, setting: str, count: int = 1) -> None:
        total = self.counts.get(what, 0) + count
        self.counts[what] = total
        self.check(what, setting, total)

    def check(self, what: str, setting: str, count: int) -> None:
        limit = getattr(self.limits, setting)
        if count > limit:
            raise ImageTooComplexError(
                f"the {self.format} file has more than {limit} {what} (limit {setting}={limit}); "
                "decoding it would cost too much"
            )


def inspect_image(data: bytes, limits: CostLimits) -> ImageCost:
    """The format and size of ``data`` from its headers; ``ImageTooComplexError`` when a count passes its limit.

    Never raises for broken files: what cannot be followed is left for the decoder to refuse.
    """
    for format, accepts, inspect in _FORMATS:
        if accepts(data):
            try:
                return inspect(data, limits)
            except ImageTooComplexError:
                raise
            except (struct.error, IndexError, ValueError):  # cut short or inconsistent: the decoder will say
                return ImageCost(format, irregular=True)
    return ImageCost("unknown", irregular=True)


# A marker in JPEG entropy-coded data: 0xFF followed by anything but a stuffed 0x00, a restart
# marker RST0-7 or another 0xFF (fill). Searched by the regex engine in C, not byte by byte in Python.
_JPEG_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_JPEG_STANDALONE = {0x01, *range(0xD0, 0xD9)}  # TEM, RST0-7, SOI: no length field
_JPEG_SOF = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # not DHT, JPG, DAC
_JPEG_SOS, _JPEG_EOI = 0xDA, 0xD9


def _jpeg(data: bytes, limits: CostLimits) -> ImageCost:
    """Walk the segments up to EOI, skipping each scan's entropy-coded data; count segments and scans."""
    counter = _Counter("JPEG", limits)
    size: tuple[int, int] | None = None
    irregular = False
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:  # junk between segments: Pillow reads it byte by byte in Python
            irregular = True
            found = _JPEG_MARKER.search(data, position)
            if found is None:
                break
            position = found.start()
            continue
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte before a marker
            position += 1
            continue
        if marker == _JPEG_EOI:
            break
        if marker in _JPEG_STANDALONE:
            position += 2
            continue
        counter.add("segments", "max_image_chunks")
        (length,) = struct.unpack_from(">H", data, position + 2)
        if length < 2:
            return ImageCost("JPEG", *(size or (None, None)), irregular=True, counts=counter.counts)
        if marker in _JPEG_SOF and size is None:
            height, width = struct.unpack_from(">HH", data, position + 5)
            size = (width, height) if width and height else None  # height 0: set later by a DNL marker
        position += 2 + length
        if marker == _JPEG_SOS:
            counter.add("scans", "max_jpeg_scans")
            found = _JPEG_MARKER.search(data, position)
            if found is None:
                break
            position = found.start()
    width, height = size or (None, None)
    return ImageCost("JPEG", width, height, irregular or size is None, counter.counts)


def _png(data: bytes, limits: CostLimits) -> ImageCost:
    """Walk the chunks up to IEND; count chunks, and frames of an APNG (acTL's count and fcTL chunks)."""
    counter = _Counter("PNG", limits)
    width = height = None
    position = 8
    while position + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, position)
        counter.add("chunks", "max_image_chunks")
        if kind == b"IHDR" and width is None:
            width, height = struct.unpack_from(">II", data, position + 8)
        elif kind == b"acTL":
            counter.check("frames", "max_image_frames", struct.unpack_from(">I", data, position + 8)[0])
        elif kind == b"fcTL":
            counter.add("frames", "max_image_frames")
        elif kind == b"IEND":
            break
        position += 12 + length
    return ImageCost("PNG", width, height, width is None, counter.counts)


def _gif(data: bytes, limits: CostLimits) -> ImageCost:
    """Walk the blocks up to the trailer; count blocks and frames (image descriptors)."""
    counter = _Counter("GIF", limits)
    width, height, flags = struct.unpack_from("<HHB", data, 6)
    position = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)  # after the global colour table
    while position < len(data):
        introducer = data[position]
        if introducer == 0x3B:  # trailer
            break
        counter.add("blocks", "max_image_chunks")
        if introducer == 0x21:  # extension: label, then data sub-blocks
            position = _skip_sub_blocks(data, position + 2)
        elif introducer == 0x2C:  # image descriptor, local colour table, LZW code size, sub-blocks
            counter.add("frames", "max_image_frames")
            local = data[position + 9]
            position += 10 + (3 << ((local & 7) + 1) if local & 0x80 else 0)
            position = _skip_sub_blocks(data, position + 1)
        else:
            return ImageCost("GIF", width, height, True, counter.counts)
    return ImageCost("GIF", width, height, False, counter.counts)


def _skip_sub_blocks(data: bytes, position: int) -> int:
    """The position after a chain of data sub-blocks (each a length byte and that many bytes; 0 ends it)."""
    while (length := data[position]) != 0:
        position += length + 1
    return position + 1


def _webp(data: bytes, limits: CostLimits) -> ImageCost:
    """Walk the RIFF chunks; count chunks and animation frames (ANMF); the size from VP8X, VP8 or VP8L."""
    counter = _Counter("WebP", limits)
    size: tuple[int, int] | None = None
    end = min(len(data), 8 + struct.unpack_from("<I", data, 4)[0])
    position = 12
    while position + 8 <= end:
        kind, length = struct.unpack_from("<4sI", data, position)
        counter.add("chunks", "max_image_chunks")
        body = position + 8
        if kind == b"ANMF":
            counter.add("frames", "max_image_frames")
        elif size is None:
            size = _webp_size(kind, data, body)
        position = body + length + (length & 1)
    width, height = size or (None, None)
    return ImageCost("WEBP", width, height, size is None, counter.counts)


def _webp_size(kind: bytes, data: bytes, body: int) -> tuple[int, int] | None:
    """The size a VP8X, VP8 or VP8L chunk gives; None for other chunks."""
    if kind == b"VP8X":  # 4 bytes of flags, then the canvas's 24-bit width - 1 and height - 1
        (low, high) = struct.unpack_from("<IH", data, body + 4)  # 6 bytes: width (3), height (3)
        return (low & 0xFFFFFF) + 1, ((low >> 24) | (high << 8)) + 1
    if kind == b"VP8 ":  # key frame: 3-byte tag, start code, then 14-bit width and height
        width, height = struct.unpack_from("<HH", data, body + 6)
        return width & 0x3FFF, height & 0x3FFF
    if kind == b"VP8L":  # signature byte, then 14-bit width - 1 and height - 1
        (bits,) = struct.unpack_from("<I", data, body + 1)
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None


_TIFF_WIDTH, _TIFF_HEIGHT, _TIFF_STRIPS, _TIFF_TILES = 256, 257, 273, 324


def _tiff(data: bytes, limits: CostLimits) -> ImageCost:
    """Walk the IFD chain; count pages, tag entries, and the strips or tiles of each page."""
    counter = _Counter("TIFF", limits)
    order = "<" if data[:2] == b"II" else ">"
    big = struct.unpack_from(order + "H", data, 2)[0] == 43
    # BigTIFF: 8-byte counts and offsets, 20-byte entries; classic TIFF: 2-byte count, 4-byte offsets
    count_format, entry_format, entry_size = ("Q", "HHQQ", 20) if big else ("H", "HHII", 12)
    offset_format = "Q" if big else "I"
    (offset,) = struct.unpack_from(order + offset_format, data, 8 if big else 4)
    seen: set[int] = set()
    size: tuple[int, int] | None = None
    while offset and offset not in seen and offset < len(data):
        seen.add(offset)
        counter.add("pages", "max_image_frames")
        (entries,) = struct.unpack_from(order + count_format, data, offset)
        counter.add("tag entries", "max_image_chunks", entries)
        start = offset + struct.calcsize(count_format)
        tags = {}
        for index in range(entries):
            tag, kind, count, value = struct.unpack_from(order + entry_format, data, start + index * entry_size)
            tags[tag] = (kind, count, value)
        counter.check("strips or tiles in a page", "max_tiff_strips", max(
            tags.get(_TIFF_STRIPS, (0, 0, 0))[1], tags.get(_TIFF_TILES, (0, 0, 0))[1]
        ))
        if size is None and _TIFF_WIDTH in tags and _TIFF_HEIGHT in tags:
            size = (_tiff_value(order, big, *tags[_TIFF_WIDTH]), _tiff_value(order, big, *tags[_TIFF_HEIGHT]))
        (offset,) = struct.unpack_from(order + offset_format, data, start + entries * entry_size)
    width, height = size or (None, None)
    return ImageCost("TIFF", width, height, size is None, counter.counts)


_TIFF_TYPE_BYTES = {3: 2, 4: 4, 16: 8}  # SHORT, LONG, LONG8


def _tiff_value(order: str, big: bool, kind: int, count: int, value: int) -> int:
    """An inline SHORT, LONG or LONG8 read from the value field (read whole, so a big-endian one sits high)."""
    size = _TIFF_TYPE_BYTES.get(kind)
    if size is None or count != 1:
        raise ValueError(f"unexpected TIFF size field of type {kind} and count {count}")
    if order == ">":
        value >>= 8 * ((8 if big else 4) - size)
    return value & ((1 << (8 * size)) - 1)


def _bmp(data: bytes, limits: CostLimits) -> ImageCost:
    """The size only: a BMP is one frame of uncompressed or RLE pixels, its cost set by its size."""
    (header_size,) = struct.unpack_from("<I", data, 14)
    if header_size == 12:  # OS/2 BITMAPCOREHEADER
        width, height = struct.unpack_from("<HH", data, 18)
    else:
        width, height = struct.unpack_from("<ii", data, 18)
    return ImageCost("BMP", abs(width), abs(height))


_FORMATS = (
    ("JPEG", lambda data: data[:3] == b"\xff\xd8\xff", _jpeg),
    ("PNG", lambda data: data[:8] == b"\x89PNG\r\n\x1a\n", _png),
    ("GIF", lambda data: data[:6] in (b"GIF87a", b"GIF89a"), _gif),
    ("WEBP", lambda data: data[:4] == b"RIFF" and data[8:12] == b"WEBP", _webp),
    ("TIFF", lambda data: data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"), _tiff),
    ("BMP", lambda data: data[:2] == b"BM", _bmp),
)
