"""The LightningDataModule: source -> split -> datasets -> loaders -> device-side transform."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader

from nailseg.augment.base import AugmentBackend, NoAugment
from nailseg.classes import check_classes
from nailseg.data.cache import DecodeCache, make_cache
from nailseg.data.dataset import SegmentationDataset
from nailseg.data.device import DeviceBatches, check_backend, check_fits, split_bytes, stack_split
from nailseg.data.fingerprint import data_fingerprint
from nailseg.data.io import check_image_scale
from nailseg.data.sampler import EpochSeededSampler
from nailseg.data.sources.base import Pair, PairSource
from nailseg.data.split import (
    SPLITS,
    Strata,
    check_folds,
    load_or_create_folds,
    load_or_create_split,
    split_key,
    write_split,
)
from nailseg.data.validate import DataReport, check_pairs, describe
from nailseg.errors import ConfigError

# Fewer validation samples than this make val metrics swing by whole images.
TINY_VALID = 5

log = logging.getLogger(__name__)


def compute_dtype(precision: str | int | None) -> torch.dtype:
    """The dtype a model computes in under Lightning's ``Trainer(precision=...)``.

    Device-side transforms return images in it, so the model's first layer does not cast them.

    Examples:
        >>> compute_dtype("bf16-mixed"), compute_dtype("16-mixed"), compute_dtype("32-true")
        (torch.bfloat16, torch.float16, torch.float32)
        >>> compute_dtype("64-true"), compute_dtype(None)
        (torch.float64, torch.float32)
    """
    text = str(precision or "32")
    if text.startswith("bf16"):
        return torch.bfloat16
    if text.startswith("16"):
        return torch.float16
    if text.startswith("64"):
        # Lightning's double precision converts float inputs only before this transform runs.
        return torch.float64
    return torch.float32


def as_size(image_size: int | Sequence[int]) -> tuple[int, int]:
    """``256`` or ``[256, 320]`` to ``(height, width)``."""
    if isinstance(image_size, str):
        raise ConfigError(
            f"data.image_size={image_size!r} is invalid: give a multiple of 32, [height, width]"
            " (e.g. data.image_size=256 or [256, 320]), or auto (from the data's own sizes)."
        )
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(size) != 2 or min(size) < 16 or any(s % 32 for s in size):
        raise ConfigError(
            f"data.image_size={image_size} is invalid: the encoders downsample by 32, so use a"
            " multiple of 32 (at least 32), e.g. data.image_size=256 or [256, 320]."
        )
    return int(size[0]), int(size[1])


def check_ignore_index(ignore_index: Any) -> int | None:
    """``data.ignore_index``: ``None`` or an integer 2..255 (masks are ``uint8``; 0 and 1 are the
    classes)."""
    if ignore_index is None:
        return None
    if (
        isinstance(ignore_index, bool)
        or not isinstance(ignore_index, int)
        or not (2 <= ignore_index <= 255)
    ):
        raise ConfigError(
            f"data.ignore_index={ignore_index!r} is invalid: give the mask value that marks void"
            " pixels, an integer from 2 to 255 (Pascal VOC uses 255), or null for none."
        )
    return ignore_index


def check_foreground(
    foreground: Any, mask_threshold: float | None, ignore_index: int | None
) -> tuple[int, ...] | None:
    """``data.foreground``: ``None``, or mask values (a list, or one value) that are foreground."""
    if foreground is None:
        return None
    values = foreground if isinstance(foreground, list | tuple) else [foreground]
    if not values or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise ConfigError(
            f"data.foreground={foreground!r} is invalid: list the mask values that are"
            " foreground, e.g. data.foreground=[1,2], or set it to null."
        )
    if mask_threshold is not None:
        raise ConfigError(
            f"data.foreground={list(values)} and data.mask_threshold={mask_threshold} both say"
            " which mask values are foreground: keep one and set the other to null."
        )
    if ignore_index is not None and ignore_index in values:
        raise ConfigError(
            f"data.foreground={list(values)} includes the void value data.ignore_index="
            f"{ignore_index}. Set data.ignore_index=null if {ignore_index} marks foreground."
        )
    return tuple(int(v) for v in values)


def check_palette(
    palette: Any, classes: tuple[str, ...] | None
) -> tuple[tuple[int, int, int], ...] | None:
    """``data.palette``: ``None``, or one ``[r, g, b]`` colour per class of ``data.classes``."""
    if palette is None:
        return None
    if classes is None:
        raise ConfigError(
            "data.palette maps colours to classes, but data.classes is null (binary): list the"
            " classes in data.classes, in the palette's order, or set data.palette=null."
        )
    colours = list(palette) if isinstance(palette, Sequence) else []
    good = all(
        isinstance(c, Sequence)
        and len(c) == 3
        and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in c)
        for c in colours
    )
    if not good or len(colours) != len(classes):
        raise ConfigError(
            f"data.palette={palette!r} is invalid: give one [r, g, b] colour (0-255) per class"
            f" of data.classes ({len(classes)}: {', '.join(classes)}), in the same order."
        )
    doubled = [c for c in colours if colours.count(c) > 1]
    if doubled:
        raise ConfigError(
            f"data.palette gives the colour {list(doubled[0])} to two classes: give each class"
            " its own colour."
        )
    return tuple(tuple(int(v) for v in c) for c in colours)


def auto_image_size(images: Sequence[Path], largest: int) -> tuple[int, int]:
    """``data.image_size=auto``: a square side from the data's own sizes, read from the file
    headers: the median of ``sqrt(width * height)`` (so a photo's orientation does not matter)
    rounded to a multiple of 32, at least 64 and at most ``largest`` (``data.image_size_max``).
    Small images are then not blown up (more pixels, no more detail) and large ones are not
    trained at a size a short budget cannot afford. Unreadable files are left to the data check.
    """
    sides = []
    for path in images:
        try:
            with Image.open(path) as image:
                sides.append(math.sqrt(image.width * image.height))
        except (OSError, ValueError, Image.DecompressionBombError):
            continue
    if not sides:
        return largest, largest
    median = float(np.median(sides))
    side = int(min(largest, max(64, 32 * round(median / 32))))
    log.info(
        "data.image_size=auto: %dx%d (median image side %.0f px over %d files, rounded to 32, at"
        " most data.image_size_max=%d)",
        side,
        side,
        median,
        len(sides),
        largest,
    )
    return side, side


def worker_count(num_workers: int | str) -> int:
    """``data.num_workers``: a number, or ``auto``: one loader process per core this process may
    use beyond the one that trains (at most 4), so none on one core, where a worker would only
    take turns with the model.

    Examples:
        >>> worker_count(3), worker_count("auto") == min(4, len(os.sched_getaffinity(0)) - 1)
        (3, True)
    """
    if num_workers == "auto":
        return max(0, min(4, len(os.sched_getaffinity(0)) - 1))
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ConfigError(
            f"data.num_workers={num_workers!r} is invalid: give a whole number of at least 0 (0"
            " loads in the training process) or auto (one per spare core)."
        )
    return num_workers


def auto_cache(n_pairs: int, size: tuple[int, int], share: float) -> DecodeCache:
    """``data.cache=auto``: keep decoded, resized samples in RAM when the whole set (3 image and
    1 mask bytes a pixel) fits ``share`` of the memory available now; else decode every epoch."""
    need = n_pairs * size[0] * size[1] * 4
    available = memory_available()
    fits = available is not None and need <= share * available
    log.info(
        "data.cache=auto: %s (%d pairs at %dx%d need %.0f MB; %s MB available, share %.2f)",
        "ram" if fits else "none",
        n_pairs,
        *size,
        need / 2**20,
        "unknown" if available is None else f"{available / 2**20:.0f}",
        share,
    )
    return make_cache("ram" if fits else "none")


def memory_available() -> int | None:
    """Bytes of memory available to new allocations (Linux ``MemAvailable``), if known."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class SegmentationDataModule(pl.LightningDataModule):
    """Data for binary segmentation.

    Args:
        source: where pairs come from (:mod:`nailseg.data.sources`; see ``conf/data``).
        image_size: side, or ``[height, width]``, every sample is resized to; ``auto``: a square
            side from the data's own sizes, at most ``image_size_max`` (:func:`auto_image_size`).
        augment: the augmentation backend (``conf/aug``); no augmentation when ``None``.
        batch_size: samples per batch.
        num_workers: DataLoader worker processes, or ``auto`` (:func:`worker_count`).
        pin_memory: page-locked host memory for faster, asynchronous copies to a GPU.
        valid_fraction: share of each group held out for validation.
        test_fraction: share of each group held out for testing (0: no test split).
        seed: split and sampling seed.
        split_dir: where split CSVs are written and reused.
        mask_threshold: foreground = value > threshold (``null``: chosen per data set, see
            :mod:`nailseg.data.masks`); the rule used is in :attr:`mask_rule`.
        foreground: the mask values that are foreground, e.g. ``[1, 2]`` for label masks
            (``null``: by threshold). Not together with ``mask_threshold``.
        ignore_index: the void value of index masks (Pascal VOC's 255 border): such pixels stay
            in the masks with this value and the losses and metrics leave them out (the loss
            configs read ``${data.ignore_index}``). ``null``: no void value. In 8-bit masks 255
            is a gray level, never void.
        image_scale: how 16-bit images become 8-bit: ``max`` divides by 65535, ``range``
            stretches each image's own min..max (:func:`nailseg.data.io.to_uint8`).
        cache: ``auto`` (:func:`auto_cache` with ``cache_ram_share``), ``none``, ``ram``,
            ``disk`` or ``device`` (:mod:`nailseg.data.cache`). With ``device`` every split is
            kept on the model's device and batches are gathered there
            (:mod:`nailseg.data.device`): ``num_workers`` and ``pin_memory`` are then unused, the
            augmentation backend must work on the device (``aug=kornia_gpu`` or ``aug=none``),
            and training uses one device.
        cache_dir: where ``cache=disk`` writes.
        on_invalid: ``error`` stops before training on any data problem; ``skip`` drops the
            pairs with problems, listing each (:mod:`nailseg.data.validate`).
        device_cache_share: with ``cache=device``, the largest share of the device's free memory
            the data may take; more stops the run before training.
        folds: k-fold cross-validation: the number of folds the training pool (every pair not in
            the test split) is cut into, stratified by group and seeded by ``seed``
            (:func:`nailseg.data.split.kfold_split`); ``valid_fraction`` is then unused.
            ``None``: the plain split.
        fold: with ``folds``, the fold that validates (``0 .. folds-1``); the others train.
        image_size_max: with ``image_size=auto``, the largest side chosen.
        classes: ``data.classes``, the class names for multi-class data (mask value ``i`` is
            class ``i``); ``None``: binary (:mod:`nailseg.classes`).
        palette: ``data.palette``, the colour of each class, for colour (RGB) masks.

    The device is known only once a Trainer is attached, so ``cache=device`` moves the data there
    when the loaders are first requested with one (on the CPU without a Trainer).

    Split: pairs that carry a split (a list file's ``split`` column, VOC image sets) use it;
    otherwise a seeded, stratified split is made once and reused (:mod:`nailseg.data.split`).
    With ``folds``, fold ``fold`` validates; a given split then keeps its test pairs and its
    train and valid pairs are folded together.

    The ``data`` config node also holds the keys in :attr:`SHORTCUT_KEYS` (``data.root`` ...),
    which only its ``source`` reads; :func:`datamodule_node` leaves them out.
    """

    # Keys a data config may hold for its source to interpolate (``root: ${..root}``), so that
    # ``data.root=...`` is a short override; not arguments of this class. datamodule_node drops
    # them and nailseg.config_check accepts them.
    SHORTCUT_KEYS: ClassVar[tuple[str, ...]] = ("root", "images", "masks", "file")

    def __init__(
        self,
        source: PairSource,
        image_size: int | Sequence[int] = 256,
        augment: AugmentBackend | None = None,
        batch_size: int = 8,
        num_workers: int | str = 0,
        pin_memory: bool = True,
        valid_fraction: float = 0.2,
        test_fraction: float = 0.0,
        seed: int = 0,
        split_dir: str | Path = "data/splits",
        mask_threshold: float | None = None,
        cache: str = "none",
        cache_dir: str | Path | None = "data/cache",
        on_invalid: str = "error",
        device_cache_share: float = 0.5,
        foreground: int | Sequence[int] | None = None,
        ignore_index: int | None = 255,
        image_scale: str = "max",
        cache_ram_share: float = 0.25,
        folds: int | None = None,
        fold: int = 0,
        image_size_max: int = 256,
        classes: Sequence[str] | None = None,
        palette: Sequence[Sequence[int]] | None = None,
    ) -> None:
        super().__init__()
        self.source = source
        # auto: chosen from the data's sizes in check() (auto_image_size); until then unknown.
        self.size_auto = image_size == "auto"
        if (
            isinstance(image_size_max, bool)
            or not isinstance(image_size_max, int)
            or (image_size_max < 64 or image_size_max % 32)
        ):
            raise ConfigError(
                f"data.image_size_max={image_size_max!r} is invalid: give the largest side"
                " data.image_size=auto may choose, a multiple of 32 of at least 64 (e.g. 256)."
            )
        self.image_size_max = image_size_max
        self.image_size: tuple[int, int] = (
            (image_size_max, image_size_max) if self.size_auto else as_size(image_size)
        )
        self.augment = augment or NoAugment()
        self.batch_size, self.num_workers = int(batch_size), worker_count(num_workers)
        self.pin_memory = bool(pin_memory)
        self.valid_fraction, self.test_fraction = valid_fraction, test_fraction
        self.seed, self.split_dir = int(seed), Path(split_dir)
        check_folds(folds, fold)
        self.folds, self.fold = folds, fold
        self.mask_threshold = mask_threshold
        self.ignore_index = check_ignore_index(ignore_index)
        self.foreground = check_foreground(foreground, mask_threshold, self.ignore_index)
        self.classes = check_classes(classes)
        self.palette = check_palette(palette, self.classes)
        if self.classes is not None and (foreground is not None or mask_threshold is not None):
            key = "data.foreground" if foreground is not None else "data.mask_threshold"
            raise ConfigError(
                f"{key} merges mask values into one foreground (binary), but data.classes="
                f"{list(self.classes)} asks for {len(self.classes)} classes: set {key}=null for"
                " a multi-class run, or data.classes=null for a binary one."
            )
        self.image_scale = check_image_scale(image_scale)
        self.on_invalid = on_invalid
        # cache=auto: ram when the decoded set fits cache_ram_share of free RAM (decided in check).
        self.cache_auto = cache == "auto"
        self.cache_ram_share = float(cache_ram_share)
        self.cache: DecodeCache = make_cache("none" if self.cache_auto else cache, cache_dir)
        self.device_cache_share = float(device_cache_share)
        if self.cache.kind == "device":
            check_backend(self.augment)
            if not 0 < self.device_cache_share <= 1:
                raise ConfigError(
                    f"data.device_cache_share={device_cache_share} is invalid: give the share of"
                    " free device memory the data may take, above 0 and at most 1 (e.g. 0.5)."
                )
        # cache=device: split name -> (images, masks) on the device, filled by _device_data.
        self.device_data: dict[str, tuple[Tensor, Tensor]] = {}
        self.splits: dict[str, list[Pair]] | None = None
        self.split_folder: Path | None = None
        self.datasets: dict[str, SegmentationDataset] = {}
        self.report: DataReport | None = None
        # Multi-class: split name -> the classes it holds no pixel of (set with the split).
        self.absent_classes: dict[str, list[str]] = {}
        self.mask_rule: str | None = None

    def check(self) -> DataReport:
        """Run the data check (:mod:`nailseg.data.validate`) and fill the decode cache.

        Raises :class:`~nailseg.errors.DataError` listing the offending files, unless
        ``on_invalid=skip``. Sets :attr:`report` and :attr:`mask_rule`.
        """
        if self.report is None:
            name = describe(self.source)
            scan = self.source.scan()
            if self.size_auto:
                images = [pair.image for pair in scan.pairs]
                self.image_size = auto_image_size(images, self.image_size_max)
            if self.cache_auto:
                self.cache = auto_cache(len(scan.pairs), self.image_size, self.cache_ram_share)
            self.report = check_pairs(
                scan,
                name,
                self.mask_threshold,
                self.on_invalid,
                self.image_size,
                self.cache,
                foreground=self.foreground,
                ignore_index=self.ignore_index,
                image_scale=self.image_scale,
                classes=self.classes,
                palette=self.palette,
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

    def _strata(self, pairs: list[Pair]) -> Strata | None:
        """Multi-class: each pair's image -> the rarest class its mask holds (the class, among
        those it holds, that the fewest images of the data set hold; class 0 only when it holds
        nothing else), so that a drawn split spreads every class over train and valid (a
        stand-in for multi-label stratification, which no dependency here offers). Binary:
        ``None``, and the split is drawn and keyed as it always was."""
        report = self.report
        if self.classes is None or report is None or not report.present:
            return None
        images = report.class_images

        def rarest(pair: Pair) -> str:
            held = report.present.get(pair.mask, frozenset())
            named = sorted(held - {0}) or sorted(held)
            return self.classes[min(named, key=lambda c: (images[c], c))] if named else "none"

        return {pair.image: rarest(pair) for pair in pairs}

    def _split(self, pairs: list[Pair]) -> None:
        self._draw_split(pairs, self._strata(pairs))
        self._warn_absent_classes()

    def _warn_absent_classes(self) -> None:
        """Multi-class: log the classes a non-empty split holds no pixel of."""
        self.absent_classes = {}
        report = self.report
        if self.classes is None or report is None or not report.present:
            return
        for name, members in self.splits.items():
            if not members:
                continue
            held = set().union(*(report.present.get(p.mask, frozenset()) for p in members))
            absent = [c for i, c in enumerate(self.classes) if i not in held]
            if absent:
                self.absent_classes[name] = absent
                log.warning(
                    "The %s split holds no pixel of class(es) %s: its scores for them are"
                    " undefined (left out of the means); add images that hold them.",
                    name,
                    ", ".join(absent),
                )

    def _draw_split(self, pairs: list[Pair], strata: Strata | None = None) -> None:
        """Use the split the data gives, or draw one (``strata``: multi-class, see
        :meth:`_strata`; a given split is kept as it is, only folding it uses them)."""
        given = [p for p in pairs if p.split]
        if self.folds is not None:
            if given:
                log.info(
                    "data.folds=%d: the data gives its own split; its test pairs stay the test"
                    " split and its train and valid pairs are folded",
                    self.folds,
                )
            self.splits, self.split_folder = load_or_create_folds(
                given or pairs,
                self.split_dir,
                self.folds,
                self.fold,
                self.test_fraction,
                self.seed,
                strata,
            )
        elif given:
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
                pairs, self.split_dir, self.valid_fraction, self.test_fraction, self.seed, strata
            )

    def setup(self, stage: str | None = None) -> None:
        if self.splits is not None:
            return
        report = self.check()
        self._split(report.pairs)
        n_valid = len(self.splits["valid"])
        if not n_valid and self.folds is not None:
            raise ConfigError(
                f"Fold {self.fold} of data.folds={self.folds} is empty ({len(report.pairs)}"
                " pairs). Lower data.folds or add data."
            )
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
        for name, members in self.splits.items():
            if members:
                transform = self.augment.sample_transform(train=name == "train")
                self.datasets[name] = SegmentationDataset(
                    members,
                    self.image_size,
                    transform,
                    cache=self.cache,
                    mask_rule=report.rule,
                    image_scale=self.image_scale,
                )

    def fingerprint(self) -> dict[str, Any]:
        """The data fingerprint of the split in use, for the run record: the hashes of the
        split CSVs and of the listed files' sizes, the split folder, the pairs per split, missing
        files and the mask rule (:func:`~nailseg.data.fingerprint.data_fingerprint`), and the image
        size samples are resized to. Valid after ``setup()``."""
        if self.splits is None:
            raise RuntimeError("SegmentationDataModule.fingerprint() needs setup('fit') first.")
        # The training size goes with it: with image_size=auto it is only known from the data.
        return {
            **data_fingerprint(self.split_folder, self.splits, self.mask_rule),
            "image_size": list(self.image_size),
        }

    @property
    def void_value(self) -> int | None:
        """The value void pixels hold in the masks (``None``: the data has none), once checked."""
        return (
            None
            if self.report is None or self.report.rule is None
            else self.report.rule.ignore_index
        )

    @property
    def has_test(self) -> bool:
        return "test" in self.datasets

    def _device_data(self, name: str) -> tuple[Tensor, Tensor]:
        """``cache=device``: split ``name`` on the Trainer's device (the CPU without a Trainer).

        The first call checks the memory and moves every split there at once (``test`` too), then
        empties the RAM cache; a later Trainer on another device gets them moved (checked again).
        """
        device = torch.device("cpu")
        if self.trainer is not None:
            if self.trainer.world_size > 1:
                raise ConfigError(
                    f"data.cache=device does not support training on {self.trainer.world_size}"
                    " processes (DDP) yet: each would need its shard of the data on its device."
                    " Use data.cache=ram."
                )
            device = self.trainer.strategy.root_device
        current = next(iter(self.device_data.values()))[0].device if self.device_data else None
        if current != device:
            needed = sum(split_bytes(len(d), self.image_size) for d in self.datasets.values())
            check_fits(needed, device, self.device_cache_share)
            if current is None:
                self.device_data = {n: stack_split(d, device) for n, d in self.datasets.items()}
                self.cache.entries.clear()  # the device tensors hold the data now
            else:
                self.device_data = {
                    n: (images.to(device), masks.to(device))
                    for n, (images, masks) in self.device_data.items()
                }
            log.info(
                "data.cache=device: %s on %s (%.1f MB)",
                ", ".join(f"{len(d)} {n}" for n, d in self.datasets.items()),
                device,
                needed / 2**20,
            )
        return self.device_data[name]

    def _loader(self, name: str, shuffle: bool) -> DataLoader | DeviceBatches:
        dataset = self.datasets[name]
        sampler = EpochSeededSampler(len(dataset), self.seed, shuffle=shuffle)
        if self.trainer is not None:
            # On resume Lightning starts the first iterator (with workers, their prefetching)
            # before it calls set_epoch: give the sampler the epoch it is about to run, the value
            # Lightning passes to set_epoch later (progress "processed", not current_epoch).
            sampler.set_epoch(self.trainer.fit_loop.epoch_progress.current.processed)
        # BatchNorm cannot train on a batch of one.
        drop_last = shuffle and len(dataset) > self.batch_size
        if self.cache.kind == "device":
            images, masks = self._device_data(name)
            return DeviceBatches(images, masks, sampler, self.batch_size, drop_last)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
            drop_last=drop_last,
        )

    def train_dataloader(self) -> DataLoader | DeviceBatches:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader | DeviceBatches:
        return self._loader("valid", shuffle=False)

    def test_dataloader(self) -> DataLoader | DeviceBatches:
        return self._loader("test", shuffle=False)

    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        trainer = self.trainer
        training = trainer is not None and trainer.training
        dtype = compute_dtype(trainer.precision if trainer is not None else None)
        image, mask = self.augment.batch_transform(
            batch["image"], batch["mask"], batch["seed"], training, dtype=dtype
        )
        return {**batch, "image": image, "mask": mask}


def datamodule_node(data_cfg: DictConfig) -> DictConfig:
    """The ``data`` config node to hand to :func:`hydra.utils.instantiate`: every ``${...}``
    resolved, then the keys in :attr:`SegmentationDataModule.SHORTCUT_KEYS` left out.

    Args:
        data_cfg: ``cfg.data``, still attached to the whole config (its values interpolate
            ``${seed}`` and ``${paths...}``, and the source's ``${..root}`` the node's own keys).

    Examples:
        >>> data = {"root": "/d", "seed": "${seed}", "source": {"root": "${..root}"}}
        >>> cfg = OmegaConf.create({"seed": 3, "data": data})
        >>> OmegaConf.to_container(datamodule_node(cfg.data))
        {'seed': 3, 'source': {'root': '/d'}}
    """
    node = OmegaConf.to_container(data_cfg, resolve=True)
    for key in SegmentationDataModule.SHORTCUT_KEYS:
        node.pop(key, None)
    return OmegaConf.create(node)
