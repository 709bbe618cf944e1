"""A data fingerprint: which split a run trained on, and whether the files behind it changed.

Hashing every image would take long on a large set; the split CSVs (which files, in which
split) plus each listed file's size catch the usual changes (a file added, removed, moved
between splits or re-exported) in milliseconds. A run records it (``run.json``'s ``data``);
``nailseg diff`` compares it and a resumed run must match it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from nailseg.data.sources.base import Pair


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def data_fingerprint(
    split_folder: Path | str | None,
    splits: Mapping[str, Sequence[Pair]] | None,
    mask_rule: str | None = None,
) -> dict[str, Any]:
    """Fingerprint a run's data from its split folder and split members.

    :meth:`SegmentationDataModule.fingerprint
    <nailseg.data.datamodule.SegmentationDataModule.fingerprint>` calls this with its own.

    Args:
        split_folder: the folder holding ``train.csv``, ``valid.csv`` and maybe ``test.csv``.
        splits: split name -> pairs, as the datamodule holds them after ``setup()``.
        mask_rule: how masks become {0, 1} (the datamodule's ``mask_rule``), recorded as is.

    Returns:
        ``sha256`` (one value over all of it), ``csv_sha256``, ``files_sha256``, the split
        folder, the number of pairs per split, files that were missing, and the mask rule.

    Examples:
        >>> data_fingerprint(None, {})["n"]
        {}
        >>> data_fingerprint(None, {}, "foreground = gray > 127 (8-bit masks)")["mask_rule"]
        'foreground = gray > 127 (8-bit masks)'
    """
    splits = splits or {}
    csv_hash = hashlib.sha256()
    if split_folder is not None:
        for csv in sorted(Path(split_folder).glob("*.csv")):
            csv_hash.update(f"{csv.name}\n".encode())
            csv_hash.update(csv.read_bytes())
    files_hash = hashlib.sha256()
    missing: list[str] = []
    for name in sorted(splits):
        for pair in splits[name]:
            sizes = []
            for path in (Path(pair.image), Path(pair.mask)):
                size = _size(path)
                if size is None:
                    missing.append(str(path))
                sizes.append(f"{path.name}:{size}")
            files_hash.update(f"{name}|{'|'.join(sizes)}\n".encode())
    # repr: the same text (and so the same sha256) as runs recorded before this module moved.
    total = hashlib.sha256(
        f"{csv_hash.hexdigest()}|{files_hash.hexdigest()}|{mask_rule!r}".encode()
    ).hexdigest()
    return {
        "sha256": total,
        "csv_sha256": csv_hash.hexdigest(),
        "files_sha256": files_hash.hexdigest(),
        "split_folder": str(split_folder) if split_folder is not None else None,
        "n": {name: len(members) for name, members in sorted(splits.items())},
        "missing_files": missing[:20],
        "mask_rule": mask_rule,
    }
