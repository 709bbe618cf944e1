"""Data: layouts to pairs, the data check, the split, the decode cache, the dataset, the
DataModule, the synthetic set."""

from nailseg.data.datamodule import SegmentationDataModule
from nailseg.data.listfile import ListFileSource
from nailseg.data.pairs import FolderSource, GroupedFolderSource, Pair
from nailseg.data.synthetic import SyntheticSource
from nailseg.data.voc import VocSource

__all__ = [
    "FolderSource",
    "GroupedFolderSource",
    "ListFileSource",
    "Pair",
    "SegmentationDataModule",
    "SyntheticSource",
    "VocSource",
]
