"""Data: layouts to pairs (:mod:`nailseg.data.sources`), the data check, the split, the decode
cache, the dataset, the DataModule, its fingerprint, the synthetic set."""

from nailseg.data.datamodule import SegmentationDataModule, datamodule_node
from nailseg.data.sources import (
    FolderSource,
    GroupedFolderSource,
    ListFileSource,
    Pair,
    PairSource,
    Scan,
    SyntheticSource,
    VocSource,
)

__all__ = [
    "FolderSource",
    "GroupedFolderSource",
    "ListFileSource",
    "Pair",
    "PairSource",
    "Scan",
    "SegmentationDataModule",
    "SyntheticSource",
    "VocSource",
    "datamodule_node",
]
