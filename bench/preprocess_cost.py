"""CPU ms per photo of ``decode_crops`` on the photo case's photos, this checkout's against another's.

    .venv/bin/python -m bench.preprocess_cost                          # this checkout's app
    .venv/bin/python -m bench.preprocess_cost --compare /work/main     # alternating with main's, 4 passes
    .venv/bin/python -m bench.preprocess_cost --compare-python /opt/simd/bin/python   # this checkout under another
                                                                                      # Pillow build (pillow-simd)

The plans are the photo case's: a ResNet-18 at 224 (timm's mean, std and bicubic) on one size (256,
the plain path) and on 5 TTA sizes (256..320). Each figure is the median over repeats of the mean CPU
time per photo (``time.process_time``, one process, no worker); ``--compare`` runs each checkout in
its own process, alternately, so both see the same machine. ``--compare-python`` runs this checkout
under this interpreter and under another one (its own Pillow: ``scripts/install-pillow-simd.sh``), alternately,
and reports how far the crops differ.
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
from typing import Any, Sequence

import numpy as np

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


def read_photos(folder: Path | None) -> list[bytes]:
    """The photo case's photos: from ``folder`` (``*.jpg``, in name order), else made from scikit-image's pictures."""
    if folder is None:
        from bench.serving.photos import skimage_photos

        return skimage_photos()
    return [path.read_bytes() for path in sorted(folder.glob("*.jpg"))]


def measure(app_root: Path | None, photos_dir: Path | None = None, crops_out: Path | None = None) -> dict[str, Any]:
    """Plain and TTA costs with ``app`` imported from ``app_root`` (default: this checkout); the TTA crops saved to ``crops_out``."""
    if app_root is not None:
        sys.path.insert(0, str(app_root.resolve()))
        assert "app" not in sys.modules, "app must first be imported from --app-root"
    import PIL

    photos = read_photos(photos_dir)
    result: dict[str, Any] = {"plain": preprocessing_cost(photos, photo_plan(PLAIN)), "tta": preprocessing_cost(photos, photo_plan(TTA))}
    result["pillow"] = PIL.__version__
    if crops_out is not None:
        from app.contract.preprocess import decode_crops

        np.save(crops_out, np.stack([decode_crops(data, photo_plan(TTA), 10**9)[0] for data in photos]))
    return result


def _passes(commands: dict[str, list[str]], passes: int) -> dict[str, Any]:
    """Each command's JSON output, ``passes`` times alternately; the medians per path and size."""
    runs: dict[str, list[dict]] = {name: [] for name in commands}
    for _ in range(passes):
        for name, command in commands.items():
            output = subprocess.run(command, check=True, capture_output=True, text=True, cwd=Path(__file__).parents[1])
            runs[name].append(json.loads(output.stdout))
    result: dict[str, Any] = {name: {path: {size: statistics.median(run[path][size] for run in values) for size in values[0][path]}
                                     for path in ("plain", "tta")} for name, values in runs.items()}
    for name, values in runs.items():
        result[name]["pillow"] = values[0]["pillow"]
    result["passes"] = passes
    return result


def compare(other: Path, passes: int) -> dict:
    """This checkout against ``other``, each in its own process, alternately; medians over the passes."""
    own = [sys.executable, "-m", "bench.preprocess_cost"]
    result = _passes({"other": [*own, "--app-root", str(other)], "this": own}, passes)
    result["other_root"] = str(other)
    return result


def compare_python(python: Path, passes: int) -> dict:
    """This checkout under this interpreter and under ``python`` (another Pillow build), alternately, on the same photo
    files; with the difference of their 5-size TTA crops in 8-bit levels (normalised values × std × 255)."""
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        for index, data in enumerate(read_photos(None)):
            (folder / f"{index:03d}.jpg").write_bytes(data)
        commands = {name: [interpreter, "-m", "bench.preprocess_cost", "--photos", str(folder), "--crops-out", str(folder / f"{name}.npy")]
                    for name, interpreter in (("this", sys.executable), ("other", str(python)))}
        result = _passes(commands, passes)
        levels = np.abs(np.load(folder / "this.npy") - np.load(folder / "other.npy")) * np.asarray(IMAGENET[1], np.float32)[:, None, None] * 255
    rounded = np.rint(levels)
    result["crops_differ"] = {"max_levels": float(rounded.max()), "mean_levels": float(rounded.mean()), "share_of_values": float((rounded > 0).mean())}
    result["other_python"] = str(python)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.preprocess_cost", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--app-root", type=Path, help="import app from this checkout")
    parser.add_argument("--compare", type=Path, metavar="CHECKOUT", help="alternate with this checkout's app")
    parser.add_argument("--compare-python", type=Path, metavar="PYTHON", help="alternate with this checkout under another interpreter")
    parser.add_argument("--passes", type=int, default=4)
    parser.add_argument("--photos", type=Path, help=argparse.SUPPRESS)  # a compared process: the parent's photo files
    parser.add_argument("--crops-out", type=Path, help=argparse.SUPPRESS)  # ... and where its TTA crops go
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    if args.compare_python:
        result = compare_python(args.compare_python, args.passes)
    elif args.compare:
        result = compare(args.compare, args.passes)
    else:
        result = measure(args.app_root, args.photos, args.crops_out)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
