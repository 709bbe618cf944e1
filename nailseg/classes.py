"""The class list: where a run's number of classes comes from, and what follows from it.

``data.classes`` is the one place a run's classes are said: ``null`` (binary: foreground against
background, the default) or the class names, mask value ``i`` being class ``i``. Everything else
reads it through the config resolvers registered in :mod:`nailseg.config`:

- ``model.classes: ${nailseg_num_classes:${data.classes}}``: the network's output channels
  (1 for binary, one per class otherwise), never typed twice;
- ``optimized_metric`` and the checkpoints' ``monitor``: ``val/iou`` (binary) or ``val/miou``;
- ``loss.mode`` of smp's losses: ``binary`` or ``multiclass``;
- ``data=voc``: the names in ``ROOT/labels.txt`` when the folder has one;
- ``data=synthetic data.source.classes=3``: background, skin and nail.

The data (:mod:`nailseg.data.masks`), the LightningModule, eval, predict and export read the list
from the resolved config or the checkpoint's hyper-parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nailseg.errors import ConfigError

BINARY_SCORE = "val/iou"
MULTICLASS_SCORE = "val/miou"
# ``ROOT/labels.txt``: one class name per line, class 0 first. labelme's exporter writes the same
# file with ``__ignore__`` (its void) on the first line, which is not a class.
LABELS_FILE = "labels.txt"
_NOT_A_CLASS = ("__ignore__",)
# What ``data.source.classes`` draws in the synthetic set (nailseg.data.synthetic).
SYNTHETIC_CLASSES: dict[int, tuple[str, ...] | None] = {
    2: None,
    3: ("background", "skin", "nail"),
}
# A class-index mask is uint8 and 255 is the usual void value: at most this many classes.
MAX_CLASSES = 255


def check_classes(classes: Any, where: str = "data.classes") -> tuple[str, ...] | None:
    """``data.classes`` as a tuple of names, or ``None`` for binary; a bad list is a one-line
    :class:`~nailseg.errors.ConfigError` naming ``where`` (the key, or the file it came from).

    Examples:
        >>> check_classes(["background", "nail", "skin"])
        ('background', 'nail', 'skin')
        >>> check_classes(None) is None
        True
    """
    if classes is None:
        return None
    if isinstance(classes, str) or not isinstance(classes, Sequence):
        raise ConfigError(
            f"{where}={classes!r} is invalid: list the class names, class 0 first, e.g."
            " data.classes=[background,nail,skin], or null for binary segmentation."
        )
    names = [str(name).strip() for name in classes]
    if len(names) < 2:
        raise ConfigError(
            f"{where}={names} names {len(names)} class: a multi-class run needs at least two"
            " (background and one more, e.g. data.classes=[background,nail]); for binary"
            " segmentation set data.classes=null."
        )
    if len(names) > MAX_CLASSES:
        raise ConfigError(
            f"{where} names {len(names)} classes: masks are 8-bit, so at most {MAX_CLASSES}."
        )
    empty = [i for i, name in enumerate(names) if not name]
    doubled = sorted({name for name in names if names.count(name) > 1})
    if empty or doubled:
        what = f"class {empty[0]} has no name" if empty else f"{doubled[0]!r} is named twice"
        raise ConfigError(f"{where}={names} is invalid: {what}; give each class its own name.")
    return tuple(names)


def num_classes(classes: Sequence[str] | None) -> int:
    """The network's output channels: 1 for binary (one logit), else one per class."""
    return 1 if classes is None else len(classes)


def score_metric(classes: Sequence[str] | None) -> str:
    """The metric that ranks checkpoints and runs: ``val/iou`` (binary) or ``val/miou``."""
    return BINARY_SCORE if classes is None else MULTICLASS_SCORE


def loss_mode(classes: Sequence[str] | None) -> str:
    """smp's loss ``mode`` for this data: ``binary`` or ``multiclass``."""
    return "binary" if classes is None else "multiclass"


def checkpoint_name(classes: Sequence[str] | None) -> str:
    """The top-k checkpoints' file name template, after the metric they are ranked by."""
    short = "iou" if classes is None else "miou"
    return f"epoch{{epoch:03d}}-{short}{{{score_metric(classes)}:.4f}}"


def read_labels(path: Path) -> list[str]:
    """The class names in a ``labels.txt`` (one per line; blank lines, ``#`` comments and
    labelme's ``__ignore__`` line skipped)."""
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and line not in _NOT_A_CLASS]


def folder_classes(root: Any, foreground: Any = None) -> list[str] | None:
    """The classes of a VOC-style folder: the names in ``ROOT/labels.txt`` when it exists,
    unless ``data.foreground`` merges labels into a binary task; else ``None`` (binary).

    A config resolver (``data=voc``): it never raises, so a file it cannot read gives ``None``
    here and the data check names the problem.
    """
    if root is None or foreground is not None:
        return None
    path = Path(str(root)).expanduser() / LABELS_FILE
    try:
        return read_labels(path) if path.is_file() else None
    except (OSError, UnicodeDecodeError):
        return None


def synthetic_classes(count: Any) -> list[str] | None:
    """The class names the synthetic set draws with ``data.source.classes=count``."""
    names = SYNTHETIC_CLASSES.get(count) if isinstance(count, int) else None
    return None if names is None else list(names)
