"""Data: folder layouts to pairs, the split, the dataset, the DataModule, the synthetic set."""

from nailseg.data.datamodule import SegmentationDataModule
from nailseg.data.pairs import GroupedFolderSource, Pair
from nailseg.data.synthetic import SyntheticSource

__all__ = ["GroupedFolderSource", "Pair", "SegmentationDataModule", "SyntheticSource"]
