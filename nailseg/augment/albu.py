"""``aug=albu_cpu``: the policy as an Albumentations pipeline, per sample in DataLoader workers.

Workers return normalised ``float32`` images, so nothing is left to do on the device.
"""

from __future__ import annotations

import hashlib
import operator
import random
from collections.abc import Mapping
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch
from torch import Tensor

from nailseg.augment.base import AugmentBackend, SampleTransform, mask_tensor
from nailseg.augment.policy import AugPolicy, resolve_normalization


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
_LOW128 = (1 << 128) - 1


def build_albumentations(
    policy: AugPolicy,
    train: bool,
    normalize: bool = True,
    normalization: Mapping[str, Any] | None = None,
) -> A.Compose:
    """Compile ``policy`` to an ``A.Compose``; validation gets only normalisation.

    Args:
        policy: the backend-neutral policy.
        train: build the training pipeline (augmentation + normalisation) when true, else only
            normalisation.
        normalize: end with ``A.Normalize`` (:func:`albu_normalize`); without it the pipeline
            returns the augmented ``uint8`` image.
        normalization: the encoder's ``mean``/``std`` where the policy leaves them null
            (:func:`~nailseg.augment.policy.resolve_normalization`; ``None``: ImageNet's).

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
    if normalize:
        steps.append(albu_normalize(resolve_normalization(policy, normalization)))
    return A.Compose(steps)


def albu_normalize(normalization: Mapping[str, Any]) -> A.Normalize:
    """``{"mean": ..., "std": ...}`` as Albumentations' ``Normalize`` (a pipeline's last step)."""
    return A.Normalize(
        mean=tuple(normalization["mean"]), std=tuple(normalization["std"]), max_pixel_value=255.0
    )


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
    """A picklable per-sample transform; reseeded from each sample's seed for reproducibility.

    The output depends only on ``(image, mask, seed)``, not on earlier calls.

    Args:
        pipeline: the augmentation, without normalisation (``uint8`` in and out).
        normalize: the normalisation to apply last, as the full pipeline would.
    """

    def __init__(self, pipeline: A.Compose, normalize: A.Normalize) -> None:
        self.pipeline = pipeline
        # One generator pair shared by every transform. ``Compose.set_random_seed`` would give
        # each transform its own generator with the same seed, so every transform's first draw
        # would be the same number: flips, affine and the one-of would fire together, and a
        # one-of child's parameter would be tied to the draw that chose to apply it.
        # ``set_random_state`` only hands every transform a reference to these two objects, so it
        # runs once here (pickling keeps the sharing) and each call reseeds them in place.
        self._np_bits = np.random.PCG64DXSM()
        self._np_random = np.random.Generator(self._np_bits)
        self._py_random = random.Random()
        self.pipeline.set_random_state(self._np_random, self._py_random)
        # ``A.Normalize`` on uint8 looks each channel up in a 256-entry float32 table and merges
        # the channels to (H, W, 3), which we would then copy to (3, H, W). Its own tables, read
        # back by normalising a 0..255 ramp, written straight into (3, H, W): the same values,
        # bit for bit, without the merge and the transposing copy.
        ramp = np.repeat(np.arange(256, dtype=np.uint8)[:, None, None], 3, axis=2)
        expected = normalize.apply(ramp)
        self._luts = np.ascontiguousarray(expected[:, 0, :].T)  # (3, 256) float32
        if not np.array_equal(self._normalize(ramp), expected.transpose(2, 0, 1)):
            raise RuntimeError("albu_cpu: planar normalisation differs from A.Normalize.")

    def _reseed(self, seed: int) -> None:
        """Reset both generators to a state that depends only on ``seed`` (about 8 us).

        ``np.random.default_rng(seed)`` costs a ``SeedSequence`` and three new objects per call;
        a BLAKE2b digest of the seed gives the 128-bit state and odd increment of the generator
        directly, as a ``SeedSequence`` would (well-mixed, a separate stream per seed).
        """
        digest = hashlib.blake2b(
            str(seed).encode(), digest_size=32, person=b"nailseg-albu"
        ).digest()
        words = int.from_bytes(digest, "little")
        self._np_bits.state = {
            "bit_generator": "PCG64DXSM",
            "state": {"state": words >> 128, "inc": (words & _LOW128) | 1},
            "has_uint32": 0,
            "uinteger": 0,
        }
        self._py_random.seed(seed)

    def _normalize(self, image: np.ndarray) -> np.ndarray:
        """``uint8`` ``(H, W, 3)`` to normalised, contiguous ``float32`` ``(3, H, W)``."""
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != len(self._luts):
            raise TypeError(
                f"albu_cpu expects uint8 (H, W, 3) images, got {image.dtype} {image.shape}."
            )
        out = np.empty((image.shape[2], *image.shape[:2]), np.float32)
        for channel, lut, dst in zip(cv2.split(image), self._luts, out, strict=True):
            cv2.LUT(channel, lut, dst=dst)
        return out

    def __call__(self, image: np.ndarray, mask: np.ndarray, seed: int) -> tuple[Tensor, Tensor]:
        seed = operator.index(seed)
        if self.pipeline.py_random is not self._py_random:  # someone reseeded the pipeline
            self.pipeline.set_random_state(self._np_random, self._py_random)
        self._reseed(seed)
        out = self.pipeline(image=image, mask=mask)
        image_t = torch.from_numpy(self._normalize(out["image"]))
        return image_t, mask_tensor(out["mask"])


class AlbumentationsAugment(AugmentBackend):
    """Per-sample augmentation and normalisation on the CPU, in the DataLoader workers.

    Takes the arguments of :class:`~nailseg.augment.base.AugmentBackend` (``policy``,
    ``channels_last``, ``normalization``).
    """

    # What ``data.cache=device``'s refusal calls this backend (nailseg.data.device.check_backend).
    name = "albu_cpu"

    def sample_transform(self, train: bool) -> SampleTransform:
        return _SeededAlbumentations(
            build_albumentations(self.policy, train, normalize=False),
            albu_normalize(self.normalization),
        )

    def batch_transform(
        self,
        image: Tensor,
        mask: Tensor,
        seeds: Tensor,
        train: bool,
        dtype: torch.dtype = torch.float32,
    ) -> tuple[Tensor, Tensor]:
        if image.dtype != torch.float32:
            raise TypeError(f"albu_cpu expects float32 images from the workers, got {image.dtype}.")
        return self._finish(image, dtype), mask.float()
