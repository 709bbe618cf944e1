"""The synthetic generator is deterministic and cached; the split deterministic and stratified."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from nailseg.data.sources import GroupedFolderSource, Pair
from nailseg.data.split import load_or_create_split, stratified_split
from nailseg.data.synthetic import GROUPS, draw_sample, generate_dataset


@pytest.mark.parametrize("group", GROUPS)
def test_draw_sample_is_deterministic_and_binary(group: str) -> None:
    image, mask = draw_sample(seed=3, index=5, size=64, group=group)
    again_image, again_mask = draw_sample(seed=3, index=5, size=64, group=group)
    other_image, _ = draw_sample(seed=4, index=5, size=64, group=group)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert np.array_equal(image, again_image) and np.array_equal(mask, again_mask)
    assert not np.array_equal(image, other_image)
    assert set(np.unique(mask)) <= {0, 1}


def test_every_group_draws_some_nail() -> None:
    for group in GROUPS:
        fractions = [draw_sample(0, i, 96, group)[1].mean() for i in range(8)]
        assert min(fractions) >= 0 and np.mean(fractions) > 0.002, group


def test_generate_dataset_layout_cache_and_regeneration(tmp_path: Path) -> None:
    folder = generate_dataset(tmp_path, count=8, image_size=32, seed=1)
    images = sorted(folder.glob("Images/*/*.png"))
    assert len(images) == 8 and {p.parent.name for p in images} == set(GROUPS)
    assert len(GroupedFolderSource(folder).pairs()) == 8
    stamp = folder / "Images" / "1" / "00000.png"
    mtime = stamp.stat().st_mtime_ns
    assert generate_dataset(tmp_path, count=8, image_size=32, seed=1) == folder
    assert stamp.stat().st_mtime_ns == mtime, "same parameters must reuse the cached set"
    other = generate_dataset(tmp_path, count=8, image_size=32, seed=2)
    assert other != folder and other.is_dir()
    again = generate_dataset(tmp_path / "elsewhere", count=8, image_size=32, seed=1)
    for a, b in zip(sorted(folder.rglob("*.png")), sorted(again.rglob("*.png")), strict=True):
        assert a.read_bytes() == b.read_bytes()


def _pairs(per_group: dict[str, int]) -> list[Pair]:
    return [
        Pair(Path(f"{g}/{i}.png"), Path(f"m/{g}/{i}.png"), g)
        for g, n in per_group.items()
        for i in range(n)
    ]


def test_split_is_deterministic_and_stratified() -> None:
    pairs = _pairs({"1": 20, "2": 10, "3": 30, "4": 40})
    split = stratified_split(pairs, valid_fraction=0.2, seed=7)
    assert split == stratified_split(list(reversed(pairs)), valid_fraction=0.2, seed=7)
    assert Counter(p.group for p in split["valid"]) == {"1": 4, "2": 2, "3": 6, "4": 8}
    assert len(split["train"]) + len(split["valid"]) == len(pairs)
    assert not set(split["train"]) & set(split["valid"])
    assert split["valid"] != stratified_split(pairs, valid_fraction=0.2, seed=8)["valid"]


def test_split_csvs_are_written_and_reused(tmp_path: Path) -> None:
    pairs = _pairs({"1": 10, "2": 10})
    split, folder = load_or_create_split(pairs, tmp_path, valid_fraction=0.3, seed=0)
    assert (folder / "train.csv").is_file() and (folder / "valid.csv").is_file()
    # Edit the persisted split: a reused CSV wins over recomputing.
    moved = split["train"][0]
    lines = (folder / "train.csv").read_text().splitlines()
    (folder / "train.csv").write_text(
        "\n".join(line for line in lines if not line.startswith(str(moved.image))) + "\n"
    )
    reused, same_folder = load_or_create_split(pairs, tmp_path, valid_fraction=0.3, seed=0)
    assert same_folder == folder and moved not in reused["train"]
    assert len(reused["train"]) == len(split["train"]) - 1
