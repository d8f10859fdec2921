"""The ensemble engine without HTTP: onnxruntime sessions, multi-crop TTA, member combination.

Used by the service (behind its dynamic batcher), by ``productrec score`` and by
``productrec evaluate`` on an exported repository, so all three give the same
answers for the same images.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, Sequence

import numpy as np
import onnxruntime as ort
import PIL
from PIL import Image

from app.contract.ranking import Ranking, Strategy, crop_average_probabilities, rank
from app.contract.manifest import EnsembleSpec, LoadedMember, ModelManifest, RepositoryError, read_repository
from app.contract.preprocess import CropPlan, PreprocessConfig, crops_for_plan

if TYPE_CHECKING:
    from app.core.config import Settings

log = logging.getLogger("productrec.inference")

ProviderPreference = Literal["auto", "cuda", "cpu"]
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


class ProviderUnavailableError(RuntimeError):
    """CUDA was required but onnxruntime could not use it."""


def requested_providers(preference: ProviderPreference) -> list[str]:
    """The provider list to ask onnxruntime for, given the setting and what this build offers."""
    available = ort.get_available_providers()
    if preference == "cpu":
        return [CPU]
    if CUDA in available:
        return [CUDA, CPU]
    if preference == "cuda":
        raise ProviderUnavailableError(
            f"PRODUCTREC_PROVIDER=cuda but this onnxruntime offers only {available}"
        )
    return [CPU]


def create_session(
    path: Path,
    preference: ProviderPreference = "auto",
    intra_op_threads: int = 0,
    inter_op_threads: int = 0,
    spinning: bool = True,
) -> ort.InferenceSession:
    """An onnxruntime session; with ``cuda`` it fails unless CUDA really is in use.

    onnxruntime-gpu without a usable GPU logs an error and falls back to the
    CPU, so the providers actually in use are read back, never assumed.
    ``spinning=False`` makes idle intra-op threads sleep instead of spin-waiting.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = inter_op_threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        session = ort.InferenceSession(str(path), options, providers=requested_providers(preference))
    except ProviderUnavailableError:
        raise
    except Exception as exc:  # onnxruntime raises its own exception types for bad files
        raise RepositoryError(f"{path}: onnxruntime cannot load the model: {exc}") from exc
    in_use = session.get_providers()
    if preference == "cuda" and CUDA not in in_use:
        raise ProviderUnavailableError(f"{path}: CUDA was required but onnxruntime is using {in_use}")
    log.info("loaded %s with providers %s", path, in_use)
    return session


def require_cuda(repository: Path) -> None:
    """Raise ``ProviderUnavailableError`` unless onnxruntime really runs the first member on CUDA."""
    _, members = read_repository(Path(repository), verify=False)
    session = create_session(members[0].onnx_path, "cuda")
    del session


class Member(Protocol):
    """What the ensemble needs of a member: its manifest, its logits, and where it runs."""

    manifest: ModelManifest

    @property
    def providers(self) -> list[str]: ...

    def logits(self, crops: np.ndarray) -> np.ndarray: ...


@dataclass
class OnnxMember:
    """One member on an onnxruntime session."""

    manifest: ModelManifest
    session: ort.InferenceSession

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def logits(self, crops: np.ndarray) -> np.ndarray:
        """Run the model on ``[N, C, H, W]`` float32 crops."""
        (output,) = self.session.run(
            [self.manifest.output_name], {self.manifest.input_name: np.ascontiguousarray(crops, np.float32)}
        )
        return output


@dataclass(frozen=True)
class CropGroup:
    """Members that share preprocessing, and so share crops."""

    config: PreprocessConfig
    sizes: tuple[int, ...]
    member_indices: tuple[int, ...]


def warn_on_other_pillow(manifest: ModelManifest) -> bool:
    """Log a warning (and return True) when ``manifest`` was evaluated with another Pillow build than this process's:
    the resampling, and so the crops, may differ slightly (pillow-simd against Pillow: docs/deployment.md)."""
    evaluated_with = manifest.metrics.get("pillow")
    if evaluated_with is None or evaluated_with == PIL.__version__:
        return False
    log.warning(
        "%s was evaluated with Pillow %s and is served with Pillow %s: crops may differ slightly from those it was evaluated on",
        manifest.name, evaluated_with, PIL.__version__,
    )
    return True


class Ensemble:
    """Loaded members plus the crop groups and the combination strategy."""

    def __init__(self, spec: EnsembleSpec, members: Sequence[Member]) -> None:
        self.spec = spec
        self.members = list(members)
        self.labels = self.members[0].manifest.labels
        self.strategy: Strategy = spec.strategy  # type: ignore[assignment]
        self._crop_groups = {tta: _group_by_preprocessing(self.members, tta) for tta in (False, True)}

    @classmethod
    def load(
        cls,
        repository: Path,
        preference: ProviderPreference = "auto",
        intra_op_threads: int = 0,
        inter_op_threads: int = 0,
        spinning: bool = True,
    ) -> "Ensemble":
        """Load and verify every member of ``repository/ensemble.json`` (session options as ``create_session``)."""
        spec, loaded = read_repository(Path(repository))
        for member in loaded:
            warn_on_other_pillow(member.manifest)
        return cls(
            spec,
            [_session_for(member, preference, intra_op_threads, inter_op_threads, spinning) for member in loaded],
        )

    @classmethod
    def from_settings(cls, settings: "Settings") -> "Ensemble":
        """The ensemble of ``settings.repository`` with the service's session options (threads, spinning)."""
        return cls.load(
            settings.repository,
            settings.provider,
            settings.intra_op_threads,
            settings.inter_op_threads,
            spinning=settings.intra_op_spinning,
        )

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def max_average_k(self) -> int:
        """The largest k every member has an average-k threshold for (0: some member has none)."""
        return min(len(m.manifest.calibration.average_k_thresholds) if m.manifest.calibration else 0 for m in self.members)

    def label_set_threshold(self, k: int) -> float:
        """The threshold on the members' mean probability for average set size ``k``: the mean of the members' own.

        Exact for one member; for several it is the members' consensus, measured by ``bench.photos``.
        """
        if not 1 <= k <= self.max_average_k:
            raise ValueError(f"average_k must be between 1 and {self.max_average_k}, got {k}")
        return float(np.mean([m.manifest.calibration.threshold(k) for m in self.members]))  # type: ignore[union-attr]

    def warm_up(self) -> None:
        """One run of every member on blank crops of every TTA size (sessions allocate on their first run)."""
        blank = [np.zeros((len(group.sizes), group.config.in_chans, group.config.input_size, group.config.input_size), np.float32) for group in self.crop_groups(True)]
        self.member_probabilities([blank], tta=True)

    def crop_groups(self, tta: bool) -> list[CropGroup]:
        """Members that share crops (computed once: the members never change)."""
        return self._crop_groups[tta]

    def crop_plan(self, tta: bool) -> CropPlan:
        """What ``preprocess`` computes, as picklable (config, sizes) pairs (for decode workers)."""
        return [(group.config, group.sizes) for group in self.crop_groups(tta)]

    def preprocess(self, image: Image.Image, tta: bool) -> list[np.ndarray]:
        """Crops of one decoded image, one ``[n_sizes, C, H, W]`` array per crop group."""
        return crops_for_plan(image, self.crop_plan(tta))

    def member_probabilities(
        self,
        crops_per_image: Sequence[list[np.ndarray]],
        tta: bool,
        timings: dict[str, float] | None = None,
    ) -> np.ndarray:
        """``[M, B, K]`` probabilities: one model run per member over all images x crops, at its calibrated temperature.

        When ``timings`` is given, it receives each member's run time in seconds, by member name.
        """
        groups = self.crop_groups(tta)
        probs = np.empty((len(self.members), len(crops_per_image), self.num_classes), dtype=np.float32)
        for group_index, group in enumerate(groups):
            batch = np.concatenate([crops[group_index] for crops in crops_per_image])
            for member_index in group.member_indices:
                member = self.members[member_index]
                started = time.perf_counter()
                logits = member.logits(batch)
                probs[member_index] = crop_average_probabilities(logits, len(group.sizes), member.manifest.temperature)
                if timings is not None:
                    timings[member.manifest.name] = time.perf_counter() - started
        return probs

    def predict(
        self, images: Sequence[Image.Image], top_k: int = 5, tta: bool = True, strategy: Strategy | None = None
    ) -> tuple[np.ndarray, list[Ranking]]:
        """Member probabilities and rankings for decoded images."""
        crops = [self.preprocess(image, tta) for image in images]
        probs = self.member_probabilities(crops, tta)
        return probs, rank(probs, top_k, strategy or self.strategy)


def crop_plan_for(members: Sequence[LoadedMember | Member], tta: bool) -> CropPlan:
    """The crop plan of members not loaded yet (their manifests), as ``Ensemble.crop_plan`` gives it once loaded."""
    return [(group.config, group.sizes) for group in _group_by_preprocessing(members, tta)]


def _group_by_preprocessing(members: Sequence[LoadedMember | Member], tta: bool) -> list[CropGroup]:
    groups: dict[tuple, list[int]] = {}
    configs: dict[tuple, PreprocessConfig] = {}
    for index, member in enumerate(members):
        config = member.manifest.preprocess
        key = (config.key, config.sizes(tta))
        groups.setdefault(key, []).append(index)
        configs[key] = config
    return [CropGroup(configs[key], key[1], tuple(indices)) for key, indices in groups.items()]


def _session_for(
    member: LoadedMember, preference: ProviderPreference, intra: int, inter: int, spinning: bool
) -> Member:
    session = create_session(member.onnx_path, preference, intra, inter, spinning)
    _check_signature(member, session)
    return OnnxMember(member.manifest, session)


def _check_signature(member: LoadedMember, session: ort.InferenceSession) -> None:
    """The graph's input/output names and class count must be what the manifest says."""
    manifest = member.manifest
    inputs = {node.name: node.shape for node in session.get_inputs()}
    outputs = {node.name: node.shape for node in session.get_outputs()}
    if manifest.input_name not in inputs or manifest.output_name not in outputs:
        raise RepositoryError(
            f"{member.onnx_path}: graph has inputs {sorted(inputs)} and outputs {sorted(outputs)}; "
            f"the manifest expects {manifest.input_name!r} -> {manifest.output_name!r}"
        )
    classes = outputs[manifest.output_name][-1]
    if isinstance(classes, int) and classes != manifest.num_classes:
        raise RepositoryError(
            f"{member.onnx_path}: the model outputs {classes} classes but the manifest lists {manifest.num_classes} labels"
        )
