"""Losses: everything comes from ``segmentation_models_pytorch.losses``; this module only combines.

All losses take logits ``(B, 1, H, W)`` and a float target ``(B, 1, H, W)`` in ``{0, 1}``.
"""

from __future__ import annotations

from collections.abc import Mapping

from segmentation_models_pytorch.losses import LovaszLoss
from torch import Tensor, nn


class SymmetricLovaszLoss(nn.Module):
    """The tutorial's loss: ``0.5 * (lovasz_hinge(logits, y) + lovasz_hinge(-logits, 1 - y))``.

    Treats background as a second foreground, so both classes' IoU is optimised.
    """

    def __init__(self, per_image: bool = False) -> None:
        super().__init__()
        self.lovasz = LovaszLoss(mode="binary", per_image=per_image, from_logits=True)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return 0.5 * (self.lovasz(logits, target) + self.lovasz(-logits, 1 - target))


class WeightedSum(nn.Module):
    """``sum(weight[name] * loss[name](logits, target))``, e.g. BCE + Dice.

    Args:
        losses: named loss modules.
        weights: weight per name; missing names weigh 1.
    """

    def __init__(
        self, losses: Mapping[str, nn.Module], weights: Mapping[str, float] | None = None
    ) -> None:
        super().__init__()
        self.losses = nn.ModuleDict(dict(losses))
        self.weights = {name: float((weights or {}).get(name, 1.0)) for name in self.losses}

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return sum(self.weights[name] * loss(logits, target) for name, loss in self.losses.items())
