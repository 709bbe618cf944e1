"""Multi-class splits: the rarest-class strata draw the split and the folds but never reach the
CSVs or a split the data gives; binary splits keep their keys; check-data shows the class table
and the classes a split lacks. (The report's numbers, the warnings and the value and colour
errors: tests/test_multiclass_check.py.)"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nailseg.build import build_datamodule
from nailseg.commands.check_data import main as check_data
from nailseg.data.sources.base import Pair
from nailseg.data.split import assign_folds, fold_key, split_key, stratified_split
from tests.multiclass_data import VOID, class_mask, make_voc
from tests.test_multiclass_check import NAMES, folder_datamodule, write_folder


def rare_skin_masks(count: int = 10, holding: int = 2) -> list[np.ndarray]:
    """``count`` masks with nail in each and skin in the first ``holding`` only."""
    masks = [class_mask(i, (32, 32)) for i in range(count)]
    for mask in masks[holding:]:
        mask[mask == 2] = 0
    return masks


def old_split_key(pairs, valid_fraction: float, test_fraction: float, seed: int) -> str:
    """split_key as it was before multi-class strata, spelt out: binary folders must not move."""
    digest = hashlib.sha1(f"{valid_fraction}|{test_fraction}|{seed}".encode())
    for pair in sorted(pairs, key=lambda p: str(p.image)):
        digest.update(f"{pair.image}|{pair.mask}|{pair.group}\n".encode())
    return digest.hexdigest()[:12]


def csv_groups(folder: Path) -> set[str]:
    return {
        g
        for name in ("train", "valid")
        for g in pd.read_csv(folder / f"{name}.csv", dtype=str, keep_default_na=False)["group"]
    }


def test_strata_none_is_the_binary_split_and_key() -> None:
    pairs = [Pair(Path(f"{i:02d}.png"), Path(f"m{i:02d}.png"), "ab"[i % 2]) for i in range(12)]
    strata = {p.image: "skin" if i < 4 else "nail" for i, p in enumerate(pairs)}
    assert stratified_split(pairs, 0.25, 0.0, 3, None) == stratified_split(pairs, 0.25, 0.0, 3)
    assert split_key(pairs, 0.25, 0.0, 3, None) == old_split_key(pairs, 0.25, 0.0, 3)
    assert split_key(pairs, 0.25, 0.0, 3, strata) != split_key(pairs, 0.25, 0.0, 3)
    assert fold_key(pairs, 3, 0, 0.0, 3, strata) != fold_key(pairs, 3, 0, 0.0, 3)
    assert assign_folds(pairs, 3, 3, None) == assign_folds(pairs, 3, 3)
    # Skin in two pairs of each group: the strata send one of each to valid, one to train.
    split = stratified_split(pairs, 0.25, 0.0, 3, strata)
    for name in ("train", "valid"):
        skin = [p.group for p in split[name] if strata[p.image] == "skin"]
        assert sorted(skin) == ["a", "b"], name


def test_the_drawn_split_keeps_each_pairs_own_group_in_its_csvs(make_cfg, tmp_path: Path) -> None:
    images, mask_dir = write_folder(tmp_path, rare_skin_masks())
    datamodule = folder_datamodule(make_cfg, images, mask_dir, f"data.classes={NAMES}")
    datamodule.setup("fit")
    pairs = datamodule.report.pairs
    strata = datamodule._strata(pairs)
    # The rarest class each mask holds: skin where there is skin, else nail.
    assert strata == {p.image: "skin" if p.image.stem in ("00", "01") else "nail" for p in pairs}
    assert datamodule.split_folder.name == split_key(pairs, 0.2, 0.0, datamodule.seed, strata)
    assert datamodule.split_folder.name != old_split_key(pairs, 0.2, 0.0, datamodule.seed)
    assert csv_groups(datamodule.split_folder) == {""}


def test_background_is_the_stratum_only_of_a_mask_with_nothing_else(
    make_cfg, tmp_path: Path
) -> None:
    masks = rare_skin_masks(6)
    masks[4] = np.where(masks[4] == VOID, VOID, 0).astype(np.uint8)  # background and void only
    images, mask_dir = write_folder(tmp_path, masks)
    datamodule = folder_datamodule(make_cfg, images, mask_dir, f"data.classes={NAMES}")
    datamodule.setup("fit")
    strata = datamodule._strata(datamodule.report.pairs)
    assert strata[images / "04.png"] == "background" and strata[images / "02.png"] == "nail"
    assert strata[images / "00.png"] == "skin"


def test_a_split_the_data_gives_is_kept_as_given(make_cfg, tmp_path: Path) -> None:
    root = make_voc(tmp_path / "voc", count=8, valid=3)
    datamodule = build_datamodule(
        make_cfg("data=voc", f"data.root={root}", "data.image_size=32", "loss=ce_dice")
    )
    datamodule.setup("fit")
    given = datamodule.report.pairs
    assert datamodule.split_folder.name == f"given-{old_split_key(given, 0, 0, 0)}"
    assert [p.image.stem for p in datamodule.splits["valid"]] == ["img05", "img06", "img07"]
    assert csv_groups(datamodule.split_folder) == {""}


@pytest.mark.parametrize("seed", range(4))
def test_folds_spread_a_rare_class_over_train_and_valid(
    make_cfg, tmp_path: Path, seed: int
) -> None:
    images, mask_dir = write_folder(tmp_path, rare_skin_masks())
    datamodule = folder_datamodule(
        make_cfg,
        images,
        mask_dir,
        f"data.classes={NAMES}",
        "data.folds=2",
        f"data.seed={seed}",
    )
    datamodule.setup("fit")
    rare = {mask_dir / "00.png", mask_dir / "01.png"}
    for split in ("train", "valid"):
        assert len(rare & {p.mask for p in datamodule.splits[split]}) == 1, split
    assert not datamodule.absent_classes and csv_groups(datamodule.split_folder) == {""}


def test_binary_folds_are_keyed_as_before(make_cfg, tmp_path: Path) -> None:
    masks = [(class_mask(i, (32, 32)) == 1).astype(np.uint8) * 255 for i in range(6)]
    images, mask_dir = write_folder(tmp_path, masks)
    datamodule = folder_datamodule(make_cfg, images, mask_dir, "loss=bce_dice", "data.folds=3")
    datamodule.setup("fit")
    pairs = datamodule.report.pairs
    assert datamodule.split_folder.name == fold_key(pairs, 3, 0, 0.0, datamodule.seed)
    assert datamodule._strata(pairs) is None


def test_check_data_prints_the_class_table_and_what_a_split_lacks(tmp_path: Path, capsys) -> None:
    images, mask_dir = write_folder(tmp_path / "set", rare_skin_masks(6, holding=1))
    args = [
        "data=folder",
        f"data.images={images}",
        f"data.masks={mask_dir}",
        f"paths.data_dir={tmp_path / 'data'}",
        "loss=ce_dice",
        f"data.classes={NAMES}",
    ]
    assert check_data(args) == 0
    out = capsys.readouterr().out
    every = np.stack(rare_skin_masks(6, holding=1))
    counts = [int((every == c).sum()) for c in range(3)]
    assert "  classes: 3 (pixels: share of the non-void pixels" in out
    for index, (name, holding) in enumerate([("background", 6), ("nail", 6), ("skin", 1)]):
        share = 100 * counts[index] / sum(counts)
        assert f"    {index:>3}  {name:<10}  {share:>6.1f}%  {holding:>6}" in out, out
    # Skin is in one image: the split it is not in lacks it, and says so.
    assert out.count("split holds no pixel of class(es) skin") == 1, out
