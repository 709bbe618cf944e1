"""``aug=albu_cpu``: the policy as an Albumentations pipeline, per sample in DataLoader workers.

Workers return normalised ``float32`` images, so nothing is left to do on the device.
"""

from __future__ import annotations

import random

import albumentations as A
import cv2
import numpy as np
import torch
from torch import Tensor

from nailseg.augment.base import AugmentBackend, SampleTransform
from nailseg.augment.policy import AugPolicy


class SubpixelAffine(A.Affine):
    """``A.Affine`` with continuous shifts, as the policy (and Kornia) define them.

    Albumentations 2.0 truncates ``translate_percent * side`` to whole pixels (towards zero), which
    doubles the weight of a zero shift and skews the distribution; this keeps the fraction exact.
    ``tests/test_augment_parity.py`` checks the resulting shift distribution.
    """

    def _get_translate_params(self, image_shape: tuple[int, int]) -> dict[str, float]:
        if self.translate_percent is None:
            return super()._get_translate_params(image_shape)
        height, width = image_shape[:2]
        fraction = {
            key: self.py_random.uniform(*value) for key, value in self.translate_percent.items()
        }
        return {"x": fraction["x"] * width, "y": fraction["y"] * height}


_INTERPOLATION = {"bilinear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST}


def build_albumentations(policy: AugPolicy, train: bool) -> A.Compose:
    """Compile ``policy`` to an ``A.Compose``; validation gets only normalisation.

    Args:
        policy: the backend-neutral policy.
        train: build the training pipeline (augmentation + normalisation) when true, else only
            normalisation.

    Returns:
        A pipeline taking ``image`` (``uint8`` HWC) and ``mask`` (``uint8`` HW) keyword arguments.
    """
    steps: list[A.BasicTransform] = []
    if train:
        if policy.hflip_p > 0:
            steps.append(A.HorizontalFlip(p=policy.hflip_p))
        if policy.vflip_p > 0:
            steps.append(A.VerticalFlip(p=policy.vflip_p))
        if policy.affine is not None:
            affine = policy.affine
            steps.append(
                SubpixelAffine(
                    rotate=(-affine.degrees, affine.degrees),
                    scale=tuple(affine.scale),
                    keep_ratio=True,  # one isotropic scale, as in Kornia
                    translate_percent=(-affine.translate, affine.translate),
                    interpolation=_INTERPOLATION[affine.interpolation],
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
                A.GaussianBlur(
                    blur_limit=(blur.kernel_size, blur.kernel_size),
                    sigma_limit=tuple(blur.sigma),
                    p=blur.p,
                )
            )
        if policy.colour is not None and policy.colour.ops():
            steps.append(A.OneOf(_colour_ops(policy), p=policy.colour.p))
    steps.append(A.Normalize(mean=policy.mean, std=policy.std, max_pixel_value=255.0))
    return A.Compose(steps)


def _colour_ops(policy: AugPolicy) -> list[A.BasicTransform]:
    # Albumentations' OneOf picks a child with probability proportional to its p: all 1 = uniform.
    colour, ops = policy.colour, []
    if colour.hsv is not None:
        # Albumentations' 8-bit HSV units: hue in [0, 180) (the full circle), saturation and
        # value in [0, 255]; it keeps saturation 0 (grey) pixels grey, as HSVShift does.
        ops.append(
            A.HueSaturationValue(
                hue_shift_limit=(-colour.hsv.hue * 180, colour.hsv.hue * 180),
                sat_shift_limit=(-colour.hsv.saturation * 255, colour.hsv.saturation * 255),
                val_shift_limit=(-colour.hsv.value * 255, colour.hsv.value * 255),
                p=1.0,
            )
        )
    if colour.clahe is not None:
        # On RGB input Albumentations equalises the L channel of LAB (see kornia_gpu.ClaheL).
        ops.append(
            A.CLAHE(
                clip_limit=tuple(colour.clahe.clip_limit),
                tile_grid_size=(colour.clahe.grid_size, colour.clahe.grid_size),
                p=1.0,
            )
        )
    if colour.brightness_contrast is not None:
        bc = colour.brightness_contrast
        # Computes x * (1 + c) + b * 255 on 8-bit values: the policy's x * (1 + c) + b.
        ops.append(
            A.RandomBrightnessContrast(
                brightness_limit=(-bc.brightness, bc.brightness),
                contrast_limit=(-bc.contrast, bc.contrast),
                brightness_by_max=True,
                p=1.0,
            )
        )
    return ops


class _SeededAlbumentations:
    """A picklable per-sample transform; reseeded from each sample's seed for reproducibility."""

    def __init__(self, pipeline: A.Compose) -> None:
        self.pipeline = pipeline

    def __call__(self, image: np.ndarray, mask: np.ndarray, seed: int) -> tuple[Tensor, Tensor]:
        # One generator pair shared by every transform. ``Compose.set_random_seed`` would give
        # each transform its own generator with the same seed, so every transform's first draw
        # would be the same number: flips, affine and the one-of would fire together, and a
        # one-of child's parameter would be tied to the draw that chose to apply it.
        self.pipeline.set_random_state(np.random.default_rng(seed), random.Random(seed))
        out = self.pipeline(image=image, mask=mask)
        image_t = torch.from_numpy(np.ascontiguousarray(out["image"].transpose(2, 0, 1)))
        return image_t, torch.from_numpy(np.ascontiguousarray(out["mask"]))[None]


class AlbumentationsAugment(AugmentBackend):
    """Per-sample augmentation and normalisation on the CPU, in the DataLoader workers."""

    name = "albu_cpu"

    def sample_transform(self, train: bool) -> SampleTransform:
        return _SeededAlbumentations(build_albumentations(self.policy, train))

    def batch_transform(
        self, image: Tensor, mask: Tensor, seeds: Tensor, train: bool
    ) -> tuple[Tensor, Tensor]:
        if image.dtype != torch.float32:
            raise TypeError(f"albu_cpu expects float32 images from the workers, got {image.dtype}.")
        return image, mask.float()
