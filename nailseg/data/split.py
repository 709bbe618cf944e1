"""A deterministic, stratified train/valid(/test) split, persisted as CSV and reused.

The split lives in a folder named after a hash of the pair list and the split parameters, so the
same data and parameters reuse the same CSVs, and any change makes a new split instead of
silently reusing a stale one.

k-fold cross-validation (``data.folds=K data.fold=I``, :func:`kfold_split`): the training pool
(every pair not in the test split) is cut into K folds, each group spread over them; fold I
validates and the rest trains. Each (K, I, seed) gets its own folder (:func:`fold_key`), so folds
never overwrite each other or the plain split.

Multi-class (``strata``, from :meth:`SegmentationDataModule._strata
<nailseg.data.datamodule.SegmentationDataModule._strata>`): the drawn split and the folds are
stratified by group *and* each image's rarest class, so a class held by a few images reaches
train and valid alike. The stratum only draws the split: the CSVs keep each pair's own group, and
the split key includes the strata (binary data, ``strata=None``, keeps its split and folder).
"""

from __future__ import annotations

import hashlib
import logging
import os
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
# Image path -> its stratum within its group (multi-class: the rarest class its mask holds).
Strata = dict[Path, str]


def stratum(pair: Pair, strata: Strata | None) -> str:
    """What ``pair`` is stratified by: its group, plus its entry in ``strata`` when given.

    Examples:
        >>> pair = Pair(Path("a.png"), Path("a_mask.png"), "left")
        >>> stratum(pair, None), stratum(pair, {Path("a.png"): "skin"})
        ('left', 'left|skin')
    """
    return pair.group if strata is None else f"{pair.group}|{strata.get(pair.image, '')}"


def _by_stratum(pairs: Sequence[Pair], strata: Strata | None) -> dict[str, list[Pair]]:
    by: dict[str, list[Pair]] = defaultdict(list)
    for pair in pairs:
        by[stratum(pair, strata)].append(pair)
    return by


def stratified_split(
    pairs: Sequence[Pair],
    valid_fraction: float,
    test_fraction: float = 0.0,
    seed: int = 0,
    strata: Strata | None = None,
) -> dict[str, list[Pair]]:
    """Split each group by the same fractions, shuffled by a generator seeded from ``seed``.

    A group with at least two pairs always gives one pair to valid when ``valid_fraction > 0``.
    With ``strata`` each group is cut further by its pairs' strata (:func:`stratum`).
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
    by_group = _by_stratum(pairs, strata)
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


def split_key(
    pairs: Sequence[Pair],
    valid_fraction: float,
    test_fraction: float,
    seed: int,
    strata: Strata | None = None,
) -> str:
    """A short hash of what the split depends on (``strata`` only when given)."""
    marker = "" if strata is None else "|strata"
    digest = hashlib.sha1(f"{valid_fraction}|{test_fraction}|{seed}{marker}".encode())
    for pair in sorted(pairs, key=lambda p: str(p.image)):
        line = f"{pair.image}|{pair.mask}|{pair.group}"
        if strata is not None:
            line += f"|{strata.get(pair.image, '')}"
        digest.update(f"{line}\n".encode())
    return digest.hexdigest()[:12]


def write_split(splits: dict[str, list[Pair]], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, members in splits.items():
        if name == "test" and not members:
            continue
        frame = pd.DataFrame(
            [(str(p.image), str(p.mask), p.group) for p in members], columns=list(CSV_COLUMNS)
        )
        # A temp name of this process's own: DDP ranks may write the same (identical) split at
        # once, and a shared temp file would be replaced away under one of them.
        tmp = folder / f".{name}.csv.{os.getpid()}.tmp"
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
    strata: Strata | None = None,
) -> tuple[dict[str, list[Pair]], Path]:
    """The split and the folder of its CSVs, reusing ``train.csv``/``valid.csv`` if present."""
    folder = Path(split_root) / split_key(pairs, valid_fraction, test_fraction, seed, strata)
    if (folder / "train.csv").is_file() and (folder / "valid.csv").is_file():
        log.info("Reusing split %s", folder)
        return read_split(folder), folder
    splits = stratified_split(pairs, valid_fraction, test_fraction, seed, strata)
    write_split(splits, folder)
    log.info(
        "Wrote split %s: %d train / %d valid / %d test",
        folder,
        len(splits["train"]),
        len(splits["valid"]),
        len(splits["test"]),
    )
    return splits, folder


def check_folds(folds: int | None, fold: int) -> None:
    """``data.folds``/``data.fold``: ``folds`` null (no k-fold) or a whole number of at least 2,
    and ``fold`` one of ``0 .. folds-1``."""
    if folds is None:
        return
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ConfigError(
            f"data.folds={folds!r} is invalid: give the number of cross-validation folds, a whole"
            " number of at least 2 (e.g. data.folds=5), or null for the plain split."
        )
    if isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < folds:
        raise ConfigError(
            f"data.fold={fold!r} is out of range for data.folds={folds}: give the validation"
            f" fold, 0 to {folds - 1} (e.g. data.fold=0, or -m data.fold=range({folds}) for all)."
        )


def assign_folds(
    pairs: Sequence[Pair], folds: int, seed: int = 0, strata: Strata | None = None
) -> list[list[Pair]]:
    """``pairs`` dealt into ``folds`` folds, stratified by group (and ``strata``, when given:
    :func:`stratum`), shuffled by ``seed``.

    Written here because no installed library does it (scikit-learn's ``StratifiedKFold`` is not
    a dependency): each group's members, shuffled, are dealt round-robin over the folds, and the
    deal goes on where the previous group's ended, so every group is spread evenly (its count in
    any two folds differs by at most one) and so are the folds' sizes. Groups are visited in an
    order shuffled by ``seed`` too, so the seed matters even when every group has one pair.
    """
    check_folds(folds, 0)
    by_group = _by_stratum(pairs, strata)
    groups = sorted(by_group)
    result: list[list[Pair]] = [[] for _ in range(folds)]
    position = 0
    for g in np.random.default_rng([seed, folds]).permutation(len(groups)).tolist():
        members = sorted(by_group[groups[g]], key=lambda p: str(p.image))
        rng = np.random.default_rng([seed, zlib.crc32(groups[g].encode()), folds])
        for i in rng.permutation(len(members)).tolist():
            result[position % folds].append(members[i])
            position += 1
    return result


def kfold_split(
    pairs: Sequence[Pair],
    folds: int,
    fold: int,
    test_fraction: float = 0.0,
    seed: int = 0,
    strata: Strata | None = None,
) -> dict[str, list[Pair]]:
    """Fold ``fold`` of ``folds`` as the validation split, the other folds as train.

    Pairs that carry a ``split`` (a list file's column, VOC image sets) keep their given test
    split and the rest (given train and valid) is folded; otherwise the test split is the plain
    split's (:func:`stratified_split` with ``test_fraction`` and no validation), the same for
    every fold. ``strata`` stratifies the drawn test split and the folds (:func:`stratum`).
    """
    check_folds(folds, fold)
    given = [p for p in pairs if p.split]
    if given:
        test = [p for p in given if p.split == "test"]
        pool = [p for p in given if p.split != "test"]
    else:
        plain = stratified_split(pairs, 0.0, test_fraction, seed, strata)
        test, pool = plain["test"], plain["train"]
    if len(pool) < folds:
        raise ConfigError(
            f"data.folds={folds} needs at least {folds} pairs to fold, but the training pool has"
            f" {len(pool)}. Lower data.folds or add data."
        )
    dealt = assign_folds(pool, folds, seed, strata)
    train = [p for i, members in enumerate(dealt) if i != fold for p in members]
    return {"train": train, "valid": dealt[fold], "test": test}


def fold_key(
    pairs: Sequence[Pair],
    folds: int,
    fold: int,
    test_fraction: float,
    seed: int,
    strata: Strata | None = None,
) -> str:
    """The folder name of one fold's split: ``folds5-fold2-seed42-<hash>``, the hash of the pair
    list (given splits included), the test fraction and ``strata`` (only when given)."""
    marker = "" if strata is None else "|strata"
    digest = hashlib.sha1(f"folds|{folds}|{test_fraction}|{seed}{marker}".encode())
    for pair in sorted(pairs, key=lambda p: str(p.image)):
        line = f"{pair.image}|{pair.mask}|{pair.group}|{pair.split}"
        if strata is not None:
            line += f"|{strata.get(pair.image, '')}"
        digest.update(f"{line}\n".encode())
    return f"folds{folds}-fold{fold}-seed{seed}-{digest.hexdigest()[:12]}"


def load_or_create_folds(
    pairs: Sequence[Pair],
    split_root: Path,
    folds: int,
    fold: int,
    test_fraction: float = 0.0,
    seed: int = 0,
    strata: Strata | None = None,
) -> tuple[dict[str, list[Pair]], Path]:
    """Fold ``fold``'s split and the folder of its CSVs, reused when already written."""
    check_folds(folds, fold)
    given = any(p.split for p in pairs)
    name = fold_key(pairs, folds, fold, 0.0 if given else test_fraction, seed, strata)
    folder = Path(split_root) / (f"given-{name}" if given else name)
    if (folder / "train.csv").is_file() and (folder / "valid.csv").is_file():
        log.info("Reusing fold split %s", folder)
        return read_split(folder), folder
    splits = kfold_split(pairs, folds, fold, test_fraction, seed, strata)
    write_split(splits, folder)
    log.info(
        "Wrote fold %d of %d (%s): %d train / %d valid / %d test",
        fold,
        folds,
        folder,
        len(splits["train"]),
        len(splits["valid"]),
        len(splits["test"]),
    )
    return splits, folder
