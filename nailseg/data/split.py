"""A deterministic, stratified train/valid(/test) split, persisted as CSV and reused.

The split lives in a folder named after a hash of the pair list and the split parameters, so the
same data and parameters reuse the same CSVs, and any change makes a new split instead of
silently reusing a stale one.
"""

from __future__ import annotations

import hashlib
import logging
import zlib
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from nailseg.data.sources.base import Pair
from nailseg.errors import ConfigError, DataError

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
CSV_COLUMNS = ("image", "mask", "group")


def stratified_split(
    pairs: Sequence[Pair], valid_fraction: float, test_fraction: float = 0.0, seed: int = 0
) -> dict[str, list[Pair]]:
    """Split each group by the same fractions, shuffled by a generator seeded from ``seed``.

    A group with at least two pairs always gives one pair to valid when ``valid_fraction > 0``.
    """
    if (
        not 0 <= valid_fraction < 1
        or not 0 <= test_fraction < 1
        or valid_fraction + test_fraction >= 1
    ):
        raise ConfigError(
            f"Split fractions valid={valid_fraction}, test={test_fraction} are invalid: each"
            " must be in [0, 1) and their sum below 1. Fix data.valid_fraction /"
            " data.test_fraction."
        )
    by_group: dict[str, list[Pair]] = defaultdict(list)
    for pair in pairs:
        by_group[pair.group].append(pair)
    result: dict[str, list[Pair]] = {name: [] for name in SPLITS}
    for group in sorted(by_group):
        members = sorted(by_group[group], key=lambda p: str(p.image))
        # One generator per group, so adding a group does not reshuffle the others.
        order = np.random.default_rng([seed, zlib.crc32(group.encode())]).permutation(len(members))
        n_valid = _count(len(members), valid_fraction)
        n_test = _count(len(members) - n_valid, test_fraction / (1 - valid_fraction))
        shuffled = [members[i] for i in order]
        result["valid"] += shuffled[:n_valid]
        result["test"] += shuffled[n_valid : n_valid + n_test]
        result["train"] += shuffled[n_valid + n_test :]
    return result


def _count(size: int, fraction: float) -> int:
    if fraction <= 0 or size < 2:
        return 0
    return min(size - 1, max(1, round(size * fraction)))


def split_key(pairs: Sequence[Pair], valid_fraction: float, test_fraction: float, seed: int) -> str:
    """A short hash of what the split depends on."""
    digest = hashlib.sha1(f"{valid_fraction}|{test_fraction}|{seed}".encode())
    for pair in sorted(pairs, key=lambda p: str(p.image)):
        digest.update(f"{pair.image}|{pair.mask}|{pair.group}\n".encode())
    return digest.hexdigest()[:12]


def write_split(splits: dict[str, list[Pair]], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, members in splits.items():
        if name == "test" and not members:
            continue
        frame = pd.DataFrame(
            [(str(p.image), str(p.mask), p.group) for p in members], columns=list(CSV_COLUMNS)
        )
        tmp = folder / f".{name}.csv.tmp"
        frame.to_csv(tmp, index=False)
        tmp.replace(folder / f"{name}.csv")


def read_split(folder: Path) -> dict[str, list[Pair]]:
    splits: dict[str, list[Pair]] = {name: [] for name in SPLITS}
    for name in SPLITS:
        path = folder / f"{name}.csv"
        if not path.is_file():
            continue
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        missing = set(CSV_COLUMNS[:2]) - set(frame.columns)
        if missing:
            raise DataError(
                f"Split file {path} lacks column(s) {sorted(missing)}; it needs"
                f" {list(CSV_COLUMNS)}."
                " Delete it to have the split made again."
            )
        groups = frame["group"] if "group" in frame.columns else [""] * len(frame)
        splits[name] = [
            Pair(Path(i), Path(m), g)
            for i, m, g in zip(frame["image"], frame["mask"], groups, strict=True)
        ]
    return splits


def load_or_create_split(
    pairs: Sequence[Pair],
    split_root: Path,
    valid_fraction: float,
    test_fraction: float = 0.0,
    seed: int = 0,
) -> tuple[dict[str, list[Pair]], Path]:
    """The split and the folder of its CSVs, reusing ``train.csv``/``valid.csv`` if present."""
    folder = Path(split_root) / split_key(pairs, valid_fraction, test_fraction, seed)
    if (folder / "train.csv").is_file() and (folder / "valid.csv").is_file():
        log.info("Reusing split %s", folder)
        return read_split(folder), folder
    splits = stratified_split(pairs, valid_fraction, test_fraction, seed)
    write_split(splits, folder)
    log.info(
        "Wrote split %s: %d train / %d valid / %d test",
        folder,
        len(splits["train"]),
        len(splits["valid"]),
        len(splits["test"]),
    )
    return splits, folder
