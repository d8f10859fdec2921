"""CPU ms per photo of ``decode_crops`` on the photo case's photos, this checkout's against another's.

    .venv/bin/python -m bench.preprocess_cost                          # this checkout's app
    .venv/bin/python -m bench.preprocess_cost --compare /work/main     # alternating with main's, 4 passes

The plans are the photo case's: a ResNet-18 at 224 (timm's mean, std and bicubic) on one size (256,
the plain path) and on 5 TTA sizes (256..320). Each figure is the median over repeats of the mean CPU
time per photo (``time.process_time``, one process, no worker); ``--compare`` runs each checkout in
its own process, alternately, so both see the same machine.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
PLAIN, TTA = (256,), (256, 272, 288, 304, 320)


def photo_plan(sizes: Sequence[int]) -> list:
    """The photo case's crop plan for ``sizes`` (a ResNet-18's preprocessing in timm)."""
    from app.contract.preprocess import PreprocessConfig

    return [(PreprocessConfig(224, 3, *IMAGENET, "bicubic", tuple(sizes)), tuple(sizes))]


def preprocessing_cost(photos: Sequence[bytes], plan: list, repeats: int = 5, crops=None) -> dict[str, float]:
    """Median CPU ms per photo of ``crops(data, plan)`` (default: the service's ``decode_crops``) for each photo size, and their mean."""
    from PIL import Image

    from app.contract.preprocess import decode_crops

    crops = crops or (lambda data, plan: decode_crops(data, plan, 10**9))

    by_size: dict[str, list[bytes]] = {}
    for data in photos:
        by_size.setdefault("x".join(map(str, Image.open(io.BytesIO(data)).size)), []).append(data)
    cost = {}
    for size, group in by_size.items():
        passes = []
        for _ in range(repeats):
            started = time.process_time()
            for data in group:
                crops(data, plan)
            passes.append((time.process_time() - started) / len(group) * 1000)
        cost[size] = statistics.median(passes)
    cost["all"] = statistics.fmean(cost[size] for size in by_size)
    return cost


def decoding_cost(photos: Sequence[bytes], plan: list, repeats: int = 5) -> dict[str, float]:
    """``preprocessing_cost`` of the decoding alone, at the scale ``decode_crops`` decodes at for ``plan``: the
    part no resizing or normalising can save, with this decoder, at the resolution the largest resize needs."""
    from app.contract.preprocess import decode_image, largest_size, widest_in_chans

    return preprocessing_cost(
        photos, plan, repeats, crops=lambda data, plan: decode_image(data, widest_in_chans(plan), 10**9, largest_size(plan))
    )


def measure(app_root: Path | None) -> dict[str, dict[str, float]]:
    """Plain and TTA costs with ``app`` imported from ``app_root`` (default: this checkout)."""
    from bench.serving.photos import skimage_photos

    photos = skimage_photos()
    if app_root is not None:
        sys.path.insert(0, str(app_root.resolve()))
        assert "app" not in sys.modules, "app must first be imported from --app-root"
    return {"plain": preprocessing_cost(photos, photo_plan(PLAIN)), "tta": preprocessing_cost(photos, photo_plan(TTA))}


def compare(other: Path, passes: int) -> dict:
    """This checkout against ``other``, each in its own process, alternately; medians over the passes."""
    runs: dict[str, list[dict]] = {"this": [], "other": []}
    for _ in range(passes):
        for name, root in (("other", other), ("this", None)):
            command = [sys.executable, "-m", "bench.preprocess_cost", *(["--app-root", str(root)] if root else [])]
            output = subprocess.run(command, check=True, capture_output=True, text=True, cwd=Path(__file__).parents[1])
            runs[name].append(json.loads(output.stdout))
    result = {name: {path: {size: statistics.median(run[path][size] for run in values) for size in values[0][path]}
                     for path in ("plain", "tta")} for name, values in runs.items()}
    result["other_root"] = str(other)
    result["passes"] = passes
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.preprocess_cost", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--app-root", type=Path, help="import app from this checkout")
    parser.add_argument("--compare", type=Path, metavar="CHECKOUT", help="alternate with this checkout's app")
    parser.add_argument("--passes", type=int, default=4)
    args = parser.parse_args(argv)
    print(json.dumps(compare(args.compare, args.passes) if args.compare else measure(args.app_root), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
