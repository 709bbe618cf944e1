"""Augmentation: one backend-neutral policy, compiled to Albumentations or Kornia."""

from nailseg.augment.base import AugmentBackend, NoAugment
from nailseg.augment.policy import AugPolicy

__all__ = ["AugPolicy", "AugmentBackend", "NoAugment"]
