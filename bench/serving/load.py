"""The load client: threads posting product photos over keep-alive connections, one ``Reply`` per image."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable, NamedTuple, Sequence

import numpy as np

MULTIPART_BOUNDARY = "productrec-bench-boundary"


@dataclass
class Reply:
    latency_s: float
    batch_size: int
    timings: dict[str, float]
    done_at: float = 0.0  # time.perf_counter() when its answer was read


class SteadyWindow(NamedTuple):
    """The part of a closed-loop round with every request in flight (``LoadRound.steady_window``)."""

    start: float  # time.perf_counter() of the concurrency-th answer
    end: float  # of the answer after which the last request went out
    answers: list[float]  # the times of the answers from start to end, both included


@dataclass
class LoadRound:
    replies: list[Reply]
    wall_s: float
    client_cpu_s: float
    concurrency: int = 1
    per_request: int = 1

    @property
    def completions(self) -> list[float]:
        """When each request's answer was read (``time.perf_counter()``): its images' replies come together."""
        return [reply.done_at for reply in self.replies[::self.per_request]]

    @property
    def images_per_s(self) -> float:
        """Over the whole round, the drain at its end included."""
        return len(self.replies) / self.wall_s

    def steady_window(self) -> SteadyWindow | None:
        """The part of the round with ``concurrency`` requests in flight; None when the round is too short.

        A closed loop sends its k-th request (k >= concurrency) when it reads the (k - concurrency)-th
        answer. The window starts at the ``concurrency``-th answer (the pipeline has filled) and ends at
        the answer after which the last request went out; past it the round drains, and cores fall idle
        that a continuous load would keep busy. Triton's perf_analyzer measures the same way, in windows
        of a load that never drains. A round needs at least 3 x ``concurrency`` answers to have one.
        """
        done = sorted(self.completions)
        first, last = self.concurrency - 1, len(done) - self.concurrency - 1
        if last - first < self.concurrency:
            return None
        return SteadyWindow(done[first], done[last], done[first:last + 1])

    @property
    def steady_images_per_s(self) -> float:
        """Images/s over ``steady_window``: the least-squares slope of images answered against time.

        A batching server answers a batch's requests together; a slope, unlike a count over the window's
        span, does not hinge on whether the window's ends cut a burst (tested).
        """
        window = self.steady_window()
        if window is None:
            raise ValueError(f"a round of {len(self.completions)} requests at concurrency {self.concurrency} has no steady part "
                             f"(it needs {3 * self.concurrency})")
        answered = np.arange(len(window.answers)) * self.per_request
        return float(np.polyfit(np.asarray(window.answers) - window.start, answered, 1)[0])

    def steady_replies(self) -> list[Reply]:
        """The replies answered within ``steady_window`` (all of them when it has none)."""
        window = self.steady_window()
        if window is None:
            return self.replies
        return [reply for reply in self.replies if window.start <= reply.done_at <= window.end]


def batch_body(photos: Sequence[bytes]) -> bytes:
    """A multipart body with one ``files`` part per photo, as ``curl -F files=@a.jpg -F files=@b.jpg`` sends."""
    parts = []
    for index, data in enumerate(photos):
        head = (
            f"--{MULTIPART_BOUNDARY}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{index}.jpg\"\r\n"
            "Content-Type: image/jpeg\r\n\r\n"
        )
        parts += [head.encode(), data, b"\r\n"]
    return b"".join([*parts, f"--{MULTIPART_BOUNDARY}--\r\n".encode()])


def _endpoint(per_request: int) -> tuple[str, dict[str, str]]:
    """Path and headers: the raw body to /v1/predict for one image, multipart to /v1/predict/batch for more."""
    if per_request == 1:
        return "/v1/predict", {"Content-Type": "image/jpeg"}
    return "/v1/predict/batch", {"Content-Type": f"multipart/form-data; boundary={MULTIPART_BOUNDARY}"}


def post_images(
    port: int,
    photos: Sequence[bytes],
    concurrency: int,
    requests: int,
    timeout_s: float,
    request_timeout_s: float,
    on_reply: Callable[[], None] = lambda: None,
    per_request: int = 1,
    request: Callable[[bytes], tuple[str, dict[str, str], bytes]] | None = None,
) -> LoadRound:
    """POSTs of ``requests`` images from ``photos`` (cycled) from ``concurrency`` threads.

    ``per_request`` 1: each image is one raw-body POST to /v1/predict; more: that many images per
    multipart POST to /v1/predict/batch (one ``Reply`` per image, with its request's latency).
    Each thread keeps one connection; no new request starts after ``timeout_s``. Any answer other
    than 200 (or a batch item other than 200) stops the round and raises. ``request``: another
    server's (path, headers, body) for one image, whose answer has the same ``batch_size`` and ``timings``.
    """
    lock = threading.Lock()
    issued = 0
    replies: list[Reply] = []
    failures: list[str] = []
    client_cpu = [0.0] * concurrency
    deadline = time.perf_counter() + timeout_s
    path, headers = _endpoint(per_request)

    def client(slot: int) -> None:
        nonlocal issued
        started_cpu = time.thread_time()
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=request_timeout_s)
        try:
            while not failures and time.perf_counter() < deadline:
                with lock:
                    if issued >= requests:
                        break
                    chosen = [photos[(issued + offset) % len(photos)] for offset in range(per_request)]
                    issued += per_request
                if request is not None:
                    target, fields, body = request(chosen[0])
                else:
                    target, fields, body = path, headers, chosen[0] if per_request == 1 else batch_body(chosen)
                started = time.perf_counter()
                connection.request("POST", target, body=body, headers=fields)
                response = connection.getresponse()
                payload = response.read()
                done = time.perf_counter()
                latency = done - started
                if response.status != 200:
                    failures.append(f"HTTP {response.status}: {payload[:500].decode(errors='replace')}")
                    break
                answer = json.loads(payload)
                predictions = [answer] if per_request == 1 else [item["prediction"] for item in answer["results"]]
                if any(prediction is None for prediction in predictions):
                    failures.append(f"a batch item failed: {payload[:500].decode(errors='replace')}")
                    break
                with lock:
                    replies.extend(Reply(latency, p["batch_size"], p["timings"], done) for p in predictions)
                for _ in predictions:
                    on_reply()
        except Exception as exc:  # noqa: BLE001 - reported below, in the main thread
            failures.append(f"{type(exc).__name__}: {exc}")
        finally:
            connection.close()
            client_cpu[slot] = time.thread_time() - started_cpu

    threads = [threading.Thread(target=client, args=(slot,), name=f"load-{slot}") for slot in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    if failures:
        raise RuntimeError(f"{len(failures)} request(s) failed; first: {failures[0]}")
    if not replies:
        raise RuntimeError("no request completed within the round's time limit")
    return LoadRound(replies, wall, sum(client_cpu), concurrency, per_request)


def batch_schedule(replies: Sequence[Reply]) -> list[int]:
    """The batch sizes the service formed: a batch of b images answers b single-image requests."""
    per_size = Counter(reply.batch_size for reply in replies)
    return [size for size, count in sorted(per_size.items()) for _ in range(-(-count // size))]


def sample_response(port: int, photo: bytes) -> bytes:
    """One real /v1/predict answer of the service, for the HTTP floor to send back."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    try:
        connection.request("POST", "/v1/predict", body=photo, headers={"Content-Type": "image/jpeg"})
        return connection.getresponse().read()
    finally:
        connection.close()
