"""The synthetic set's three-class scheme (background, skin, nail) over the binary set's images."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from nailseg.data.sources import SyntheticSource
from nailseg.data.synthetic import CLASS_NAMES, GROUPS, draw_sample, generate_dataset
from nailseg.errors import ConfigError

COUNT, SIZE, SEED = 8, 64, 0


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("synthetic")
    return (
        generate_dataset(root, COUNT, SIZE, SEED),
        generate_dataset(root, COUNT, SIZE, SEED, classes=3),
    )


def _read(path: Path) -> np.ndarray:
    array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert array is not None, path
    return array


def test_binary_set_keeps_its_folder_and_stamp(folders: tuple[Path, Path]) -> None:
    binary, _ = folders
    # The names and stamp from before ``classes`` existed: cached sets stay valid.
    assert binary.name == "v2-n8-s64-seed0"
    assert (binary / "params.json").read_text() == (
        '{\n  "count": 8,\n  "image_size": 64,\n  "seed": 0,\n  "version": 2\n}'
    )
    assert all(set(np.unique(_read(p))) <= {0, 255} for p in binary.glob("Masks/*/*.png"))


def test_three_class_set_has_its_own_folder_and_stamp(folders: tuple[Path, Path]) -> None:
    binary, three = folders
    assert three != binary and three.name == "v2-n8-s64-seed0-c3"
    assert json.loads((three / "params.json").read_text())["classes"] == 3


def test_three_class_masks_share_images_and_nails(folders: tuple[Path, Path]) -> None:
    binary, three = folders
    images = sorted(p.relative_to(three) for p in three.glob("Images/*/*.png"))
    masks = sorted(p.relative_to(three) for p in three.glob("Masks/*/*.png"))
    assert len(images) == len(masks) == COUNT
    for rel in images:
        assert (three / rel).read_bytes() == (binary / rel).read_bytes(), rel
    counts = np.zeros(3, np.int64)
    for rel in masks:
        mask3, mask2 = _read(three / rel), _read(binary / rel)
        assert mask3.ndim == 2 and mask3.dtype == np.uint8
        assert set(np.unique(mask3)) <= {0, 1, 2}, rel
        assert np.array_equal(mask3 == 2, mask2 == 255), rel
        counts += np.bincount(mask3.ravel(), minlength=3)
    assert (counts > 0).all(), counts
    # Skin is the hand around the nails: it outweighs them.
    assert counts[1] > counts[2]


def test_draw_sample_three_classes() -> None:
    for group in GROUPS:
        image2, mask2 = draw_sample(SEED, 3, SIZE, group)
        image3, mask3 = draw_sample(SEED, 3, SIZE, group, classes=3)
        assert np.array_equal(image2, image3)
        assert set(np.unique(mask2)) <= {0, 1} and set(np.unique(mask3)) <= {0, 1, 2}
        assert np.array_equal(mask3 == 2, mask2 == 1)
        assert (mask3 == 1).any(), group


def test_class_names() -> None:
    assert CLASS_NAMES == {2: None, 3: ("background", "skin", "nail")}


@pytest.mark.parametrize("classes", [5, 1, 0, True, "3"])
def test_bad_classes_value_is_a_config_error(tmp_path: Path, classes: object) -> None:
    with pytest.raises(ConfigError, match=r"data\.source\.classes=") as err:
        SyntheticSource(tmp_path, COUNT, SIZE, SEED, classes=classes)  # type: ignore[arg-type]
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"data\.source\.classes="):
        generate_dataset(tmp_path, COUNT, SIZE, SEED, classes=classes)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"data\.source\.classes="):
        draw_sample(SEED, 0, SIZE, "1", classes=classes)  # type: ignore[arg-type]
    assert not any(tmp_path.iterdir()), "nothing is drawn for a bad value"


def test_bad_classes_message() -> None:
    with pytest.raises(ConfigError) as err:
        draw_sample(SEED, 0, SIZE, "1", classes=5)
    assert str(err.value) == (
        "data.source.classes=5 is invalid: the synthetic set draws 2 (background, nail) or "
        "3 (background, skin, nail) classes."
    )


def test_source_scans_three_class_set(tmp_path: Path) -> None:
    pairs = SyntheticSource(tmp_path, COUNT, SIZE, SEED, classes=3).pairs()
    assert len(pairs) == COUNT
    assert all(p.mask.parent.parent.parent.name.endswith("-c3") for p in pairs)
