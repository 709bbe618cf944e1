"""The contract between the data pipeline and an augmentation backend.

Shape contract (checked at the boundaries, written once here):

- In DataLoader workers a backend receives one decoded, resized sample: image ``uint8``
  ``(H, W, 3)`` and mask ``uint8`` ``(H, W)`` in ``{0, 1}``, plus the sample's seed.
- On the device it receives the batch and returns image ``float32`` ``(B, 3, H, W)``, normalised,
  and mask ``float32`` ``(B, 1, H, W)`` in ``{0, 1}``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
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
    return (image - mean.to(image.device).view(1, -1, 1, 1)) / std.to(image.device).view(
        1, -1, 1, 1
    )


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

    def batch_transform(
        self, image: Tensor, mask: Tensor, seeds: Tensor, train: bool
    ) -> tuple[Tensor, Tensor]:
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


def denormalize(image: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """Undo :func:`normalize`: a normalised ``(B, 3, H, W)`` image back to [0, 1]."""
    return image * std.to(image.device).view(1, -1, 1, 1) + mean.to(image.device).view(1, -1, 1, 1)


def augment_arrays(
    backend: AugmentBackend,
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    seeds: Sequence[int],
    train: bool = True,
    device: torch.device | str = "cpu",
) -> tuple[Tensor, Tensor]:
    """Run a backend's whole path on decoded arrays, as the DataModule does for one batch.

    The worker-side transform runs per sample, the batch is stacked and moved to ``device``, and
    the device-side transform runs on it. Used by ``nailseg preview`` and by the tests.

    Args:
        backend: the augmentation backend.
        images: ``uint8`` ``(H, W, 3)`` images, all of one size.
        masks: ``uint8`` ``(H, W)`` masks in ``{0, 1}``.
        seeds: one seed per sample (the DataModule's sampler derives them from the run's seed).
        train: augment (``True``) or only convert and normalise (``False``).
        device: where the batch-side transform runs.

    Returns:
        Normalised ``float32`` images ``(B, 3, H, W)`` and ``float32`` masks ``(B, 1, H, W)``.

    Examples:
        >>> import numpy as np
        >>> image, mask = np.zeros((32, 32, 3), np.uint8), np.zeros((32, 32), np.uint8)
        >>> x, y = augment_arrays(NoAugment(), [image], [mask], [0])
        >>> tuple(x.shape), tuple(y.shape)
        ((1, 3, 32, 32), (1, 1, 32, 32))
    """
    transform = backend.sample_transform(train)
    pairs = [
        transform(image, mask, int(seed))
        for image, mask, seed in zip(images, masks, seeds, strict=True)
    ]
    image = torch.stack([p[0] for p in pairs]).to(device)
    mask = torch.stack([p[1] for p in pairs]).to(device)
    seeds_t = torch.tensor([int(s) for s in seeds], dtype=torch.int64, device=device)
    return backend.batch_transform(image, mask, seeds_t, train)
