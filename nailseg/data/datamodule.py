"""The LightningDataModule: source -> split -> datasets -> loaders -> device-side transform."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from nailseg.augment.base import AugmentBackend, NoAugment
from nailseg.data.dataset import SegmentationDataset
from nailseg.data.pairs import Pair
from nailseg.data.sampler import EpochSeededSampler
from nailseg.data.split import load_or_create_split
from nailseg.errors import ConfigError

log = logging.getLogger(__name__)


class PairSource(Protocol):
    def pairs(self) -> list[Pair]: ...


def as_size(image_size: int | Sequence[int]) -> tuple[int, int]:
    """``256`` or ``[256, 320]`` to ``(height, width)``."""
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(size) != 2 or min(size) < 16 or any(s % 32 for s in size):
        raise ConfigError(
            f"data.image_size={image_size} is invalid: the encoders downsample by 32, so use a"
            " multiple of 32 (at least 32), e.g. data.image_size=256 or [256, 320]."
        )
    return int(size[0]), int(size[1])


class SegmentationDataModule(pl.LightningDataModule):
    """Data for binary segmentation.

    Args:
        source: where pairs come from (an object with ``pairs()``; see ``conf/data``).
        root: the data root the source reads; kept here so ``data.root=...`` is one override.
        image_size: side, or ``[height, width]``, every sample is resized to.
        augment: the augmentation backend (``conf/aug``); no augmentation when ``None``.
        batch_size: samples per batch.
        num_workers: DataLoader worker processes.
        pin_memory: page-locked host memory for faster, asynchronous copies to a GPU.
        valid_fraction: share of each group held out for validation.
        test_fraction: share of each group held out for testing (0: no test split).
        seed: split and sampling seed.
        split_dir: where split CSVs are written and reused.
        mask_threshold: foreground rule for masks (``null``: automatic).
    """

    def __init__(
        self,
        source: PairSource,
        root: str | Path | None = None,
        image_size: int | Sequence[int] = 256,
        augment: AugmentBackend | None = None,
        batch_size: int = 8,
        num_workers: int = 0,
        pin_memory: bool = True,
        valid_fraction: float = 0.2,
        test_fraction: float = 0.0,
        seed: int = 0,
        split_dir: str | Path = "data/splits",
        mask_threshold: float | None = None,
    ) -> None:
        super().__init__()
        self.source, self.root = source, root
        self.image_size = as_size(image_size)
        self.augment = augment or NoAugment()
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        self.pin_memory = bool(pin_memory)
        self.valid_fraction, self.test_fraction = valid_fraction, test_fraction
        self.seed, self.split_dir = int(seed), Path(split_dir)
        self.mask_threshold = mask_threshold
        self.splits: dict[str, list[Pair]] | None = None
        self.split_folder: Path | None = None
        self.datasets: dict[str, SegmentationDataset] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.splits is not None:
            return
        pairs = self.source.pairs()
        self.splits, self.split_folder = load_or_create_split(
            pairs, self.split_dir, self.valid_fraction, self.test_fraction, self.seed
        )
        if not self.splits["valid"]:
            raise ConfigError(
                f"The validation split is empty ({len(pairs)} pairs, data.valid_fraction="
                f"{self.valid_fraction}). Raise data.valid_fraction or add data."
            )
        for name, members in self.splits.items():
            if members:
                transform = self.augment.sample_transform(train=name == "train")
                self.datasets[name] = SegmentationDataset(
                    members, self.image_size, transform, self.mask_threshold
                )

    @property
    def has_test(self) -> bool:
        return "test" in self.datasets

    def _loader(self, name: str, shuffle: bool) -> DataLoader:
        dataset = self.datasets[name]
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=EpochSeededSampler(len(dataset), self.seed, shuffle=shuffle),
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
            # BatchNorm cannot train on a batch of one.
            drop_last=shuffle and len(dataset) > self.batch_size,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("valid", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        training = self.trainer is not None and self.trainer.training
        image, mask = self.augment.batch_transform(batch["image"], batch["mask"], batch["seed"], training)
        return {**batch, "image": image, "mask": mask}
