"""Data sources (:mod:`nailseg.data.sources`), the data config node, the data fingerprint."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from nailseg.config_check import check_config
from nailseg.data import (
    FolderSource,
    Pair,
    PairSource,
    Scan,
    SegmentationDataModule,
    datamodule_node,
)
from nailseg.data.fingerprint import data_fingerprint
from nailseg.errors import ConfigError, DataError


def make_folder(root: Path, count: int = 6) -> Path:
    """``root/images/NN.png`` with 0/255 ``root/masks/NN.png``, every mask with some foreground."""
    for folder in ("images", "masks"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image = np.random.default_rng(i).integers(0, 255, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(image).save(root / "images" / f"{i:02d}.png")
        mask = np.zeros((32, 32), np.uint8)
        mask[4 + i : 14 + i, 6:14] = 255
        Image.fromarray(mask).save(root / "masks" / f"{i:02d}.png")
    return root


def test_a_new_layout_implements_scan_only(tmp_path: Path) -> None:
    class Listed(PairSource):
        def __init__(self, scan: Scan) -> None:
            self.found = scan

        def scan(self) -> Scan:
            return self.found

    pair = Pair(tmp_path / "a.png", tmp_path / "a_mask.png")
    assert Listed(Scan([pair])).pairs() == [pair]
    unpaired = Scan([pair], images_without_masks=[tmp_path / "i" / "b.png"])
    with pytest.raises(DataError, match="1 image\\(s\\) without a mask"):
        Listed(unpaired).pairs()
    with pytest.raises(TypeError):
        PairSource()  # type: ignore[abstract]


def test_folder_source_pairs_name_unpaired_files_relative_to_their_folder(tmp_path: Path) -> None:
    root = make_folder(tmp_path, count=3)
    (root / "masks" / "01.png").unlink()
    source = FolderSource(root / "images", root / "masks")
    assert isinstance(source, PairSource)
    assert len(source.scan().pairs) == 2
    with pytest.raises(DataError, match=re.escape(f"mask in {root / 'masks'}: 01.png. Add")):
        source.pairs()


@pytest.mark.parametrize(
    ("layout", "shortcut"),
    [("nails", "root"), ("voc", "root"), ("folder", "images"), ("csv", "file")],
)
def test_datamodule_node_resolves_then_drops_the_shortcut_keys(
    make_cfg, tmp_path: Path, layout: str, shortcut: str
) -> None:
    cfg = make_cfg(f"data={layout}", f"data.{shortcut}={tmp_path / 'x'}", "seed=7")
    check_config(cfg)  # the shortcut keys are no unknown keys
    assert shortcut in cfg.data
    node = datamodule_node(cfg.data)
    assert not set(SegmentationDataModule.SHORTCUT_KEYS) & set(node)
    assert node.seed == 7 and node.split_dir == str(tmp_path / "data" / "splits")
    assert node.source[shortcut] == str(tmp_path / "x")
    assert "${" not in OmegaConf.to_yaml(node)
    assert cfg.data[shortcut] == str(tmp_path / "x")  # the config itself is left as it was


def test_a_typo_in_the_data_node_still_gets_did_you_mean(make_cfg) -> None:
    with pytest.raises(ConfigError, match="Did you mean data.image_size"):
        check_config(make_cfg("+data.imagesize=64"))


def test_datamodule_fingerprint_after_setup(make_cfg, tmp_path: Path) -> None:
    root = make_folder(tmp_path / "set")
    cfg = make_cfg("data=folder", f"data.images={root}/images", f"data.masks={root}/masks")
    datamodule = instantiate(datamodule_node(cfg.data), _convert_="all")
    with pytest.raises(RuntimeError, match="setup"):
        datamodule.fingerprint()
    datamodule.setup("fit")
    fingerprint = datamodule.fingerprint()
    assert fingerprint == {
        **data_fingerprint(datamodule.split_folder, datamodule.splits, datamodule.mask_rule),
        "image_size": [64, 64],  # the training size goes with the data record
    }
    assert fingerprint["mask_rule"] == "foreground = gray > 127 (8-bit masks)"
    assert fingerprint["split_folder"] == str(datamodule.split_folder)
    assert sum(fingerprint["n"].values()) == 6 and fingerprint["missing_files"] == []


def test_data_fingerprint_tracks_csvs_sizes_and_mask_rule(tmp_path: Path) -> None:
    for name in ("a.png", "a_mask.png"):
        (tmp_path / name).write_bytes(b"12345")
    (tmp_path / "train.csv").write_text("image,mask,group\na.png,a_mask.png,\n")
    splits = {"train": [Pair(tmp_path / "a.png", tmp_path / "a_mask.png")], "valid": []}
    base = data_fingerprint(tmp_path, splits)
    assert base == data_fingerprint(tmp_path, splits)
    assert base["n"] == {"train": 1, "valid": 0}
    assert (
        data_fingerprint(tmp_path, splits, mask_rule="foreground = gray > 127")["sha256"]
        != base["sha256"]
    )
    (tmp_path / "a_mask.png").write_bytes(b"123456")
    resized = data_fingerprint(tmp_path, splits)
    assert resized["files_sha256"] != base["files_sha256"]
    (tmp_path / "train.csv").write_text("image,mask,group\na.png,a_mask.png,g\n")
    assert data_fingerprint(tmp_path, splits)["csv_sha256"] != resized["csv_sha256"]
    (tmp_path / "a.png").unlink()
    assert data_fingerprint(tmp_path, splits)["missing_files"] == [str(tmp_path / "a.png")]


def test_data_fingerprint_hash_is_the_one_runs_recorded_before(tmp_path: Path) -> None:
    # A resumed run compares sha256 with its run.json: the value must not change across versions.
    for name in ("a.png", "a_mask.png"):
        (tmp_path / name).write_bytes(b"12345")
    (tmp_path / "train.csv").write_text("image,mask,group\na.png,a_mask.png,\n")
    splits = {"train": [Pair(tmp_path / "a.png", tmp_path / "a_mask.png")], "valid": []}
    rule = "foreground = gray > 127 (8-bit masks)"
    assert data_fingerprint(tmp_path, splits, rule)["sha256"] == (
        "30e625b9fc086cc8908369bdeec27578db3d13604dd156120f4164d21c8cabcf"
    )
    assert data_fingerprint(tmp_path, splits)["sha256"] == (
        "4b68ebcb52242c5c58f569c137de04d1da06c1a9910362da38f9f506d0693b35"
    )
