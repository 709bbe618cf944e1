"""A cache of decoded, resized ``uint8`` images and binary masks, so later epochs skip decoding.

``data.cache``:

- ``none``: decode every sample every epoch.
- ``ram``: a dict in memory. The DataModule fills it in the main process while it validates the
  data (which decodes every file anyway), *before* DataLoader workers start; forked workers then
  share those arrays copy-on-write, spawned workers get a pickled copy once (persistent workers).
  A sample a worker decodes itself lands only in that worker's copy, which persistent workers
  keep for later epochs. Needs ``pairs x H x W x 4`` bytes, e.g. 13 MB for 52 pairs at 256 px.
- ``disk``: ``.npy`` files under ``cache_dir``, shared by all workers and by later runs.
- ``device``: the whole data set on the model's device (the GPU; on a CPU-only machine, the CPU),
  as ``uint8`` tensors, images ``(N, 3, H, W)`` and masks ``(N, 1, H, W)`` per split. The data
  check fills a :class:`DeviceCache` (a RAM cache) as for ``ram``; when the loaders are first
  requested the DataModule stacks it, moves it to the device once, empties the RAM copy, and
  gathers every batch there by index (:mod:`nailseg.data.device`): no workers, no per-step copy
  from the host. Needs ``pairs x H x W x 4`` bytes of device memory; the DataModule stops before
  training when that is over ``data.device_cache_share`` of the memory free there. Only for
  backends that augment on the device (``aug=kornia_gpu``, ``aug=none``).

The key of an entry is a hash of both files' identity (resolved path, size, mtime), the target
size, the mask rule (threshold, foreground labels, void value) and ``data.image_scale``, so an
edited file, another resolution or another rule never reads a stale entry.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from nailseg.data.masks import MaskRule
from nailseg.data.sources.base import Pair
from nailseg.errors import ConfigError, ensure_writable_dir

CACHE_KINDS = ("none", "ram", "disk", "device")
Arrays = tuple[np.ndarray, np.ndarray]


def _identity(path: Path) -> str:
    stat = path.stat()
    return f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"


def cache_key(pair: Pair, image_size: Sequence[int], rule: float | str) -> str:
    """A hash of what a cached sample depends on; ``rule`` is a mask threshold, or the text of
    :func:`decoding_rule`."""
    rule_text = f"{rule:g}" if isinstance(rule, int | float) else str(rule)
    text = f"{_identity(pair.image)}\n{_identity(pair.mask)}\n{tuple(image_size)}\n{rule_text}"
    return hashlib.sha1(text.encode()).hexdigest()


def decoding_rule(mask_rule: MaskRule, image_scale: str) -> str:
    """The decoding rule of a cached sample in words: the mask rule and ``data.image_scale``."""
    return f"{mask_rule.key}|image_scale={image_scale}"


class DecodeCache:
    """Base class and ``data.cache=none``: stores nothing."""

    kind = "none"

    def get(self, key: str) -> Arrays | None:
        return None

    def put(self, key: str, image: np.ndarray, mask: np.ndarray) -> None:
        pass

    def __len__(self) -> int:
        return 0


class RamCache(DecodeCache):
    """``data.cache=ram``: a dict per process (see the module docstring for workers)."""

    kind = "ram"

    def __init__(self) -> None:
        self.entries: dict[str, Arrays] = {}

    def get(self, key: str) -> Arrays | None:
        entry = self.entries.get(key)
        # Copies, so a transform that works in place cannot change the cached sample.
        return None if entry is None else (entry[0].copy(), entry[1].copy())

    def put(self, key: str, image: np.ndarray, mask: np.ndarray) -> None:
        self.entries[key] = (image, mask)

    def __len__(self) -> int:
        return len(self.entries)


class DeviceCache(RamCache):
    """``data.cache=device``: the RAM cache the data check fills and the DataModule stacks onto the
    device (:mod:`nailseg.data.device`); the DataModule then keeps the device tensors."""

    kind = "device"


class DiskCache(DecodeCache):
    """``data.cache=disk``: ``<folder>/<key[:2]>/<key>.image.npy`` and ``.mask.npy``."""

    kind = "disk"

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def _paths(self, key: str) -> tuple[Path, Path]:
        base = self.folder / key[:2] / key
        return base.with_suffix(".image.npy"), base.with_suffix(".mask.npy")

    def get(self, key: str) -> Arrays | None:
        image_path, mask_path = self._paths(key)
        try:
            return np.load(image_path), np.load(mask_path)
        except (FileNotFoundError, ValueError, OSError):
            # Missing, or half-written by a process that was killed: decode again.
            return None

    def put(self, key: str, image: np.ndarray, mask: np.ndarray) -> None:
        image_path, mask_path = self._paths(key)
        image_path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename, so a worker never reads a half-written file; the mask goes last,
        # and get() needs both.
        for path, array in ((image_path, image), (mask_path, mask)):
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            with open(tmp, "wb") as handle:
                np.save(handle, array)
            tmp.replace(path)

    def __len__(self) -> int:
        return sum(1 for _ in self.folder.glob("*/*.mask.npy")) if self.folder.is_dir() else 0


def make_cache(kind: str, folder: str | Path | None = None) -> DecodeCache:
    """The cache for ``data.cache=kind``; ``folder`` is where ``disk`` writes (created here).

    Raises:
        ConfigError: an unknown kind, or a ``disk`` folder that cannot be created or written.
    """
    if kind in (None, "none", False):
        return DecodeCache()
    if kind == "ram":
        return RamCache()
    if kind == "device":
        return DeviceCache()
    if kind == "disk":
        if folder is None:
            raise ConfigError("data.cache=disk needs data.cache_dir=/path/to/folder.")
        # Refused here, before any sample is decoded, not as an OSError from the first write.
        ensure_writable_dir(
            Path(folder),
            f"data.cache_dir={folder}",
            "Choose a writable folder with data.cache_dir=DIR, or use data.cache=ram.",
        )
        return DiskCache(folder)
    raise ConfigError(f"Unknown data.cache={kind!r}. Options: auto, {', '.join(CACHE_KINDS)}.")
