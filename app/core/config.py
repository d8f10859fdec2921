"""Service settings, read from ``PRODUCTREC_*`` environment variables (pydantic-settings)."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MiB = 1024 * 1024


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, as taskset and container cpusets set it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def default_decode_workers(cores: int) -> int:
    """Decode workers for ``cores``: a quarter of them, at least 2 and at most 8.

    Decoding a photo costs a fifth to a tenth of a model's CPU per image (docs/serving-benchmark.md,
    photo case), so a quarter of the cores keeps up; idle workers cost nothing. At least 2, so
    that the large-image lane (half of them) always leaves one to small images; at most 8, past
    which one event loop feeding them is the bound, not the decoders.
    """
    return max(2, min(8, cores // 4))


def _default_decode_workers() -> int:
    return default_decode_workers(available_cores())


class Settings(BaseSettings):
    """Every limit and knob of the service; each one is an environment variable ``PRODUCTREC_<NAME>``."""

    # An empty variable (PRODUCTREC_API_KEY= in a compose file) means unset, not "the empty string".
    model_config = SettingsConfigDict(env_prefix="PRODUCTREC_", env_file=None, extra="ignore", env_ignore_empty=True)

    host: str = Field("127.0.0.1", description="Interface `productrec serve` listens on (0.0.0.0: all; the image sets it).")
    port: int = Field(8000, ge=1, le=65535, description="TCP port of `productrec serve`.")
    workers: int = Field(1, ge=1, description="uvicorn worker processes, each loading its own copy of the ensemble.")
    grpc_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="TCP port of the KServe v2 gRPC API (inference.GRPCInferenceService) on the same host; "
        "unset: no gRPC. With several workers each one serves it (SO_REUSEPORT).",
    )


    repository: Path = Field(Path("models"), description="Model repository holding ensemble.json and the members.")
    provider: Literal["auto", "cuda", "cpu"] = Field(
        "auto", description="onnxruntime providers: cuda refuses to start without CUDA; auto prefers CUDA when present."
    )
    intra_op_threads: int = Field(
        0, ge=0, description="onnxruntime intra-op threads per session (0: onnxruntime's default)."
    )
    inter_op_threads: int = Field(
        0, ge=0, description="onnxruntime inter-op threads per session (0: onnxruntime's default)."
    )
    intra_op_spinning: bool = Field(
        False,
        description="Let idle onnxruntime intra-op threads spin-wait (onnxruntime's default) instead of sleeping: "
        "a little lower latency on cores of their own, but on shared cores the spinning takes the CPU that the "
        "decode workers, the event loop and the other sessions need.",
    )

    default_top_k: int = Field(
        5, ge=1, description="Labels returned when the request gives no top_k (capped at the class count)."
    )
    tta: bool = Field(True, description="Multi-crop TTA when the request does not say.")
    strategy: Literal["vote", "mean"] | None = Field(
        None, description="How members are combined; unset: the strategy in ensemble.json."
    )

    max_upload_bytes: int = Field(10 * MiB, ge=1, description="Largest image file accepted (413 above).")
    max_request_bytes: int = Field(
        64 * MiB, ge=1, description="Largest request body of the batch endpoint (413 above)."
    )
    max_image_pixels: int = Field(
        40_000_000, ge=1, description="Largest width x height decoded, checked from the header (413 above)."
    )
    max_batch_items: int = Field(64, ge=1, description="Most images in one /v1/predict/batch request (413 above).")
    max_discard_bytes: int = Field(
        64 * MiB,
        ge=0,
        description="A request answered before its body was read (413, 401, 415, 503): most bytes of the rest read "
        "and discarded first, so that the client, still sending, gets the answer; a longer rest is not read and the "
        "connection is closed after the answer.",
    )

    max_batch_size: int = Field(
        32, ge=1, description="Dynamic batching: most images in one onnxruntime run per member."
    )
    inference_threads: int = Field(
        1,
        ge=1,
        description="Dynamic batching: batches run at once, each on its own thread (the sessions are shared). "
        "Above 1, give each run fewer intra-op threads (about cores / inference_threads).",
    )
    max_queue_delay_ms: float = Field(
        2.0,
        ge=0,
        description="Dynamic batching: how long the first queued image waits for others to join its batch "
        "(only while others are being decoded).",
    )
    queue_limit: int = Field(
        256, ge=1, description="Most images admitted and not yet answered; beyond it 503 with Retry-After."
    )
    retry_after_s: int = Field(1, ge=0, description="Retry-After seconds sent with 503 when the queue is full.")

    decode_workers: int = Field(
        default_factory=_default_decode_workers,
        ge=1,
        description="Decode worker processes (killed and replaced on timeout); default: a quarter of the "
        "available cores, at least 2 and at most 8.",
    )
    decode_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Hard cap on the wall-clock time one image may take to decode and crop before it is refused "
        "(422); each image's own budget, in the decode worker's CPU seconds, is decode_timeout_base_s + "
        "decode_timeout_per_mpixel_s x its megapixels, never more than this (time spent waiting for a core "
        "on a busy machine is not charged to it).",
    )

    # Decoder bombs (issue 16): header checks before decoding, a time budget per image, a lane for large images.
    decode_timeout_base_s: float = Field(
        0.5, gt=0, description="Decode CPU-time budget of any image, plus decode_timeout_per_mpixel_s per megapixel."
    )
    decode_timeout_per_mpixel_s: float = Field(
        0.15,
        ge=0,
        description="Decode time budget per megapixel of the header's width x height (an image whose size the "
        "headers do not give is budgeted at max_image_pixels).",
    )
    decode_large_image_pixels: int = Field(
        16_000_000,
        ge=0,
        description="Images with more pixels than this, or whose headers are irregular, decode in the large lane, "
        "which holds at most decode_large_workers decode workers, so small images never wait behind them.",
    )
    decode_large_workers: int = Field(
        0, ge=0, description="Decode workers the large lane may hold at once (0: half of decode_workers, at least 1)."
    )
    max_jpeg_scans: int = Field(
        100,
        ge=1,
        description="Most scans (SOS markers) in a JPEG, counted from its headers before decoding; libjpeg walks "
        "every block once per scan. Common encoders write 1 (baseline) to about 20 (progressive). Above: 422.",
    )
    max_image_frames: int = Field(
        1000, ge=1, description="Most frames or pages (GIF, APNG, WebP, TIFF), counted before decoding. Above: 422."
    )
    max_image_chunks: int = Field(
        10_000,
        ge=1,
        description="Most structural pieces one file may have, counted before decoding: PNG chunks, JPEG segments, "
        "GIF blocks, WebP chunks, TIFF tag entries (a decoder reads each one, in Python for Pillow). Above: 422.",
    )
    max_tiff_strips: int = Field(
        65_536, ge=1, description="Most strips or tiles in one TIFF page, counted before decoding. Above: 422."
    )
    max_requests_per_client: int = Field(
        0,
        ge=0,
        description="Most /v1/predict requests one client may have in flight at once, per API key when the service "
        "has one, else per client address; beyond it 429 with Retry-After. 0: no limit.",
    )

    api_key: SecretStr | None = Field(
        None, description="When set, /v1/* and /v2/* requests need the header X-API-Key with this value."
    )
    management_api_key: SecretStr | None = Field(
        None,
        description="When set, the model repository endpoints (/v2/repository/*) also need the header "
        "X-Management-Key with this value (as TorchServe separates management and inference tokens).",
    )

    model_control_mode: Literal["none", "poll", "explicit"] = Field(
        "none",
        description="Model lifecycle (Triton's names): none loads the ensemble once; poll reloads it whenever "
        "the repository's files change; explicit loads and unloads on POST /v2/repository/models/{name}/load|unload.",
    )
    repository_poll_s: float = Field(5.0, gt=0, description="poll mode: seconds between checks of the repository.")
    drain_timeout_s: float = Field(
        30.0, gt=0, description="After a reload, how long the replaced ensemble may take to answer the requests it admitted."
    )

    @model_validator(mode="after")
    def _batch_fits_queue(self) -> "Settings":
        if self.max_batch_items > self.queue_limit:
            raise ValueError(
                f"max_batch_items ({self.max_batch_items}) must not exceed queue_limit ({self.queue_limit}): "
                "a full batch request could never be admitted"
            )
        if self.model_control_mode == "explicit" and self.workers > 1:
            raise ValueError(
                "model_control_mode explicit reaches only the worker that takes the call; "
                "with several workers use poll, which every worker runs"
            )
        return self


@lru_cache
def get_settings() -> Settings:
    """The process's settings, read once from the environment."""
    return Settings()
