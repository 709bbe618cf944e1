"""``data=synthetic``: the embedded default set, drawn by :mod:`nailseg.data.synthetic` and read
as the tutorial's grouped layout."""

from __future__ import annotations

from pathlib import Path

from nailseg.data.sources.base import PairSource, Scan
from nailseg.data.sources.folder import GroupedFolderSource
from nailseg.data.synthetic import generate_dataset


class SyntheticSource(PairSource):
    """Generate (or reuse) the synthetic set under ``root``, then scan it as
    :class:`~nailseg.data.sources.folder.GroupedFolderSource`.

    Args:
        root: parent folder of the generated sets (one sub-folder per parameter set).
        count: number of image/mask pairs.
        image_size: side of the square images in pixels.
        seed: drawing seed.
    """

    def __init__(self, root: str | Path, count: int, image_size: int, seed: int) -> None:
        self.root, self.count, self.image_size, self.seed = Path(root), count, image_size, seed

    def scan(self) -> Scan:
        folder = generate_dataset(self.root, self.count, self.image_size, self.seed)
        return GroupedFolderSource(folder).scan()
