"""The data check that runs before training (and as ``nailseg check-data``).

It decodes every file once and reports: the number of pairs, the mask values found and the rule
chosen for them (:mod:`nailseg.data.masks`), how 16-bit images are scaled, images without masks
and masks without images, unreadable or corrupt files (also images over Pillow's
decompression-bomb limit), image/mask size mismatches, masks with unexpected values (problems:
training stops with a :class:`DataError` listing the files and the fix, or with
``data.on_invalid=skip`` drops those pairs, listing each), and grayscale or RGBA images,
all-background masks, masks with only background and void, dark 16-bit images and differing EXIF
orientations (warnings: logged, nothing dropped).

The decoded arrays are not thrown away: resized to the training size they fill the decode cache
(:mod:`nailseg.data.cache`), so the first epoch does not decode again.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from nailseg.data.cache import DecodeCache, cache_key, decoding_rule
from nailseg.data.io import (
    UnknownColour,
    check_image_scale,
    decode_image,
    mask_values,
    open_file,
    orientation,
    resize_pair,
    stored_bits,
    upright,
)
from nailseg.data.masks import MaskRule, MaskStats, choose_rule, describe_values
from nailseg.data.sources.base import Pair, Scan
from nailseg.errors import ConfigError, DataError

log = logging.getLogger(__name__)

ON_INVALID = ("error", "skip")
# Problem kinds in report order, each with the fix a user needs.
PROBLEMS = {
    "images without masks": "add the masks or remove the images",
    "masks without images": "add the images or remove the masks",
    "unreadable files": "replace the files with readable images or remove the pairs",
    "size mismatches": "resize or redraw the masks to their image's size",
    "unexpected mask values": (
        "save binary masks (0/255 or 0/1), or say which values are foreground with"
        " data.foreground=[...] or data.mask_threshold; multi-class: class indices (or"
        " data.palette colours) for the classes of data.classes"
    ),
}
WARNINGS = {
    "grayscale or RGBA images": "converted to RGB (gray replicated, alpha dropped)",
    "all-background masks": "kept as negative examples; check they are not missing annotations",
    "masks with only background and void": (
        "the void value (data.ignore_index) is left out of training; if it marks foreground in"
        " these masks, set data.ignore_index=null"
    ),
    "dark 16-bit images": (
        "their values use 1/16 of the 16-bit range or less, so data.image_scale=max leaves them"
        " nearly black; data.image_scale=range stretches each image's own range"
    ),
    "EXIF orientation differs": "each file is turned upright by its own tag; check they line up",
    "classes in no mask": (
        "the network cannot learn them from this data; check data.classes against the masks"
    ),
}
SHOWN = 5


@dataclass
class _Decoded:
    """One pair after decoding: the training-size arrays (or ``None``) and what was found."""

    pair: Pair
    image: np.ndarray | None = None
    values: np.ndarray | None = None
    stats: MaskStats | None = None
    size: tuple[int, int] | None = None
    bits: int = 8
    problems: dict[str, str] = field(default_factory=dict)
    warnings: dict[str, str] = field(default_factory=dict)


@dataclass
class DataReport:
    """The result of :func:`check_pairs`."""

    source: str
    pairs: list[Pair]
    rule: MaskRule | None
    problems: dict[str, list[str]]
    warnings: dict[str, list[str]]
    dropped: list[str] = field(default_factory=list)
    sizes: list[tuple[int, int]] = field(default_factory=list)
    n_found: int = 0
    mask_values: str = ""
    # Usable images with more than 8 bits per channel, and how they become 8-bit.
    deep_images: int = 0
    image_scale: str = "max"
    # Multi-class (the rule has classes): per class, its non-void pixels and the images holding
    # it; per usable pair's mask, the classes it holds.
    class_pixels: list[int] = field(default_factory=list)
    class_images: list[int] = field(default_factory=list)
    present: dict[Path, frozenset[int]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not any(self.problems.values())

    def format(self, full: bool = True) -> str:
        """A human-readable report; ``full=False`` shows the first few files per item."""
        limit = None if full else SHOWN
        lines = [
            f"Data check of {self.source}: {self.n_found} pair(s) found, {len(self.pairs)} usable"
        ]
        if self.mask_values:
            lines.append(f"  mask values: {self.mask_values}")
        if self.rule is not None:
            lines.append(f"  mask rule: {self.rule.description}")
        if self.rule is not None and self.rule.classes is not None and self.class_pixels:
            lines += class_lines(self.rule.classes, self.class_pixels, self.class_images)
        if self.deep_images:
            how = (
                "each stretched from its own min..max to 0..255"
                if self.image_scale == "range"
                else "divided by 65535 to 0..255"
            )
            lines.append(
                f"  16-bit images: {self.deep_images} of {len(self.pairs)}, {how}"
                f" (data.image_scale={self.image_scale})"
            )
        if self.sizes:
            areas = [h * w for h, w in self.sizes]
            small, large = self.sizes[int(np.argmin(areas))], self.sizes[int(np.argmax(areas))]
            lines.append(f"  image sizes (w x h): {small[1]}x{small[0]} to {large[1]}x{large[0]}")
        for title, items, notes in (
            ("problems", self.problems, PROBLEMS),
            ("warnings", self.warnings, WARNINGS),
        ):
            found = {k: v for k, v in items.items() if v}
            lines.append(f"  {title}: {'none' if not found else ''}".rstrip())
            for kind, entries in found.items():
                lines.append(f"    {len(entries)} {kind} ({notes[kind]}):")
                lines += [f"      {e}" for e in entries[:limit]]
                if limit is not None and len(entries) > limit:
                    lines.append(f"      ... and {len(entries) - limit} more")
        if self.dropped:
            lines.append(f"  dropped ({len(self.dropped)} pair(s), data.on_invalid=skip):")
            lines += [f"    {d}" for d in self.dropped]
        return "\n".join(lines)


def class_lines(classes: Sequence[str], pixels: Sequence[int], images: Sequence[int]) -> list[str]:
    """The data check's per-class table: each class's share of the non-void pixels and the
    number of images holding it.

    Examples:
        >>> print("\\n".join(class_lines(["background", "nail"], [900, 100], [10, 4])))
          classes: 2 (pixels: share of the non-void pixels; images: masks holding the class)
                 class        pixels  images
              0  background    90.0%      10
              1  nail          10.0%       4
    """
    total = max(sum(pixels), 1)
    width = max(len("class"), *(len(name) for name in classes))
    lines = [
        f"  classes: {len(classes)} (pixels: share of the non-void pixels; images: masks holding"
        " the class)",
        f"    {'':>3}  {'class':<{width}}  {'pixels':>7}  {'images':>6}",
    ]
    for index, (name, count, holding) in enumerate(zip(classes, pixels, images, strict=True)):
        lines.append(f"    {index:>3}  {name:<{width}}  {100 * count / total:>6.1f}%  {holding:>6}")
    return lines


def _decode(
    pair: Pair,
    image_size: Sequence[int] | None,
    ignore_index: int | None = None,
    image_scale: str = "max",
    palette: Sequence[Sequence[int]] | None = None,
) -> _Decoded:
    result = _Decoded(pair)
    try:
        raw_image = open_file(pair.image)
    except DataError as err:
        result.problems["unreadable files"] = f"{pair.image}: {_reason(err)}"
        return result
    try:
        raw_mask = open_file(pair.mask)
    except DataError as err:
        result.problems["unreadable files"] = f"{pair.mask}: {_reason(err)}"
        return result
    if raw_image.mode not in ("RGB", "P"):
        result.warnings["grayscale or RGBA images"] = f"{pair.image} (mode {raw_image.mode})"
    tags = orientation(raw_image), orientation(raw_mask)
    if tags[0] != tags[1]:
        result.warnings["EXIF orientation differs"] = (
            f"{pair.image} has EXIF orientation {tags[0]}, its mask {pair.mask} has {tags[1]}"
        )
    image = decode_image(raw_image, image_scale)
    try:
        values = mask_values(upright(raw_mask), palette)
    except UnknownColour as err:
        result.problems["unexpected mask values"] = f"{pair.mask}: {err}"
        return result
    result.bits = stored_bits(raw_image)
    # Under "max", 16-bit values up to 4095 (12-bit data) come out at 16 or less.
    if result.bits > 8 and image_scale == "max" and image.max(initial=0) <= 16:
        result.warnings["dark 16-bit images"] = f"{pair.image} (largest value {image.max()}/255)"
    if image.shape[:2] != values.shape[:2]:
        note = " (EXIF orientations differ)" if tags[0] != tags[1] else ""
        result.problems["size mismatches"] = (
            f"{pair.image} is {image.shape[1]}x{image.shape[0]}, its mask {pair.mask} is"
            f" {values.shape[1]}x{values.shape[0]}{note}"
        )
        return result
    result.stats, result.size = MaskStats.of(values, ignore_index), image.shape[:2]
    if image_size is not None:
        result.image, result.values = resize_pair(image, values, image_size)
    return result


def _reason(err: DataError) -> str:
    # The DataError text repeats the path and the fix; keep only the cause for the report.
    text = str(err)
    return "file not found" if text.startswith("File not found") else text.split(": ", 1)[-1]


def check_pairs(
    scan: Scan,
    source: str = "data",
    mask_threshold: float | None = None,
    on_invalid: str = "error",
    image_size: Sequence[int] | None = None,
    cache: DecodeCache | None = None,
    workers: int | None = None,
    foreground: Sequence[float] | None = None,
    ignore_index: int | None = None,
    image_scale: str = "max",
    classes: Sequence[str] | None = None,
    palette: Sequence[Sequence[int]] | None = None,
) -> DataReport:
    """Decode every pair once, choose the mask rule and report what is wrong.

    Args:
        scan: the pairs and unpaired files a source found.
        source: how to name the data in messages.
        mask_threshold: ``data.mask_threshold`` (``None``: chosen from the masks).
        on_invalid: ``error`` raises on any problem; ``skip`` drops the pairs with problems.
        image_size: training ``(height, width)``; with ``cache``, decoded pairs are stored.
        cache: the decode cache to fill.
        workers: decoding threads (Pillow and OpenCV release the GIL while decoding).
        foreground: ``data.foreground``, the mask values that are foreground (``None``: by
            threshold).
        ignore_index: ``data.ignore_index``, the void value of index masks (``None``: no void).
        image_scale: ``data.image_scale``, how 16-bit images become 8-bit.
        classes: ``data.classes``: multi-class, mask value ``i`` is class ``i``.
        palette: ``data.palette``: the colour of each class, for colour masks.

    Raises:
        DataError: on problems with ``on_invalid=error``, when no pair is left, or when every
            mask is empty.
    """
    if on_invalid not in ON_INVALID:
        raise ConfigError(
            f"Unknown data.on_invalid={on_invalid!r}. Options: {', '.join(ON_INVALID)}."
        )
    check_image_scale(image_scale)
    keep_arrays = cache is not None and cache.kind != "none" and image_size is not None
    workers = workers or min(4, os.cpu_count() or 1)
    size = image_size if keep_arrays else None
    decode: Callable[[Pair], _Decoded] = lambda p: _decode(  # noqa: E731
        p, size, ignore_index, image_scale, palette
    )
    with ThreadPoolExecutor(max_workers=workers) as pool:
        # Decoding every file is the long phase of the check on a large data set.
        # Closed on a stop too, so the bar ends its line before the "interrupted:" message.
        with tqdm(pool.map(decode, scan.pairs), total=len(scan.pairs), desc="checking data") as bar:
            decoded = list(bar)

    problems: dict[str, list[str]] = {kind: [] for kind in PROBLEMS}
    warnings: dict[str, list[str]] = {kind: [] for kind in WARNINGS}
    problems["images without masks"] = [str(p) for p in scan.images_without_masks]
    problems["masks without images"] = [str(p) for p in scan.masks_without_images]
    readable = [d for d in decoded if d.stats is not None]
    stats = [d.stats for d in readable]
    rule = (
        choose_rule(stats, mask_threshold, foreground, ignore_index, classes, palette)
        if readable
        else None
    )
    for item in decoded:
        if item.stats is not None and rule is not None:
            why = rule.unexpected(item.stats)
            if why:
                item.problems["unexpected mask values"] = f"{item.pair.mask}: {why}"
            elif not rule.has_foreground(item.stats):
                void = rule.void and item.stats.void_fraction > 0
                kind = "masks with only background and void" if void else "all-background masks"
                item.warnings[kind] = str(item.pair.mask) + (
                    f" ({item.stats.void_fraction:.0%} void)" if void else ""
                )
        for kind, text in item.problems.items():
            problems[kind].append(text)
        for kind, text in item.warnings.items():
            warnings[kind].append(text)

    good = [d for d in decoded if not d.problems]
    per_class = _class_counts(good, rule) if rule is not None and rule.classes else None
    if per_class is not None:
        for index, (name, holding) in enumerate(zip(rule.classes, per_class[1], strict=True)):
            if not holding:
                warnings["classes in no mask"].append(f"class {index} ({name!r})")
    report = DataReport(
        source,
        [d.pair for d in good],
        rule,
        problems,
        warnings,
        sizes=[d.size for d in good if d.size],
        n_found=len(scan.pairs),
        mask_values=describe_values(stats, rule, ignore_index) if rule is not None else "",
        deep_images=sum(d.bits > 8 for d in good),
        image_scale=image_scale,
        **(
            {}
            if per_class is None
            else dict(zip(("class_pixels", "class_images", "present"), per_class, strict=True))
        ),
    )
    report.dropped = [f"{p.image}: not used ({why})" for p, why in scan.unused]
    if not report.ok:
        if on_invalid == "error":
            raise DataError(_failure(report))
        report.dropped += [f"{d.pair.image}: {kind}" for d in decoded for kind in d.problems]
        report.dropped += [
            f"{p}: {kind}"
            for kind in ("images without masks", "masks without images")
            for p in problems[kind]
        ]
    for line in report.dropped:
        log.warning("Dropped %s", line)
    if not report.pairs:
        raise DataError(f"No usable image/mask pair in {source}.\n{report.format(full=False)}")
    empty = warnings["all-background masks"] + warnings["masks with only background and void"]
    if len(empty) == len(report.pairs):
        raise DataError(
            f"Every mask in {source} is all background under the rule '{rule.description}'."
            " Check that data.masks points at the masks, or set data.mask_threshold or"
            " data.foreground."
        )
    if keep_arrays and rule is not None:
        for item in good:
            key = cache_key(item.pair, image_size, decoding_rule(rule, image_scale))
            cache.put(key, item.image, rule.apply(item.values))
    return report


def _class_counts(
    items: Sequence[_Decoded], rule: MaskRule
) -> tuple[list[int], list[int], dict[Path, frozenset[int]]]:
    """Per class the non-void pixels and the images holding it, and per mask its classes."""
    n = len(rule.classes)
    pixels, images, present = [0] * n, [0] * n, {}
    for item in items:
        held = set()
        for value, count in zip(item.stats.values, item.stats.counts, strict=True):
            if value != rule.ignore_index and 0 <= value < n and count:
                pixels[int(value)] += count
                held.add(int(value))
        for index in held:
            images[index] += 1
        present[item.pair.mask] = frozenset(held)
    return pixels, images, present


def _failure(report: DataReport) -> str:
    bad = sum(len(v) for v in report.problems.values())
    return (
        f"{report.source} failed the data check ({bad} problem(s) in {report.n_found} pair(s)),"
        f" so training did not start.\n{report.format(full=False)}\n"
        "Fix the files listed above, or set data.on_invalid=skip to train without them (each"
        " dropped pair is then listed). `nailseg check-data data=...` prints the full list."
    )


def describe(source: object) -> str:
    """A short name for a source in messages (its repr, or its class name)."""
    text = repr(source)
    return text if len(text) < 200 and " object at " not in text else type(source).__name__
