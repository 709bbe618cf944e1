"""Multi-class data: the check's per-class table and warnings, bad values and colours in one
line, colour masks through data.palette, and a split that spreads rare classes."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nailseg.build import build_datamodule
from nailseg.data.split import split_key
from nailseg.errors import DataError
from tests.multiclass_data import PALETTE, VOID, class_image, class_mask

NAMES = "[background,nail,skin]"


def write_folder(
    root: Path, masks: list[np.ndarray], kind: str = "index", palette=PALETTE
) -> tuple[Path, Path]:
    """``root/images/NN.png`` and ``root/masks/NN.png``; ``kind``: index (gray PNG of class
    indices) or rgb (each class in its ``palette`` colour, void in VOC's cream)."""
    images, mask_dir = root / "images", root / "masks"
    images.mkdir(parents=True, exist_ok=True)
    mask_dir.mkdir(parents=True, exist_ok=True)
    for i, mask in enumerate(masks):
        Image.fromarray(class_image(mask, i)).save(images / f"{i:02d}.png")
        if kind == "rgb":
            table = np.tile(np.array([224, 224, 192], np.uint8), (256, 1))
            table[: len(palette)] = palette
            Image.fromarray(table[mask]).save(mask_dir / f"{i:02d}.png")
        else:
            Image.fromarray(mask).save(mask_dir / f"{i:02d}.png")
    return images, mask_dir


def folder_datamodule(make_cfg, images: Path, masks: Path, *extra: str):
    return build_datamodule(
        make_cfg(
            "data=folder",
            f"data.images={images}",
            f"data.masks={masks}",
            "data.image_size=32",
            "loss=ce_dice",
            *extra,
        )
    )


def test_check_counts_pixels_and_images_per_class(make_cfg, tmp_path: Path, capsys) -> None:
    masks = [class_mask(i, (32, 32)) for i in range(6)]
    masks[5][masks[5] == 2] = 0  # one mask without skin
    images, mask_dir = write_folder(tmp_path, masks)
    datamodule = folder_datamodule(make_cfg, images, mask_dir, f"data.classes={NAMES}")
    datamodule.setup("fit")
    report = datamodule.report
    every = np.stack(masks)
    expected = [int((every == c).sum()) for c in range(3)]
    assert report.class_pixels == expected
    assert report.class_images == [6, 6, 5]
    assert report.present[mask_dir / "05.png"] == frozenset({0, 1})
    text = report.format()
    share = 100 * expected[2] / sum(expected)
    assert re.search(rf"^ +2  skin +{share:.1f}% +5$", text, re.MULTILINE), text
    assert "void" in report.rule.description and not report.warnings["classes in no mask"]


def test_classes_absent_from_the_data_or_a_split_are_warned(
    make_cfg, tmp_path: Path, caplog, capsys
) -> None:
    masks = [class_mask(i, (32, 32)) for i in range(6)]
    for mask in masks[1:]:
        mask[mask == 2] = 0  # skin in one image only: one split lacks it
    images, mask_dir = write_folder(tmp_path, masks)
    datamodule = folder_datamodule(
        make_cfg, images, mask_dir, "data.classes=[background,nail,skin,polish]"
    )
    with caplog.at_level(logging.WARNING):
        datamodule.setup("fit")
    assert datamodule.report.warnings["classes in no mask"] == ["class 3 ('polish')"]
    lacking = {name for name, absent in datamodule.absent_classes.items() if "skin" in absent}
    assert len(lacking) == 1 and all("polish" in a for a in datamodule.absent_classes.values())
    assert any(
        "holds no pixel of class(es)" in r.message and "skin" in r.message for r in caplog.records
    )


def test_values_outside_the_classes_stop_the_check_naming_file_and_fix(
    make_cfg, tmp_path: Path
) -> None:
    masks = [class_mask(i, (32, 32)) for i in range(4)]
    masks[2][10:12, 10:12] = 7
    images, mask_dir = write_folder(tmp_path, masks)
    datamodule = folder_datamodule(make_cfg, images, mask_dir, f"data.classes={NAMES}")
    with pytest.raises(DataError) as caught:
        datamodule.setup("fit")
    message = str(caught.value)
    assert f"{mask_dir / '02.png'}: values [7] are outside the 3 classes of data.classes" in message
    assert "List every class in data.classes" in message
    assert not (tmp_path / "data" / "splits").exists()  # nothing written


def test_colour_masks_map_through_the_palette(make_cfg, tmp_path: Path) -> None:
    masks = [class_mask(i, (32, 32)) for i in range(4)]
    palette = "[[0,0,0],[200,0,0],[0,200,0]]"
    index = folder_datamodule(
        make_cfg, *write_folder(tmp_path / "index", masks), f"data.classes={NAMES}"
    )
    colour = folder_datamodule(
        make_cfg,
        *write_folder(tmp_path / "rgb", [np.where(m == VOID, 0, m) for m in masks], "rgb"),
        f"data.classes={NAMES}",
        f"data.palette={palette}",
    )
    index.setup("fit")
    colour.setup("fit")
    for i in range(len(index.datasets["train"])):
        expected = index.datasets["train"].load(i)[1]
        expected = np.where(expected == VOID, 0, expected)
        assert np.array_equal(colour.datasets["train"].load(i)[1], expected)


def test_an_unmapped_colour_is_named_with_its_file(make_cfg, tmp_path: Path) -> None:
    masks = [
        np.where(class_mask(i, (32, 32)) == VOID, 0, class_mask(i, (32, 32))) for i in range(4)
    ]
    images, mask_dir = write_folder(
        tmp_path, masks, "rgb", palette=((0, 0, 0), (200, 0, 0), (0, 0, 255))
    )
    datamodule = folder_datamodule(
        make_cfg,
        images,
        mask_dir,
        f"data.classes={NAMES}",
        "data.palette=[[0,0,0],[200,0,0],[0,200,0]]",
    )
    with pytest.raises(DataError) as caught:
        datamodule.setup("fit")
    assert f"{mask_dir / '00.png'}: colour [0, 0, 255]" in str(caught.value)
    assert "is not in data.palette" in str(caught.value)
    assert not (tmp_path / "data" / "splits").exists()  # nothing written


@pytest.mark.parametrize("seed", range(8))
def test_the_drawn_split_spreads_a_rare_class_over_train_and_valid(
    make_cfg, tmp_path: Path, seed: int
) -> None:
    masks = [class_mask(i, (32, 32)) for i in range(10)]
    for mask in masks[2:]:
        mask[mask == 2] = 0  # skin in two images of ten
    images, mask_dir = write_folder(tmp_path, masks)
    datamodule = folder_datamodule(
        make_cfg, images, mask_dir, f"data.classes={NAMES}", f"data.seed={seed}"
    )
    datamodule.setup("fit")
    rare = {mask_dir / "00.png", mask_dir / "01.png"}
    for split in ("train", "valid"):
        assert rare & {p.mask for p in datamodule.splits[split]}, split
    assert not datamodule.absent_classes
    # The pairs keep their own group; the stratum only drew the split.
    assert {p.group for p in datamodule.splits["train"]} == {""}


def test_binary_split_is_keyed_as_before(make_cfg, tmp_path: Path) -> None:
    masks = [(class_mask(i, (32, 32)) == 1).astype(np.uint8) for i in range(6)]
    images, mask_dir = write_folder(tmp_path, masks)
    datamodule = folder_datamodule(make_cfg, images, mask_dir, "loss=bce_dice")
    datamodule.setup("fit")
    pairs = datamodule.report.pairs
    assert datamodule.split_folder.name == split_key(pairs, 0.2, 0.0, datamodule.seed)
    assert not datamodule.report.class_pixels and not datamodule.absent_classes
