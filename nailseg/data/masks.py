"""One foreground rule per data set: ``foreground = value > threshold``.

Masks come as 0/255 grayscale, 0/1 palette or index PNGs, colour masks, and JPEG files whose
values are smeared around 0 and 255. Every mask is first reduced to one value per pixel
(:func:`nailseg.data.io.mask_values`: palette index, gray level, or brightest colour channel).
Then the whole data set gets one threshold:

- ``data.mask_threshold`` when it is set;
- else ``0`` when every mask's values are in ``{0, 1}`` (index masks);
- else ``127``, the midpoint of 8-bit masks, which also absorbs JPEG noise.

Deciding per data set instead of per mask matters: a nearly empty JPEG mask whose largest value
is 1 would otherwise count as an index mask and turn its noise into foreground.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# 8-bit masks should sit near 0 or 255; JPEG noise leaves a thin band of values in between along
# edges (well under 1 % of the pixels in nails52). A large share in between means the file is a
# soft mask or not a mask at all.
MID_BAND = (32, 223)
MAX_MID_FRACTION = 0.10
# Index masks: values above this are neither a 0/1 index mask nor an 8-bit mask.
INDEX_MAX = 15


@dataclass(frozen=True)
class MaskStats:
    """What the rule and the checks need to know about one mask's raw values."""

    max_value: float
    mid_fraction: float
    unique_small: tuple[int, ...]

    @classmethod
    def of(cls, values: np.ndarray) -> MaskStats:
        max_value = float(values.max(initial=0))
        if max_value <= INDEX_MAX:
            mid, unique = 0.0, tuple(int(v) for v in np.unique(values))
        else:
            mid = float(((values >= MID_BAND[0]) & (values <= MID_BAND[1])).mean())
            unique = ()
        return cls(max_value, mid, unique)

    @property
    def kind(self) -> str:
        """``empty``, ``index`` (values 0/1), ``labels`` (small integers > 1) or ``8-bit``."""
        if self.max_value == 0:
            return "empty"
        if self.max_value <= 1:
            return "index"
        return "labels" if self.max_value <= INDEX_MAX else "8-bit"


@dataclass(frozen=True)
class MaskRule:
    """The data set's foreground rule and the sentence that describes it."""

    threshold: float
    description: str

    def unexpected(self, stats: MaskStats) -> str | None:
        """Why this mask's values do not fit the rule, or ``None`` when they do."""
        kind = stats.kind
        if kind == "labels":
            return (
                f"values {list(stats.unique_small)}: more than two classes (expected 0/1 or"
                " 0/255 for binary masks)"
            )
        if kind == "8-bit" and stats.mid_fraction > MAX_MID_FRACTION:
            return (
                f"{stats.mid_fraction:.0%} of pixels are between {MID_BAND[0]} and"
                f" {MID_BAND[1]} (a soft mask or not a mask?)"
            )
        if kind == "index" and self.threshold >= 1:
            return (
                f"a 0/1 mask in a set of 8-bit masks: foreground = value > {self.threshold:g}"
                " makes it all background"
            )
        return None


def choose_rule(stats: list[MaskStats], threshold: float | None = None) -> MaskRule:
    """The one rule for a data set whose masks have ``stats`` (see the module docstring)."""
    if threshold is not None:
        return MaskRule(
            float(threshold), f"foreground = value > {threshold:g} (data.mask_threshold)"
        )
    kinds = {s.kind for s in stats}
    if kinds <= {"empty", "index"}:
        return MaskRule(0.0, "foreground = value > 0 (0/1 index masks)")
    return MaskRule(127.0, "foreground = gray > 127 (8-bit masks)")
