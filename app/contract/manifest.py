"""The model repository contract: manifests and the ensemble file (standard library only).

Layout::

    models/
      ensemble.json                  # {"name", "strategy", "members": [{"name", "version" (or "latest")}]}
      <name>/<version>/model.onnx
      <name>/<version>/manifest.json # ModelManifest

``productrec export`` writes it; the service and ``productrec evaluate`` read it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.contract.calibration import Calibration
from app.contract.ranking import STRATEGIES
from app.contract.preprocess import PreprocessConfig

MANIFEST_FILE = "manifest.json"
ENSEMBLE_FILE = "ensemble.json"
MODEL_FILE = "model.onnx"
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
ENSEMBLE_VERSION = "1"  # ensemble.json has no versions: served as Triton serves a single-version model
LATEST = "latest"  # an ensemble member's version that means its highest numeric version
# 3: a nested calibration record; 2 (read): preprocessing and the loss nested; 1 (read): flat fields
FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, FORMAT_VERSION)


class RepositoryError(RuntimeError):
    """The model repository is missing, corrupt or inconsistent; the message names the file."""


@dataclass
class LossSpec:
    """The training loss: a preset name (training's loss registry) and the parameters it was built with."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelManifest:
    """Everything the service needs to run one member, and how it was made."""

    name: str
    version: str
    architecture: str
    preprocess: PreprocessConfig
    labels: list[str]
    class_counts: list[int]
    loss: LossSpec
    sha256: str
    opset: int
    input_name: str = INPUT_NAME
    output_name: str = OUTPUT_NAME
    model_file: str = MODEL_FILE
    training_command: str = ""
    data_fingerprint: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    train_config: dict[str, Any] = field(default_factory=dict)
    calibration: Calibration | None = None  # None: uncalibrated (format 1 and 2, or an untrained member)
    format_version: int = FORMAT_VERSION

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def temperature(self) -> float:
        """What the service divides the logits by before the softmax (1 when uncalibrated)."""
        return self.calibration.temperature if self.calibration else 1.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelManifest":
        version = data.get("format_version", 1)
        if version not in READABLE_VERSIONS:
            raise ValueError(f"format_version {version} is not one this productrec reads {READABLE_VERSIONS}")
        if version == 1:
            data = _upgrade_v1(data)
        data = {**data, "format_version": FORMAT_VERSION}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown manifest keys: {sorted(unknown)}")
        values = dict(data)
        values["preprocess"] = PreprocessConfig.from_dict(values["preprocess"])  # validates sizes, channels, mean/std
        values["loss"] = LossSpec(**values["loss"])
        if values.get("calibration") is not None:
            values["calibration"] = Calibration.from_dict(values["calibration"])
        manifest = cls(**values)
        if len(manifest.class_counts) not in (0, manifest.num_classes):
            raise ValueError("class_counts and labels differ in length")
        return manifest


def _upgrade_v1(data: dict[str, Any]) -> dict[str, Any]:
    """A format-1 manifest (preprocessing fields and loss parameters flat) in the current shape."""
    values = dict(data)
    values["preprocess"] = {f.name: values.pop(f.name) for f in dataclasses.fields(PreprocessConfig) if f.name in values}
    loss = dict(values["loss"])
    values["loss"] = {"name": loss.pop("name"), "params": loss}
    return values


@dataclass
class MemberRef:
    name: str
    version: str


@dataclass
class EnsembleSpec:
    """Which members the service loads, and how it combines them."""

    name: str
    members: list[MemberRef]
    strategy: str = "vote"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EnsembleSpec":
        members = [MemberRef(**member) for member in data["members"]]
        if not members:
            raise ValueError("an ensemble needs at least one member")
        strategy = data.get("strategy", "vote")
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        return cls(name=data["name"], members=members, strategy=strategy)


@dataclass
class LoadedMember:
    """A verified member: its manifest and the path of its ONNX file."""

    manifest: ModelManifest
    onnx_path: Path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def member_dir(repository: Path, name: str, version: str) -> Path:
    return Path(repository) / name / str(version)


def member_versions(repository: Path, name: str) -> list[str]:
    """The versions of ``name`` in the repository that hold a manifest, numeric ones in numeric order first."""
    directory = Path(repository) / name
    found = [path.name for path in directory.iterdir() if (path / MANIFEST_FILE).is_file()] if directory.is_dir() else []
    return sorted(found, key=lambda version: (not version.isdigit(), int(version) if version.isdigit() else 0, version))


def resolve_version(repository: Path, ref: "MemberRef") -> "MemberRef":
    """``ref`` with ``"latest"`` replaced by the highest numeric version in the repository."""
    if ref.version != LATEST:
        return ref
    numeric = [version for version in member_versions(repository, ref.name) if version.isdigit()]
    if not numeric:
        raise RepositoryError(f"{Path(repository) / ref.name}: no numeric version for \"latest\"")
    return MemberRef(ref.name, numeric[-1])


def repository_fingerprint(repository: Path) -> tuple:
    """What a reload depends on: ensemble.json and, for each member it names, its versions and files (stat only)."""
    repository = Path(repository)
    parts: list[tuple] = []

    def stat(path: Path) -> tuple:
        try:
            info = path.stat()
        except OSError:
            return (str(path), None)
        return (str(path), info.st_mtime_ns, info.st_size)

    parts.append(stat(repository / ENSEMBLE_FILE))
    try:
        spec = read_ensemble_spec(repository)
    except RepositoryError:
        return tuple(parts)
    for ref in spec.members:
        parts.append((ref.name, tuple(member_versions(repository, ref.name))))
        try:
            directory = member_dir(repository, ref.name, resolve_version(repository, ref).version)
        except RepositoryError:
            continue
        parts += [stat(directory / MANIFEST_FILE), stat(directory / MODEL_FILE)]
    return tuple(parts)


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise RepositoryError(f"{path}: file not found") from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise RepositoryError(f"{path}: cannot read JSON: {exc}") from exc


def write_json(path: Path, data: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def load_manifest(directory: Path) -> ModelManifest:
    path = Path(directory) / MANIFEST_FILE
    try:
        return ModelManifest.from_dict(read_json(path))
    except (KeyError, TypeError, ValueError) as exc:
        raise RepositoryError(f"{path}: invalid manifest: {exc}") from exc


def load_member(repository: Path, ref: MemberRef, verify: bool = True) -> LoadedMember:
    """Read a member's manifest and check its ONNX file exists and matches its sha256."""
    directory = member_dir(repository, ref.name, ref.version)
    manifest = load_manifest(directory)
    onnx_path = directory / manifest.model_file
    if not onnx_path.is_file():
        raise RepositoryError(f"{onnx_path}: model file not found")
    if verify:
        actual = sha256_file(onnx_path)
        if actual != manifest.sha256:
            raise RepositoryError(
                f"{onnx_path}: sha256 {actual} does not match the manifest's {manifest.sha256}"
            )
    return LoadedMember(manifest, onnx_path)


def read_ensemble_spec(repository: Path) -> EnsembleSpec:
    """The repository's ``ensemble.json``; ``RepositoryError`` naming the file when it is invalid."""
    path = Path(repository) / ENSEMBLE_FILE
    try:
        return EnsembleSpec.from_dict(read_json(path))
    except (KeyError, TypeError, ValueError) as exc:
        raise RepositoryError(f"{path}: invalid ensemble file: {exc}") from exc


def read_repository(repository: Path, verify: bool = True) -> tuple[EnsembleSpec, list[LoadedMember]]:
    """Read ``ensemble.json`` and every member; raise ``RepositoryError`` naming the bad file."""
    repository = Path(repository)
    spec = read_ensemble_spec(repository)
    spec.members = [resolve_version(repository, ref) for ref in spec.members]
    members = [load_member(repository, ref, verify) for ref in spec.members]
    labels = members[0].manifest.labels
    for member in members[1:]:
        if member.manifest.labels != labels:
            raise RepositoryError(
                f"{member.onnx_path.parent / MANIFEST_FILE}: labels differ from "
                f"{members[0].manifest.name}'s; ensemble members must share one label space"
            )
    return spec, members


def write_ensemble(repository: Path, spec: EnsembleSpec) -> Path:
    path = Path(repository) / ENSEMBLE_FILE
    write_json(path, spec.to_dict())
    return path
