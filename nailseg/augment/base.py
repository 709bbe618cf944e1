"""The contract between the data pipeline and an augmentation backend.

Shape contract (checked at the boundaries, written once here):

- In DataLoader workers a backend receives one decoded, resized sample: image ``uint8``
  ``(H, W, 3)`` and mask ``uint8`` ``(H, W)`` in ``{0, 1}`` or class indices (and the void value
  ``data.ignore_index``, which masks keep through every transform), plus the sample's seed.
- On the device it receives the batch as the workers returned it (``uint8`` for ``aug=none``
  and ``aug=kornia_gpu``, also from ``data.cache=device``; normalised ``float32`` for
  ``aug=albu_cpu``) and returns the image ``(B, 3, H, W)`` normalised, in the dtype the model
  computes in, and the mask ``float32`` ``(B, 1, H, W)`` with the same values.

Normalisation: the policy's ``mean``/``std`` where set, else the ``normalization`` a backend is
given (the encoder's pretrained values), else ImageNet's
(:func:`~nailseg.augment.policy.resolve_normalization`); the values in use are the backend's
``normalization`` attribute.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from nailseg.augment.policy import AugPolicy, resolve_normalization

SampleTransform = Callable[[np.ndarray, np.ndarray, int], tuple[Tensor, Tensor]]


def mask_tensor(mask: np.ndarray) -> Tensor:
    """An ``(H, W)`` mask array as a ``(1, H, W)`` tensor of the same dtype and values."""
    return torch.from_numpy(np.ascontiguousarray(mask))[None]


def to_uint8_tensors(image: np.ndarray, mask: np.ndarray, seed: int = 0) -> tuple[Tensor, Tensor]:
    """``(H, W, 3)``/``(H, W)`` arrays to ``uint8`` ``(3, H, W)``/``(1, H, W)`` tensors."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))), mask_tensor(mask)


class AugmentBackend:
    """Base class: normalisation on the device and no augmentation anywhere.

    Subclasses override :meth:`sample_transform` (per sample, in workers) and/or
    :meth:`batch_transform` (per batch, on the device).

    Args:
        policy: the augmentation policy (a config mapping or an :class:`AugPolicy`).
        channels_last: return device batches in ``torch.channels_last`` memory format.
        normalization: ``{"mean": [r, g, b], "std": [r, g, b]}`` (the encoder's pretrained
            normalisation; other keys are ignored), used where the policy leaves ``mean``/``std``
            null; ``None``: ImageNet's.

    Attributes:
        normalization: the ``mean`` and ``std`` in use, as plain lists (to record with a run).
        mean, std: the same as ``float32`` tensors.
    """

    def __init__(
        self,
        policy: Mapping[str, Any] | AugPolicy | None = None,
        channels_last: bool = False,
        normalization: Mapping[str, Any] | None = None,
    ) -> None:
        self.policy = AugPolicy.from_config(policy)
        self.normalization = resolve_normalization(self.policy, normalization)
        self.mean = torch.tensor(self.normalization["mean"], dtype=torch.float32)
        self.std = torch.tensor(self.normalization["std"], dtype=torch.float32)
        self.channels_last = bool(channels_last)
        # (scale, shift) per device: copied there once, not once per batch.
        self._affine: dict[torch.device, tuple[Tensor, Tensor]] = {}

    def sample_transform(self, train: bool) -> SampleTransform:
        """The per-sample transform run in DataLoader workers."""
        return to_uint8_tensors

    def check_uint8(self, image: Tensor) -> None:
        """The device transforms take the workers' (or the device cache's) ``uint8`` batches."""
        if image.dtype != torch.uint8 or image.ndim != 4 or image.shape[1] != 3:
            raise TypeError(
                f"{type(self).__name__} expects uint8 images (B, 3, H, W) from the workers, got"
                f" {image.dtype} {tuple(image.shape)}."
            )

    def _scale_shift(self, device: torch.device) -> tuple[Tensor, Tensor]:
        if device not in self._affine:
            scale, shift = 1 / self.std, -self.mean / self.std
            self._affine[device] = (
                scale.view(1, 3, 1, 1).to(device),
                shift.view(1, 3, 1, 1).to(device),
            )
        return self._affine[device]

    def _finish(self, image: Tensor, dtype: torch.dtype) -> Tensor:
        image = image.to(dtype)
        return image.contiguous(memory_format=torch.channels_last) if self.channels_last else image

    def normalize_float(self, image: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        """A float ``[0, 1]`` batch normalised, in ``dtype`` (the dtype the model computes in)."""
        scale, shift = self._scale_shift(image.device)
        return self._finish(torch.addcmul(shift, image, scale), dtype)

    def normalize_uint8(self, image: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        """A ``uint8`` batch converted and normalised in one step."""
        scale, shift = self._scale_shift(image.device)
        return self._finish(torch.addcmul(shift, image.float(), scale / 255), dtype)

    def batch_transform(
        self,
        image: Tensor,
        mask: Tensor,
        seeds: Tensor,
        train: bool,
        dtype: torch.dtype = torch.float32,
    ) -> tuple[Tensor, Tensor]:
        """The per-batch transform run on the device (``on_after_batch_transfer``).

        Returns the normalised image in ``dtype`` and the mask as ``float32`` (0/1, or class
        indices; void kept).
        """
        self.check_uint8(image)
        return self.normalize_uint8(image, dtype), mask.float()


class NoAugment(AugmentBackend):
    """``aug=none``: decode and resize in workers; convert and normalise on the device."""


def denormalize(image: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """Undo a backend's normalisation (its ``mean``, ``std``): ``(B, 3, H, W)`` back to [0, 1]."""
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
        masks: ``uint8`` ``(H, W)`` masks in ``{0, 1}`` (or class indices; void kept).
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
