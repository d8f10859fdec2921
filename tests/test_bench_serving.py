"""The serving benchmark's plumbing against a real service: its load generator, batch bodies and HTTP floor.

The benchmark's figures are not tested (they are measurements); what is tested is that the requests it
sends are ones the service accepts, that it reads the answers right, and that its profile attribution
names the app's real files and functions.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from app.engine.pipeline import Pipeline
from bench.serving.cases import CASES
from bench.serving.floor import http_floors
from bench.serving.load import LoadRound, Reply, batch_schedule, post_images, sample_response
from bench.serving.profile import PROFILE_CATEGORIES, category
from bench.serving.repository import product_photos
from bench.serving.results import ratio_bound, unavoidable_ms
from bench.serving.server import Service, settings_for

REPO = Path(__file__).resolve().parents[1]
MAX_LINES = 500


@pytest.fixture(scope="module")
def photos(fmnist_dir):
    return product_photos(fmnist_dir, 8, None)


def test_single_and_batch_requests_reach_the_service(photos, trained_repository, tmp_path):
    _, env = settings_for(trained_repository, {"max_queue_delay_ms": "1000"})
    with Service(env, tmp_path / "service.log") as service:
        single = post_images(service.port, photos, concurrency=2, requests=6, timeout_s=60, request_timeout_s=60)
        batched = post_images(
            service.port, photos, concurrency=2, requests=20, timeout_s=60, request_timeout_s=60, per_request=5
        )
        response = sample_response(service.port, photos[0])
    assert len(single.replies) == 6 and all(reply.batch_size >= 1 for reply in single.replies)
    assert len(batched.replies) == 20
    # five images posted together run in one dynamic batch (the batcher waits while any is being decoded)
    assert max(reply.batch_size for reply in batched.replies) >= 5
    schedule = batch_schedule(batched.replies)
    assert sum(schedule) >= 20 and all(size >= 1 for size in schedule)
    assert set(single.replies[0].timings) == {"decode_ms", "queue_ms", "inference_ms", "total_ms"}
    assert len(single.completions) == 6 and len(batched.completions) == 4 and batched.per_request == 5
    assert b'"labels"' in response


def test_the_steady_rate_leaves_out_the_drain():
    """8 requests in flight answered every 0.1 s, then the last 8 answers spread over 8 s of drain."""
    steady = [0.1 * (index + 1) for index in range(40)]
    drain = [steady[-1] + 1.0 * (index + 1) for index in range(8)]
    replies = [Reply(0.8, 1, {}, done) for done in drain + steady]  # in any order
    round_ = LoadRound(replies, drain[-1], 0.0, concurrency=8)
    window = round_.steady_window()
    assert (window.start, window.end, len(window.answers)) == (pytest.approx(0.8), pytest.approx(4.0), 33)
    assert round_.steady_images_per_s == pytest.approx(10.0)
    assert round_.images_per_s == pytest.approx(4.0)
    assert [reply.done_at for reply in round_.steady_replies()] == steady[7:]
    batched = LoadRound([Reply(0.8, 5, {}, done) for done in steady for _ in range(5)], 4.0, 0.0, concurrency=8, per_request=5)
    assert batched.steady_images_per_s == pytest.approx(50.0)


def test_the_steady_rate_does_not_hinge_on_bursts_at_the_window_ends():
    """A batching server answers 6 requests at once every 0.6 s (10 images/s); the window's ends cut bursts."""
    completions = [0.6 * burst + 0.001 * index for burst in range(1, 18) for index in range(6)][:96]
    round_ = LoadRound([Reply(0.6, 6, {}, done) for done in completions], completions[-1], 0.0, concurrency=8)
    window = round_.steady_window()
    span_rate = (len(window.answers) - 1) / (window.end - window.start)  # a count over the span: 10.25 here
    assert span_rate > 10.2
    assert round_.steady_images_per_s == pytest.approx(10.0, rel=0.01)


def test_a_round_too_short_has_no_steady_rate():
    round_ = LoadRound([Reply(0.8, 1, {}, 0.1 * i) for i in range(23)], 2.0, 0.0, concurrency=8)
    assert round_.steady_window() is None and round_.steady_replies() == round_.replies
    with pytest.raises(ValueError, match="needs 24"):
        round_.steady_images_per_s


def test_the_floors_answer_like_the_service(photos, trained_repository, tmp_path):
    _, env = settings_for(trained_repository, {})
    with Service(env, tmp_path / "service.log") as service:
        response = sample_response(service.port, photos[0])
    floors = http_floors(response, photos, CASES["small"], tmp_path, requests=50)
    assert set(floors) == {"http", "app"}
    for floor in floors.values():
        # /proc counts CPU in clock ticks (10 ms), which 50 light requests may not reach
        assert floor["requests"] == 50 and floor["requests_per_s"] > 0 and floor["server_cpu_ms_per_request"] >= 0


def test_the_bound_charges_http_per_request_and_decoding_per_image():
    case = {"http_floors": {"http": {"server_cpu_ms_per_request": 0.2, "client_cpu_ms_per_request": 0.2}},
            "preprocess_cpu_ms_per_image": 0.3}
    single = {"limit_cpu_ms_per_image": 1.0, "images_per_request": 1}
    batch = {"limit_cpu_ms_per_image": 1.0, "images_per_request": 4}
    assert unavoidable_ms(case, single) == pytest.approx(0.7)
    assert unavoidable_ms(case, batch) == pytest.approx(0.4)
    assert ratio_bound(case, single) == pytest.approx(1 / 1.7)


def test_the_profile_attribution_names_the_apps_files_and_functions():
    for _, patterns in PROFILE_CATEGORIES:
        for pattern in patterns:
            if pattern.startswith("app/"):
                assert (REPO / pattern).exists(), f"{pattern}: renamed or moved? update bench/serving/profile.py"
    assert callable(Pipeline.result)
    stack = ["_run (asyncio/events.py:80)", "predict (app/api/routes/predict.py:125)",
             "Pipeline._predict_one (app/engine/pipeline.py:198)", "Pipeline.result (app/engine/pipeline.py:226)"]
    assert category(stack) == "response: schema objects and JSON"
    assert category(stack[:3]) == "service: admission, gather"
    assert category(["Counter.inc (prometheus_client/metrics.py:300)"]) == "metrics"
    assert category(["Thread.run (threading.py:1010)"]) == "thread hand-off (executors, locks)"
    assert category(["something (elsewhere.py:1)"]) == "other"


def test_no_file_under_bench_is_over_500_lines():
    lengths = {path.relative_to(REPO): len(path.read_text().splitlines()) for path in (REPO / "bench").rglob("*.py")}
    assert lengths, "no Python files found under bench/"
    assert {path: lines for path, lines in lengths.items() if lines > MAX_LINES} == {}
