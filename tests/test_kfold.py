"""k-fold cross-validation: ``data.folds=K data.fold=I`` (nailseg/data/split.py)."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pytest

from nailseg.build import build_datamodule
from nailseg.data.sources.base import Pair
from nailseg.data.split import (
    assign_folds,
    kfold_split,
    load_or_create_folds,
    load_or_create_split,
    read_split,
)
from nailseg.errors import ConfigError
from nailseg.runs.record import read_run
from nailseg.train import run

# Four groups of uneven sizes, 40 pairs: a small group (2) is fewer pairs than folds.
SIZES = {"a": 17, "b": 10, "c": 11, "d": 2}


def _pairs(split: str = "") -> list[Pair]:
    return [
        Pair(Path(f"/img/{g}/{i}.png"), Path(f"/mask/{g}/{i}.png"), g, split)
        for g, n in SIZES.items()
        for i in range(n)
    ]


def _names(pairs: list[Pair]) -> list[str]:
    return sorted(str(p.image) for p in pairs)


def test_folds_cover_the_pool_without_overlap_and_spread_each_group() -> None:
    pairs = _pairs()
    folds = assign_folds(pairs, 3, seed=7)
    every = [str(p.image) for fold in folds for p in fold]
    assert sorted(every) == _names(pairs)  # all covered, none twice
    assert max(map(len, folds)) - min(map(len, folds)) <= 1  # 14/13/13
    for group, size in SIZES.items():
        counts = [sum(p.group == group for p in fold) for fold in folds]
        assert sum(counts) == size
        # Stratified: a group's share of every fold differs by at most one pair.
        assert max(counts) - min(counts) <= 1, (group, counts)
    # Group "a" (17 pairs) has 5 or 6 pairs in each fold, as 17/3 says; not all in one.
    assert sorted(sum(p.group == "a" for p in fold) for fold in folds) == [5, 6, 6]


def test_each_fold_validates_once_and_trains_on_the_rest() -> None:
    pairs = _pairs()
    valid_sets = []
    for fold in range(3):
        split = kfold_split(pairs, 3, fold, seed=7)
        assert not set(_names(split["train"])) & set(_names(split["valid"]))
        assert sorted(_names(split["train"]) + _names(split["valid"])) == _names(pairs)
        assert split["test"] == []
        valid_sets.append(set(_names(split["valid"])))
    assert set.union(*valid_sets) == set(_names(pairs))
    assert sum(map(len, valid_sets)) == len(pairs)


def test_same_seed_same_folds_other_seed_other_folds() -> None:
    pairs = _pairs()
    first = [_names(f) for f in assign_folds(pairs, 3, seed=7)]
    again = [_names(f) for f in assign_folds(list(reversed(pairs)), 3, seed=7)]
    other = [_names(f) for f in assign_folds(pairs, 3, seed=8)]
    assert first == again  # input order does not matter
    assert first != other
    # One group only (an ungrouped folder layout): the seed still decides.
    flat = [Pair(p.image, p.mask) for p in pairs]
    assert [_names(f) for f in assign_folds(flat, 3, 1)] != [
        _names(f) for f in assign_folds(flat, 3, 2)
    ]


def test_the_test_split_is_held_out_and_the_same_for_every_fold() -> None:
    pairs = _pairs()
    tests = []
    for fold in range(3):
        split = kfold_split(pairs, 3, fold, test_fraction=0.2, seed=7)
        test = set(_names(split["test"]))
        assert not test & set(_names(split["train"] + split["valid"]))
        assert len(test) + len(split["train"]) + len(split["valid"]) == len(pairs)
        tests.append(test)
    assert tests[0] == tests[1] == tests[2]
    assert 6 <= len(tests[0]) <= 10  # about 20 % of 40, per group


def test_a_given_split_keeps_its_test_pairs_and_folds_the_rest() -> None:
    pairs = _pairs("train")[:30] + _pairs("valid")[30:36] + _pairs("test")[36:]
    split = kfold_split(pairs, 3, 2, seed=0)
    assert _names(split["test"]) == _names(pairs[36:])
    assert sorted(_names(split["train"]) + _names(split["valid"])) == _names(pairs[:36])


@pytest.mark.parametrize(
    ("folds", "fold", "words"),
    [
        (3, 3, ["data.fold=3", "data.folds=3", "0 to 2"]),
        (3, -1, ["data.fold=-1", "0 to 2"]),
        (1, 0, ["data.folds=1", "at least 2"]),
    ],
)
def test_out_of_range_folds_name_the_values_and_the_fix(
    make_cfg, folds: int, fold: int, words: list[str]
) -> None:
    cfg = make_cfg(f"data.folds={folds}", f"data.fold={fold}")
    with pytest.raises(ConfigError) as err:
        build_datamodule(cfg)
    for word in words:
        assert word in str(err.value)


def test_more_folds_than_pairs_is_refused() -> None:
    with pytest.raises(ConfigError, match="needs at least 50 pairs"):
        kfold_split(_pairs(), 50, 0)


def test_fold_csvs_never_overwrite_each_other_or_the_plain_split(tmp_path: Path) -> None:
    pairs = _pairs()
    folders = {}
    for folds, fold, seed in [(3, 0, 7), (3, 1, 7), (3, 0, 8), (5, 0, 7)]:
        split, folder = load_or_create_folds(pairs, tmp_path, folds, fold, 0.0, seed)
        assert f"folds{folds}-fold{fold}-seed{seed}-" in folder.name
        assert _names(read_split(folder)["valid"]) == _names(split["valid"])
        folders[(folds, fold, seed)] = folder
    _, plain = load_or_create_split(pairs, tmp_path, 0.2, 0.0, 7)
    assert len({*folders.values(), plain}) == 5
    # Written once, then reused as it is: the CSV of fold (3, 0, 7) is unchanged.
    before = (folders[(3, 0, 7)] / "valid.csv").read_text()
    again, folder = load_or_create_folds(pairs, tmp_path, 3, 0, 0.0, 7)
    assert folder == folders[(3, 0, 7)] and (folder / "valid.csv").read_text() == before


def test_a_tiny_run_trains_on_fold_1_of_3(make_cfg) -> None:
    cfg = make_cfg("data.folds=3", "data.fold=1", "data.test_fraction=0.2")
    record = run(cfg)
    assert record["status"] == "completed"
    assert read_run(cfg.paths.output_dir)["status"] == "completed"
    assert all(math.isfinite(record["metrics"][k]) for k in ("val/iou", "val/loss", "test/iou"))
    data = record["data"]
    assert "folds3-fold1-seed42-" in data["split_folder"]
    # 24 synthetic pairs in 4 groups of 6: 4 test (1 a group), 20 folded: 6 or 7 validate.
    assert data["n"]["test"] == 4 and data["n"]["valid"] in (6, 7)
    assert data["n"]["train"] + data["n"]["valid"] == 20
    groups = Counter(p.group for p in read_split(Path(data["split_folder"]))["valid"])
    assert sorted(groups) == ["1", "2", "3", "4"]  # every group validates in the fold
