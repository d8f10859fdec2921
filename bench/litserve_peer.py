"""The LitServe peer of the photo benchmark: LitServe 0.2.19 serving the same ensemble with the same preprocessing.

    python bench/litserve_peer.py REPOSITORY --workers 2 --threads 1 --max-batch-size 4 --port 8001

As a LitServe user would write it: each of ``--workers`` inference processes decodes and crops its
requests and runs
the members on onnxruntime (``app.engine.ensemble.Ensemble``, ``--threads`` intra-op threads each,
no spinning), batching up to ``--max-batch-size`` requests within ``--batch-timeout-s``. Requests
are JSON ``{"image": base64 JPEG}`` (LitServe hands a decoded JSON body to ``decode_request``); the
answer carries the top-5 and, for the load client, ``batch_size`` and ``timings``.

``--preprocess user`` (the default) is the preprocessing as a LitServe user writes it, torchvision's
``Resize`` + ``CenterCrop`` + ``Normalize`` in PIL and numpy: decode at full resolution, resize the
whole image per size, crop, normalise (the same operations and parameters as the manifest asks, so
the same crops up to resampling rounding). ``--preprocess service`` gives the peer ProductRec's own
``decode_crops`` instead (DCT-scaled decoding, box resizes, table normalisation): the peer with the
service's preprocessing, which bounds what the serving layer alone can gain over it.
"""

from __future__ import annotations

import argparse
import base64
import io
import sys
import time
from pathlib import Path

import litserve as ls
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's app, when run as a script

from app.contract.preprocess import INTERPOLATIONS, CropPlan, decode_crops  # noqa: E402
from app.contract.ranking import rank  # noqa: E402
from app.engine.ensemble import Ensemble  # noqa: E402

MAX_PIXELS = 40_000_000


def user_crops(data: bytes, plan: CropPlan) -> list[np.ndarray]:
    """What a LitServe user writes: PIL decode, then per size resize the shorter side, centre-crop, normalise."""
    image = Image.open(io.BytesIO(data))
    if image.width * image.height > MAX_PIXELS:
        raise ValueError("image too large")
    groups = []
    for config, sizes in plan:
        pixels = image.convert("RGB" if config.in_chans == 3 else "L")
        mean, std = np.asarray(config.mean, np.float32), np.asarray(config.std, np.float32)
        crops = []
        for size in sizes:
            scale = size / min(pixels.size)
            resized = pixels.resize((max(size, round(pixels.width * scale)), max(size, round(pixels.height * scale))),
                                    INTERPOLATIONS[config.interpolation])
            left, top = (resized.width - config.input_size) // 2, (resized.height - config.input_size) // 2
            cropped = resized.crop((left, top, left + config.input_size, top + config.input_size))
            array = np.asarray(cropped, np.float32).reshape(config.input_size, config.input_size, -1) / 255.0
            crops.append(((array - mean) / std).transpose(2, 0, 1))
        groups.append(np.stack(crops))
    return groups


class EnsembleAPI(ls.LitAPI):
    """Decode + crop in ``decode_request``, one ensemble run per batch in ``predict``."""

    def __init__(self, repository: Path, threads: int, tta: bool, max_batch_size: int, batch_timeout_s: float,
                 preprocess: str = "user") -> None:
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout_s)
        self.repository, self.threads, self.tta, self.preprocess = repository, threads, tta, preprocess

    def setup(self, device: str) -> None:
        self.ensemble = Ensemble.load(self.repository, "cpu", intra_op_threads=self.threads, spinning=False)
        self.plan = self.ensemble.crop_plan(self.tta)
        self.ensemble.warm_up()

    def decode_request(self, request: dict) -> tuple[list[np.ndarray], float]:
        started = time.perf_counter()
        data = base64.b64decode(request["image"])
        crops = user_crops(data, self.plan) if self.preprocess == "user" else decode_crops(data, self.plan, MAX_PIXELS)
        return crops, (time.perf_counter() - started) * 1000

    def batch(self, inputs: list) -> list:
        return inputs

    def predict(self, inputs) -> list[dict]:
        batch = inputs if isinstance(inputs, list) else [inputs]
        started = time.perf_counter()
        probs = self.ensemble.member_probabilities([crops for crops, _ in batch], self.tta)
        rankings = rank(probs, 5, self.ensemble.strategy)
        inference_ms = (time.perf_counter() - started) * 1000
        answers = [
            {
                "labels": [int(index) for index in ranking.indices],
                "batch_size": len(batch),
                "timings": {"decode_ms": decode_ms, "queue_ms": 0.0, "inference_ms": inference_ms,
                            "total_ms": decode_ms + inference_ms},
            }
            for ranking, (_, decode_ms) in zip(rankings, batch)
        ]
        return answers if isinstance(inputs, list) else answers[0]

    def unbatch(self, output: list) -> list:
        return output

    def encode_response(self, output: dict) -> dict:
        return output


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("repository", type=Path)
    parser.add_argument("--workers", type=int, default=1, help="LitServe inference processes (workers_per_device)")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads per worker")
    parser.add_argument("--max-batch-size", type=int, default=1)
    parser.add_argument("--batch-timeout-s", type=float, default=0.005)
    parser.add_argument("--tta", action="store_true", help="every TTA size (else the first only)")
    parser.add_argument("--preprocess", choices=("user", "service"), default="user",
                        help="user: PIL/numpy as a LitServe user writes it; service: ProductRec's decode_crops")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    api = EnsembleAPI(args.repository, args.threads, args.tta, args.max_batch_size, args.batch_timeout_s,
                      args.preprocess)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=args.workers, timeout=600)
    server.run(host=args.host, port=args.port, num_api_servers=1, log_level=args.log_level, generate_client_file=False)


if __name__ == "__main__":
    main()
