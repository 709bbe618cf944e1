"""``aug=albu_cpu``: the policy as an Albumentations pipeline, per sample in DataLoader workers.

Workers return normalised ``float32`` images, so nothing is left to do on the device.
"""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np
import torch
from torch import Tensor

from nailseg.augment.base import AugmentBackend, SampleTransform
from nailseg.augment.policy import AugPolicy


def build_albumentations(policy: AugPolicy, train: bool) -> A.Compose:
    """Compile ``policy`` to an ``A.Compose``; validation gets only normalisation."""
    steps: list[A.BasicTransform] = []
    if train:
        if policy.hflip_p > 0:
            steps.append(A.HorizontalFlip(p=policy.hflip_p))
        if policy.vflip_p > 0:
            steps.append(A.VerticalFlip(p=policy.vflip_p))
        if policy.affine is not None:
            affine = policy.affine
            steps.append(
                A.Affine(
                    rotate=(-affine.degrees, affine.degrees),
                    scale=tuple(affine.scale),
                    keep_ratio=True,  # one isotropic scale, as in Kornia
                    translate_percent=(-affine.translate, affine.translate),
                    interpolation=cv2.INTER_LINEAR,
                    mask_interpolation=cv2.INTER_NEAREST,
                    border_mode=cv2.BORDER_CONSTANT,
                    fill=0,
                    fill_mask=0,
                    p=affine.p,
                )
            )
        if policy.noise is not None:
            steps.append(A.GaussNoise(std_range=tuple(policy.noise.std), p=policy.noise.p))
        if policy.blur is not None:
            blur = policy.blur
            steps.append(
                A.GaussianBlur(blur_limit=(blur.kernel_size, blur.kernel_size),
                               sigma_limit=tuple(blur.sigma), p=blur.p)
            )
        if policy.colour is not None and policy.colour.ops():
            steps.append(A.OneOf(_colour_ops(policy), p=policy.colour.p))
    steps.append(A.Normalize(mean=policy.mean, std=policy.std, max_pixel_value=255.0))
    return A.Compose(steps)


def _colour_ops(policy: AugPolicy) -> list[A.BasicTransform]:
    colour, ops = policy.colour, []
    if colour.hsv is not None:
        # Albumentations' 8-bit HSV units: hue in [0, 180), saturation and value in [0, 255].
        ops.append(A.HueSaturationValue(
            hue_shift_limit=(-colour.hsv.hue * 180, colour.hsv.hue * 180),
            sat_shift_limit=(-colour.hsv.saturation * 255, colour.hsv.saturation * 255),
            val_shift_limit=(-colour.hsv.value * 255, colour.hsv.value * 255),
            p=1.0,
        ))
    if colour.clahe is not None:
        ops.append(A.CLAHE(clip_limit=tuple(colour.clahe.clip_limit),
                           tile_grid_size=(colour.clahe.grid_size, colour.clahe.grid_size), p=1.0))
    if colour.brightness_contrast is not None:
        bc = colour.brightness_contrast
        ops.append(A.RandomBrightnessContrast(
            brightness_limit=(-bc.brightness, bc.brightness),
            contrast_limit=(-bc.contrast, bc.contrast),
            brightness_by_max=True,
            p=1.0,
        ))
    return ops


class _SeededAlbumentations:
    """A picklable per-sample transform; reseeded from each sample's seed for reproducibility."""

    def __init__(self, pipeline: A.Compose) -> None:
        self.pipeline = pipeline

    def __call__(self, image: np.ndarray, mask: np.ndarray, seed: int) -> tuple[Tensor, Tensor]:
        self.pipeline.set_random_seed(seed)
        out = self.pipeline(image=image, mask=mask)
        image_t = torch.from_numpy(np.ascontiguousarray(out["image"].transpose(2, 0, 1)))
        return image_t, torch.from_numpy(np.ascontiguousarray(out["mask"]))[None]


class AlbumentationsAugment(AugmentBackend):
    """Per-sample augmentation and normalisation on the CPU, in the DataLoader workers."""

    name = "albu_cpu"

    def sample_transform(self, train: bool) -> SampleTransform:
        return _SeededAlbumentations(build_albumentations(self.policy, train))

    def batch_transform(self, image: Tensor, mask: Tensor, seeds: Tensor, train: bool) -> tuple[Tensor, Tensor]:
        if image.dtype != torch.float32:
            raise TypeError(f"albu_cpu expects float32 images from the workers, got {image.dtype}.")
        return image, mask.float()
