"""nailseg: an experiment framework for binary image segmentation."""

__version__ = "0.1.0"
