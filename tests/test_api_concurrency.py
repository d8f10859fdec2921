"""Many simultaneous requests form batches and answer as sequential calls do; parity with `productrec evaluate`."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from serving_helpers import assert_same_ranking, evaluate_repository, metric, serving

N_IMAGES = 20


@pytest.fixture(scope="module")
def client(trained_repository):
    # A queue delay long enough that requests arriving together on 2 shared cores still meet in one batch.
    with serving(trained_repository, max_queue_delay_ms=50.0, max_batch_size=16, default_top_k=3) as client:
        yield client


@pytest.fixture(scope="module")
def images(fmnist_test_images) -> list[bytes]:
    return fmnist_test_images.images[::2][:N_IMAGES]


def predict(client, data: bytes) -> dict:
    response = client.post("/v1/predict", content=data, headers={"Content-Type": "image/png"})
    assert response.status_code == 200, response.text
    return response.json()


def test_simultaneous_requests_form_batches_and_match_sequential_answers(client, images) -> None:
    sequential = [predict(client, data) for data in images]
    before = client.get("/metrics").text
    with ThreadPoolExecutor(max_workers=N_IMAGES) as pool:
        concurrent = list(pool.map(lambda data: predict(client, data), images))
    after = client.get("/metrics").text

    batches = metric(after, "productrec_batch_size_count") - metric(before, "productrec_batch_size_count")
    images_batched = metric(after, "productrec_batch_size_sum") - metric(before, "productrec_batch_size_sum")
    single_batches = metric(after, "productrec_batch_size_bucket", le="1") - metric(
        before, "productrec_batch_size_bucket", le="1"
    )
    assert images_batched == N_IMAGES
    assert batches < N_IMAGES and single_batches < batches, "no batch of more than one image was formed"
    assert max(prediction["batch_size"] for prediction in concurrent) > 1

    for alone, together in zip(sequential, concurrent):
        reference = alone["labels"]
        assert_same_ranking(
            together["labels"], *zip(*[(label["index"], label["score"], label["votes"]) for label in reference])
        )
        np.testing.assert_allclose(
            [m["score"] for m in together["members"]], [m["score"] for m in alone["members"]], atol=1e-5
        )


def test_batch_endpoint_equals_productrec_evaluate_on_fashion_mnist(
    client, trained_repository, fmnist_test_images
) -> None:
    """Parity: the service's ensemble output is what `productrec evaluate`'s engine computes for the same images."""
    images = fmnist_test_images.images  # 4 official test images of each class
    for tta in (True, False):
        files = [("files", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)]
        results = client.post("/v1/predict/batch", files=files, params={"top_k": 3, "tta": tta}).json()["results"]
        assert len(results) == len(images) and all(item["status"] == 200 for item in results)
        member_probs, rankings = evaluate_repository(trained_repository, images, tta=tta, top_k=3)
        for item, ranking, probs in zip(results, rankings, member_probs.transpose(1, 0, 2)):
            prediction = item["prediction"]
            assert_same_ranking(prediction["labels"], ranking.indices, ranking.scores, ranking.votes)
            np.testing.assert_allclose([m["score"] for m in prediction["members"]], probs.max(axis=1), atol=1e-5)
