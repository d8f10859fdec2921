"""The model lifecycle, in Triton's terms: the served ensemble is loaded new-before-old and swapped atomically.

A load reads ``ensemble.json`` and the manifests, verifies every ONNX file's sha256 and signature, and
warms the sessions up with one inference while the current pipeline keeps serving; only then is the new
pipeline swapped in. Requests hold the pipeline they were admitted to, so they finish on it; a retired
pipeline is closed once its last request has been answered. A load that fails leaves the current one
serving, and the failure shows in ``index()``, the log and ``productrec_model_loads_total``.

Control modes (``model_control_mode``): ``none`` loads once at start; ``poll`` also reloads whenever
the files a load depends on change (checked every ``repository_poll_s``); ``explicit`` loads and unloads
on request (the ``/v2/repository`` endpoints). Every mode loads the repository's ensemble at start.
Decode workers are shared by the pipelines, so a reload starts no processes.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from app.contract.errors import DomainError
from app.contract.manifest import ENSEMBLE_VERSION, member_versions, read_ensemble_spec, repository_fingerprint
from app.core.config import Settings
from app.engine.decode_pool import DecodePool
from app.engine.ensemble import Ensemble, ProviderUnavailableError
from app.engine.metrics import ServingMetrics
from app.engine.pipeline import Pipeline

log = logging.getLogger("productrec.repository")

DRAIN_POLL_S = 0.05


class ModelState(str, enum.Enum):
    READY = "READY"
    UNAVAILABLE = "UNAVAILABLE"
    LOADING = "LOADING"


@dataclass(frozen=True)
class ModelStatus:
    """One model of the repository index: the ensemble or a member version."""

    name: str
    version: str
    state: ModelState
    reason: str = ""


class ModelNotFoundError(DomainError):
    """No model of that name in the repository."""

    status, code = 404, "model_not_found"


class ModelLoadError(DomainError):
    """A load failed; the ensemble served before it stays in place."""

    status, code = 400, "load_failed"


class ModelRepository:
    """The repository's ensemble, served by one pipeline at a time."""

    def __init__(self, settings: Settings, metrics: ServingMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.repository = Path(settings.repository)
        self.pipeline: Pipeline | None = None
        self.loading = False
        self.failure: str | None = None  # why the last load failed (cleared by a successful one)
        self.unavailable_reason = "the model repository is still loading"
        self.pool: DecodePool | None = None
        self._lock = asyncio.Lock()
        self._retiring: set[asyncio.Task] = set()
        self._poller: asyncio.Task | None = None
        self._fingerprint: tuple = ()

    async def start(self) -> None:
        """Start the decode workers and load the ensemble; a bad repository leaves the service up but not ready."""
        settings = self.settings
        self.pool = await asyncio.to_thread(DecodePool.for_settings, settings, self.metrics.decode_worker_restarts.inc)
        self._fingerprint = await asyncio.to_thread(repository_fingerprint, self.repository)
        try:
            await self.load()
        except ModelLoadError:
            log.error("%s; the service stays up but is not ready", self.unavailable_reason)
        if settings.model_control_mode == "poll":
            self._poller = asyncio.get_running_loop().create_task(self._poll(), name="productrec-repository-poll")

    async def close(self) -> None:
        """Stop serving (new requests get 503 "shutting down"), answer those admitted, stop the workers."""
        if self._poller is not None:
            self._poller.cancel()
        async with self._lock:
            self._stop_serving("shutting down", "shutting down")
        await asyncio.gather(*self._retiring, return_exceptions=True)
        if self.pool is not None:
            await asyncio.to_thread(self.pool.close)

    async def load(self) -> Pipeline:
        """Load the repository's ensemble and swap it in; ``ModelLoadError`` (old one kept) if it cannot serve."""
        async with self._lock:
            self.loading = True
            started = time.perf_counter()
            try:
                ensemble = await asyncio.to_thread(self._read_and_warm_up)
                pipeline = Pipeline(ensemble, self.settings, self.metrics, self.pool)
                await pipeline.start()
            except ProviderUnavailableError:
                raise
            except Exception as exc:  # RepositoryError names the file; onnxruntime's own errors likewise
                self.failure = f"model repository {self.repository} not loaded: {exc}"
                if self.pipeline is None:
                    self.unavailable_reason = self.failure
                self.metrics.model_loads.labels(result="failed").inc()
                log.error("load failed, %s: %s", "nothing served" if self.pipeline is None else "the current ensemble stays", exc)
                raise ModelLoadError(self.failure) from exc
            finally:
                self.loading = False
            self._retire(self.pipeline, "replaced")
            self.pipeline, self.failure = pipeline, None
            self.metrics.model_loads.labels(result="loaded").inc()
            self.metrics.ready.set(1)
            log.info(
                "serving ensemble %r: members %s, strategy %s, providers %s (loaded in %.2f s)",
                ensemble.spec.name,
                [f"{m.manifest.name}/{m.manifest.version}" for m in ensemble.members],
                pipeline.strategy,
                sorted({provider for m in ensemble.members for provider in m.providers}),
                time.perf_counter() - started,
            )
            return pipeline

    async def unload(self) -> None:
        """Stop serving (not ready) once the requests already admitted are answered."""
        async with self._lock:
            self._stop_serving("unloaded", "the ensemble was unloaded (POST /v2/repository/models/{name}/load serves it again)")

    def _stop_serving(self, why: str, reason: str) -> None:
        """No pipeline serves (503 with ``reason``); the current one closes once its admitted requests are answered."""
        self._retire(self.pipeline, why)
        self.pipeline = None
        self.unavailable_reason = reason
        self.metrics.ready.set(0)

    def knows(self, name: str) -> bool:
        """Whether ``name`` is the ensemble (served or on disk) or one of its members."""
        served = self.pipeline.ensemble if self.pipeline is not None else None
        names = {served.spec.name, *(m.manifest.name for m in served.members)} if served is not None else set()
        try:
            spec = read_ensemble_spec(self.repository)
            names |= {spec.name, *(ref.name for ref in spec.members)}
        except Exception:  # an unreadable ensemble.json: only what is served is known
            pass
        return name in names

    def index(self) -> list[ModelStatus]:
        """The ensemble and every version of its members, with their state and, when not ready, why."""
        pipeline = self.pipeline
        serving = {(m.manifest.name, str(m.manifest.version)) for m in pipeline.ensemble.members} if pipeline else set()
        if self.loading:
            ensemble_state, reason = ModelState.LOADING, ""
        elif pipeline is not None:
            ensemble_state, reason = ModelState.READY, self.failure or ""
        else:
            ensemble_state, reason = ModelState.UNAVAILABLE, self.unavailable_reason
        try:
            spec = read_ensemble_spec(self.repository)
            name, member_names = spec.name, [ref.name for ref in spec.members]
        except Exception as exc:
            name, member_names = (pipeline.ensemble.spec.name if pipeline else "ensemble"), []
            reason = reason or str(exc)
        if pipeline is not None:
            member_names = list(dict.fromkeys([*member_names, *(m.manifest.name for m in pipeline.ensemble.members)]))
        statuses = [ModelStatus(name, ENSEMBLE_VERSION, ensemble_state, reason)]
        for member in member_names:
            for version in member_versions(self.repository, member) or [""]:
                ready = (member, version) in serving
                why = "" if ready else "not in the served ensemble"
                statuses.append(ModelStatus(member, version, ModelState.READY if ready else ModelState.UNAVAILABLE, why))
        return statuses

    def _read_and_warm_up(self) -> Ensemble:
        ensemble = Ensemble.from_settings(self.settings)
        ensemble.warm_up()
        return ensemble

    def _retire(self, pipeline: Pipeline | None, why: str) -> None:
        """Close ``pipeline`` once the requests it admitted are answered (within the drain timeout)."""
        if pipeline is None:
            return
        task = asyncio.get_running_loop().create_task(self._drain_and_close(pipeline, why))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _drain_and_close(self, pipeline: Pipeline, why: str) -> None:
        deadline = time.monotonic() + self.settings.drain_timeout_s
        while pipeline.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(DRAIN_POLL_S)
        if pipeline.in_flight:
            log.warning("closing the %s ensemble with %d images still in flight", why, pipeline.in_flight)
        await pipeline.close()

    async def _poll(self) -> None:
        """Reload whenever a file the ensemble depends on changes (a failed load waits for the next change)."""
        while True:
            await asyncio.sleep(self.settings.repository_poll_s)
            fingerprint = await asyncio.to_thread(repository_fingerprint, self.repository)
            if fingerprint == self._fingerprint:
                continue
            self._fingerprint = fingerprint
            log.info("the repository changed: loading it")
            try:
                await self.load()
            except ModelLoadError:
                pass
