"""What decoding in a killable worker process costs over decoding in-process.

    python -m bench.decode_pool_overhead [--repeats 200]

For each case the same image goes through a one-worker ``DecodePool`` ``repeats``
times, the crops coming back through shared memory (the default) or pickled
through the socket, interleaved with in-process ``app.contract.preprocess.decode_crops``
so that a busy machine slows all three alike. Printed: the median in-process
time, and per transport the median of (wall time of ``DecodePool.decode`` minus
the decode time measured inside the worker), which is the transport's overhead.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time

import numpy as np
from PIL import Image

from app.contract.preprocess import PreprocessConfig, decode_crops
from app.engine import decode_pool

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CASES = {
    # name: (image size, image mode, format, preprocessing, TTA sizes)
    "fmnist 28x28 PNG -> 28 L, 3 TTA crops": (
        (28, 28),
        "L",
        "PNG",
        PreprocessConfig(28, 1, (0.286,), (0.353,)),
        (28, 32, 36),
    ),
    "photo 800x600 JPEG -> 224 RGB, 5 TTA crops": (
        (800, 600),
        "RGB",
        "JPEG",
        PreprocessConfig(224, 3, IMAGENET_MEAN, IMAGENET_STD),
        (224, 256, 288, 320, 352),
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.decode_pool_overhead", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    shared = decode_pool.DecodePool(workers=1, timeout_s=30)
    decode_pool.SHARED_BUFFER_BYTES = 0  # a second pool whose workers pickle the crops
    pickled = decode_pool.DecodePool(workers=1, timeout_s=30)
    transports = {"shared memory": shared, "pickled": pickled}
    with shared, pickled:
        for name, (size, mode, fmt, config, sizes) in CASES.items():
            shape = (size[1], size[0]) + ((3,) if mode == "RGB" else ())
            buffer = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(buffer, fmt)
            data, plan = buffer.getvalue(), [(config, sizes)]
            in_process, overhead = [], {how: [] for how in transports}
            for _ in range(args.repeats):
                started = time.perf_counter()
                crops = decode_crops(data, plan, 10**8)
                in_process.append(time.perf_counter() - started)
                for how, pool in transports.items():
                    started = time.perf_counter()
                    decoded = pool.decode(data, plan, 10**8)
                    overhead[how].append(time.perf_counter() - started - decoded.seconds)
            local_ms = statistics.median(in_process) * 1000
            print(
                f"{name}: crops {sum(c.nbytes for c in crops) / 1024:.0f} KiB, decode+crop in-process {local_ms:.2f} ms"
            )
            for how, values in overhead.items():
                cost_ms = statistics.median(values) * 1000
                print(f"  through the worker, {how}: +{cost_ms:.2f} ms ({cost_ms / local_ms:.1%} of decode+crop)")


if __name__ == "__main__":
    main()
