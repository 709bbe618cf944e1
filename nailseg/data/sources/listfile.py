"""``data=csv``: pairs listed in a file, optionally with their split.

Two formats, told apart by the extension:

- ``.csv`` / ``.tsv``: a header row with ``image`` and ``mask`` columns, optional ``split``
  (``train``/``valid``/``test``; ``val`` and ``validation`` also work) and ``group`` columns.
- anything else (``.txt``, ``.lst``): one pair per line, ``image mask [split]`` separated by
  whitespace; blank lines and lines starting with ``#`` are skipped.

Relative paths are relative to the list file's folder, so a data set can be moved as a whole.
When the file gives a split, that split is used instead of the automatic one.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from nailseg.data.sources.base import Pair, PairSource, Scan
from nailseg.errors import DataError

SPLIT_NAMES = {
    "train": "train",
    "training": "train",
    "valid": "valid",
    "val": "valid",
    "validation": "valid",
    "test": "test",
    "testing": "test",
}


def normalise_split(value: str, where: str) -> str:
    """``val`` -> ``valid`` etc.; an empty value stays empty (the pair is in no split)."""
    key = str(value).strip().lower()
    if not key:
        return ""
    if key not in SPLIT_NAMES:
        raise DataError(
            f"Unknown split {value!r} in {where}. Use one of train, valid (or val), test, or leave"
            " it empty to leave the pair out."
        )
    return SPLIT_NAMES[key]


class ListFileSource(PairSource):
    """Pairs (and optionally their split) from a CSV or a plain list file.

    Args:
        file: the list file.
        image_column: CSV column of image paths.
        mask_column: CSV column of mask paths.
        split_column: CSV column of split names; ignored when the file has no such column.
        group_column: CSV column of groups for the stratified split; optional.
    """

    def __init__(
        self,
        file: str | Path | None,
        image_column: str = "image",
        mask_column: str = "mask",
        split_column: str = "split",
        group_column: str = "group",
    ) -> None:
        if file is None:
            raise DataError("data=csv needs the list file: data.file=/path/to/pairs.csv.")
        self.file = Path(file).expanduser()
        self.columns = {
            "image": image_column,
            "mask": mask_column,
            "split": split_column,
            "group": group_column,
        }

    def _rows(self) -> list[dict[str, str]]:
        if not self.file.is_file():
            raise DataError(f"List file not found: {self.file}. Set data.file=/path/to/pairs.csv.")
        if self.file.suffix.lower() in (".csv", ".tsv"):
            sep = "\t" if self.file.suffix.lower() == ".tsv" else ","
            try:
                frame = pd.read_csv(self.file, sep=sep, dtype=str, keep_default_na=False)
            except pd.errors.EmptyDataError as err:
                raise DataError(
                    f"List file {self.file} is empty. Write a header row"
                    f" ({sep.join(('image', 'mask', 'split'))}) and one row per image/mask pair."
                ) from err
            except (pd.errors.ParserError, UnicodeDecodeError) as err:
                raise DataError(
                    f"Cannot read the list file {self.file} as a"
                    f" {self.file.suffix.lstrip('.').upper()}: {err}. Write a header row"
                    " (image,mask[,split][,group]) and one row per image/mask pair."
                ) from err
            missing = [self.columns[c] for c in ("image", "mask") if self.columns[c] not in frame]
            if missing:
                raise DataError(
                    f"{self.file} has no column(s) {missing}; its columns are"
                    f" {list(frame.columns)}."
                    " Name them image and mask, or set data.source.image_column /"
                    " data.source.mask_column."
                )
            return [
                {key: str(row.get(column, "")) for key, column in self.columns.items()}
                for row in frame.to_dict("records")
            ]
        try:
            text = self.file.read_text()
        except UnicodeDecodeError as err:
            raise DataError(
                f"Cannot read the list file {self.file} as text: {err}. Write one"
                " 'image mask [split]' line per pair."
            ) from err
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue
            if len(fields) not in (2, 3):
                raise DataError(
                    f"{self.file}:{number} has {len(fields)} fields: {line!r}. Expected"
                    " 'image mask' or 'image mask split' (paths without spaces; use a CSV"
                    " for paths with spaces)."
                )
            rows.append(
                {
                    "image": fields[0],
                    "mask": fields[1],
                    "split": fields[2] if len(fields) == 3 else "",
                    "group": "",
                }
            )
        return rows

    def scan(self) -> Scan:
        rows = self._rows()
        if not rows:
            raise DataError(f"{self.file} lists no pairs. Add one line (row) per image/mask pair.")
        base = self.file.parent
        pairs, seen, unused = [], {}, []
        for number, row in enumerate(rows, start=1):
            image, mask = base / row["image"], base / row["mask"]
            if image in seen:
                raise DataError(
                    f"{self.file} lists {row['image']} twice (entries {seen[image]} and {number})."
                    " Keep one entry per image."
                )
            seen[image] = number
            split = normalise_split(row["split"], f"{self.file} entry {number}")
            pair = Pair(image, mask, row["group"], split)
            pairs.append(pair)
        if any(p.split for p in pairs):
            unused = [(p, "no split given in the list file") for p in pairs if not p.split]
            pairs = [p for p in pairs if p.split]
        return Scan(pairs=pairs, unused=unused)

    def __repr__(self) -> str:
        return f"ListFileSource({self.file})"
