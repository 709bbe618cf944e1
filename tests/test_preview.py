"""``nailseg preview`` writes a grid whose tiles show each backend's real augmentations."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from nailseg.augment.base import NoAugment
from nailseg.augment.kornia_gpu import KorniaAugment
from nailseg.cli import main
from nailseg.errors import EXIT_ERROR
from nailseg.pictures import LABEL_HEIGHT, overlay_mask, preview_grid

TILE = 32


def _tiles(grid: np.ndarray, rows: int, columns: int) -> list[list[np.ndarray]]:
    """Cut a grid back into its tiles (2-pixel gaps, a label strip on top)."""
    return [
        [
            grid[LABEL_HEIGHT + 2 + r * (TILE + 2) :][:TILE, c * (TILE + 2) :][:, :TILE]
            for c in range(columns)
        ]
        for r in range(rows)
    ]


def _sample(offset: int) -> tuple[np.ndarray, np.ndarray]:
    mask = np.zeros((TILE, TILE), np.uint8)
    mask[4 + offset : 14 + offset, 6:20] = 1
    return np.full((TILE, TILE, 3), 90, np.uint8), mask


def _tinted(tile: np.ndarray) -> np.ndarray:
    return (tile[..., 1].astype(int) - tile[..., 0]) > 40


def test_grid_layout_and_tiles() -> None:
    images, masks = zip(*(_sample(k) for k in range(3)), strict=True)
    grid = preview_grid(NoAugment({"colour": None}), images, masks, [0, 1, 2], seed=0, versions=2)
    assert grid.shape == (LABEL_HEIGHT + 3 * (TILE + 2), 4 * TILE + 3 * 2, 3)
    for r, row in enumerate(_tiles(grid, 3, 4)):
        original, *augmented, mask = row
        expected = overlay_mask(images[r], masks[r])
        # Without augmentation every version is the original, overlay included (to rounding).
        assert np.array_equal(original, expected)
        for tile in augmented:
            assert np.abs(tile.astype(int) - expected).max() <= 1
        assert np.array_equal(mask[..., 0], masks[r] * 255)


def test_augmented_tiles_differ_and_follow_their_masks() -> None:
    images, masks = zip(*(_sample(k) for k in range(2)), strict=True)
    policy = {
        "hflip_p": 0.0,
        "affine": {"p": 1.0, "degrees": 40, "translate": 0.1},
        "noise": None,
        "blur": None,
        "colour": None,
    }
    grid = preview_grid(KorniaAugment(policy), images, masks, [0, 1], seed=3, versions=3)
    for row in _tiles(grid, 2, 5):
        original, *augmented, _ = row
        for tile in augmented:
            assert not np.array_equal(tile, original)
            # The overlay moved with the image: its tinted (green-dominant) pixels moved too.
            assert _tinted(tile).any() and not np.array_equal(_tinted(tile), _tinted(original))


def test_command_writes_a_png(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "grid.png"
    code = main(
        [
            "preview",
            "--samples",
            "2",
            "--versions",
            "2",
            "--out",
            str(out),
            "aug=kornia_gpu",
            "aug/policy=heavy",
            f"paths.data_dir={tmp_path / 'data'}",
            "data.source.count=12",
            "data.source.image_size=64",
            "data.image_size=64",
        ]
    )
    assert code == 0
    assert "aug=kornia_gpu" in capsys.readouterr().out
    grid = cv2.imread(str(out))
    assert grid.shape == (LABEL_HEIGHT + 2 * (64 + 2), 4 * 64 + 3 * 2, 3)


def test_command_names_a_bad_override(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["preview", "aug=nope", f"paths.data_dir={tmp_path}"]) == EXIT_ERROR
    assert "nope" in capsys.readouterr().err
