"""The data check: each broken folder gets a message naming the files and the fix."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nailseg.build import build_datamodule
from nailseg.commands.check_data import main as check_data
from nailseg.errors import EXIT_ERROR, DataError
from tests.conftest import SHARED_DATA, requires_shared_data
from tests.test_data_layouts import folder_cfg, make_folder, nail_mask, write_image, write_mask


def setup_error(make_cfg, root: Path, *extra: str) -> str:
    with pytest.raises(DataError) as err:
        build_datamodule(folder_cfg(make_cfg, root, *extra)).setup("fit")
    return str(err.value)


def test_empty_folder(make_cfg, tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    assert "No images found under" in setup_error(make_cfg, tmp_path)


def test_wrong_path(make_cfg, tmp_path: Path) -> None:
    message = setup_error(make_cfg, tmp_path / "nope")
    assert f"Image folder not found: {tmp_path / 'nope' / 'images'}" in message
    assert "data.images=" in message


def test_truncated_png_stops_training_and_skip_drops_it(make_cfg, tmp_path: Path) -> None:
    root = make_folder(tmp_path, count=6)
    broken = root / "images" / "02.png"
    broken.write_bytes(broken.read_bytes()[:200])
    message = setup_error(make_cfg, root)
    assert "1 unreadable files" in message and str(broken) in message
    assert "data.on_invalid=skip" in message and "training did not start" in message
    datamodule = build_datamodule(folder_cfg(make_cfg, root, "data.on_invalid=skip"))
    datamodule.setup("fit")
    assert len(datamodule.report.pairs) == 5
    assert datamodule.report.dropped == [f"{broken}: unreadable files"]


def test_mask_one_pixel_smaller(make_cfg, tmp_path: Path) -> None:
    root = make_folder(tmp_path, count=4)
    write_mask(root / "masks" / "01.png", nail_mask(1)[:-1])
    message = setup_error(make_cfg, root)
    assert "size mismatches" in message
    assert (
        f"{root / 'images' / '01.png'} is 32x32, its mask {root / 'masks' / '01.png'} is 32x31"
        in message
    )


def test_orphan_mask(make_cfg, tmp_path: Path) -> None:
    root = make_folder(tmp_path, count=4)
    write_mask(root / "masks" / "extra.png", nail_mask(0))
    message = setup_error(make_cfg, root)
    assert "1 masks without images (add the images or remove the masks)" in message
    assert str(root / "masks" / "extra.png") in message


def test_palette_masks_use_the_index_rule(make_cfg, tmp_path: Path) -> None:
    root = make_folder(tmp_path, count=4, mask_kind="palette")
    datamodule = build_datamodule(folder_cfg(make_cfg, root, "data.image_size=32"))
    datamodule.setup("fit")
    assert datamodule.mask_rule == "foreground = value > 0 (0/1 index masks)"
    pair = datamodule.splits["train"][0]
    _, mask = datamodule.datasets["train"].load(0)
    assert np.array_equal(mask, nail_mask(int(pair.image.stem)))


def test_jpeg_masks_use_the_midpoint_rule(make_cfg, tmp_path: Path) -> None:
    root = make_folder(tmp_path, count=4, mask_kind="jpeg", mask_ext=".jpg")
    noisy = np.asarray(Image.open(root / "masks" / "00.jpg"))
    assert len(np.unique(noisy)) > 2, "the test needs a mask that JPEG made noisy"
    datamodule = build_datamodule(folder_cfg(make_cfg, root, "data.image_size=32"))
    datamodule.setup("fit")
    assert datamodule.mask_rule == "foreground = gray > 127 (8-bit masks)"
    assert not datamodule.report.warnings["all-background masks"]


def test_configured_threshold_is_the_rule(make_cfg, tmp_path: Path) -> None:
    root = make_folder(tmp_path, count=4)
    datamodule = build_datamodule(folder_cfg(make_cfg, root, "data.mask_threshold=200"))
    datamodule.setup("fit")
    assert datamodule.mask_rule == "foreground = value > 200 (data.mask_threshold)"


def test_a_0_1_mask_among_0_255_masks_is_unexpected(make_cfg, tmp_path: Path) -> None:
    root = make_folder(tmp_path, count=4)
    Image.fromarray(nail_mask(2)).save(root / "masks" / "02.png")  # values 0/1, looks black
    message = setup_error(make_cfg, root)
    assert "unexpected mask values" in message and "02.png: a 0/1 mask in a set of 8-bit" in message


def test_multi_class_mask_is_unexpected(make_cfg, tmp_path: Path) -> None:
    root = make_folder(tmp_path, count=4, mask_kind="palette")
    Image.fromarray(nail_mask(1) * 2).save(root / "masks" / "01.png")
    assert "values [0, 2]: more than two classes" in setup_error(make_cfg, root)


def test_all_masks_empty(make_cfg, tmp_path: Path) -> None:
    root = make_folder(tmp_path, count=3)
    for path in (root / "masks").iterdir():
        Image.fromarray(np.zeros((32, 32), np.uint8)).save(path)
    assert "Every mask in" in setup_error(make_cfg, root)


def test_many_problems_show_the_first_few_and_a_count(make_cfg, tmp_path: Path) -> None:
    root = make_folder(tmp_path, count=9)
    for i in range(7):
        (root / "images" / f"{i:02d}.png").write_bytes(b"not an image")
    message = setup_error(make_cfg, root)
    assert "7 unreadable files" in message and "... and 2 more" in message


def test_grayscale_rgba_and_exif_are_warnings_not_errors(make_cfg, tmp_path: Path, caplog) -> None:
    root = make_folder(tmp_path, count=4)
    Image.fromarray(np.full((32, 32), 90, np.uint8)).save(root / "images" / "00.png")
    Image.fromarray(np.full((32, 32, 4), 90, np.uint8)).save(root / "images" / "01.png")
    # Stored 32 wide x 48 high, tagged "rotate 90": upright it is 48x32, like its mask.
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.zeros((48, 32, 3), np.uint8)).save(root / "images" / "02.jpg", exif=exif)
    (root / "images" / "02.png").unlink()
    write_mask(root / "masks" / "02.png", np.pad(nail_mask(2), ((0, 0), (0, 16))))
    with caplog.at_level(logging.WARNING):
        datamodule = build_datamodule(folder_cfg(make_cfg, root))
        datamodule.setup("fit")
    warnings = datamodule.report.warnings
    assert len(warnings["grayscale or RGBA images"]) == 2
    assert "has EXIF orientation 6, its mask" in warnings["EXIF orientation differs"][0]
    assert "2 grayscale or RGBA images" in caplog.text


def test_check_data_command_reports_and_fails(tmp_path: Path, capsys) -> None:
    root = make_folder(tmp_path / "set", count=6)
    args = [
        "data=folder",
        f"data.images={root / 'images'}",
        f"data.masks={root / 'masks'}",
        f"paths.data_dir={tmp_path / 'data'}",
    ]
    assert check_data(args) == 0
    out = capsys.readouterr().out
    assert "6 pair(s) found, 6 usable" in out and "mask rule: foreground = gray > 127" in out
    assert "problems: none" in out and "split: 5 train, 1 valid" in out
    write_image(root / "images" / "orphan.png", 99)
    assert check_data(args) == EXIT_ERROR
    assert "1 images without masks" in capsys.readouterr().err
    assert check_data(["data=folder"]) == EXIT_ERROR
    assert "data.images" in capsys.readouterr().err


@requires_shared_data
def test_nails52_passes_the_check(tmp_path: Path, capsys) -> None:
    args = [
        "data=folder",
        f"data.images={SHARED_DATA / 'images'}",
        f"data.masks={SHARED_DATA / 'labels'}",
        f"paths.data_dir={tmp_path}",
        "data.valid_fraction=0.19",
    ]
    assert check_data(args) == 0
    out = capsys.readouterr().out
    assert "52 pair(s) found, 52 usable" in out and "gray > 127 (8-bit masks)" in out
    assert "split: 42 train, 10 valid" in out
    # Photos of 299x168 to 1079x607 px (median side 517): auto stops at image_size_max.
    assert "training size: 256x256 (data.image_size=auto)" in out
