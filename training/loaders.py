"""The data side of training: (epoch, index) samplers sharded by rank, tensors from an ``ImageSet``, batches that skip unreadable images."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from app.contract.preprocess import PreprocessConfig, random_scaled_crop, tta_crops
from training.data import ImageSet
from training.image_sets import BadImageError

log = logging.getLogger("productrec.train")


@dataclass(frozen=True)
class Skipped:
    """A sample whose image could not be read (reported once, left out of the batch)."""

    reason: str


@dataclass
class Batch:
    images: torch.Tensor | None  # None when every sample of the batch was skipped
    labels: torch.Tensor | None
    skipped: list[str]


class EpochSampler(Sampler[tuple[int, int]]):
    """Yields (epoch, index): a reshuffle per epoch, seeded by (seed, epoch), so a resumed run sees the same order.

    With ``world_size`` processes, rank r takes every world_size-th index of the order from r on. Shuffled
    (training) shards are padded with the order's first indices to equal lengths, so every rank takes the same
    number of steps (as ``DistributedSampler``); in-order (evaluation) shards are not, so each index counts once.
    """

    def __init__(self, size: int, seed: int, shuffle: bool, rank: int = 0, world_size: int = 1) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in a world of {world_size}")
        self.size, self.seed, self.shuffle, self.epoch = size, seed, shuffle, 0
        self.rank, self.world_size = rank, world_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        if self.shuffle:
            return math.ceil(self.size / self.world_size)
        return len(range(self.rank, self.size, self.world_size))

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.size, generator=generator).tolist()
            padded = len(self) * self.world_size
            order = (order * math.ceil(padded / max(self.size, 1)))[:padded]
        else:
            order = list(range(self.size))
        return ((self.epoch, index) for index in order[self.rank :: self.world_size])


class TorchImageSet(Dataset):
    """An ``ImageSet`` as tensors: random scaled crops for training, the first TTA size's centre crop otherwise.

    Keys are (epoch, index); the augmentation is seeded by (seed, epoch, index),
    so it is the same whatever the number of workers, and after a resume.
    """

    def __init__(self, images: ImageSet, preprocess: PreprocessConfig, augment: bool, flip: bool = False, seed: int = 0) -> None:
        self.images, self.preprocess, self.augment, self.flip, self.seed = images, preprocess, augment, flip, seed

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int] | Skipped:
        epoch, index = key
        try:
            image = self.images.load(index, max(self.preprocess.sizes(tta=True)))
        except BadImageError as exc:
            return Skipped(str(exc))
        if self.augment:
            rng = np.random.default_rng((self.seed, epoch, index))
            pixels = random_scaled_crop(image, self.preprocess, rng, self.flip)
        else:
            pixels = tta_crops(image, self.preprocess, self.preprocess.sizes(tta=False))[0]
        return torch.from_numpy(pixels), int(self.images.labels[index])


def collate(samples: Sequence[tuple[torch.Tensor, int] | Skipped]) -> Batch:
    """Stack the readable samples; keep the reasons of the skipped ones."""
    good = [sample for sample in samples if not isinstance(sample, Skipped)]
    skipped = [sample.reason for sample in samples if isinstance(sample, Skipped)]
    if not good:
        return Batch(None, None, skipped)
    images, labels = default_collate(good)
    return Batch(images, labels, skipped)


def make_loader(
    dataset: TorchImageSet, batch_size: int, workers: int, seed: int, shuffle: bool, pin_memory: bool, rank: int = 0, world_size: int = 1
) -> DataLoader:
    """Batches of this rank's shard (see ``EpochSampler``)."""
    sampler = EpochSampler(len(dataset), seed, shuffle, rank, world_size)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        persistent_workers=workers > 0,
        collate_fn=collate,
        pin_memory=pin_memory,
        # A last batch of one sample breaks BatchNorm in training mode.
        drop_last=shuffle and len(sampler) > batch_size,
    )


class SkipLog:
    """Logs each unreadable image once and remembers it for data.json."""

    def __init__(self) -> None:
        self.reasons: list[str] = []

    def add(self, reasons: Sequence[str]) -> None:
        for reason in reasons:
            if reason not in self.reasons:
                log.warning("skipping unreadable image %s", reason)
                self.reasons.append(reason)
