"""Hydra sweepers of ours: :mod:`nailseg.sweepers.optuna` (``-m hparams_search=NAME``)."""
