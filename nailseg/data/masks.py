"""One foreground rule per data set, and the "void" value that is left out of training.

Masks come as 0/255 grayscale, 0/1 palette or index PNGs, label masks (0, 1, 2, ... with 255 for
"void", the Pascal VOC convention), colour masks, and JPEG files whose values are smeared around
0 and 255. Every mask is first reduced to one value per pixel (:func:`nailseg.data.io.mask_values`:
palette index, gray level, or brightest colour channel). Then the whole data set gets one rule.

**Index or 8-bit.** A data set holds *index masks* when no mask has a value above
:data:`LABEL_MAX` (127) other than the void value, and *8-bit masks* otherwise. It also holds
8-bit masks when the void value never occurs in a mask together with labels 1, 2, ...: masks of
only 0 and 255 are plain 0/255 binary masks.

**Void.** In index masks the value ``data.ignore_index`` (default 255) marks void pixels: the
binary mask keeps that value there, and the losses and metrics leave those pixels out (they count
as neither foreground nor background). In 8-bit masks 255 is a gray level, so there is no void.

**Foreground**, in this order:

- ``data.foreground=[1, 2]``: the listed values;
- ``data.mask_threshold``: ``value > threshold``;
- else ``value > 0`` for index masks whose values are 0 and 1 (besides void);
- else ``value > 127`` for 8-bit masks, the midpoint, which also absorbs JPEG noise.

Index masks with labels above 1 (several classes) stop the data check unless one of the first two
says which labels are foreground (``data.mask_threshold=0`` makes every non-zero label
foreground): a binary model trained on merged classes is too easy to get by accident.

Deciding per data set instead of per mask matters: a nearly empty JPEG mask whose largest value
is 1 would otherwise count as an index mask and turn its noise into foreground.

**Multi-class** (``data.classes``, see :mod:`nailseg.classes`): mask value ``i`` is class ``i``
and the masks are kept as they are, void included; a value outside the classes stops the data
check. Palette PNGs map by index; colour masks through ``data.palette``
(:func:`nailseg.data.io.mask_values`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# 8-bit masks should sit near 0 or 255; JPEG noise leaves a thin band of values in between along
# edges (well under 1 % of the pixels in nails52). A large share in between means the file is a
# soft mask or not a mask at all.
MID_BAND = (32, 223)
MAX_MID_FRACTION = 0.10
# In a set of 8-bit masks, a mask whose values stay at or below this is an index or label mask.
INDEX_MAX = 15
# A set is of index masks when no value other than the void value is above this: label masks
# (VOC has 21 classes) stay far below, 8-bit masks always have foreground near 255.
LABEL_MAX = 127
# Value lists in messages are cut after this many values.
SHOWN_VALUES = 12
# Masks with at most this many distinct values keep the list (for messages and checks).
FEW_VALUES = 16
# Pascal VOC's void border, and the share of label pixels that tells a 0/1/255 index mask from a
# 0/255 mask with a little JPEG noise.
VOC_VOID = 255
MIN_LABEL_FRACTION = 0.01


def _value_counts(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct values of ``values`` and how often each occurs (one pass for 8/16-bit)."""
    flat = values.ravel()
    if flat.dtype in (np.uint8, np.uint16):
        counts = np.bincount(flat)
        present = np.flatnonzero(counts)
        return present, counts[present]
    return np.unique(flat, return_counts=True)


def format_values(values: Sequence[float]) -> str:
    """``[0, 1, 2]``, or the first few and a count: ``[0, 1, ..., 20] (22 values)``."""
    shown = [f"{v:g}" for v in values]
    if len(shown) > SHOWN_VALUES:
        return f"[{', '.join(shown[: SHOWN_VALUES - 1])}, ..., {shown[-1]}] ({len(shown)} values)"
    return f"[{', '.join(shown)}]"


@dataclass(frozen=True)
class MaskStats:
    """What the rule and the checks need to know about one mask's raw values.

    ``kept`` values are those other than ``ignore_index`` (all of them when it is ``None``).
    """

    max_value: float
    max_kept: float
    void_fraction: float
    mid_fraction: float
    # The distinct values (void included) when no kept value is above LABEL_MAX or there are
    # few of them, else ().
    values: tuple[float, ...]
    # Share of pixels with a label value 1..LABEL_MAX (void excluded).
    label_fraction: float = 0.0
    # The pixels holding each of ``values`` (when they were kept).
    counts: tuple[int, ...] = ()

    @classmethod
    def of(cls, values: np.ndarray, ignore_index: int | None = None) -> MaskStats:
        present, counts = _value_counts(values)
        total = max(int(counts.sum()), 1)
        kept = present != ignore_index if ignore_index is not None else np.ones_like(present, bool)
        max_value = float(present.max(initial=0))
        max_kept = float(present[kept].max(initial=0))
        void = float(counts[~kept].sum()) / total
        mid = float(counts[(present >= MID_BAND[0]) & (present <= MID_BAND[1])].sum()) / total
        few = max_kept <= LABEL_MAX or len(present) <= FEW_VALUES
        small = tuple(float(v) for v in present) if few else ()
        pixels = tuple(int(c) for c in counts) if few else ()
        labels = float(counts[kept & (present >= 1) & (present <= LABEL_MAX)].sum()) / total
        return cls(max_value, max_kept, void, mid, small, labels, pixels)

    def top(self, void: bool) -> float:
        """The largest value that can be foreground: void excluded when ``void``."""
        return self.max_kept if void else self.max_value

    def kind(self, index_set: bool, void: bool) -> str:
        """``empty``, ``void`` (only 0 and void), ``index`` (0/1), ``labels`` (more values) or
        ``8-bit``, read as a mask of an index set or of an 8-bit set."""
        top = self.top(void)
        if top == 0:
            return "void" if void and self.void_fraction > 0 else "empty"
        if top <= 1:
            return "index"
        return "labels" if top <= (LABEL_MAX if index_set else INDEX_MAX) else "8-bit"

    def labels(self, ignore_index: int | None) -> list[float]:
        """The distinct non-void values (empty when they were not kept: an 8-bit mask)."""
        return [v for v in self.values if v != ignore_index]


@dataclass(frozen=True)
class MaskRule:
    """The data set's foreground rule and the sentence that describes it.

    Args:
        threshold: foreground is ``value > threshold`` (unless ``foreground`` is given).
        description: the rule in words, for the data check, the log and the run record.
        foreground: foreground is ``value in foreground`` (``data.foreground``).
        ignore_index: the void value: pixels holding it keep it in the binary mask, and the
            losses and metrics leave them out. ``None``: no void (8-bit masks, or none found).
        index_set: the data set holds index masks (else 8-bit masks).
        source: ``auto``, ``data.mask_threshold``, ``data.foreground`` or ``data.classes``.
        classes: multi-class (``data.classes``): the class names; masks keep their values.
        palette: the colour of each class (``data.palette``), for colour masks.
    """

    threshold: float
    description: str
    foreground: tuple[float, ...] | None = None
    ignore_index: int | None = None
    index_set: bool = True
    source: str = "auto"
    classes: tuple[str, ...] | None = None
    palette: tuple[tuple[int, int, int], ...] | None = None

    @classmethod
    def from_threshold(cls, threshold: float) -> MaskRule:
        """``value > threshold`` and nothing else (no void)."""
        return cls(float(threshold), f"foreground = value > {threshold:g}", source="threshold")

    @property
    def key(self) -> str:
        """What a cached mask depends on."""
        if self.classes is not None:
            key = f"classes={len(self.classes)}"
            if self.palette is not None:
                key += f"|palette={[list(c) for c in self.palette]}"
            return key + (f"|void={self.ignore_index}" if self.ignore_index is not None else "")
        key = f"{self.threshold:g}"
        if self.foreground is not None:
            key += f"|foreground={list(self.foreground)}"
        if self.ignore_index is not None:
            key += f"|void={self.ignore_index}"
        return key

    def apply(self, values: np.ndarray) -> np.ndarray:
        """Raw values ``(H, W)`` to the binary ``uint8`` mask: 1 foreground, 0 background and
        ``ignore_index`` for void pixels.

        Examples:
            >>> rule = MaskRule(0.0, "value > 0", ignore_index=255)
            >>> rule.apply(np.array([[0, 1, 2, 255]], np.uint8)).tolist()
            [[0, 1, 1, 255]]
            >>> MaskRule(127.0, "gray > 127", index_set=False).apply(np.array([[0, 255]])).tolist()
            [[0, 1]]
        """
        if self.classes is not None:  # class indices, void included, as they are
            return values.astype(np.uint8)
        if self.foreground is not None:
            binary = np.isin(values, self.foreground).astype(np.uint8)
        else:
            binary = (values > self.threshold).astype(np.uint8)
        if self.ignore_index is not None:
            binary[values == self.ignore_index] = self.ignore_index
        return binary

    @property
    def void(self) -> bool:
        return self.ignore_index is not None

    def has_foreground(self, stats: MaskStats) -> bool:
        """Whether a mask with ``stats`` has any foreground pixel under this rule (multi-class:
        any class but class 0)."""
        if self.classes is not None:
            return stats.max_kept > 0
        if self.foreground is not None:
            labels = stats.labels(self.ignore_index)
            return not labels or any(v in self.foreground for v in labels)
        return stats.top(self.void) > self.threshold

    def unexpected(self, stats: MaskStats) -> str | None:
        """Why this mask's values do not fit the rule, or ``None`` when they do."""
        if self.classes is not None:
            return self._outside_classes(stats)
        kind = stats.kind(self.index_set, self.void)
        if kind == "labels" and self.source == "auto":
            void = f" ({self.ignore_index:g} = void)" if self.void else ""
            found = format_values(stats.labels(self.ignore_index))
            fix = (
                ". Say which labels are foreground: data.foreground=[1, 2] lists them,"
                " data.mask_threshold=0 takes every non-zero label; or train each label as a"
                " class: data.classes=[NAME0, NAME1, ...] names them (multi-class)"
                if self.index_set
                else ""
            )
            return (
                f"values {found}{void}: more than two classes (expected 0/1 or 0/255 for binary"
                f" masks){fix}"
            )
        if kind == "8-bit" and stats.mid_fraction > MAX_MID_FRACTION:
            return (
                f"{stats.mid_fraction:.0%} of pixels are between {MID_BAND[0]} and"
                f" {MID_BAND[1]} (a soft mask or not a mask?)"
            )
        if self.foreground is not None:
            return None
        if kind == "index" and self.threshold >= 1:
            return (
                f"a 0/1 mask in a set of 8-bit masks: foreground = value > {self.threshold:g}"
                " makes it all background"
            )
        if not self.index_set and _voc_like(stats):
            # {0, 1, 255} read as 8-bit: the void border would become the foreground and the
            # objects background.
            return (
                f"values {format_values(stats.values)}: an index mask with a {VOC_VOID} void"
                f" border read as an 8-bit mask, where foreground = value > {self.threshold:g}"
                f" makes the border the foreground. Give every mask one convention, with"
                f" data.ignore_index={VOC_VOID} for the void border"
            )
        return None

    def _outside_classes(self, stats: MaskStats) -> str | None:
        n = len(self.classes)
        if stats.max_kept < n:
            return None
        labels = stats.labels(self.ignore_index)
        outside = format_values([v for v in labels if v >= n]) if labels else "up to"
        top = "" if labels else f" {stats.max_kept:g}"
        void = (
            f" (data.ignore_index={self.ignore_index} is void)"
            if self.ignore_index is not None
            else ""
        )
        return (
            f"values {outside}{top} are outside the {n} classes of data.classes (0 to {n - 1})"
            f"{void}. List every class in data.classes, or set data.ignore_index to the value"
            " that marks void"
        )


def _voc_like(stats: MaskStats) -> bool:
    """Labels 1, 2, ... on a good share of the pixels, plus the value 255 and nothing else."""
    values = stats.values
    return (
        VOC_VOID in values
        and all(v <= LABEL_MAX or v == VOC_VOID for v in values)
        and stats.label_fraction >= MIN_LABEL_FRACTION
    )


def _void_clause(ignore_index: int | None) -> str:
    if ignore_index is None:
        return ""
    return f"; {ignore_index:g} = void, left out of the loss and metrics (data.ignore_index)"


def choose_rule(
    stats: Sequence[MaskStats],
    threshold: float | None = None,
    foreground: Sequence[float] | None = None,
    ignore_index: int | None = None,
    classes: Sequence[str] | None = None,
    palette: Sequence[Sequence[int]] | None = None,
) -> MaskRule:
    """The one rule for a data set whose masks have ``stats`` (see the module docstring).

    ``stats`` must have been computed with the same ``ignore_index``.
    """
    has_void = ignore_index is not None and any(s.void_fraction > 0 for s in stats)
    if classes is not None:
        void = ignore_index if has_void else None
        names = ", ".join(classes)
        return MaskRule(
            0.0,
            f"class = mask value, {len(classes)} classes: {names} (data.classes)"
            + _void_clause(void),
            ignore_index=void,
            source="data.classes",
            classes=tuple(classes),
            palette=None if palette is None else tuple(tuple(int(v) for v in c) for c in palette),
        )
    eight_bit = any(s.max_kept > LABEL_MAX for s in stats) or (
        # Void needs a mask that holds labels and the void value together (the VOC signature);
        # otherwise the value belongs to plain 0/255 masks (and a 0/1 mask among them is wrong).
        has_void and not any(s.max_kept >= 1 and s.void_fraction > 0 for s in stats)
    )
    if foreground is not None:
        void = ignore_index if has_void else None
        shown = format_values(sorted(foreground))
        return MaskRule(
            0.0,
            f"foreground = value in {shown} (data.foreground){_void_clause(void)}",
            foreground=tuple(float(v) for v in foreground),
            ignore_index=void,
            index_set=True,
            source="data.foreground",
        )
    void = ignore_index if has_void and not eight_bit else None
    if threshold is not None:
        return MaskRule(
            float(threshold),
            f"foreground = value > {threshold:g} (data.mask_threshold){_void_clause(void)}",
            ignore_index=void,
            index_set=not eight_bit,
            source="data.mask_threshold",
        )
    if eight_bit:
        return MaskRule(127.0, "foreground = gray > 127 (8-bit masks)", index_set=False)
    if all(s.kind(True, void is not None) in ("empty", "void", "index") for s in stats):
        description = "foreground = value > 0 (0/1 index masks)"
    else:
        description = "foreground = value > 0 (index masks)"
    return MaskRule(0.0, description + _void_clause(void), ignore_index=void)


def describe_values(
    stats: Sequence[MaskStats], rule: MaskRule, ignore_index: int | None = None
) -> str:
    """The mask values a data set holds, for the data check's report.

    Examples:
        >>> voc = MaskStats.of(np.array([0, 1, 255], np.uint8), 255)
        >>> describe_values([voc], choose_rule([voc], ignore_index=255), 255)
        '[0, 1, 255] (255 = void)'
        >>> plain = MaskStats.of(np.array([0, 255], np.uint8), 255)
        >>> describe_values([plain], choose_rule([plain], ignore_index=255), 255)
        '[0, 255] (8-bit masks; 255 is a gray level here, not void)'
    """
    top = max((s.max_value for s in stats), default=0)
    known = bool(stats) and all(s.values for s in stats)
    text = format_values(sorted({v for s in stats for v in s.values})) if known else f"0 to {top:g}"
    if rule.void:
        return f"{text} ({rule.ignore_index:g} = void)"
    if rule.index_set:
        return text
    gray = ignore_index is not None and top >= ignore_index
    note = f"; {ignore_index:g} is a gray level here, not void" if gray else ""
    return f"{text} (8-bit masks{note})"
