"""What every data source shares: the :class:`Pair` and :class:`Scan` types, the path helpers and
the :class:`PairSource` base class.

A *source* turns one folder layout into image/mask pairs. It implements :meth:`PairSource.scan`,
which returns a :class:`Scan`: the pairs, the files without a partner and the pairs it will not
use. The data check (:mod:`nailseg.data.validate`) reports everything in the scan instead of
stopping at the first problem; :meth:`PairSource.pairs` is the strict form, for code that only
wants the pairs. A new layout is one module in this package plus one ``conf/data`` file.
"""

from __future__ import annotations

import abc
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
    """What a source found: the pairs, and files that have no partner.

    ``images_dir`` and ``masks_dir``, when the source reads two folders, name the unpaired files
    relative to them in messages.
    """

    pairs: list[Pair]
    images_without_masks: list[Path] = field(default_factory=list)
    masks_without_images: list[Path] = field(default_factory=list)
    # Pairs the source found but will not use (e.g. in no split list), each with the reason.
    unused: list[tuple[Pair, str]] = field(default_factory=list)
    images_dir: Path | None = None
    masks_dir: Path | None = None

    def complete_pairs(self) -> list[Pair]:
        """The pairs, when every file has its partner.

        Raises :class:`DataError` for images without masks or masks without images, listing the
        first few of them.

        Examples:
            >>> Scan([Pair(Path("a.png"), Path("m/a.png"))]).complete_pairs()[0].image.name
            'a.png'
            >>> lonely = Scan([], masks_without_images=[Path("m/b.png")], masks_dir=Path("m"))
            >>> lonely.complete_pairs()  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            nailseg.errors.DataError: Images and masks do not match. 1 mask(s) without an image ...
        """
        problems = []
        if self.images_without_masks:
            problems.append(
                f"{len(self.images_without_masks)} image(s) without a mask in {self.masks_dir}: "
                f"{examples(_relative(p, self.images_dir) for p in self.images_without_masks)}"
            )
        if self.masks_without_images:
            problems.append(
                f"{len(self.masks_without_images)} mask(s) without an image in {self.images_dir}: "
                f"{examples(_relative(p, self.masks_dir) for p in self.masks_without_images)}"
            )
        if problems:
            raise DataError(
                "Images and masks do not match. "
                + "; ".join(problems)
                + ". Add the missing files or remove the extra ones; pairs match by relative path"
                " and file name without extension."
            )
        return self.pairs


class PairSource(abc.ABC):
    """A folder layout as image/mask pairs; a ``data=`` option picks one by ``_target_``.

    Subclasses implement :meth:`scan`; :meth:`pairs` follows from it.
    """

    @abc.abstractmethod
    def scan(self) -> Scan:
        """Find the pairs, the files without a partner and the pairs left out (with why).

        Raises :class:`DataError` when the layout itself is wrong (a missing folder or list
        file, no image at all), naming the setting to fix.
        """

    def pairs(self) -> list[Pair]:
        """The pairs to use; raises :class:`DataError` when files have no partner (the data
        check lists those instead, see :mod:`nailseg.data.validate`)."""
        return self.scan().complete_pairs()


def hidden(relative: Path) -> bool:
    """Whether a path (relative to the scanned folder) is hidden: a name starting with ``.``,
    such as macOS's ``.DS_Store`` and ``._photo.png`` AppleDouble files (metadata, not images) or
    a ``.ipynb_checkpoints/`` folder.

    Examples:
        >>> [hidden(Path(p)) for p in ("a/._x.png", ".ipynb_checkpoints/x.png", "x.png")]
        [True, True, False]
    """
    return any(part.startswith(".") for part in relative.parts)


def files_by_key(folder: Path) -> dict[Path, Path]:
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


def require_dir(path: Path, what: str, fix: str) -> None:
    """Raise :class:`DataError` ``"{what} not found: {path}. {fix}"`` unless ``path`` is a
    folder."""
    if not path.is_dir():
        raise DataError(f"{what} not found: {path}. {fix}")


def examples(keys: Iterable[Path | str], limit: int = 5) -> str:
    """The first ``limit`` of ``keys``, sorted, and how many more.

    Examples:
        >>> examples(["c", "a", "b"], limit=2)
        'a, b (and 1 more)'
    """
    keys = sorted(str(k) for k in keys)
    shown = ", ".join(keys[:limit])
    return shown + (f" (and {len(keys) - limit} more)" if len(keys) > limit else "")


def _relative(path: Path, folder: Path | None) -> Path:
    # Without a folder (or outside it) the path is shown whole.
    return path.relative_to(folder) if folder is not None and path.is_relative_to(folder) else path


def scan_folders(images_dir: Path, masks_dir: Path, grouped: bool) -> Scan:
    """Pair files of two folders by relative path and stem; extensions are free.

    With ``grouped=True`` the first sub-folder under ``images_dir`` is the pair's group. Raises
    :class:`DataError` when there is no image at all; files without a partner are returned.
    """
    images, masks = files_by_key(images_dir), files_by_key(masks_dir)
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
        images_dir=images_dir,
        masks_dir=masks_dir,
    )
