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
from nailseg.data.cache import DecodeCache, make_cache
from nailseg.data.dataset import SegmentationDataset
from nailseg.data.pairs import Pair
from nailseg.data.sampler import EpochSeededSampler
from nailseg.data.split import SPLITS, load_or_create_split, split_key, write_split
from nailseg.data.validate import DataReport, check_pairs, describe, scan_source
from nailseg.errors import ConfigError

# Fewer validation samples than this make val metrics swing by whole images.
TINY_VALID = 5

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
            ``images``, ``masks`` and ``file`` are kept for the same reason (``data=folder``,
            ``data=csv``); the DataModule itself does not read them.
        image_size: side, or ``[height, width]``, every sample is resized to.
        augment: the augmentation backend (``conf/aug``); no augmentation when ``None``.
        batch_size: samples per batch.
        num_workers: DataLoader worker processes.
        pin_memory: page-locked host memory for faster, asynchronous copies to a GPU.
        valid_fraction: share of each group held out for validation.
        test_fraction: share of each group held out for testing (0: no test split).
        seed: split and sampling seed.
        split_dir: where split CSVs are written and reused.
        mask_threshold: foreground = value > threshold (``null``: chosen per data set, see
            :mod:`nailseg.data.masks`); the rule used is in :attr:`mask_rule`.
        images: image folder (``data=folder``).
        masks: mask folder (``data=folder``).
        file: list file of pairs (``data=csv``).
        cache: ``none``, ``ram`` or ``disk`` (:mod:`nailseg.data.cache`).
        cache_dir: where ``cache=disk`` writes.
        on_invalid: ``error`` stops before training on any data problem; ``skip`` drops the
            pairs with problems, listing each (:mod:`nailseg.data.validate`).

    Split: pairs that carry a split (a list file's ``split`` column, VOC image sets) use it;
    otherwise a seeded, stratified split is made once and reused (:mod:`nailseg.data.split`).
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
        images: str | Path | None = None,
        masks: str | Path | None = None,
        file: str | Path | None = None,
        cache: str = "none",
        cache_dir: str | Path | None = "data/cache",
        on_invalid: str = "error",
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
        self.images, self.masks, self.file = images, masks, file
        self.on_invalid = on_invalid
        self.cache: DecodeCache = make_cache(cache, cache_dir)
        self.splits: dict[str, list[Pair]] | None = None
        self.split_folder: Path | None = None
        self.datasets: dict[str, SegmentationDataset] = {}
        self.report: DataReport | None = None
        self.mask_rule: str | None = None

    def check(self) -> DataReport:
        """Run the data check (:mod:`nailseg.data.validate`) and fill the decode cache.

        Raises :class:`~nailseg.errors.DataError` listing the offending files, unless
        ``on_invalid=skip``. Sets :attr:`report` and :attr:`mask_rule`.
        """
        if self.report is None:
            name = describe(self.source)
            self.report = check_pairs(
                scan_source(self.source),
                name,
                self.mask_threshold,
                self.on_invalid,
                self.image_size,
                self.cache,
            )
            self.mask_rule = self.report.rule.description
            log.info(
                "Data check passed: %d pairs; mask rule: %s; cache: %s (%d entries)",
                len(self.report.pairs),
                self.mask_rule,
                self.cache.kind,
                len(self.cache),
            )
            for kind, entries in self.report.warnings.items():
                if entries:
                    log.warning("%d %s, e.g. %s", len(entries), kind, entries[0])
        return self.report

    def _split(self, pairs: list[Pair]) -> None:
        given = [p for p in pairs if p.split]
        if given:
            self.splits = {name: [p for p in given if p.split == name] for name in SPLITS}
            # Persist it too, so a run's record points at the exact lists it trained on.
            self.split_folder = self.split_dir / f"given-{split_key(given, 0, 0, 0)}"
            write_split(self.splits, self.split_folder)
            log.info(
                "Using the split given by the data: %d train / %d valid / %d test (%s)",
                *(len(self.splits[n]) for n in SPLITS),
                self.split_folder,
            )
        else:
            self.splits, self.split_folder = load_or_create_split(
                pairs, self.split_dir, self.valid_fraction, self.test_fraction, self.seed
            )

    def setup(self, stage: str | None = None) -> None:
        if self.splits is not None:
            return
        report = self.check()
        self._split(report.pairs)
        n_valid = len(self.splits["valid"])
        if not n_valid:
            raise ConfigError(
                f"The validation split is empty ({len(report.pairs)} pairs, data.valid_fraction="
                f"{self.valid_fraction}). Raise data.valid_fraction, add data, or give valid"
                " pairs in the split file."
            )
        if n_valid < TINY_VALID:
            log.warning(
                "The validation set has only %d sample(s): validation metrics will jump by whole"
                " images between epochs. Raise data.valid_fraction or add data if you can.",
                n_valid,
            )
        threshold = report.rule.threshold
        for name, members in self.splits.items():
            if members:
                transform = self.augment.sample_transform(train=name == "train")
                self.datasets[name] = SegmentationDataset(
                    members, self.image_size, transform, threshold, self.cache
                )

    @property
    def has_test(self) -> bool:
        return "test" in self.datasets

    def _loader(self, name: str, shuffle: bool) -> DataLoader:
        dataset = self.datasets[name]
        sampler = EpochSeededSampler(len(dataset), self.seed, shuffle=shuffle)
        if self.trainer is not None:
            # On resume Lightning starts the first iterator (with workers, their prefetching)
            # before it calls set_epoch: give the sampler the epoch it is about to run, the value
            # Lightning passes to set_epoch later (progress "processed", not current_epoch).
            sampler.set_epoch(self.trainer.fit_loop.epoch_progress.current.processed)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
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
        image, mask = self.augment.batch_transform(
            batch["image"], batch["mask"], batch["seed"], training
        )
        return {**batch, "image": image, "mask": mask}
