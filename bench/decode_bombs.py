"""The numbers behind the decode limits (issue 16): header check cost, decode time at the pixel limit, scan cost.

    python -m bench.decode_bombs [--repeats 5]

Photos are synthetic but photo-like: a Fashion-MNIST image upscaled (bicubic) to the size, tinted, with
Gaussian sensor-like noise, JPEG quality 90 (scikit-image's bundled photos are too small and it is not
installed). Printed per case: file size, the median cost of ``inspect_image`` (the header check that runs
in the event loop), and the min / max wall time of ``decode_crops`` (decode + crop, one core).
Also: the cost of one empty scan at 6000x6000 (the scan bomb's unit), and a decode worker's start-up time
(what a pool that grows would make a waiting image pay).
"""

from __future__ import annotations

import argparse
import gzip
import io
import statistics
import time
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from app.contract.image_cost import ImageTooComplexError, inspect_image
from app.contract.preprocess import PreprocessConfig, decode_crops
from app.engine.decode_pool import DecodePolicy, _Worker

FMNIST = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
PLAN = [(PreprocessConfig(224, 3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), (224, 256, 288))]
MAX_PIXELS = 40_000_000


def photo(width: int, height: int, progressive: bool, seed: int = 0) -> bytes:
    """A photo-like JPEG of ``width`` x ``height`` (quality 90)."""
    digits = np.frombuffer(gzip.decompress(FMNIST.read_bytes()), np.uint8, offset=16).reshape(-1, 28, 28)
    base = np.asarray(Image.fromarray(digits[seed]).resize((width, height), Image.Resampling.BICUBIC), np.float32)
    noise = np.random.default_rng(seed).normal(0, 6.0, (height, width, 3)).astype(np.float32)
    pixels = base[..., None] * np.array([1.0, 0.9, 0.75], np.float32) + 40 + noise
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90, progressive=progressive)
    return buffer.getvalue()


def timed(work: Callable[[], object], repeats: int) -> list[float]:
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        try:
            work()
        except ImageTooComplexError:
            pass
        seconds.append(time.perf_counter() - started)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    limits = DecodePolicy.default().cost_limits
    for label, (width, height) in {"12 MP": (4032, 3024), "39.9 MP": (7740, 5160)}.items():
        for progressive in (False, True):
            data = photo(width, height, progressive)
            check = statistics.median(timed(lambda: inspect_image(data, limits), 100))
            decode = timed(lambda: decode_crops(data, PLAN, MAX_PIXELS), args.repeats)
            kind = "progressive" if progressive else "baseline"
            print(
                f"{label} {kind:11s} {len(data) / 1e6:4.1f} MB: header check {check * 1e3:.2f} ms, "
                f"decode+crop {min(decode):.2f}-{max(decode):.2f} s"
            )
    header = io.BytesIO()
    Image.new("L", (6000, 6000), 128).save(header, "JPEG", progressive=True)
    for scans in (0, 200):
        data = header.getvalue()[:-2] + (b"\xff\xda\x00\x08\x01\x01\x00\x00\x00\x00" * scans) + b"\xff\xd9"
        seconds = min(timed(lambda: Image.open(io.BytesIO(data)).load(), args.repeats))
        print(f"6000x6000 progressive JPEG + {scans} empty scans: decode {seconds:.2f} s")
    starts = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        worker = _Worker()
        worker.wait_ready()
        starts.append(time.perf_counter() - started)
        worker.stop()
    print(f"decode worker start-up: {min(starts) * 1e3:.0f}-{max(starts) * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
