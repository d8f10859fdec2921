"""Settings limits: bytes, pixels, items, decode time and queue length, each a clear 4xx (or 503), never a 5xx."""

from __future__ import annotations

import threading
import time

import pytest
from serving_helpers import encode, metric, noise_image, png_claiming_size, serving, slow_png, wait_until_in_flight

MAX_UPLOAD = 256 * 1024
DECODE_TIMEOUT_S = 0.4


@pytest.fixture(scope="module")
def client(trained_repository):
    with serving(
        trained_repository,
        max_upload_bytes=MAX_UPLOAD,
        max_request_bytes=4 * MAX_UPLOAD,
        max_image_pixels=60_000_000,
        max_batch_items=3,
        decode_timeout_s=DECODE_TIMEOUT_S,
        queue_limit=3,
        retry_after_s=2,
    ) as client:
        yield client


@pytest.fixture(scope="module")
def good(fmnist_test_images) -> bytes:
    return fmnist_test_images.images[0]


@pytest.fixture(scope="module")
def bomb() -> bytes:
    return slow_png()


def post_raw(client, data: bytes, content_type: str = "image/png"):
    return client.post("/v1/predict", content=data, headers={"Content-Type": content_type})


def assert_error(response, status: int, error: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"] == error
    assert response.json()["detail"]


def test_upload_over_max_bytes_is_413(client) -> None:
    too_big = b"\x89PNG" + bytes(MAX_UPLOAD)
    assert_error(post_raw(client, too_big), 413, "payload_too_large")
    assert_error(client.post("/v1/predict", files={"file": ("big.png", too_big)}), 413, "payload_too_large")


def test_body_streamed_without_content_length_is_cut_at_the_limit(client) -> None:
    def chunks():
        for _ in range(8):
            yield bytes(MAX_UPLOAD // 4)

    assert_error(
        client.post("/v1/predict", content=chunks(), headers={"Content-Type": "image/png"}), 413, "payload_too_large"
    )


def test_batch_item_over_max_bytes_fails_alone(client, good) -> None:
    files = [("files", ("good.png", good)), ("files", ("big.png", bytes(MAX_UPLOAD + 1)))]
    results = client.post("/v1/predict/batch", files=files).json()["results"]
    assert [item["status"] for item in results] == [200, 413]
    assert results[1]["error"]["error"] == "payload_too_large"


def test_batch_over_max_items_or_max_request_bytes_is_413(client, good) -> None:
    four = [("files", (f"{i}.png", good)) for i in range(4)]
    assert_error(client.post("/v1/predict/batch", files=four), 413, "too_many_items")
    three_big = [("files", (f"{i}.png", bytes(MAX_UPLOAD * 2))) for i in range(3)]
    assert_error(client.post("/v1/predict/batch", files=three_big), 413, "payload_too_large")


def test_two_files_to_the_single_endpoint_is_413(client, good) -> None:
    files = [("file", ("a.png", good)), ("file", ("b.png", good))]
    assert_error(client.post("/v1/predict", files=files), 413, "too_many_items")


def test_pixel_bomb_is_refused_from_its_header(client) -> None:
    bomb = png_claiming_size(50_000, 50_000)
    assert len(bomb) < 200
    started = time.perf_counter()
    response = post_raw(client, bomb)
    assert time.perf_counter() - started < 2
    assert_error(response, 413, "image_too_large")
    assert "2500000000" in response.json()["detail"]


@pytest.mark.parametrize(
    ("data", "content_type", "error"),
    [
        (b"%PDF-1.4 not an image", "image/png", "unsupported_image"),
        (b"GIF89a\x01\x00", "image/gif", "unsupported_image"),
        (b"hello", "text/plain", "unsupported_media_type"),
        (b"{}", "application/json", "unsupported_media_type"),
    ],
)
def test_non_images_are_415(client, data, content_type, error) -> None:
    assert_error(post_raw(client, data, content_type), 415, error)


def test_truncated_image_is_415_and_empty_body_is_400(client) -> None:
    jpeg = encode(noise_image(0, (64, 64), "RGB"), "JPEG")
    assert_error(post_raw(client, jpeg[: len(jpeg) // 3], "image/jpeg"), 415, "unsupported_image")
    assert_error(post_raw(client, b""), 400, "empty_file")


def test_slow_decoding_file_is_refused_quickly_while_others_are_served(client, good, bomb) -> None:
    assert len(bomb) < MAX_UPLOAD
    before = client.get("/metrics").text
    outcome: dict = {}

    def send_bomb() -> None:
        started = time.perf_counter()
        outcome["response"] = post_raw(client, bomb)
        outcome["seconds"] = time.perf_counter() - started

    thread = threading.Thread(target=send_bomb)
    thread.start()
    time.sleep(0.1)  # the bomb is in a decode worker now
    others_started = time.perf_counter()
    others = [post_raw(client, good) for _ in range(2)]
    others_seconds = time.perf_counter() - others_started
    thread.join(30)
    assert [response.status_code for response in others] == [200, 200]
    assert_error(outcome["response"], 422, "decode_timeout")
    assert outcome["seconds"] < DECODE_TIMEOUT_S + 2.0
    assert others_seconds < outcome["seconds"]  # answered while the bomb was being decoded
    after = client.get("/metrics").text
    assert (
        metric(after, "productrec_decode_worker_restarts_total")
        - metric(before, "productrec_decode_worker_restarts_total")
        == 1
    )
    # the replacement worker serves as usual
    assert [post_raw(client, good).status_code for _ in range(4)] == [200] * 4


def test_full_queue_answers_503_with_retry_after(client, good, bomb) -> None:
    thread = threading.Thread(target=post_raw, args=(client, bomb))
    thread.start()
    try:
        wait_until_in_flight(client, timeout_s=5)
        files = [("files", (f"{i}.png", good)) for i in range(3)]  # 1 in flight + 3 > queue_limit 3
        response = client.post("/v1/predict/batch", files=files)
        assert_error(response, 503, "overloaded")
        assert response.headers["Retry-After"] == "2"
    finally:
        thread.join(30)
    assert client.post("/v1/predict/batch", files=files).status_code == 200
