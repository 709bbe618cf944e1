"""The LightningModule: network + loss + dataset-level metrics + optimiser/scheduler partials."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.accelerators import CPUAccelerator
from torch import Tensor, nn
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import BinaryF1Score, BinaryJaccardIndex

from nailseg.errors import ConfigError
from nailseg.model.losses import ignore_index_of

STAGES = ("val", "test")


class SegmentationModule(pl.LightningModule):
    """Binary segmentation.

    Metrics accumulate confusion counts over the whole epoch (dataset-level IoU and Dice, not a
    mean of per-batch values); losses are means weighted by batch size.

    Void pixels: masks may hold a void value besides 0 and 1 (``data.ignore_index``, see
    :mod:`nailseg.data.masks`). The loss leaves them out (every ``conf/loss`` option sets its
    ``ignore_index`` to ``${data.ignore_index}``), and the metrics take the same value from the
    loss (:func:`~nailseg.model.losses.ignore_index_of`), so one config value drives both; a
    void pixel counts as neither foreground nor background. Before fitting, :meth:`setup` checks
    that the loss leaves out the void value the data holds.

    Args:
        net: maps images ``(B, 3, H, W)`` to logits ``(B, 1, H, W)``.
        loss: ``loss(logits, target)`` with target ``(B, 1, H, W)`` in ``{0, 1}`` (and its
            ``ignore_index`` for void pixels).
        optimizer: partial taking ``params``.
        scheduler: partial taking ``optimizer``, or ``None`` for a constant learning rate.
        threshold: probability above which a pixel is foreground for the metrics.
        normalization: ``{"mean": [...], "std": [...]}`` the inputs were normalised with (the
            augmentation backend's); kept in the hyper-parameters, so every checkpoint says how
            to prepare images for it (``checkpoint["hyper_parameters"]["normalization"]``).
        channels_last: keep the network's weights in channels-last (NHWC) memory order, which
            the convolutions then follow: ``auto`` does on a CPU, where it made a U-Net/ResNet-18
            training step about 15 % faster (experiments/README.md); ``True``/``False`` always
            or never. The values computed are the same up to rounding.
    """

    def __init__(
        self,
        net: nn.Module,
        loss: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        threshold: float = 0.5,
        normalization: dict[str, Any] | None = None,
        channels_last: bool | str = "auto",
    ) -> None:
        super().__init__()
        # Only plain values: the network, loss and partials are rebuilt from the run's config.
        self.save_hyperparameters({"threshold": threshold, "normalization": normalization})
        self.net, self.loss = net, loss
        if channels_last not in (True, False, "auto"):
            raise ConfigError(
                f"channels_last={channels_last!r} is invalid: give true, false or auto (on a"
                " CPU only)."
            )
        self.channels_last = channels_last
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        # None: the optimizer partial's own lr (optimizer.lr). Lightning's Tuner.lr_find sets it
        # (``nailseg lr-find``); when set it overrides the partial's.
        self.lr: float | None = None
        self.ignore_index = ignore_index_of(loss)
        # Keys carry a suffix: ModuleDict keys may not shadow Module attributes such as `train`.
        # nan_strategy="disable": the default checks every update for NaN on the host, a device
        # sync per training step (a NaN loss then shows as a NaN epoch mean, which is honest).
        self.loss_means = nn.ModuleDict(
            {f"{stage}_loss": MeanMetric(nan_strategy="disable") for stage in ("train", *STAGES)}
        )
        self.metrics = nn.ModuleDict(
            {
                stage: MetricCollection(
                    {
                        "iou": BinaryJaccardIndex(
                            threshold=threshold, ignore_index=self.ignore_index
                        ),
                        "dice": BinaryF1Score(threshold=threshold, ignore_index=self.ignore_index),
                    },
                    prefix=f"{stage}/",
                )
                for stage in STAGES
            }
        )

    def setup(self, stage: str) -> None:
        trainer = self._trainer
        on_cpu = trainer is not None and isinstance(trainer.accelerator, CPUAccelerator)
        if self.channels_last is True or (self.channels_last == "auto" and on_cpu):
            # In place (the same Parameter objects); the move to the device keeps the layout.
            self.net.to(memory_format=torch.channels_last)
        datamodule = getattr(trainer, "datamodule", None)
        void = getattr(datamodule, "void_value", None)
        if void is not None and void != self.ignore_index:
            raise ConfigError(
                f"The masks hold void pixels (value {void}, data.ignore_index) but the loss"
                f" {type(self.loss).__name__} leaves out"
                f" {'no value' if self.ignore_index is None else self.ignore_index}, so it would"
                f" train on them as targets. Set loss.ignore_index={void} (the loss configs"
                " read ${data.ignore_index}), or data.ignore_index=null if the value is not void."
            )

    def forward(self, image: Tensor) -> Tensor:
        return self.net(image)

    def _step(self, batch: dict[str, Tensor], stage: str) -> Tensor:
        image, mask = batch["image"], batch["mask"]
        logits = self(image)
        loss = self.loss(logits, mask)
        loss_mean = self.loss_means[f"{stage}_loss"]
        # Weighted by batch size as one value per sample (a stride-0 view): with "disable",
        # MeanMetric ignores a ``weight`` argument.
        loss_mean.update(loss.detach().expand(image.shape[0]))
        self.log(f"{stage}/loss", loss_mean, on_step=False, on_epoch=True, prog_bar=True)
        if stage in self.metrics:
            self.metrics[stage].update(logits.detach().sigmoid(), mask.int())
            self.log_dict(self.metrics[stage], on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = self._step(batch, "train")
        self.log("train/loss_step", loss.detach(), on_step=True, on_epoch=False, prog_bar=False)
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    def configure_optimizers(self) -> Any:
        # Only trainable parameters: a frozen encoder (callbacks=finetune) joins the optimiser
        # as its own group when it is unfrozen.
        params = [p for p in self.parameters() if p.requires_grad]
        lr = {} if self.lr is None else {"lr": self.lr}
        optimizer = self.optimizer_factory(params=params, **lr)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"},
        }
