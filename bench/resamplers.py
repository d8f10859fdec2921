"""The resampling part of 5-size TTA on the photo case's photos: Pillow's filters against OpenCV's.

    .venv/bin/python -m bench.resamplers      # a few seconds; writes bench/results/resamplers.json

Each photo is decoded as ``decode_crops`` decodes it for the TTA plan (the smallest JPEG scale whose
shorter side covers 320), then its five 224x224 centre crops at 256..320 are made each way:

- Pillow, as ``app.contract.preprocess.resized_crop`` does it (only the kept square is resampled,
  antialiased: the filter widens with the reduction), bicubic (timm's ResNet-18) and bilinear
  (ProductRec's training default);
- OpenCV (``cv2.resize``, one thread), the whole image resized then cropped, as an OpenCV user writes it:
  bilinear and bicubic (a fixed 2x2 / 4x4 neighbourhood, no antialiasing) and area averaging.

It reports CPU ms per photo (median of 7 passes) and how far each way's crops are from Pillow's
filter of the same name (bicubic for area), in 8-bit levels. Normalising is left out: it is the same
for all. The crops a model sees are defined by its manifest's ``interpolation``, which
``resized_crop`` applies with Pillow; this measures what another resampler would cost and change.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from datetime import datetime, timezone
from typing import Callable

import numpy as np
import PIL
from PIL import Image

from bench import REPO
from bench.preprocess_cost import TTA

CROP = 224
PASSES = 7


def _pillow(interpolation: str) -> Callable[[Image.Image], list[np.ndarray]]:
    from app.contract.preprocess import resized_crop

    return lambda image: [np.asarray(resized_crop(image, size, None, None, CROP, interpolation)) for size in TTA]


def _opencv(flag: int) -> Callable[[Image.Image], list[np.ndarray]]:
    import cv2

    from app.contract.preprocess import resized_size

    def crops(image: Image.Image) -> list[np.ndarray]:
        pixels = np.asarray(image)
        out = []
        for size in TTA:
            width, height = resized_size(image.size, size)
            resized = cv2.resize(pixels, (width, height), interpolation=flag)
            left, top = (width - CROP) // 2, (height - CROP) // 2
            out.append(resized[top:top + CROP, left:left + CROP])
        return out

    return crops


def measure() -> dict:
    import cv2

    from app.contract.preprocess import decode_image
    from bench.serving.photos import skimage_photos

    load_at_start = os.getloadavg()
    cv2.setNumThreads(1)
    images = [decode_image(data, 3, 10**9, max(TTA)) for data in skimage_photos()]
    ways = {
        "Pillow bicubic": ("bicubic", _pillow("bicubic")),
        "Pillow bilinear": ("bilinear", _pillow("bilinear")),
        f"OpenCV {cv2.__version__} bilinear": ("bilinear", _opencv(cv2.INTER_LINEAR)),
        f"OpenCV {cv2.__version__} bicubic": ("bicubic", _opencv(cv2.INTER_CUBIC)),
        f"OpenCV {cv2.__version__} area": ("bicubic", _opencv(cv2.INTER_AREA)),
    }
    crops = {name: [make(image) for image in images] for name, (_, make) in ways.items()}
    rows = {}
    for name, (against, make) in ways.items():
        passes = []
        for _ in range(PASSES):
            started = time.process_time()
            for image in images:
                make(image)
            passes.append((time.process_time() - started) / len(images) * 1000)
        levels = np.concatenate([
            np.abs(ours.astype(np.int16) - theirs.astype(np.int16)).ravel()
            for image_crops, reference in zip(crops[name], crops[f"Pillow {against}"]) for ours, theirs in zip(image_crops, reference)
        ])
        rows[name] = {"cpu_ms_per_photo": statistics.median(passes), "against": f"Pillow {against}",
                      "mean_levels": float(levels.mean()), "p99_levels": float(np.percentile(levels, 99)), "max_levels": int(levels.max())}
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {"cpus": os.cpu_count(), "loadavg_start": " ".join(f"{v:.1f}" for v in load_at_start)},
        "versions": {"Pillow": PIL.__version__, "opencv": cv2.__version__, "numpy": np.__version__},
        "photos": len(images), "sizes": list(TTA), "crop": CROP, "passes": PASSES,
        "ways": rows,
    }


def main() -> int:
    results = measure()
    print(f"{results['date']}, {results['machine']['cpus']} CPUs, load average {results['machine']['loadavg_start']}")
    for name, row in results["ways"].items():
        print(f"{name:28s} {row['cpu_ms_per_photo']:5.2f} ms per photo; against {row['against']}: mean {row['mean_levels']:.2f}, "
              f"p99 {row['p99_levels']:.0f}, max {row['max_levels']} levels")
    out = REPO / "bench" / "results" / "resamplers.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
