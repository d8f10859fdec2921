"""Building timm classifiers: name checks, local pretrained weights, normalisation statistics."""

from __future__ import annotations

import difflib
import logging
from pathlib import Path
from typing import Any, Sequence

import timm
import torch
from timm.models import adapt_input_conv
from torch import nn

from training.config import ConfigError

log = logging.getLogger("productrec.models")


def check_model_name(name: str) -> None:
    """Raise ``ConfigError`` (with close matches) unless timm knows ``name``."""
    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models()"
    raise ConfigError(f"unknown timm model {name!r}{hint}")


def check_model_config(name: str, pretrained: str | Path | None) -> None:
    """The cheap checks, to fail before any data is read: a known name, an existing weights file."""
    check_model_name(name)
    if pretrained is not None and not Path(pretrained).is_file():
        raise ConfigError(f"--pretrained {pretrained}: file not found")


def create_model(
    name: str, num_classes: int, in_chans: int, pretrained: str | Path | None = None, model_kwargs: dict[str, Any] | None = None
) -> nn.Module:
    """A timm model for ``num_classes`` classes and ``in_chans`` channels, never downloading weights.

    ``pretrained`` names a local checkpoint (a state dict, or a dict holding one under
    ``model`` or ``state_dict``), read with weights-only deserialisation. A classifier of
    another shape is dropped (re-initialised), and an RGB first convolution is adapted
    to ``in_chans`` as timm does for its own weights. ``model_kwargs`` go to
    ``timm.create_model`` (e.g. ``channels=(32, 64, 128, 256)`` for a narrow ResNet).
    """
    check_model_name(name)
    try:
        model = timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **(model_kwargs or {}))
    except TypeError as exc:
        raise ConfigError(f"--model-kwargs {model_kwargs}: not accepted by {name}: {exc}") from exc
    if pretrained is not None:
        load_pretrained(model, Path(pretrained), in_chans)
    return model


def load_pretrained(model: nn.Module, path: Path, in_chans: int) -> None:
    """Load a local checkpoint into ``model`` (see ``create_model``)."""
    if not path.is_file():
        raise ConfigError(f"--pretrained {path}: file not found")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises pickle, zip and runtime errors for bad files
        raise ConfigError(f"--pretrained {path}: cannot read a weights-only checkpoint: {exc}") from exc
    state = _state_dict_of(checkpoint, path)
    own = model.state_dict()
    config = getattr(model, "pretrained_cfg", {}) or {}
    first_conv, classifier = config.get("first_conv"), config.get("classifier")
    first_conv_key = f"{first_conv}.weight" if first_conv else None
    if first_conv_key in state and first_conv_key in own and state[first_conv_key].shape[1] != in_chans:
        state[first_conv_key] = adapt_input_conv(in_chans, state[first_conv_key])
    classifier_keys = _prefixed(state, classifier) | _prefixed(own, classifier)
    mismatched = sorted(key for key in state if key in own and state[key].shape != own[key].shape)
    if set(mismatched) - classifier_keys:
        raise ConfigError(f"--pretrained {path}: shapes differ from {type(model).__name__}'s for {mismatched[:5]}")
    for key in mismatched:
        del state[key]
    result = model.load_state_dict(state, strict=False)
    missing = set(result.missing_keys) - classifier_keys
    if missing or result.unexpected_keys:
        raise ConfigError(
            f"--pretrained {path}: not weights of this architecture "
            f"(missing {sorted(missing)[:5]}, unexpected {sorted(result.unexpected_keys)[:5]})"
        )
    log.info("initialised from %s%s", path, " (classifier re-initialised)" if mismatched else "")


def _state_dict_of(checkpoint: Any, path: Path) -> dict[str, torch.Tensor]:
    for key in ("model", "state_dict"):
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
            break
    if not isinstance(checkpoint, dict) or not all(isinstance(value, torch.Tensor) for value in checkpoint.values()):
        raise ConfigError(f"--pretrained {path}: not a state dict of tensors")
    return {key.removeprefix("module."): value for key, value in checkpoint.items()}


def _prefixed(state: dict[str, Any], prefixes: str | Sequence[str] | None) -> set[str]:
    prefixes = (prefixes,) if isinstance(prefixes, str) else tuple(prefixes or ())
    return {key for key in state if any(key.startswith(prefix + ".") for prefix in prefixes)}


def model_normalization(model: nn.Module, in_chans: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The model's pretrained mean/std (ImageNet's for most timm models), averaged to one channel if needed."""
    config = getattr(model, "pretrained_cfg", {}) or {}
    mean = tuple(float(value) for value in config.get("mean", timm.data.IMAGENET_DEFAULT_MEAN))
    std = tuple(float(value) for value in config.get("std", timm.data.IMAGENET_DEFAULT_STD))
    return _channels(mean, in_chans), _channels(std, in_chans)


def _channels(values: Sequence[float], in_chans: int) -> tuple[float, ...]:
    if len(values) == in_chans:
        return tuple(values)
    return (sum(values) / len(values),) * in_chans
