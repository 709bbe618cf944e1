"""``data=voc``: the Pascal VOC layout, with the split given by its image-set lists.

::

    root/JPEGImages/<name>.jpg
    root/SegmentationClass/<name>.png       (or Annotations/: palette PNGs, values 0/1, 255 = void)
    root/ImageSets/Segmentation/train.txt   one <name> per line; also val.txt, test.txt

A pair listed in no split file is reported as unused, not silently dropped. The 255 void border
is left out of training and label masks with several classes need ``data.foreground``
(:mod:`nailseg.data.masks`).
"""

from __future__ import annotations

from pathlib import Path

from nailseg.data.sources.base import Pair, PairSource, Scan, require_dir, scan_folders
from nailseg.errors import DataError

# VOC file name -> our split name.
SPLIT_FILES = {"train": "train", "val": "valid", "test": "test"}
MASK_FOLDERS = ("SegmentationClass", "Annotations")


class VocSource(PairSource):
    """Pascal-VOC-style folders with ``ImageSets/Segmentation/{train,val[,test]}.txt``.

    Args:
        root: the folder holding ``JPEGImages/``.
        images: image folder under ``root``.
        masks: mask folder under ``root``; ``None`` takes the first of SegmentationClass and
            Annotations that exists.
        image_sets: folder of the split lists under ``root``.
    """

    def __init__(
        self,
        root: str | Path | None,
        images: str = "JPEGImages",
        masks: str | None = None,
        image_sets: str = "ImageSets/Segmentation",
    ) -> None:
        if root is None:
            raise DataError("data=voc needs data.root=/path/to/VOC (the folder with JPEGImages/).")
        self.root = Path(root).expanduser()
        self.images, self.masks, self.image_sets = images, masks, image_sets

    def _mask_dir(self) -> Path:
        if self.masks is not None:
            return self.root / self.masks
        for name in MASK_FOLDERS:
            if (self.root / name).is_dir():
                return self.root / name
        raise DataError(
            f"No mask folder under {self.root}: expected one of {list(MASK_FOLDERS)}"
            " (or set data.source.masks=FOLDER)."
        )

    def scan(self) -> Scan:
        require_dir(
            self.root, "VOC root", "Set data.root=/path/to/VOC (the folder with JPEGImages/)."
        )
        images_dir, sets_dir = self.root / self.images, self.root / self.image_sets
        require_dir(images_dir, "Image folder", f"Expected {self.images}/ under {self.root}.")
        masks_dir = self._mask_dir()
        require_dir(masks_dir, "Mask folder", f"Expected {masks_dir.name}/ under {self.root}.")
        lists = {
            split: sets_dir / f"{name}.txt"
            for name, split in SPLIT_FILES.items()
            if (sets_dir / f"{name}.txt").is_file()
        }
        if "train" not in lists or "valid" not in lists:
            raise DataError(
                f"Split lists missing: expected train.txt and val.txt in {sets_dir}."
                " Add them, or use data=folder for an automatic split."
            )
        scan = scan_folders(images_dir, masks_dir, grouped=False)
        split_of: dict[str, str] = {}
        for split, path in lists.items():
            for name in path.read_text().split():
                if split_of.setdefault(name, split) != split:
                    raise DataError(
                        f"{name} is in both {split_of[name]} and {split} lists under"
                        f" {sets_dir}. Keep it in one."
                    )
        names = {p.image.relative_to(images_dir).with_suffix("").as_posix() for p in scan.pairs}
        unknown = set(split_of) - names

        def listed(paths: list[Path], folder: Path) -> list[Path]:
            # VOC keeps many images without segmentation masks; only listed ones matter.
            return [p for p in paths if p.relative_to(folder).with_suffix("").as_posix() in unknown]

        scan.images_without_masks = listed(scan.images_without_masks, images_dir)
        scan.masks_without_images = listed(scan.masks_without_images, masks_dir)
        found = {
            p.relative_to(d).with_suffix("").as_posix()
            for ps, d in (
                (scan.images_without_masks, images_dir),
                (scan.masks_without_images, masks_dir),
            )
            for p in ps
        }
        neither = sorted(unknown - found)
        if neither:
            raise DataError(
                f"{len(neither)} name(s) in the split lists under {sets_dir} have neither an image"
                f" nor a mask: {', '.join(neither[:5])}. Remove them from the lists or add the"
                " files."
            )
        labelled, unused = [], []
        for pair in scan.pairs:
            split = split_of.get(pair.image.relative_to(images_dir).with_suffix("").as_posix(), "")
            if split:
                labelled.append(Pair(pair.image, pair.mask, pair.group, split))
            else:
                unused.append((pair, f"in none of {', '.join(p.name for p in lists.values())}"))
        scan.pairs, scan.unused = labelled, unused
        return scan

    def __repr__(self) -> str:
        return f"VocSource({self.root})"
