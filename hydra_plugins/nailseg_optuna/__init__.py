"""Registers nailseg's Optuna sweeper with Hydra.

Hydra instantiates a sweeper only from a class it found under the ``hydra_plugins`` namespace
package (``Plugins._instantiate`` in ``hydra/core/plugins.py``), so ``hydra.sweeper._target_``
names this subclass; the code is in :mod:`nailseg.sweepers.optuna`. Hydra imports this module at
every start: it imports no Optuna.
"""

import nailseg.sweepers.optuna as _impl


class OptunaSweeper(_impl.OptunaSweeper):
    """:class:`nailseg.sweepers.optuna.OptunaSweeper`, under the name Hydra accepts."""
