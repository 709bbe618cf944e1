"""``data.cache=device``: every split on the model's device, batches gathered there by index.

The DataModule stacks each split's decoded, resized ``uint8`` samples (images ``(N, 3, H, W)``,
masks ``(N, 1, H, W)`` in ``{0, 1}`` and the void value) once and moves them to the device once
(:func:`stack_split`). :class:`DeviceBatches` then stands in for the DataLoader: per epoch it
asks the same :class:`~nailseg.data.sampler.EpochSeededSampler` for the ``(index, seed)`` order,
copies that order to the device once, and per step slices it and ``index_select``\\ s the stored
tensors. The batches are what the DataLoader path yields after the copy to the device (the same
keys, dtypes, samples, seeds and batches), so shuffling, per-sample seeds, augmentation and exact
resume do not depend on the cache.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator

import torch
from torch import Tensor

from nailseg.augment.base import AugmentBackend, to_uint8_tensors
from nailseg.data.dataset import SegmentationDataset
from nailseg.data.sampler import EpochSeededSampler
from nailseg.errors import ConfigError

MB = 1 << 20


def runs_in_workers(augment: AugmentBackend) -> bool:
    """Whether the backend transforms samples in DataLoader workers (beyond ``uint8`` tensors).

    Device batches are the plain ``uint8`` samples, so only a backend whose per-sample
    transform is :func:`~nailseg.augment.base.to_uint8_tensors` for training and evaluation (it
    augments in ``batch_transform``, on the device) can take them.
    """
    return any(augment.sample_transform(train) is not to_uint8_tensors for train in (True, False))


def check_backend(augment: AugmentBackend) -> None:
    """Refuse ``data.cache=device`` with a backend that needs DataLoader workers (``albu_cpu``)."""
    if runs_in_workers(augment):
        name = getattr(augment, "name", type(augment).__name__)
        raise ConfigError(
            "data.cache=device needs a device-side augmentation backend (aug=kornia_gpu or"
            f" aug=none); aug={name} augments per sample in DataLoader workers. Use"
            f" data.cache=ram with aug={name}."
        )


def host_available_memory() -> int:
    """Bytes of RAM available to a new allocation (``MemAvailable``, else free pages)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def free_memory(device: torch.device) -> int:
    """Bytes free on ``device``: CUDA's free memory; elsewhere (CPU) the host's available RAM."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    return host_available_memory()


def split_bytes(n_samples: int, image_size: tuple[int, int]) -> int:
    """Bytes of ``n_samples`` stored samples: 3 image channels and 1 mask channel of ``uint8``."""
    return n_samples * 4 * image_size[0] * image_size[1]


def check_fits(needed: int, device: torch.device, share: float) -> None:
    """Stop before training when ``needed`` bytes exceed ``share`` of the memory free on device."""
    free = free_memory(device)
    if needed > share * free:
        raise ConfigError(
            f"data.cache=device needs {needed / MB:.1f} MB on {device} but {free / MB:.1f} MB is"
            f" free there and data.device_cache_share={share:g} allows {share * free / MB:.1f} MB."
            " Use data.cache=ram (or raise data.device_cache_share)."
        )


def stack_split(dataset: SegmentationDataset, device: torch.device) -> tuple[Tensor, Tensor]:
    """Every sample of ``dataset`` as ``uint8`` images ``(N, 3, H, W)``, masks ``(N, 1, H, W)``.

    Decoded through ``dataset.load`` (the decode cache the data check filled), converted as the
    workers convert (:func:`~nailseg.augment.base.to_uint8_tensors`), filled into one host tensor
    per kind and moved to ``device`` in one copy each.
    """
    height, width = dataset.image_size
    images = torch.empty((len(dataset), 3, height, width), dtype=torch.uint8)
    masks = torch.empty((len(dataset), 1, height, width), dtype=torch.uint8)
    for index in range(len(dataset)):
        images[index], masks[index] = to_uint8_tensors(*dataset.load(index))
    return images.to(device), masks.to(device)


class DeviceBatches:
    """Batches of device-resident samples, in the sampler's order; a Lightning dataloader.

    Lightning takes any iterable with a ``__len__``; it finds ``sampler`` (and ``batch_sampler``,
    read when it checks whether evaluation is shuffled) and calls ``sampler.set_epoch`` before
    each epoch, as for a DataLoader.

    Args:
        images: ``uint8`` ``(N, 3, H, W)`` on the device.
        masks: ``uint8`` ``(N, 1, H, W)`` on the same device.
        sampler: yields ``(index, seed)`` per epoch.
        batch_size: samples per batch.
        drop_last: drop the last, incomplete batch (the DataLoader path's rule).

    Each batch is ``{"image", "mask", "seed", "index"}``: ``uint8`` images and masks, ``int64``
    seeds and indices, all on the device, as the DataLoader's default collation gives them.
    """

    # Lightning reads it next to ``sampler``; there is no batch sampler.
    batch_sampler = None

    def __init__(
        self,
        images: Tensor,
        masks: Tensor,
        sampler: EpochSeededSampler,
        batch_size: int,
        drop_last: bool,
    ) -> None:
        if images.shape[0] != masks.shape[0] or images.shape[0] != len(sampler):
            raise ValueError(
                f"{images.shape[0]} images, {masks.shape[0]} masks and {len(sampler)} samples"
            )
        self.images, self.masks, self.sampler = images, masks, sampler
        self.batch_size, self.drop_last = int(batch_size), bool(drop_last)

    @property
    def device(self) -> torch.device:
        return self.images.device

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        # A generator: the order is drawn at the first batch, as a DataLoader's sampler is, so a
        # set_epoch between iter() and the first next() counts.
        order = list(self.sampler)
        if not order:
            return
        # (2, N): indices and seeds, to the device in one copy per epoch.
        table = torch.tensor(order, dtype=torch.int64).T.contiguous()
        if self.device.type == "cuda":  # pinned, so the copy does not wait for queued kernels
            table = table.pin_memory()
        table = table.to(self.device, non_blocking=True)
        indices, seeds = table[0], table[1]
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            # Python ints: a view of the device tensor, no sync with the host.
            index = indices[start : start + self.batch_size]
            yield {
                "image": self.images.index_select(0, index),
                "mask": self.masks.index_select(0, index),
                "seed": seeds[start : start + self.batch_size],
                "index": index,
            }
