"""bench/serving.py's plumbing against a real service: its load generator, batch bodies and HTTP floor.

The benchmark's figures are not tested (they are measurements); what is tested is that the requests it
sends are ones the service accepts and that it reads the answers right.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_serving", REPO / "bench" / "serving.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def photos(bench, fmnist_dir):
    return bench.product_photos(fmnist_dir, 8, None)


def test_single_and_batch_requests_reach_the_service(bench, photos, trained_repository, tmp_path):
    _, env = bench.settings_for(trained_repository, {"max_queue_delay_ms": "1000"})
    with bench.Service(env, tmp_path / "service.log") as service:
        single = bench.post_images(service.port, photos, concurrency=2, requests=6, timeout_s=60, request_timeout_s=60)
        batched = bench.post_images(
            service.port, photos, concurrency=2, requests=20, timeout_s=60, request_timeout_s=60, per_request=5
        )
        response = bench.sample_response(service.port, photos[0])
    assert len(single.replies) == 6 and all(reply.batch_size >= 1 for reply in single.replies)
    assert len(batched.replies) == 20
    # five images posted together run in one dynamic batch (the batcher waits while any is being decoded)
    assert max(reply.batch_size for reply in batched.replies) >= 5
    schedule = bench.batch_schedule(batched.replies)
    assert sum(schedule) >= 20 and all(size >= 1 for size in schedule)
    assert set(single.replies[0].timings) == {"decode_ms", "queue_ms", "inference_ms", "total_ms"}
    assert b'"labels"' in response


def test_the_floors_answer_like_the_service(bench, photos, trained_repository, tmp_path):
    _, env = bench.settings_for(trained_repository, {})
    with bench.Service(env, tmp_path / "service.log") as service:
        response = bench.sample_response(service.port, photos[0])
    floors = bench.http_floors(response, photos, bench.CASES["small"], tmp_path, requests=50)
    assert set(floors) == {"http", "app"}
    for floor in floors.values():
        # /proc counts CPU in clock ticks (10 ms), which 50 light requests may not reach
        assert floor["requests"] == 50 and floor["requests_per_s"] > 0 and floor["server_cpu_ms_per_request"] >= 0


def test_the_bound_charges_http_per_request_and_decoding_per_image(bench):
    case = {"http_floors": {"http": {"server_cpu_ms_per_request": 0.2, "client_cpu_ms_per_request": 0.2}},
            "preprocess_cpu_ms_per_image": 0.3}
    single = {"limit_cpu_ms_per_image": 1.0, "images_per_request": 1}
    batch = {"limit_cpu_ms_per_image": 1.0, "images_per_request": 4}
    assert bench.unavoidable_ms(case, single) == pytest.approx(0.7)
    assert bench.unavoidable_ms(case, batch) == pytest.approx(0.4)
    assert bench.ratio_bound(case, single) == pytest.approx(1 / 1.7)
