"""Reading the results JSON back: which point is the target, how points are named, the bound on the ratio."""

from __future__ import annotations

from bench.serving.cases import TARGET_CONCURRENCY


def is_target(point: dict) -> bool:
    """The point the target ratio is held to: /v1/predict, batching on, the target concurrency."""
    return point["endpoint"] == "predict" and point["batching"] == "on" and point["concurrency"] == TARGET_CONCURRENCY


def endpoint_label(point: dict) -> str:
    if point["endpoint"] == "batch":
        return f"batch x{point['images_per_request']}"
    return "predict"


def point_label(point: dict, separator: str = "\n") -> str:
    what = endpoint_label(point).replace(" ", separator) if point["endpoint"] == "batch" else point["batching"]
    return f"c={point['concurrency']}{separator}{what}"


def is_bounded(point: dict) -> bool:
    """A point the bound on the ratio is shown for: batching on, the target concurrency (either endpoint)."""
    return point["batching"] == "on" and point["concurrency"] == TARGET_CONCURRENCY


def unavoidable_ms(case: dict, point: dict) -> float:
    """CPU ms per image that any HTTP service spends besides the model: HTTP floor (server + client), decoding."""
    floor = case["http_floors"]["http"]
    per_request = floor["server_cpu_ms_per_request"] + floor["client_cpu_ms_per_request"]
    return per_request / point["images_per_request"] + case["preprocess_cpu_ms_per_image"]


def ratio_bound(case: dict, point: dict) -> float:
    """The best ratio a CPU-bound service could reach at ``point``: model CPU over model + unavoidable CPU."""
    model = point["limit_cpu_ms_per_image"]
    return model / (model + unavoidable_ms(case, point))
