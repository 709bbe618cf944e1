"""Two folders, one of images and one of masks: ``data=folder`` (:class:`FolderSource`) and the
tutorial's grouped layout ``data=nails`` (:class:`GroupedFolderSource`)."""

from __future__ import annotations

from pathlib import Path

from nailseg.data.sources.base import PairSource, Scan, require_dir, scan_folders
from nailseg.errors import DataError


class GroupedFolderSource(PairSource):
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
        require_dir(
            self.root,
            "Data root",
            "Set data.root=/path/to/folder (it must hold "
            f"{self.images_dir.name}/ and {self.masks_dir.name}/).",
        )
        require_dir(
            self.images_dir,
            "Image folder",
            f"Expected {self.images_dir.name}/<group>/*.png under {self.root}.",
        )
        require_dir(
            self.masks_dir,
            "Mask folder",
            f"Expected {self.masks_dir.name}/<group>/*.png under {self.root}.",
        )

    def scan(self) -> Scan:
        self._check_dirs()
        return scan_folders(self.images_dir, self.masks_dir, grouped=True)

    def __repr__(self) -> str:
        return f"GroupedFolderSource({self.images_dir}, {self.masks_dir})"


class FolderSource(PairSource):
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
        require_dir(self.images_dir, "Image folder", "Set data.images=/path/to/images.")
        require_dir(self.masks_dir, "Mask folder", "Set data.masks=/path/to/masks.")
        return scan_folders(self.images_dir, self.masks_dir, grouped=False)

    def __repr__(self) -> str:
        return f"FolderSource({self.images_dir}, {self.masks_dir})"
