"""Finding image/mask pairs on disk.

A *source* turns a folder layout into a list of :class:`Pair`. Sources are small classes with a
``pairs()`` method so that a ``data=`` config option can pick one by ``_target_``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from nailseg.errors import DataError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class Pair:
    """One image and its mask; ``group`` is used to stratify the split."""

    image: Path
    mask: Path
    group: str = ""


def _files_by_key(folder: Path) -> dict[Path, Path]:
    """Map ``relative/parent/stem`` to the file, for every image file under ``folder``."""
    files: dict[Path, Path] = {}
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
            key = path.relative_to(folder).with_suffix("")
            if key in files:
                raise DataError(
                    f"Two files share the name {key} in {folder}: {files[key].name} and "
                    f"{path.name}. Keep one of them so each image has exactly one mask."
                )
            files[key] = path
    return files


def _require_dir(path: Path, what: str, fix: str) -> None:
    if not path.is_dir():
        raise DataError(f"{what} not found: {path}. {fix}")


def _examples(keys: Iterable[Path], limit: int = 5) -> str:
    keys = sorted(str(k) for k in keys)
    shown = ", ".join(keys[:limit])
    return shown + (f" (and {len(keys) - limit} more)" if len(keys) > limit else "")


def match_pairs(images_dir: Path, masks_dir: Path, grouped: bool) -> list[Pair]:
    """Pair files of two folders by relative path and stem; extensions are free.

    With ``grouped=True`` the first sub-folder under ``images_dir`` is the pair's group.
    Raises :class:`DataError` for empty folders and for images without masks or masks without
    images, listing the first few of them.
    """
    images, masks = _files_by_key(images_dir), _files_by_key(masks_dir)
    if not images:
        raise DataError(
            f"No images found under {images_dir} (extensions {', '.join(IMAGE_EXTENSIONS)})."
            " Point data.root at a folder that holds them."
        )
    missing_masks = images.keys() - masks.keys()
    orphan_masks = masks.keys() - images.keys()
    problems = []
    if missing_masks:
        problems.append(f"{len(missing_masks)} image(s) without a mask in {masks_dir}: "
                        f"{_examples(missing_masks)}")
    if orphan_masks:
        problems.append(f"{len(orphan_masks)} mask(s) without an image in {images_dir}: "
                        f"{_examples(orphan_masks)}")
    if problems:
        raise DataError(
            "Images and masks do not match. " + "; ".join(problems)
            + ". Add the missing files or remove the extra ones; pairs match by relative path"
            " and file name without extension."
        )
    return [
        Pair(images[key], masks[key], key.parts[0] if grouped and len(key.parts) > 1 else "")
        for key in sorted(images)
    ]


class GroupedFolderSource:
    """The seed tutorial's layout: ``root/Images/<group>/x.png`` with ``root/Masks/<group>/x.png``.

    Args:
        root: the folder that holds ``Images/`` and ``Masks/``.
        images: name of the image folder under ``root``.
        masks: name of the mask folder under ``root``.
    """

    def __init__(self, root: str | Path | None, images: str = "Images", masks: str = "Masks") -> None:
        if root is None:
            raise DataError("No data root given. Set data.root=/path/to/folder (it must hold "
                            f"{images}/ and {masks}/).")
        self.root = Path(root).expanduser()
        self.images_dir, self.masks_dir = self.root / images, self.root / masks

    def pairs(self) -> list[Pair]:
        _require_dir(self.root, "Data root", "Set data.root=/path/to/folder (it must hold "
                     f"{self.images_dir.name}/ and {self.masks_dir.name}/).")
        _require_dir(self.images_dir, "Image folder", f"Expected {self.images_dir.name}/<group>/*.png "
                     f"under {self.root}.")
        _require_dir(self.masks_dir, "Mask folder", f"Expected {self.masks_dir.name}/<group>/*.png "
                     f"under {self.root}.")
        return match_pairs(self.images_dir, self.masks_dir, grouped=True)
