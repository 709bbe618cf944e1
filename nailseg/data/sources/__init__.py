"""Data sources: one module per folder layout, each a :class:`PairSource` subclass.

- :mod:`~nailseg.data.sources.base`: :class:`Pair`, :class:`Scan`, :class:`PairSource` and the
  path helpers every layout shares.
- :mod:`~nailseg.data.sources.folder`: ``data=folder`` and ``data=nails``.
- :mod:`~nailseg.data.sources.listfile`: ``data=csv``.
- :mod:`~nailseg.data.sources.voc`: ``data=voc``.
- :mod:`~nailseg.data.sources.synthetic`: ``data=synthetic``.

A new layout: a module here with a :class:`PairSource` subclass that implements ``scan()``, and
a ``conf/data/NAME.yaml`` with ``defaults: [default, _self_]`` and its ``source:`` block.
"""

from nailseg.data.sources.base import Pair, PairSource, Scan
from nailseg.data.sources.folder import FolderSource, GroupedFolderSource
from nailseg.data.sources.listfile import ListFileSource
from nailseg.data.sources.synthetic import SyntheticSource
from nailseg.data.sources.voc import VocSource

__all__ = [
    "FolderSource",
    "GroupedFolderSource",
    "ListFileSource",
    "Pair",
    "PairSource",
    "Scan",
    "SyntheticSource",
    "VocSource",
]
