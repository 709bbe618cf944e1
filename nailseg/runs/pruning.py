"""An Optuna trial, seen from inside its training run: report each validation epoch, stop when
the search's pruner says so.

The search (:mod:`nailseg.sweepers.optuna`) adds this callback to every trial's job
(``++callbacks.optuna_pruning.*``), naming the study's storage, the study and the trial number.
Optuna's own ``PyTorchLightningPruningCallback`` imports ``lightning`` (not ``pytorch_lightning``,
which this project uses; mixing the two packages' Trainer and Callback classes fails), so this is
a small equivalent written against ``pytorch_lightning``.

A pruned run stops at the end of its epoch and sets ``pruned = True``; ``nailseg.train.run``
then records it as ``pruned`` in ``run.json`` and the search tells Optuna ``PRUNED``.
"""

from __future__ import annotations

import logging
from typing import Any

import pytorch_lightning as pl

log = logging.getLogger(__name__)

# A storage string is an SQLAlchemy URL (``sqlite:///PATH/optuna.db``, the default) or
# ``journal:PATH`` for Optuna's journal file (for file systems where SQLite locking is unreliable,
# e.g. NFS shared by parallel jobs).
JOURNAL_PREFIX = "journal:"
# Study user attribute holding the pruner's config node: pruners are not saved in the storage,
# so each trial's job rebuilds the search's pruner from it.
PRUNER_ATTR = "pruner"


def open_storage(spec: str) -> Any:
    """The Optuna storage that ``spec`` names (see :data:`JOURNAL_PREFIX`)."""
    import optuna

    if spec.startswith(JOURNAL_PREFIX):
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(spec[len(JOURNAL_PREFIX) :]))
    return optuna.storages.RDBStorage(spec)


def build_pruner(node: dict[str, Any] | None) -> Any:
    """The pruner a config node describes (``{_target_: optuna.pruners.MedianPruner, ...}``);
    ``None`` -> ``NopPruner`` (never prunes)."""
    import optuna
    from hydra.utils import instantiate

    return instantiate(node) if node else optuna.pruners.NopPruner()


class OptunaPruning(pl.Callback):
    """Reports ``monitor`` to Optuna trial ``trial_number`` after each validation and stops the
    run when the study's pruner prunes it.

    Args:
        storage: the study's storage (an SQLAlchemy URL or ``journal:PATH``).
        study_name: the study.
        trial_number: the trial this run is (its number in the study).
        monitor: the logged metric to report (the search's ``optimized_metric``).

    Attributes:
        pruned: set when the pruner stopped this run.
    """

    def __init__(
        self, storage: str, study_name: str, trial_number: int, monitor: str = "val/iou"
    ) -> None:
        self.storage, self.study_name = storage, study_name
        self.trial_number, self.monitor = int(trial_number), monitor
        self.pruned = False
        self._trial: Any = None
        self._warned_missing = False

    def _load_trial(self) -> Any:
        """The running trial, or ``None`` (with a warning) when it is not running: a rerun of a
        finished trial's job (``nailseg rerun``) trains without reporting."""
        import optuna

        storage = open_storage(self.storage)
        study = optuna.load_study(study_name=self.study_name, storage=storage)
        study.pruner = build_pruner(study.user_attrs.get(PRUNER_ATTR))
        study_id = storage.get_study_id_from_name(self.study_name)
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, self.trial_number)
        state = storage.get_trial(trial_id).state
        if state != optuna.trial.TrialState.RUNNING:
            log.warning(
                "Optuna trial %d of study %r is %s, not running: this run reports nothing to it"
                " and is never pruned.",
                self.trial_number,
                self.study_name,
                state.name,
            )
            return None
        return optuna.trial.Trial(study, trial_id)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            self._trial = self._load_trial()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        prune = False
        if trainer.is_global_zero and self._trial is not None:
            value = trainer.callback_metrics.get(self.monitor)
            if value is None:
                if not self._warned_missing:
                    log.warning(
                        "Optuna pruning: metric %r is not logged (logged: %s); nothing reported.",
                        self.monitor,
                        ", ".join(sorted(trainer.callback_metrics)),
                    )
                    self._warned_missing = True
            else:
                epoch = trainer.current_epoch
                self._trial.report(float(value), step=epoch)
                prune = self._trial.should_prune()
                if prune:
                    self._trial.set_user_attr("pruned_at_epoch", epoch)
                    log.info(
                        "Optuna trial %d pruned after epoch %d (%s=%.4f)",
                        self.trial_number,
                        epoch,
                        self.monitor,
                        float(value),
                    )
        # Every rank stops together: the decision is rank 0's.
        prune = bool(trainer.strategy.broadcast(prune, src=0))
        if prune:
            self.pruned = True
            trainer.should_stop = True
