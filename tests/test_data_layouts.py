"""Every folder layout gives the same pairs and masks; a given split wins; the decode cache."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nailseg.build import build_datamodule
from nailseg.data.cache import DiskCache, cache_key
from nailseg.data.io import read_mask
from nailseg.errors import ConfigError, DataError

SIZE = 32


def nail_mask(index: int, size: int = SIZE) -> np.ndarray:
    """A {0, 1} rectangle that moves with ``index``, so every pair differs."""
    mask = np.zeros((size, size), np.uint8)
    top = 4 + index % 8
    mask[top : top + 10, 6 : 6 + 8 + index % 5] = 1
    return mask


def write_image(path: Path, index: int, size: tuple[int, int] = (SIZE, SIZE)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(index)
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)


def write_mask(path: Path, mask: np.ndarray, kind: str = "gray") -> None:
    """``kind``: gray (0/255 PNG), palette (0/1 indices), rgb (white on black), jpeg (noisy)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "palette":
        image = Image.fromarray(mask, mode="L").convert("P")
        image.putpalette([0, 0, 0, 128, 0, 0] + [0] * 762)
        image.save(path)
    elif kind == "rgb":
        Image.fromarray(np.repeat(mask[..., None] * 255, 3, axis=2)).save(path)
    elif kind == "jpeg":
        Image.fromarray(mask * 255).save(path, quality=60)
    else:
        Image.fromarray(mask * 255).save(path)


def make_folder(
    root: Path,
    count: int = 6,
    mask_kind: str = "gray",
    mask_ext: str = ".png",
    image_ext: str = ".png",
) -> Path:
    """``root/images/NN{image_ext}`` with ``root/masks/NN{mask_ext}``."""
    for i in range(count):
        write_image(root / "images" / f"{i:02d}{image_ext}", i)
        write_mask(root / "masks" / f"{i:02d}{mask_ext}", nail_mask(i), mask_kind)
    return root


def folder_cfg(make_cfg, root: Path, *extra: str):
    return make_cfg(
        "data=folder", f"data.images={root / 'images'}", f"data.masks={root / 'masks'}", *extra
    )


def test_folder_layout_pairs_by_stem_with_free_extensions(make_cfg, tmp_path: Path) -> None:
    root = make_folder(tmp_path / "set", count=6, image_ext=".jpg", mask_ext=".png")
    datamodule = build_datamodule(folder_cfg(make_cfg, root, "data.valid_fraction=0.34"))
    datamodule.setup("fit")
    assert datamodule.report.n_found == 6
    assert {p.image.stem for p in datamodule.report.pairs} == {f"{i:02d}" for i in range(6)}
    assert (len(datamodule.splits["train"]), len(datamodule.splits["valid"])) == (4, 2)
    sample = datamodule.datasets["train"][0]
    assert sample["image"].shape == (3, 64, 64) and set(sample["mask"].unique().tolist()) <= {0, 1}


def test_grouped_layout_keeps_data_root_override(make_cfg, tmp_path: Path) -> None:
    for group in ("a", "b"):
        for i in range(4):
            write_image(tmp_path / "Images" / group / f"{i}.png", i)
            write_mask(tmp_path / "Masks" / group / f"{i}.png", nail_mask(i))
    datamodule = build_datamodule(make_cfg("data=nails", f"data.root={tmp_path}"))
    datamodule.setup("fit")
    assert {p.group for p in datamodule.splits["valid"]} == {"a", "b"}, "stratified by group"


def test_csv_split_column_wins_over_automatic_split(make_cfg, tmp_path: Path) -> None:
    make_folder(tmp_path, count=6)
    rows = ["image,mask,split"] + [
        f"images/{i:02d}.png,masks/{i:02d}.png,{['train', 'val', 'test', 'train', 'train', ''][i]}"
        for i in range(6)
    ]
    (tmp_path / "pairs.csv").write_text("\n".join(rows) + "\n")
    datamodule = build_datamodule(
        make_cfg("data=csv", f"data.file={tmp_path / 'pairs.csv'}", "data.valid_fraction=0.5")
    )
    datamodule.setup("fit")
    names = {k: sorted(p.image.stem for p in v) for k, v in datamodule.splits.items()}
    assert names == {"train": ["00", "03", "04"], "valid": ["01"], "test": ["02"]}
    assert any("05.png: not used" in line for line in datamodule.report.dropped), "listed, not lost"
    assert datamodule.has_test


def test_plain_list_file_uses_automatic_split(make_cfg, tmp_path: Path) -> None:
    make_folder(tmp_path / "d", count=5)
    lines = [f"d/images/{i:02d}.png d/masks/{i:02d}.png" for i in range(5)]
    (tmp_path / "pairs.txt").write_text("# image mask\n" + "\n".join(lines) + "\n")
    datamodule = build_datamodule(make_cfg("data=csv", f"data.file={tmp_path / 'pairs.txt'}"))
    datamodule.setup("fit")
    assert sum(len(v) for v in datamodule.splits.values()) == 5 and datamodule.splits["valid"]


def test_unknown_split_name_is_named(make_cfg, tmp_path: Path) -> None:
    make_folder(tmp_path, count=2)
    (tmp_path / "p.csv").write_text("image,mask,split\nimages/00.png,masks/00.png,training2\n")
    with pytest.raises(DataError, match=r"Unknown split 'training2'.*entry 1"):
        build_datamodule(make_cfg("data=csv", f"data.file={tmp_path / 'p.csv'}")).setup("fit")


def test_voc_layout_with_palette_masks_and_image_sets(make_cfg, tmp_path: Path) -> None:
    for i in range(5):
        write_image(tmp_path / "JPEGImages" / f"{i}.jpg", i)
        write_mask(tmp_path / "Annotations" / f"{i}.png", nail_mask(i), "palette")
    sets = tmp_path / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("0\n1\n2\n")
    (sets / "val.txt").write_text("3\n")
    datamodule = build_datamodule(
        make_cfg("data=voc", f"data.root={tmp_path}", "data.image_size=32")
    )
    datamodule.setup("fit")
    assert [p.image.stem for p in datamodule.splits["valid"]] == ["3"]
    assert datamodule.mask_rule == "foreground = value > 0 (0/1 index masks)"
    assert any("4.jpg: not used" in line for line in datamodule.report.dropped)
    _, mask = datamodule.datasets["valid"].load(0)
    assert np.array_equal(mask, nail_mask(3))


@pytest.mark.parametrize("kind", ["gray", "palette", "rgb", "jpeg"])
def test_every_mask_encoding_becomes_the_same_binary_mask(tmp_path: Path, kind: str) -> None:
    path = tmp_path / ("m.jpg" if kind == "jpeg" else "m.png")
    write_mask(path, nail_mask(3), kind)
    threshold = 0 if kind == "palette" else 127
    mask = read_mask(path, threshold)
    assert set(np.unique(mask).tolist()) <= {0, 1}
    # JPEG smears edges; everything else is exact.
    assert np.mean(mask != nail_mask(3)) <= (0.02 if kind == "jpeg" else 0)


def test_tiny_validation_set_warns(make_cfg, tmp_path: Path, caplog) -> None:
    root = make_folder(tmp_path, count=6)
    with caplog.at_level(logging.WARNING):
        build_datamodule(folder_cfg(make_cfg, root)).setup("fit")
    assert "validation set has only 1 sample" in caplog.text


def test_ram_cache_is_filled_by_the_check_and_matches_decoding(make_cfg, tmp_path: Path) -> None:
    root = make_folder(tmp_path, count=5, mask_kind="jpeg", mask_ext=".jpg")
    cached = build_datamodule(folder_cfg(make_cfg, root, "data.cache=ram"))
    cached.setup("fit")
    assert len(cached.cache) == 5, "the data check decodes every pair once and keeps it"
    plain = build_datamodule(folder_cfg(make_cfg, root, "data.cache=none"))
    plain.setup("fit")
    for name in ("train", "valid"):
        for i in range(len(plain.datasets[name])):
            for a, b in zip(
                cached.datasets[name].load(i), plain.datasets[name].load(i), strict=True
            ):
                assert np.array_equal(a, b)


def test_ram_cache_with_persistent_workers(make_cfg, tmp_path: Path) -> None:
    root = make_folder(tmp_path, count=6)
    datamodule = build_datamodule(
        folder_cfg(make_cfg, root, "data.cache=ram", "data.num_workers=1", "data.batch_size=2")
    )
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    first = [b["mask"].sum().item() for b in loader]
    again = [b["mask"].sum().item() for b in loader]
    assert len(first) == 2 and sum(first) == sum(again) > 0


def test_disk_cache_reuses_entries_and_follows_file_changes(make_cfg, tmp_path: Path) -> None:
    root = make_folder(tmp_path / "set", count=5)
    cache_dir = tmp_path / "cache"
    extra = ("data.cache=disk", f"data.cache_dir={cache_dir}")
    build_datamodule(folder_cfg(make_cfg, root, *extra)).setup("fit")
    assert len(DiskCache(cache_dir)) == 5
    again = build_datamodule(folder_cfg(make_cfg, root, *extra))
    again.setup("fit")
    assert len(DiskCache(cache_dir)) == 5, "same files, size and rule: same entries"
    pair = again.report.pairs[0]
    key = cache_key(pair, again.image_size, 127)
    assert key != cache_key(pair, (32, 32), 127) and key != cache_key(pair, again.image_size, 0)
    stat = pair.mask.stat()
    os.utime(pair.mask, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert cache_key(pair, again.image_size, 127) != key, "an edited file gets a new entry"
    build_datamodule(folder_cfg(make_cfg, root, *extra)).setup("fit")
    assert len(DiskCache(cache_dir)) == 6


def test_unknown_cache_kind_lists_options(make_cfg, tmp_path: Path) -> None:
    root = make_folder(tmp_path, count=2)
    with pytest.raises(ConfigError, match=r"data.cache='gpu'.*none, ram, disk"):
        build_datamodule(folder_cfg(make_cfg, root, "data.cache=gpu"))
