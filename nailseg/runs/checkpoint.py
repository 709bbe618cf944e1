"""Checkpoints that survive a kill and resume exactly.

* :class:`AtomicCheckpointIO` writes each checkpoint to a temporary file in the same folder and
  renames it into place, so a kill at any moment leaves the previous checkpoint whole.
* :class:`RNGStateCallback` stores the global torch/numpy/python RNG states in every checkpoint
  and restores them on resume. Lightning does not; our data and augmentation do not draw from
  the global RNGs, but layers such as dropout do.

Both keep checkpoints loadable with ``torch.load(weights_only=True)``: tensors and plain Python
values only.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from fsspec.implementations.local import LocalFileSystem
from lightning_fabric.utilities.cloud_io import get_filesystem
from lightning_fabric.utilities.types import _PATH
from pytorch_lightning.plugins.io import TorchCheckpointIO


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
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
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
