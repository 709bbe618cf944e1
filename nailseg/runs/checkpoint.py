"""Checkpoints that survive a kill and resume exactly.

* :class:`AtomicCheckpointIO` writes each checkpoint to a temporary file in the same folder and
  renames it into place, so a kill at any moment leaves the previous checkpoint whole.
* :class:`RNGStateCallback` stores the global torch/numpy/python RNG states in every checkpoint
  and restores them on resume. Lightning does not; our data and augmentation do not draw from
  the global RNGs, but layers such as dropout do.
* :func:`stale_temp_files` and :func:`orphan_checkpoints` find what a kill during a checkpoint
  write leaves behind, so that resuming can remove it.

Both keep checkpoints loadable with ``torch.load(weights_only=True)``: tensors and plain Python
values only.
"""

from __future__ import annotations

import os
import pickle
import random
import re
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from fsspec.implementations.local import LocalFileSystem
from lightning_fabric.utilities.cloud_io import get_filesystem
from lightning_fabric.utilities.types import _PATH
from pytorch_lightning.plugins.io import TorchCheckpointIO

from nailseg.errors import PickledCheckpointError, refused_pickle
from nailseg.runs import stop

TEMP_SUFFIX = ".tmp"
# AtomicCheckpointIO's temp files: ".<name>.<pid>.tmp".
_TEMP_NAME = re.compile(r"\.(?P<name>.+)\.(?P<pid>\d+)" + re.escape(TEMP_SUFFIX))


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` that replaces the file atomically (temp file, fsync, ``os.replace``).

    Remote paths (``s3://`` and the like) go through Lightning's own writer.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(
                f"{type(self).__name__} takes no storage_options, got {storage_options!r}."
            )
        if not isinstance(get_filesystem(path), LocalFileSystem):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}{TEMP_SUFFIX}")
        try:
            # A stop that comes meanwhile waits until the checkpoint is in place (stop.deferred).
            with stop.deferred():
                with open(tmp, "wb") as file:
                    torch.save(checkpoint, file)
                    file.flush()
                    os.fsync(file.fileno())
                os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


class RNGStateCallback(pl.Callback):
    """Save the global RNG states with each checkpoint; restore them when training resumes."""

    def state_dict(self) -> dict[str, Any]:
        _, keys, pos, has_gauss, cached = np.random.get_state()
        version, internal, gauss_next = random.getstate()
        state = {
            "torch": torch.get_rng_state(),
            "numpy": {
                "keys": torch.from_numpy(keys.astype(np.int64)),
                "pos": int(pos),
                "has_gauss": int(has_gauss),
                "cached_gaussian": float(cached),
            },
            "python": {
                "version": version,
                "internal": torch.tensor(internal, dtype=torch.int64),
                "gauss_next": gauss_next,
            },
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        torch.set_rng_state(state_dict["torch"].cpu())
        npy = state_dict["numpy"]
        np.random.set_state(
            (
                "MT19937",
                npy["keys"].numpy().astype(np.uint32),
                npy["pos"],
                npy["has_gauss"],
                npy["cached_gaussian"],
            )
        )
        py = state_dict["python"]
        random.setstate((py["version"], tuple(py["internal"].tolist()), py["gauss_next"]))
        if "cuda" in state_dict and torch.cuda.is_available():
            states = state_dict["cuda"]
            if len(states) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all([s.cpu() for s in states])


def read_error(err: BaseException) -> str:
    """Why a checkpoint could not be read, in a few words: ``RuntimeError: PytorchStreamReader
    failed reading zip archive``; ``EOFError`` alone when the exception says nothing."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0].split('. ')[0]}" if lines else type(err).__name__


def read_checkpoint(path: Path | str, mmap: bool = True) -> dict[str, Any]:
    """A checkpoint's contents: tensors and plain values only (``weights_only``), memory-mapped
    (tensors are then not read until used) unless ``mmap`` is false or the file is not in
    ``torch.save``'s zip format (an old-format file or a plain pickle, which torch cannot map).

    Raises:
        PickledCheckpointError: the file holds pickled Python objects (torch's own message would
            advise loading it unsafely: it is never shown).
        Exception: whatever ``torch.load`` raises for a truncated or damaged file.
    """
    mmap = mmap and zipfile.is_zipfile(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        if refused_pickle(err):
            raise PickledCheckpointError(path) from None
        raise


def _process_exists(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def stale_temp_files(folder: Path) -> list[Path]:
    """Temp files of :class:`AtomicCheckpointIO` in ``folder`` whose writing process is gone.

    A kill during a write leaves ``.<name>.<pid>.tmp`` (as large as a checkpoint). The file of a
    process that still exists on this machine may be being written, so it is never listed.
    """
    if not folder.is_dir():
        return []
    return [
        path
        for path in sorted(folder.glob(f".*{TEMP_SUFFIX}"))
        if (match := _TEMP_NAME.fullmatch(path.name))
        and path.is_file()
        and not _process_exists(int(match["pid"]))
    ]


def recorded_checkpoints(state: dict[str, Any]) -> set[str]:
    """Every file a checkpoint's ModelCheckpoint states know: best, k-th best, last, top-k."""
    paths: set[str] = set()
    for key, callback in (state.get("callbacks") or {}).items():
        if not str(key).startswith("ModelCheckpoint") or not isinstance(callback, dict):
            continue
        paths.update(str(p) for p in (callback.get("best_k_models") or {}))
        for field in ("best_model_path", "kth_best_model_path", "last_model_path"):
            if callback.get(field):
                paths.add(str(callback[field]))
    return paths


def filename_pattern(template: str | None) -> re.Pattern[str]:
    """The names a ModelCheckpoint ``filename`` template produces (``-vN`` versions included).

    Examples:
        >>> bool(filename_pattern("epoch{epoch:03d}-iou{val/iou:.4f}").fullmatch(
        ...     "epoch002-iou0.5000-v1.ckpt"))
        True
        >>> bool(filename_pattern("epoch{epoch:03d}-iou{val/iou:.4f}").fullmatch("mine.ckpt"))
        False
    """
    parts = re.split(r"\{[^{}]*\}", template or "{epoch}-{step}")
    return re.compile(".+".join(map(re.escape, parts)) + r"(?:-v\d+)?\.ckpt")


def orphan_checkpoints(
    last: Path, step: int, known: set[str], topk: Iterable[tuple[Path, str | None]]
) -> list[Path]:
    """Top-k checkpoints written after ``last`` that ``last`` does not know.

    The top-k callback writes its file before ``last.ckpt`` is written; a kill between the two
    leaves a top-k file that the resumed run, restoring the top-k state from ``last.ckpt``, never
    tracks or deletes (it writes that epoch's file again, as ``-v1``). A file is an orphan only
    if all of these hold, so a checkpoint of the run that ``last`` knows, or any file the top-k
    callback did not write, is never listed:

    * it lies in a top-k callback's folder and has a name that callback's template produces;
    * ``last``'s ModelCheckpoint states do not name it (``known``, real paths);
    * it loads, and its ``global_step`` is beyond ``step``, that of ``last``.

    Args:
        last: the checkpoint resumed from.
        step: its ``global_step``.
        known: the real paths its ModelCheckpoint states name (:func:`recorded_checkpoints`).
        topk: ``(dirpath, filename template)`` of each top-k (monitored) ModelCheckpoint.
    """
    known = known | {os.path.realpath(last)}
    orphans = []
    for folder, template in topk:
        pattern = filename_pattern(template)
        for path in sorted(Path(folder).glob("*.ckpt")) if Path(folder).is_dir() else []:
            if os.path.realpath(path) in known or not pattern.fullmatch(path.name):
                continue
            try:
                later = int(read_checkpoint(path).get("global_step", -1)) > step
            except Exception:  # noqa: BLE001 - unreadable: not written by us (atomic), keep it
                continue
            if later:
                orphans.append(path)
    return orphans
