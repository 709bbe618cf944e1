"""Masks and images are read as their convention means: VOC void borders stay void (and travel
through augmentation), label masks need a stated rule, 16-bit images are scaled, not clipped;
bomb-sized images, empty list files and macOS metadata files get one clear line."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from nailseg.augment.albu import AlbumentationsAugment
from nailseg.augment.base import augment_arrays
from nailseg.augment.kornia_gpu import KorniaAugment
from nailseg.build import build_datamodule
from nailseg.commands.check_data import main as check_data
from nailseg.config import compose_config
from nailseg.data.io import _orient, read_image
from nailseg.errors import EXIT_ERROR, ConfigError, DataError
from tests.test_data_layouts import folder_cfg, make_folder, nail_mask, write_image, write_mask

VOC_PALETTE = [0, 0, 0, 128, 0, 0, 0, 128, 0] + [0, 0, 0] * 252 + [224, 224, 192]


def voc_values(index: int, labels: bool = False) -> np.ndarray:
    """Object 1 (and object 2 with ``labels``) with a 2-pixel 255 void border around each."""
    values = nail_mask(index).copy()
    if labels:
        values[22:28, 20:28] = 2
    ring = cv2.dilate((values > 0).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    values[ring & (values == 0)] = 255
    return values


def make_voc(root: Path, count: int = 6, labels: bool = False) -> Path:
    """A Pascal VOC folder: palette masks with void borders, 4 train and 2 val names."""
    for i in range(count):
        write_image(root / "JPEGImages" / f"{i}.png", i)
        mask = Image.fromarray(voc_values(i, labels)).convert("P")
        mask.putpalette(VOC_PALETTE)
        (root / "SegmentationClass").mkdir(parents=True, exist_ok=True)
        mask.save(root / "SegmentationClass" / f"{i}.png")
    sets = root / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True, exist_ok=True)
    (sets / "train.txt").write_text("\n".join(str(i) for i in range(count - 2)) + "\n")
    (sets / "val.txt").write_text("\n".join(str(i) for i in range(count - 2, count)) + "\n")
    return root


def voc_datamodule(make_cfg, root: Path, *extra: str):
    datamodule = build_datamodule(
        make_cfg("data=voc", f"data.root={root}", "data.image_size=32", *extra)
    )
    datamodule.setup("fit")
    return datamodule


# --- masks: void, labels, the rule in the report ---------------------------------------------


def test_voc_void_border_stays_void_and_objects_stay_foreground(make_cfg, tmp_path: Path) -> None:
    datamodule = voc_datamodule(make_cfg, make_voc(tmp_path))
    assert datamodule.mask_rule == (
        "foreground = value > 0 (0/1 index masks); 255 = void, left out of the loss and metrics"
        " (data.ignore_index)"
    )
    assert datamodule.void_value == 255
    for name, first in (("train", 0), ("valid", 4)):
        _, mask = datamodule.datasets[name].load(0)
        assert np.array_equal(mask, voc_values(first)), "1 = object, 255 = void, 0 = background"


def test_check_data_reports_the_values_and_the_rule(tmp_path: Path, capsys) -> None:
    root = make_voc(tmp_path / "voc")
    args = ["data=voc", f"data.root={root}", f"paths.data_dir={tmp_path / 'data'}"]
    assert check_data(args) == 0
    out = capsys.readouterr().out
    assert "mask values: [0, 1, 255] (255 = void)" in out
    assert "mask rule: foreground = value > 0 (0/1 index masks); 255 = void" in out
    # Plain 0/255 masks: 255 is the foreground, and the report says why it is not void.
    folder = make_folder(tmp_path / "plain", count=4)
    args = [
        "data=folder",
        f"data.images={folder / 'images'}",
        f"data.masks={folder / 'masks'}",
        f"paths.data_dir={tmp_path / 'data'}",
    ]
    assert check_data(args) == 0
    out = capsys.readouterr().out
    assert "mask values: [0, 255] (8-bit masks; 255 is a gray level here, not void)" in out
    assert "mask rule: foreground = gray > 127 (8-bit masks)" in out


def test_label_masks_need_a_stated_foreground(make_cfg, tmp_path: Path) -> None:
    root = make_voc(tmp_path, labels=True)
    with pytest.raises(DataError) as err:
        voc_datamodule(make_cfg, root)
    message = str(err.value)
    assert "values [0, 1, 2] (255 = void): more than two classes" in message
    assert "data.foreground=[1, 2]" in message and "data.mask_threshold=0" in message

    second = voc_datamodule(make_cfg, root, "data.foreground=[2]")
    assert second.mask_rule.startswith("foreground = value in [2] (data.foreground); 255 = void")
    _, mask = second.datasets["train"].load(0)
    values = voc_values(0, labels=True)
    assert np.array_equal(mask, np.where(values == 255, 255, values == 2).astype(np.uint8))

    every = voc_datamodule(make_cfg, root, "data.mask_threshold=0")
    _, mask = every.datasets["train"].load(0)
    assert np.array_equal(mask, np.where(values == 255, 255, values > 0).astype(np.uint8))


def test_voc_masks_without_void_value_stop_instead_of_inverting(make_cfg, tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        voc_datamodule(make_cfg, make_voc(tmp_path), "data.ignore_index=null")
    message = str(err.value)
    assert "unexpected mask values" in message and "makes the border the foreground" in message
    assert "data.ignore_index=255" in message


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["data.ignore_index=1"], "data.ignore_index=1 is invalid"),
        (["data.ignore_index=abc"], "data.ignore_index='abc' is invalid"),
        (["data.foreground=[255]"], "includes the void value data.ignore_index=255"),
        (["data.foreground=1", "data.mask_threshold=0"], "keep one and set the other to null"),
        (["data.image_scale=auto"], "Unknown data.image_scale='auto'"),
    ],
)
def test_bad_mask_and_image_settings_are_named(make_cfg, tmp_path: Path, overrides, named) -> None:
    root = make_folder(tmp_path, count=2)
    with pytest.raises(ConfigError) as err:
        build_datamodule(folder_cfg(make_cfg, root, *overrides))
    assert named in str(err.value)


@pytest.mark.parametrize("backend", [AlbumentationsAugment, KorniaAugment])
def test_void_pixels_travel_through_augmentation_like_a_label(backend) -> None:
    """A mask holding 0, 1 and 255 comes out of either backend with exactly those values, the
    255 where the same augmentation puts a 0/1 mask of the void pixels."""
    policy = dict(compose_config(["paths.output_dir=unused", "aug/policy=heavy"]).aug.policy)
    engine = backend(policy)
    seeds = list(range(8))
    images = [np.full((32, 32, 3), 128, np.uint8) for _ in seeds]
    masks = [voc_values(i) for i in seeds]
    _, out = augment_arrays(engine, images, masks, seeds)
    _, void = augment_arrays(engine, images, [(m == 255).astype(np.uint8) for m in masks], seeds)
    _, objects = augment_arrays(engine, images, [(m == 1).astype(np.uint8) for m in masks], seeds)
    assert set(out.unique().tolist()) == {0.0, 1.0, 255.0}
    assert bool(((out == 255) == (void == 1)).all()) and bool(((out == 1) == (objects == 1)).all())


# --- 16-bit images ----------------------------------------------------------------------------


def ramp(low: int, high: int, shape: tuple[int, ...] = (32, 32)) -> np.ndarray:
    return np.linspace(low, high, int(np.prod(shape))).round().astype(np.uint16).reshape(shape)


def test_16_bit_gray_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = ramp(0, 65535)
    cv2.imwrite(str(tmp_path / "g16.png"), values)
    image = read_image(tmp_path / "g16.png")
    assert image.dtype == np.uint8 and image.shape == (32, 32, 3)
    assert np.array_equal(image[..., 0], np.rint(values / 257).astype(np.uint8))
    assert np.mean(image == 255) < 0.01, "clipping made 99.6 % of these pixels 255"
    stretched = read_image(tmp_path / "g16.png", "range")
    assert stretched.min() == 0 and stretched.max() == 255


def test_16_bit_rgb_png_keeps_channels_and_full_depth(tmp_path: Path) -> None:
    rgb = np.stack([ramp(0, 65535), ramp(65535, 0), ramp(1000, 3000)], axis=-1)
    cv2.imwrite(str(tmp_path / "c16.png"), rgb[..., ::-1])  # OpenCV writes BGR
    assert np.array_equal(read_image(tmp_path / "c16.png"), np.rint(rgb / 257).astype(np.uint8))
    stretched = read_image(tmp_path / "c16.png", "range")
    expected = np.rint(rgb.astype(np.float64) * 255 / 65535)  # min 0, max 65535 over channels
    assert np.array_equal(stretched, expected.astype(np.uint8))


@pytest.mark.parametrize("tag", range(1, 9))
def test_arrays_read_by_opencv_turn_upright_as_pillow_turns_images(tag: int) -> None:
    """16-bit colour pixels come from OpenCV, which ignores EXIF; they get Pillow's turn."""
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    image = Image.fromarray(array)
    image.getexif()[0x0112] = tag
    assert np.array_equal(_orient(array, tag), np.asarray(ImageOps.exif_transpose(image)))


def test_data_check_reports_16_bit_scaling_and_dark_images(make_cfg, tmp_path: Path) -> None:
    root = make_folder(tmp_path, count=4)
    for i in range(4):
        (root / "images" / f"{i:02d}.png").unlink()
        top = 4095 if i == 0 else 65535  # image 00 holds 12-bit data
        cv2.imwrite(str(root / "images" / f"{i:02d}.png"), ramp(0, top, (32, 32, 3)))
    datamodule = build_datamodule(folder_cfg(make_cfg, root))
    datamodule.setup("fit")
    report = datamodule.report.format()
    assert "16-bit images: 4 of 4, divided by 65535 to 0..255 (data.image_scale=max)" in report
    assert datamodule.report.warnings["dark 16-bit images"] == [
        f"{root / 'images' / '00.png'} (largest value 16/255)"
    ]
    stretched = build_datamodule(folder_cfg(make_cfg, root, "data.image_scale=range"))
    stretched.setup("fit")
    assert "each stretched from its own min..max" in stretched.report.format()
    assert not stretched.report.warnings["dark 16-bit images"]


# --- one clear line: decompression bombs, empty list files, macOS metadata ---------------------


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims ``width x height`` gray pixels (and holds one row): Pillow refuses it on
    opening, before decoding anything."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * (width + 1))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_image_over_the_decompression_bomb_limit_is_named_and_skippable(
    make_cfg, tmp_path: Path
) -> None:
    root = make_folder(tmp_path, count=6)
    bomb = root / "images" / "03.png"
    bomb.write_bytes(png_header(20000, 20000))
    with pytest.raises(DataError) as err:
        build_datamodule(folder_cfg(make_cfg, root)).setup("fit")
    message = str(err.value)
    assert "1 unreadable files" in message and str(bomb) in message
    assert "decompression bomb" in message and "Downscale the image" in message
    datamodule = build_datamodule(folder_cfg(make_cfg, root, "data.on_invalid=skip"))
    datamodule.setup("fit")
    assert datamodule.report.dropped == [f"{bomb}: unreadable files"]


def test_empty_csv_list_file_is_one_clear_line(make_cfg, tmp_path: Path, capsys) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match=f"List file {empty} is empty. Write a header row"):
        build_datamodule(make_cfg("data=csv", f"data.file={empty}")).setup("fit")
    code = check_data(["data=csv", f"data.file={empty}", f"paths.data_dir={tmp_path}"])
    assert code == EXIT_ERROR
    err = capsys.readouterr().err
    assert err.startswith(f"error: List file {empty} is empty") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_macos_appledouble_files_are_ignored_like_ds_store(make_cfg, tmp_path: Path) -> None:
    root = make_folder(tmp_path, count=6)
    for folder in ("images", "masks"):
        # What macOS leaves on non-Mac file systems: metadata, not images.
        (root / folder / "._00.png").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X")
        (root / folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    write_mask(root / "masks" / ".hidden" / "07.png", nail_mask(7))
    datamodule = build_datamodule(folder_cfg(make_cfg, root))
    datamodule.setup("fit")
    assert datamodule.report.n_found == 6 and datamodule.report.ok
    assert not any("._" in str(p.image) for p in datamodule.report.pairs)
