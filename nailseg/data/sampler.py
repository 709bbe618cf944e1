"""Sampling that derives every random choice from ``(seed, epoch, index)``.

The sampler yields ``(index, sample_seed)``; the dataset seeds per-sample augmentation with
``sample_seed`` and the batch carries it to the device for per-batch augmentation. Shuffle order
and augmentation then depend only on the run's seed and the epoch, not on worker count, worker
scheduling or global RNG state, which also makes resuming from a checkpoint exact.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 31-bit seed for one sample in one epoch."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0] >> 1)


class EpochSeededSampler(Sampler):
    """Yields ``(index, sample_seed)`` in an order shuffled by ``(seed, epoch)``.

    Lightning calls :meth:`set_epoch` before each epoch (also after a resume).
    """

    def __init__(self, length: int, seed: int, shuffle: bool) -> None:
        self.length, self.seed, self.shuffle = length, seed, shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.length)
        else:
            order = np.arange(self.length)
        for index in order.tolist():
            yield index, sample_seed(self.seed, self.epoch, index)
