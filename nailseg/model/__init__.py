"""Model: the smp network factory, loss combinators and the LightningModule."""

from nailseg.model.module import SegmentationModule
from nailseg.model.network import build_network

__all__ = ["SegmentationModule", "build_network"]
