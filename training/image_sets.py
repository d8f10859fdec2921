"""Labelled image sources with no torch dependency: in-memory arrays and image files.

Image files are decoded with ``app.contract.preprocess.decode_image``, the decoder the service uses.
"""

from __future__ import annotations

import abc
import logging
import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from app.contract.preprocess import ImageDecodeError, ImageTooLargeError, decode_image

log = logging.getLogger("productrec.data")

# Training images larger than this are reported and skipped (decoding them would cost GBs).
DEFAULT_MAX_PIXELS = 40_000_000


class BadImageError(ValueError):
    """An image file that cannot be read or decoded; the message names the path."""

    def __init__(self, path: str | Path, reason: str = "cannot read the image") -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


class ImageSet(abc.ABC):
    """A labelled image source: a map-style data set with no torch dependency.

    ``labels`` are the labels to train on (noisy where noise was injected);
    ``clean_labels`` the true labels where known (the benchmark), else None.
    """

    labels: np.ndarray
    clean_labels: np.ndarray | None
    in_chans: int

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        return self.load(index), int(self.labels[index])

    @abc.abstractmethod
    def load(self, index: int, shorter_side: int | None = None) -> Image.Image:
        """The decoded image ("L" for 1 channel, "RGB" for 3); ``BadImageError`` if it cannot be read.

        ``shorter_side``: the largest resize size its crops need; a JPEG file is then decoded at the
        reduced scale the service decodes it at (``app.contract.preprocess.decode_image``).
        """

    @abc.abstractmethod
    def describe(self, index: int) -> str:
        """Where the image comes from: its file path, or e.g. "fashion-mnist train #123"."""

    @abc.abstractmethod
    def identity(self) -> bytes:
        """What selects the images (source indices or relative paths), for the data fingerprint."""


class ArrayImageSet(ImageSet):
    """Images held in memory as uint8 [N, H, W] (the Fashion-MNIST benchmark)."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        clean_labels: np.ndarray | None,
        source_indices: np.ndarray,
        source: str,
    ) -> None:
        self.images = images
        self.labels = labels
        self.clean_labels = clean_labels
        self.source_indices = source_indices
        self.source = source
        self.in_chans = 1

    def load(self, index: int, shorter_side: int | None = None) -> Image.Image:
        return Image.fromarray(self.images[index])  # arrays, not files: nothing to decode at reduced scale

    def describe(self, index: int) -> str:
        return f"{self.source} #{int(self.source_indices[index])}"

    def identity(self) -> bytes:
        return self.source.encode() + np.ascontiguousarray(self.source_indices, dtype="<i8").tobytes()


class FileImageSet(ImageSet):
    """Image files, decoded on demand by ``app.contract.preprocess.decode_image``."""

    def __init__(
        self,
        paths: Sequence[Path],
        labels: np.ndarray,
        root: Path,
        in_chans: int = 3,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.paths = list(paths)
        self.labels = labels
        self.clean_labels = None
        self.root = root
        self.in_chans = in_chans
        self.max_pixels = max_pixels

    def load(self, index: int, shorter_side: int | None = None) -> Image.Image:
        path = self.paths[index]
        try:
            return decode_image(path.read_bytes(), self.in_chans, self.max_pixels, shorter_side)
        except (OSError, ImageDecodeError, ImageTooLargeError) as exc:
            raise BadImageError(path, str(exc)) from exc

    def describe(self, index: int) -> str:
        return str(self.paths[index])

    def identity(self) -> bytes:
        # Relative to the data set's root, so the same data elsewhere has the same fingerprint.
        return "\n".join(relative_paths(self.paths, self.root)).encode()


def relative_paths(paths: Sequence[Path], root: Path) -> list[str]:
    """``os.path.relpath(path, root)`` of each path, worked out once per folder (relpath is slow for 100,000s of files)."""
    folders: dict[str, str] = {}
    relative = []
    for path in paths:
        folder, name = os.path.split(path)
        if folder not in folders:
            folders[folder] = os.path.relpath(folder, root)
        relative.append(name if folders[folder] == os.curdir else os.path.join(folders[folder], name))
    return relative


def readable_batches(
    images: ImageSet, indices: Sequence[int], batch_size: int, description: str,
    shorter_side: int | None = None, skipped: list[str] | None = None,
) -> Iterator[tuple[list[Image.Image], list[int]]]:
    """``images[indices]`` decoded (``ImageSet.load``) ``batch_size`` at a time behind a progress bar, each batch with
    its indices. Unreadable images are logged, added to ``skipped`` and left out; a batch with none left is not yielded."""
    for start in tqdm(range(0, len(indices), batch_size), desc=description, unit="batch", leave=False, dynamic_ncols=True):
        decoded, kept = [], []
        for index in indices[start : start + batch_size]:
            try:
                decoded.append(images.load(int(index), shorter_side))
                kept.append(int(index))
            except BadImageError as exc:
                log.warning("%s: skipping %s", description, exc)
                if skipped is not None:
                    skipped.append(str(exc))
        if decoded:
            yield decoded, kept
