"""The memorisation monitor: susceptibility ζ (Forouzesh, Sedghi & Thiran 2023, "Leveraging unlabeled data
to track memorization"), which needs no clean labels.

Before each epoch, a copy of the state (model and optimizer) takes one SGD step on a batch of training
images with uniformly random labels S̃; ζ(t) is how much that one step lowers the loss on S̃,
Φ̃(w_t) - Φ̃(w̃_{t+1}), as in the authors' code (the model and optimizer are restored afterwards), but always
at the run's initial learning rate (see ``SusceptibilityMonitor.measure``). A
network that fits random labels readily is memorising its noisy ones; the paper reads ζ with the
training accuracy (low ζ and high training accuracy: little memorisation). ``running_mean`` gives
ζ averaged over the epochs so far, the smoother form the paper plots.
"""

from __future__ import annotations

import copy
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training.loaders import Skipped, TorchImageSet


class SusceptibilityMonitor:
    """ζ(t) from a fresh batch of ``batch_size`` un-augmented training images with random labels each epoch."""

    def __init__(self, images: TorchImageSet, n_classes: int, batch_size: int, seed: int, device: torch.device) -> None:
        self.images, self.n_classes, self.device = images, n_classes, device
        self.batch_size, self.seed = min(batch_size, len(images)), seed

    def random_batch(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The epoch's S̃: images drawn without replacement, labels uniform over the classes (seeded by seed and epoch)."""
        rng = np.random.default_rng([self.seed, epoch, 0x5A])
        pixels = []
        for index in rng.permutation(len(self.images)):
            item = self.images[(epoch, int(index))]
            if not isinstance(item, Skipped):
                pixels.append(item[0])
            if len(pixels) == self.batch_size:
                break
        labels = rng.integers(0, self.n_classes, len(pixels))
        return torch.stack(pixels).to(self.device), torch.from_numpy(labels).to(self.device)

    def measure(self, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int, lr: float) -> float:
        """Φ̃(w_t) - Φ̃(w̃_{t+1}) (cross entropy on S̃, in training mode) for one step of ``optimizer`` at ``lr``; the state is restored.

        The step is taken at a fixed ``lr`` (the run's initial one): the loss drop of one step scales with the step
        size, so at the schedule's current lr every lr drop would read as a drop in memorisation.
        """
        images, labels = self.random_batch(epoch)
        model_state = copy.deepcopy(model.state_dict())
        optimizer_state = copy.deepcopy(optimizer.state_dict())
        model.train()
        try:
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            before = F.cross_entropy(model(images).float(), labels)
            before.backward()
            optimizer.step()
            with torch.no_grad():
                after = F.cross_entropy(model(images).float(), labels)
        finally:
            model.load_state_dict(model_state)
            optimizer.load_state_dict(optimizer_state)
            optimizer.zero_grad(set_to_none=True)
        return float(before.detach() - after)


def running_mean(values: Sequence[float]) -> list[float]:
    """ζ averaged over the epochs so far: the paper's smoothed susceptibility."""
    return (np.cumsum(values) / np.arange(1, len(values) + 1)).tolist() if len(values) else []
