"""A wall-clock budget for training: ``python train.py budget=10m``.

The learning rate anneals over the budget (cosine from the optimiser's rate to ``eta_min``), not
over ``max_epochs``, and training stops early enough for one last validation inside the budget.

Why by hand: Lightning's ``max_time`` (its ``Timer`` callback) stops a run at a time, but the
schedulers in ``torch.optim.lr_scheduler`` count steps or epochs, and how many steps fit in a
budget is only known once steps are timed. So this callback sets the rate from the time spent,
``lr(t) = eta_min + (lr0 - eta_min) * (1 + cos(pi * t / T)) / 2`` with ``T`` the training part of
the budget, and stops when the next step plus a validation would overrun it.
"""

from __future__ import annotations

import math
import re
import time
from typing import Any

import pytorch_lightning as pl

from nailseg.errors import ConfigError

_UNITS = {"s": 1, "m": 60, "h": 3600}


def parse_budget(value: Any) -> float | None:
    """``budget=`` in seconds: a number of seconds, or ``90s``, ``10m``, ``1.5h``; ``None`` off.

    Examples:
        >>> parse_budget("10m"), parse_budget("90s"), parse_budget(45), parse_budget(None)
        (600.0, 90.0, 45.0, None)
    """
    if value is None:
        return None
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", str(value))
    if isinstance(value, bool) or not match or float(match[1]) <= 0:
        raise ConfigError(
            f"budget={value!r} is invalid: give the training time as seconds or with a unit,"
            " e.g. budget=600, budget=90s, budget=10m or budget=1.5h (null: no budget)."
        )
    return float(match[1]) * _UNITS[match[2] or "s"]


def budget_seconds(cfg: Any) -> float | None:
    """The run's budget in seconds: ``budget=``, else ``trainer.max_time`` (``DD:HH:MM:SS``, as
    Lightning takes it); ``None`` for a run limited by epochs."""
    if cfg.get("budget") is not None:
        return parse_budget(cfg.get("budget"))
    max_time = (cfg.get("trainer") or {}).get("max_time")
    if isinstance(max_time, str) and re.fullmatch(r"\d+:\d+:\d+:\d+", max_time):
        days, hours, minutes, seconds = map(int, max_time.split(":"))
        return float(((days * 24 + hours) * 60 + minutes) * 60 + seconds)
    return None


class TimeBudget(pl.Callback):
    """Anneal the learning rate over ``budget_s`` seconds of fitting and stop inside it.

    Args:
        budget_s: seconds from the start of fitting to the end of the last validation.
        eta_min: the learning rate at the end of the budget.
        margin: share of the budget kept free for what is not timed (the final checkpoint).
    """

    def __init__(self, budget_s: float, eta_min: float = 1e-6, margin: float = 0.02) -> None:
        self.budget_s, self.eta_min, self.margin = float(budget_s), float(eta_min), margin
        self.start: float | None = None
        self.base_lrs: list[list[float]] = []
        self.step_s = 0.0  # slowest recent training step
        self.validation_s = 0.0  # longest validation so far
        self._val_start = 0.0
        self._last_batch_end: float | None = None
        self._resumed_elapsed = 0.0  # fitting time before a resume (from the checkpoint)
        self.stopped = False
        self.validated_last = False  # whether a validation ran after the last training step

    def elapsed(self) -> float:
        return 0.0 if self.start is None else time.monotonic() - self.start

    def _training_time(self) -> float:
        """Seconds of the budget training may use: what validation and the margin leave."""
        return max(1e-3, self.budget_s * (1 - self.margin) - self.validation_s)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start = time.monotonic() - self._resumed_elapsed
        if not self.base_lrs:  # a resumed run keeps the rates its schedule started from
            self.base_lrs = [[g["lr"] for g in opt.param_groups] for opt in trainer.optimizers]

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        progress = min(1.0, self.elapsed() / self._training_time())
        factor = (1 + math.cos(math.pi * progress)) / 2
        for optimizer, base in zip(trainer.optimizers, self.base_lrs, strict=True):
            for group, lr0 in zip(optimizer.param_groups, base, strict=True):
                group["lr"] = self.eta_min + (lr0 - self.eta_min) * factor
        self._last_batch_end = self._last_batch_end or time.monotonic()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any
    ) -> None:
        now = time.monotonic()
        self.validated_last = False
        if self._last_batch_end is not None:
            # A decaying maximum: one slow step (a worker restart) does not end the run early.
            self.step_s = max(now - self._last_batch_end, 0.9 * self.step_s)
        self._last_batch_end = now
        if self.elapsed() + self.step_s >= self._training_time():
            self.stopped = trainer.should_stop = True

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._val_start = time.monotonic()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.validated_last = True
            self.validation_s = max(self.validation_s, time.monotonic() - self._val_start)
        self._last_batch_end = None  # the next step's time starts at its own start

    def state_dict(self) -> dict[str, Any]:
        return {
            "elapsed": self.elapsed(),
            "validation_s": self.validation_s,
            "base_lrs": self.base_lrs,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # A resumed run goes on with the time it has left, on the same schedule.
        self._resumed_elapsed = float(state_dict.get("elapsed", 0.0))
        self.validation_s = float(state_dict.get("validation_s", 0.0))
        self.base_lrs = [list(map(float, lrs)) for lrs in state_dict.get("base_lrs", [])]

    def summary(self, trainer: pl.Trainer) -> dict[str, Any]:
        """What the record says about the budget."""
        return {
            "budget_s": self.budget_s,
            "used_s": round(self.elapsed(), 1),
            "epochs": trainer.current_epoch,
            "steps": trainer.global_step,
            "stopped_by_budget": self.stopped,
            "validation_s": round(self.validation_s, 2),
        }
