"""``data=synthetic``: the embedded default set, drawn by :mod:`nailseg.data.synthetic` and read
as the tutorial's grouped layout."""

from __future__ import annotations

from pathlib import Path

from nailseg.data.sources.base import PairSource, Scan
from nailseg.data.sources.folder import GroupedFolderSource
from nailseg.data.synthetic import check_classes, generate_dataset


class SyntheticSource(PairSource):
    """Generate (or reuse) the synthetic set under ``root``, then scan it as
    :class:`~nailseg.data.sources.folder.GroupedFolderSource`.

    Args:
        root: parent folder of the generated sets (one sub-folder per parameter set).
        count: number of image/mask pairs.
        image_size: side of the square images in pixels.
        seed: drawing seed.
        classes: 2 for binary masks (0 background, 255 nail); 3 for class-index masks
            (0 background, 1 skin, 2 nail) over the same images. Anything else raises
            :class:`~nailseg.errors.ConfigError`.
    """

    def __init__(
        self, root: str | Path, count: int, image_size: int, seed: int, classes: int = 2
    ) -> None:
        self.root, self.count, self.image_size, self.seed = Path(root), count, image_size, seed
        self.classes = check_classes(classes)

    def scan(self) -> Scan:
        folder = generate_dataset(self.root, self.count, self.image_size, self.seed, self.classes)
        return GroupedFolderSource(folder).scan()
