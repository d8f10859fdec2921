"""The loss module: a logit transform, a base loss, class and sample weights and the reverse-CE term, composed.

Per sample i (logits z_i, label y_i, after the transform z_i → z'_i, p = softmax(z'_i)):

    ℓ_i = α·w(y_i)·base(p(y_i)) + β·RCE_i,   loss = Σ_i s_i·ℓ_i / B

where w is the class weight (1 without one, or before ``drw_epoch``), s_i the per-sample weight (1,
or ABSGD's B·softmax(ℓ/λ) from ``absgd_epoch`` on), and RCE_i = -Σ_k p(k)·log q(k) for the one-hot
label q, whose log 0 is the constant A (``log_zero``): RCE_i = -A·(1 - p(y_i)), exact and O(B) memory.
Each term is averaged as Σ_i ... / B (not PyTorch's Σ w·ℓ / Σ w). Probabilities are float32, even
under autocast.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from training.loss_registry import REFERENCE_LOG_ZERO, resolve_start
from training.losses.parts import absgd_weights, cdb_weights


def starts_at_once(deferral: int | float | None) -> bool:
    return deferral is None or (not (isinstance(deferral, float) and 0 < deferral < 1) and deferral <= 0)


@runtime_checkable
class LossHooks(Protocol):
    """What the trainer tells a loss: the epoch about to start, and each class's validation accuracy after it."""

    def set_epoch(self, epoch: int, epochs: int | None = None) -> None: ...

    def wants_class_accuracy(self) -> bool: ...

    def observe_class_accuracy(self, accuracy: Sequence[float]) -> None: ...


class ComposedLoss(nn.Module):
    """α·w(y)·base + β·RCE on transformed logits, with per-sample weights; see the module docstring."""

    class_weights: torch.Tensor | None

    def __init__(
        self,
        transform: nn.Module | None = None,
        base: Callable[[torch.Tensor], torch.Tensor] | None = None,
        class_weights: torch.Tensor | None = None,
        drw_epoch: int | float | None = None,
        alpha: float = 1.0,
        beta: float = 0.0,
        log_zero: float = REFERENCE_LOG_ZERO,
        cdb_tau: float | str | None = None,
        absgd_lambda: float | None = None,
        absgd_epoch: int | float | None = None,
    ) -> None:
        super().__init__()
        if log_zero >= 0:
            raise ValueError(f"log_zero (A, the log of the one-hot label's zeros) must be < 0, got {log_zero}")
        self.transform = transform
        self.base = base
        self.alpha, self.beta, self.log_zero = float(alpha), float(beta), float(log_zero)
        self.drw_epoch, self.cdb_tau = drw_epoch, cdb_tau
        self.absgd_lambda, self.absgd_epoch = absgd_lambda, absgd_epoch
        self.register_buffer("class_weights", None if class_weights is None else class_weights.float())
        # Until the trainer's first set_epoch: on when the deferral is none or epoch 0.
        self.weights_active = starts_at_once(drw_epoch)
        self.sample_weights_active = absgd_lambda is not None and starts_at_once(absgd_epoch)

    # ------------------------------------------------------------------ hooks

    def set_epoch(self, epoch: int, epochs: int | None = None) -> None:
        """Class weights from ``drw_epoch`` and ABSGD from ``absgd_epoch`` on (0-based; shares of ``epochs``)."""
        self.weights_active = self.drw_epoch is None or epoch >= resolve_start(self.drw_epoch, epochs)
        self.sample_weights_active = self.absgd_lambda is not None and epoch >= resolve_start(self.absgd_epoch, epochs)

    def wants_class_accuracy(self) -> bool:
        return self.cdb_tau is not None

    def observe_class_accuracy(self, accuracy: Sequence[float]) -> None:
        """CDB-W: new class weights from each class's validation accuracy."""
        if self.cdb_tau is None:
            return
        assert self.class_weights is not None, "CDB-W starts from uniform class weights"
        self.class_weights.copy_(cdb_weights(accuracy, self.cdb_tau))

    # ------------------------------------------------------------------ loss

    def per_sample(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """ℓ_i before the sample weights."""
        logits = logits.float()
        if self.transform is not None:
            logits = self.transform(logits, target)
        log_p_target = F.log_softmax(logits, dim=1).gather(1, target.unsqueeze(1)).squeeze(1)
        base = -log_p_target if self.base is None else self.base(log_p_target)
        if self.class_weights is not None and self.weights_active:
            base = self.class_weights[target] * base
        loss = self.alpha * base
        if self.beta:
            loss = loss + self.beta * -self.log_zero * (1.0 - log_p_target.exp())
        return loss

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        losses = self.per_sample(logits, target)
        if self.sample_weights_active:
            losses = absgd_weights(losses, self.absgd_lambda) * losses
        return losses.sum() / logits.shape[0]

    def extra_repr(self) -> str:
        parts: list[Any] = [f"alpha={self.alpha}", f"beta={self.beta}", f"log_zero={self.log_zero:.4f}"]
        parts += [f"weighted={self.class_weights is not None}", f"drw_epoch={self.drw_epoch}"]
        if self.absgd_lambda is not None:
            parts.append(f"absgd_lambda={self.absgd_lambda}, absgd_epoch={self.absgd_epoch}")
        return ", ".join(map(str, parts))


class SymmetricCrossEntropy(ComposedLoss):
    """α·(weighted) CE + β·RCE, averaged over the batch (ce, bce, sce, bsce).

    With ``class_weights=None`` the CE term is unweighted (ce, sce); with weights it is the balanced CE
    (bce, bsce). ``drw_epoch`` defers the weights until that epoch (LDAM-DRW's deferred re-weighting).
    """

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 0.0,
        class_weights: torch.Tensor | None = None,
        log_zero: float = REFERENCE_LOG_ZERO,
        drw_epoch: int | float | None = None,
    ) -> None:
        super().__init__(class_weights=class_weights, drw_epoch=drw_epoch, alpha=alpha, beta=beta, log_zero=log_zero)
