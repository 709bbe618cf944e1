"""``aug=kornia_gpu``: the policy as a Kornia pipeline, per batch on the model's device.

Workers only decode and resize and return ``uint8``; the batch is converted, augmented and
normalised after it reaches the device (``on_after_batch_transfer``). Geometric transforms go
through ``kornia.augmentation.AugmentationSequential`` with the mask as a data key, which resamples
masks with nearest interpolation. Noise, HSV, brightness/contrast, CLAHE-on-L and one-of are small
adapters here so that their parameters follow the same distributions as Albumentations' (see
:mod:`nailseg.augment.policy`); everything else is Kornia's own.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any

import kornia.augmentation as K
import torch
from kornia.color import hsv_to_rgb, lab_to_rgb, rgb_to_hsv, rgb_to_lab
from torch import Tensor, nn

from nailseg.augment.base import AugmentBackend
from nailseg.augment.policy import AugPolicy


def _uniform(low: float, high: float, count: int, device: torch.device) -> Tensor:
    return torch.rand(count, device=device) * (high - low) + low


def _coin(p: float, count: int, device: torch.device) -> Tensor:
    return torch.rand(count, device=device) < p


class GaussianNoise(nn.Module):
    """Additive per-channel Gaussian noise, std drawn per sample from ``std_range``."""

    def __init__(self, std_range: tuple[float, float], p: float) -> None:
        super().__init__()
        self.std_range, self.p = std_range, p

    def forward(self, image: Tensor) -> Tensor:
        count, device = image.shape[0], image.device
        std = _uniform(*self.std_range, count, device) * _coin(self.p, count, device)
        return (image + torch.randn_like(image) * std.view(-1, 1, 1, 1)).clamp_(0, 1)


class HSVShift(nn.Module):
    """Additive shifts of hue (fraction of the circle), saturation and value, as Albumentations."""

    def __init__(self, hue: float, saturation: float, value: float) -> None:
        super().__init__()
        self.hue, self.saturation, self.value = hue, saturation, value

    def forward(self, image: Tensor) -> Tensor:
        count, device = image.shape[0], image.device
        h, s, v = rgb_to_hsv(image).unbind(1)
        shift = lambda limit: _uniform(-limit, limit, count, device).view(-1, 1, 1)  # noqa: E731
        h = torch.remainder(h + shift(self.hue) * 2 * math.pi, 2 * math.pi)
        # Albumentations leaves grey (saturation 0) pixels grey; so do we.
        s = torch.where(s > 0, (s + shift(self.saturation)).clamp(0, 1), s)
        v = (v + shift(self.value)).clamp(0, 1)
        return hsv_to_rgb(torch.stack([h, s, v], 1)).clamp_(0, 1)


class BrightnessContrast(nn.Module):
    """``x * (1 + c) + b``, ``c`` and ``b`` uniform, as Albumentations' ``brightness_by_max``."""

    def __init__(self, brightness: float, contrast: float) -> None:
        super().__init__()
        self.brightness, self.contrast = brightness, contrast

    def forward(self, image: Tensor) -> Tensor:
        count, device = image.shape[0], image.device
        alpha = 1 + _uniform(-self.contrast, self.contrast, count, device)
        beta = _uniform(-self.brightness, self.brightness, count, device)
        return (image * alpha.view(-1, 1, 1, 1) + beta.view(-1, 1, 1, 1)).clamp_(0, 1)


class ClaheL(nn.Module):
    """Kornia's CLAHE on the L channel of LAB, as Albumentations/OpenCV do for RGB images.

    ``K.RandomClahe`` alone would equalise R, G and B separately and shift colours.
    """

    def __init__(self, clip_limit: tuple[float, float], grid_size: int) -> None:
        super().__init__()
        self.clahe = K.RandomClahe(clip_limit=clip_limit, grid_size=(grid_size, grid_size), p=1.0)

    def forward(self, image: Tensor) -> Tensor:
        lab = rgb_to_lab(image)
        lightness = self.clahe(lab[:, :1] / 100).clamp(0, 1) * 100  # L is in [0, 100]
        return lab_to_rgb(torch.cat([lightness, lab[:, 1:]], 1)).clamp_(0, 1)


class OneOf(nn.Module):
    """With probability ``p`` per sample, apply one op chosen uniformly; others pass through."""

    def __init__(self, ops: list[nn.Module], p: float) -> None:
        super().__init__()
        self.ops, self.p = nn.ModuleList(ops), p

    def forward(self, image: Tensor) -> Tensor:
        count, device = image.shape[0], image.device
        applied = _coin(self.p, count, device)
        choice = torch.randint(len(self.ops), (count,), device=device)
        out = image.clone()
        for k, op in enumerate(self.ops):
            selected = (applied & (choice == k)).nonzero().flatten()
            if selected.numel():
                out[selected] = op(image[selected])
        return out


def build_kornia(policy: AugPolicy) -> tuple[K.AugmentationSequential | None, nn.Sequential]:
    """Compile ``policy`` to a geometric stage (image and mask) and an intensity stage (image).

    Args:
        policy: the backend-neutral policy.

    Returns:
        ``(geometric, intensity)``: ``geometric(image, mask)`` applies the same flips/affine to
        both (``None`` when the policy has none); ``intensity(image)`` touches only the image.
    """
    geometric: list[nn.Module] = []
    if policy.hflip_p > 0:
        geometric.append(K.RandomHorizontalFlip(p=policy.hflip_p))
    if policy.vflip_p > 0:
        geometric.append(K.RandomVerticalFlip(p=policy.vflip_p))
    if policy.affine is not None:
        affine = policy.affine
        geometric.append(
            K.RandomAffine(
                degrees=affine.degrees,
                translate=(affine.translate, affine.translate),
                scale=tuple(affine.scale),
                resample=affine.interpolation,
                padding_mode="zeros",
                p=affine.p,
            )
        )
    intensity: list[nn.Module] = []
    if policy.noise is not None:
        intensity.append(GaussianNoise(tuple(policy.noise.std), policy.noise.p))
    if policy.blur is not None:
        blur = policy.blur
        intensity.append(K.RandomGaussianBlur(blur.kernel_size, tuple(blur.sigma), p=blur.p))
    colour = policy.colour
    if colour is not None and colour.ops():
        ops: list[nn.Module] = []
        if colour.hsv is not None:
            ops.append(HSVShift(colour.hsv.hue, colour.hsv.saturation, colour.hsv.value))
        if colour.clahe is not None:
            ops.append(ClaheL(tuple(colour.clahe.clip_limit), colour.clahe.grid_size))
        if colour.brightness_contrast is not None:
            bc = colour.brightness_contrast
            ops.append(BrightnessContrast(bc.brightness, bc.contrast))
        intensity.append(OneOf(ops, p=colour.p))
    stage = K.AugmentationSequential(*geometric, data_keys=["input", "mask"]) if geometric else None
    return stage, nn.Sequential(*intensity)


class KorniaAugment(AugmentBackend):
    """Per-batch augmentation on whatever device the batch is on (one warning if not a GPU).

    Args:
        policy: the augmentation policy (a config mapping or an :class:`AugPolicy`).
    """

    name = "kornia_gpu"

    def __init__(self, policy: Mapping[str, Any] | AugPolicy | None = None) -> None:
        super().__init__(policy)
        self.geometric, self.intensity = build_kornia(self.policy)
        self._warned_device = False

    def augment_batch(self, image: Tensor, mask: Tensor, seeds: Tensor) -> tuple[Tensor, Tensor]:
        device = image.device
        if device.type != "cuda" and not self._warned_device:
            warnings.warn(
                f"aug=kornia_gpu is augmenting on {device.type}, not a GPU: it works, but the"
                " speed-up of GPU augmentation needs a CUDA device.",
                stacklevel=2,
            )
            self._warned_device = True
        self.geometric = self.geometric.to(device) if self.geometric is not None else None
        self.intensity = self.intensity.to(device)
        cuda = [device.index or 0] if device.type == "cuda" else []
        # Randomness comes from the batch's sample seeds, not from the global RNG.
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(int(seeds.flatten()[0]))
            if self.geometric is not None:
                image, mask = self.geometric(image, mask)
            image = self.intensity(image)
        return image, mask
