"""The contract between the data pipeline and an augmentation backend.

Shape contract (checked at the boundaries, written once here):

- In DataLoader workers a backend receives one decoded, resized sample: image ``uint8``
  ``(H, W, 3)`` and mask ``uint8`` ``(H, W)`` in ``{0, 1}``, plus the sample's seed.
- On the device it receives the batch and returns image ``float32`` ``(B, 3, H, W)``, normalised,
  and mask ``float32`` ``(B, 1, H, W)`` in ``{0, 1}``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from nailseg.augment.policy import AugPolicy

SampleTransform = Callable[[np.ndarray, np.ndarray, int], tuple[Tensor, Tensor]]


def to_uint8_tensors(image: np.ndarray, mask: np.ndarray, seed: int = 0) -> tuple[Tensor, Tensor]:
    """``(H, W, 3)``/``(H, W)`` arrays to ``uint8`` ``(3, H, W)``/``(1, H, W)`` tensors."""
    return (
        torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
        torch.from_numpy(np.ascontiguousarray(mask))[None],
    )


def normalize(image: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """Normalise a float ``(B, 3, H, W)`` image in [0, 1] channel by channel."""
    return (image - mean.to(image.device).view(1, -1, 1, 1)) / std.to(image.device).view(1, -1, 1, 1)


class AugmentBackend:
    """Base class: normalisation on the device and no augmentation anywhere.

    Subclasses override :meth:`sample_transform` (per sample, in workers) and/or
    :meth:`augment_batch` (per batch, on the device).

    Args:
        policy: the augmentation policy (a config mapping or an :class:`AugPolicy`).
    """

    name = "none"

    def __init__(self, policy: Mapping[str, Any] | AugPolicy | None = None) -> None:
        self.policy = AugPolicy.from_config(policy)
        self.mean = torch.tensor(self.policy.mean, dtype=torch.float32)
        self.std = torch.tensor(self.policy.std, dtype=torch.float32)

    def sample_transform(self, train: bool) -> SampleTransform:
        """The per-sample transform run in DataLoader workers."""
        return to_uint8_tensors

    def batch_transform(self, image: Tensor, mask: Tensor, seeds: Tensor, train: bool) -> tuple[Tensor, Tensor]:
        """The per-batch transform run on the device (``on_after_batch_transfer``)."""
        if image.dtype != torch.uint8 or image.ndim != 4 or image.shape[1] != 3:
            raise TypeError(
                f"{type(self).__name__} expects uint8 images (B, 3, H, W) from the workers, got"
                f" {image.dtype} {tuple(image.shape)}."
            )
        image, mask = image.float().div_(255), mask.float()
        if train:
            image, mask = self.augment_batch(image, mask, seeds)
        return normalize(image, self.mean, self.std), mask

    def augment_batch(self, image: Tensor, mask: Tensor, seeds: Tensor) -> tuple[Tensor, Tensor]:
        """Augment a float batch in [0, 1] on its device. No-op here."""
        return image, mask


class NoAugment(AugmentBackend):
    """``aug=none``: decode and resize in workers; convert and normalise on the device."""
