"""The map-style dataset: decode, binarise (:mod:`nailseg.data.masks`), resize, then the backend's
per-sample transform."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch.utils.data import Dataset

from nailseg.augment.base import SampleTransform, to_uint8_tensors
from nailseg.data.cache import DecodeCache, cache_key, decoding_rule
from nailseg.data.io import check_image_scale, read_image, read_mask, resize_pair
from nailseg.data.masks import MaskRule
from nailseg.data.sources.base import Pair
from nailseg.errors import DataError


class SegmentationDataset(Dataset):
    """Image/mask pairs as ``{"image", "mask", "seed", "index"}`` samples.

    Args:
        pairs: the image/mask files.
        image_size: ``(height, width)`` after resizing.
        transform: per-sample transform ``(image, mask, seed) -> (image, mask)`` tensors;
            ``uint8`` tensors without augmentation when ``None``.
        mask_threshold: a plain ``value > threshold`` rule, see
            :func:`nailseg.data.io.binarize_mask`; ``mask_rule`` wins when both are given.
        cache: decoded and resized samples (:mod:`nailseg.data.cache`); needs a fixed rule
            (``mask_rule`` or ``mask_threshold``), since the rule is part of the key.
        mask_rule: the data set's rule (:mod:`nailseg.data.masks`), as the DataModule passes it:
            masks hold 1, 0 and the void value where the rule has one.
        image_scale: how 16-bit images become 8-bit (:func:`nailseg.data.io.to_uint8`).
    """

    def __init__(
        self,
        pairs: Sequence[Pair],
        image_size: Sequence[int],
        transform: SampleTransform | None = None,
        mask_threshold: float | None = None,
        cache: DecodeCache | None = None,
        mask_rule: MaskRule | None = None,
        image_scale: str = "max",
    ) -> None:
        self.pairs = list(pairs)
        self.image_size = tuple(image_size)
        self.transform = transform or to_uint8_tensors
        if mask_rule is None and mask_threshold is not None:
            mask_rule = MaskRule.from_threshold(mask_threshold)
        self.mask_rule = mask_rule
        self.image_scale = check_image_scale(image_scale)
        # Without a fixed rule each mask picks its own threshold, which the key cannot name.
        self.cache = cache if cache is not None and mask_rule is not None else DecodeCache()

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, index: int):
        """Decoded and resized ``uint8`` arrays of pair ``index`` (from the cache when there)."""
        pair = self.pairs[index]
        key = None
        if self.cache.kind != "none":
            key = cache_key(pair, self.image_size, decoding_rule(self.mask_rule, self.image_scale))
            cached = self.cache.get(key)
            if cached is not None:
                return cached
        image = read_image(pair.image, self.image_scale)
        mask = read_mask(pair.mask, self.mask_rule)
        if image.shape[:2] != mask.shape[:2]:
            raise DataError(
                f"Image {pair.image} is {image.shape[1]}x{image.shape[0]} but its mask {pair.mask}"
                f" is {mask.shape[1]}x{mask.shape[0]}. Masks must have their image's size;"
                " fix or remove this pair."
            )
        image, mask = resize_pair(image, mask, self.image_size)
        if key is not None:
            self.cache.put(key, image, mask)
        return image, mask

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, seed = key if isinstance(key, tuple) else (key, 0)
        image, mask = self.load(index)
        image_t, mask_t = self.transform(image, mask, seed)
        return {"image": image_t, "mask": mask_t, "seed": seed, "index": index}
