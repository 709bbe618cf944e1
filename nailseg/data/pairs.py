"""Finding image/mask pairs on disk.

A *source* turns a folder layout into a list of :class:`Pair`. Sources are small classes with a
``pairs()`` method so that a ``data=`` config option can pick one by ``_target_``. Sources that
can also report files without a partner have a ``scan()`` method returning a :class:`Scan`; the
data check (:mod:`nailseg.data.validate`) uses it to list them instead of stopping at the first.

Sources here: :class:`GroupedFolderSource` (``data=nails``), :class:`FolderSource`
(``data=folder``); list files and Pascal VOC live in :mod:`nailseg.data.listfile` and
:mod:`nailseg.data.voc`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from nailseg.errors import DataError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class Pair:
    """One image and its mask; ``group`` stratifies the automatic split; ``split`` (``train``,
    ``valid``, ``test``) is set when the data set itself says which split a pair belongs to."""

    image: Path
    mask: Path
    group: str = ""
    split: str = ""


@dataclass
class Scan:
    """What a source found: the pairs, and files that have no partner."""

    pairs: list[Pair]
    images_without_masks: list[Path] = field(default_factory=list)
    masks_without_images: list[Path] = field(default_factory=list)
    # Pairs the source found but will not use (e.g. in no split list), each with the reason.
    unused: list[tuple[Pair, str]] = field(default_factory=list)


def hidden(relative: Path) -> bool:
    """Whether a path (relative to the scanned folder) is hidden: a name starting with ``.``,
    such as macOS's ``.DS_Store`` and ``._photo.png`` AppleDouble files (metadata, not images) or
    a ``.ipynb_checkpoints/`` folder."""
    return any(part.startswith(".") for part in relative.parts)


def _files_by_key(folder: Path) -> dict[Path, Path]:
    """Map ``relative/parent/stem`` to the file, for every image file under ``folder``.

    Hidden files and folders (:func:`hidden`) are skipped.
    """
    files: dict[Path, Path] = {}
    skipped = 0
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
            if hidden(path.relative_to(folder)):
                skipped += 1
                continue
            key = path.relative_to(folder).with_suffix("")
            if key in files:
                raise DataError(
                    f"Two files share the name {key} in {folder}: {files[key].name} and "
                    f"{path.name}. Keep one of them so each image has exactly one mask."
                )
            files[key] = path
    if skipped:
        log.info("Skipped %d hidden file(s) under %s (names starting with '.')", skipped, folder)
    return files


def _require_dir(path: Path, what: str, fix: str) -> None:
    if not path.is_dir():
        raise DataError(f"{what} not found: {path}. {fix}")


def _examples(keys: Iterable[Path], limit: int = 5) -> str:
    keys = sorted(str(k) for k in keys)
    shown = ", ".join(keys[:limit])
    return shown + (f" (and {len(keys) - limit} more)" if len(keys) > limit else "")


def scan_folders(images_dir: Path, masks_dir: Path, grouped: bool) -> Scan:
    """Pair files of two folders by relative path and stem; extensions are free.

    With ``grouped=True`` the first sub-folder under ``images_dir`` is the pair's group. Raises
    :class:`DataError` when there is no image at all; files without a partner are returned.
    """
    images, masks = _files_by_key(images_dir), _files_by_key(masks_dir)
    if not images:
        raise DataError(
            f"No images found under {images_dir} (extensions {', '.join(IMAGE_EXTENSIONS)})."
            " Point the data path at a folder that holds them."
        )
    return Scan(
        pairs=[
            Pair(images[key], masks[key], key.parts[0] if grouped and len(key.parts) > 1 else "")
            for key in sorted(images.keys() & masks.keys())
        ],
        images_without_masks=[images[k] for k in sorted(images.keys() - masks.keys())],
        masks_without_images=[masks[k] for k in sorted(masks.keys() - images.keys())],
    )


def complete_pairs(scan: Scan, images_dir: Path, masks_dir: Path) -> list[Pair]:
    """The pairs of a :func:`scan_folders` scan, when every file has its partner.

    Raises :class:`DataError` for images without masks or masks without images, listing the
    first few of them.
    """
    problems = []
    if scan.images_without_masks:
        problems.append(
            f"{len(scan.images_without_masks)} image(s) without a mask in {masks_dir}: "
            f"{_examples(p.relative_to(images_dir) for p in scan.images_without_masks)}"
        )
    if scan.masks_without_images:
        problems.append(
            f"{len(scan.masks_without_images)} mask(s) without an image in {images_dir}: "
            f"{_examples(p.relative_to(masks_dir) for p in scan.masks_without_images)}"
        )
    if problems:
        raise DataError(
            "Images and masks do not match. "
            + "; ".join(problems)
            + ". Add the missing files or remove the extra ones; pairs match by relative path"
            " and file name without extension."
        )
    return scan.pairs


class GroupedFolderSource:
    """The seed tutorial's layout: ``root/Images/<group>/x.png`` with ``root/Masks/<group>/x.png``.

    Args:
        root: the folder that holds ``Images/`` and ``Masks/``.
        images: name of the image folder under ``root``.
        masks: name of the mask folder under ``root``.
    """

    def __init__(
        self, root: str | Path | None, images: str = "Images", masks: str = "Masks"
    ) -> None:
        if root is None:
            raise DataError(
                "No data root given. Set data.root=/path/to/folder (it must hold "
                f"{images}/ and {masks}/)."
            )
        self.root = Path(root).expanduser()
        self.images_dir, self.masks_dir = self.root / images, self.root / masks

    def _check_dirs(self) -> None:
        _require_dir(
            self.root,
            "Data root",
            "Set data.root=/path/to/folder (it must hold "
            f"{self.images_dir.name}/ and {self.masks_dir.name}/).",
        )
        _require_dir(
            self.images_dir,
            "Image folder",
            f"Expected {self.images_dir.name}/<group>/*.png under {self.root}.",
        )
        _require_dir(
            self.masks_dir,
            "Mask folder",
            f"Expected {self.masks_dir.name}/<group>/*.png under {self.root}.",
        )

    def scan(self) -> Scan:
        self._check_dirs()
        return scan_folders(self.images_dir, self.masks_dir, grouped=True)

    def pairs(self) -> list[Pair]:
        return complete_pairs(self.scan(), self.images_dir, self.masks_dir)

    def __repr__(self) -> str:
        return f"GroupedFolderSource({self.images_dir}, {self.masks_dir})"


class FolderSource:
    """Any two folders, one of images and one of masks, paired by relative path and file name
    without extension (``a.jpg`` pairs with ``a.png``). Sub-folders are allowed and kept as the
    relative path; they are not groups. ``data=folder data.images=... data.masks=...``.

    Args:
        images: the image folder.
        masks: the mask folder.
    """

    def __init__(self, images: str | Path | None, masks: str | Path | None) -> None:
        if images is None or masks is None:
            raise DataError(
                "data=folder needs both folders: data.images=/path/to/images "
                "data.masks=/path/to/masks."
            )
        self.images_dir, self.masks_dir = Path(images).expanduser(), Path(masks).expanduser()

    def scan(self) -> Scan:
        _require_dir(self.images_dir, "Image folder", "Set data.images=/path/to/images.")
        _require_dir(self.masks_dir, "Mask folder", "Set data.masks=/path/to/masks.")
        return scan_folders(self.images_dir, self.masks_dir, grouped=False)

    def pairs(self) -> list[Pair]:
        return complete_pairs(self.scan(), self.images_dir, self.masks_dir)

    def __repr__(self) -> str:
        return f"FolderSource({self.images_dir}, {self.masks_dir})"
