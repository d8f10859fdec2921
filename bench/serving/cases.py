"""The two ensembles measured, the load put on each, and the target the ratio is held to."""

from __future__ import annotations

from dataclasses import dataclass

TARGET_RATIO = 0.85
TARGET_CONCURRENCY = 8
BATCHING = {"on": {}, "off": {"max_batch_size": "1"}}  # off: every image runs alone


@dataclass(frozen=True)
class Case:
    """One ensemble and the load put on it."""

    name: str
    title: str
    photo_size: int | None  # None: the 28x28 grayscale originals; else upscaled RGB photos
    concurrency: tuple[int, ...]
    requests: dict[int, int]  # measured requests per point, by concurrency (split over the rounds)
    rounds: int
    round_timeout_s: float  # a round stops starting requests after this long
    request_timeout_s: float
    check_batch: int  # batch size of the session-options check
    check_repeats: int  # per variant and pass
    check_passes: int
    profile_requests: int  # requests of the (untimed) profiling run at the target concurrency
    batch_endpoint_concurrency: tuple[int, ...] = ()  # /v1/predict/batch points (batching on); () for none
    batch_endpoint_items: int = 16  # images per /v1/predict/batch request


CASES = {
    "small": Case(
        name="small",
        title="Fashion-MNIST ensemble: 3 tiny timm models (ResNet, SE-ResNet, ResNeSt), 28x28 grayscale, "
        "TTA 28+32, 10 classes; 28x28 JPEGs",
        photo_size=None,
        concurrency=(1, 8, 32),
        requests={1: 300, 8: 900, 32: 1200},
        rounds=3,
        round_timeout_s=60,
        request_timeout_s=60,
        check_batch=8,
        check_repeats=10,
        check_passes=2,
        profile_requests=1500,
        batch_endpoint_concurrency=(1, 8),
        batch_endpoint_items=16,
    ),
    "realistic": Case(
        name="realistic",
        title="Realistic size: 3 ResNet-50s, RGB 224x224, 5 TTA sizes 256..320, 50,000 classes; 320x320 JPEGs",
        photo_size=320,
        concurrency=(1, 8),
        requests={1: 4, 8: 32},
        rounds=4,  # short rounds: this machine's speed drifts by tens of percent over minutes
        round_timeout_s=300,
        request_timeout_s=600,
        check_batch=1,
        check_repeats=2,
        check_passes=1,
        profile_requests=16,
    ),
}
