"""The LightningModule: network + loss + dataset-level metrics + optimiser/scheduler partials."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.accelerators import CPUAccelerator
from torch import Tensor, nn
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import (
    BinaryF1Score,
    BinaryJaccardIndex,
    MulticlassConfusionMatrix,
)

from nailseg.classes import check_classes
from nailseg.errors import ConfigError
from nailseg.model.losses import check_loss_mode, ignore_index_of

STAGES = ("val", "test")


def class_scores(confusion: Tensor) -> dict[str, Tensor]:
    """Per-class IoU and Dice from a confusion matrix (rows: true class, columns: predicted).

    A class that is neither in the targets nor in the predictions has no score (NaN) and is
    left out of the means, as MMSegmentation does.

    Examples:
        >>> scores = class_scores(torch.tensor([[3, 1, 0], [0, 2, 0], [0, 0, 0]]))
        >>> [round(v, 3) for v in scores["iou"].tolist()[:2]], scores["iou"][2].isnan().item()
        ([0.75, 0.667], True)
        >>> round(scores["miou"].item(), 4), round(scores["mdice"].item(), 4)
        (0.7083, 0.8286)
    """
    confusion = confusion.double()
    hits = confusion.diagonal()
    union = confusion.sum(0) + confusion.sum(1) - hits
    present = union > 0
    nan = torch.full_like(hits, torch.nan)
    iou = torch.where(present, hits / union.clamp_min(1), nan)
    dice = torch.where(present, 2 * hits / (union + hits).clamp_min(1), nan)
    return {"iou": iou, "dice": dice, "miou": iou.nanmean(), "mdice": dice.nanmean()}


class SegmentationModule(pl.LightningModule):
    """Binary or multi-class segmentation.

    Metrics accumulate confusion counts over the whole epoch (dataset-level IoU and Dice, not a
    mean of per-batch values); losses are means weighted by batch size.

    Void pixels: masks may hold a void value besides 0 and 1 (``data.ignore_index``, see
    :mod:`nailseg.data.masks`). The loss leaves them out (every ``conf/loss`` option sets its
    ``ignore_index`` to ``${data.ignore_index}``), and the metrics take the same value from the
    loss (:func:`~nailseg.model.losses.ignore_index_of`), so one config value drives both; a
    void pixel counts as neither foreground nor background. Before fitting, :meth:`setup` checks
    that the loss leaves out the void value the data holds.

    Multi-class (``classes`` given): the network outputs one logit per class, the loss gets the
    class indices ``(B, H, W)`` (``int64``), and the metrics come from one dataset-level
    confusion matrix (torchmetrics' ``MulticlassConfusionMatrix``, void pixels left out): per
    class ``{stage}/iou/{name}`` and ``{stage}/dice/{name}``, and their means over the classes
    present, ``{stage}/miou`` and ``{stage}/mdice``. The matrix of the last epoch is kept in
    :attr:`confusion` for the confusion-matrix picture. (One matrix serves IoU, Dice and the
    picture; torchmetrics' JaccardIndex and F1Score would each accumulate their own.)

    Args:
        net: maps images ``(B, 3, H, W)`` to logits ``(B, 1, H, W)``, or ``(B, C, H, W)``.
        loss: ``loss(logits, target)`` with target ``(B, 1, H, W)`` in ``{0, 1}`` (and its
            ``ignore_index`` for void pixels); class indices ``(B, H, W)`` when multi-class.
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
        classes: the class names (``data.classes``), or ``None`` for binary. Kept in the
            hyper-parameters, so every checkpoint says which classes its channels are.
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
        classes: list[str] | tuple[str, ...] | None = None,
    ) -> None:
        super().__init__()
        self.classes = check_classes(classes)
        # Only plain values: the network, loss and partials are rebuilt from the run's config.
        # A binary module's hyper-parameters stay as they were before multi-class existed.
        hparams: dict[str, Any] = {"threshold": threshold, "normalization": normalization}
        if self.classes is not None:
            hparams["classes"] = list(self.classes)
        self.save_hyperparameters(hparams)
        check_loss_mode(loss, self.classes)
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
                stage: self._multiclass_metrics()
                if self.classes is not None
                else MetricCollection(
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
        # The last multi-class confusion matrix computed per stage (rows: true class).
        self.confusion: dict[str, Tensor] = {}

    def _multiclass_metrics(self) -> MulticlassConfusionMatrix:
        return MulticlassConfusionMatrix(
            len(self.classes), ignore_index=self.ignore_index, validate_args=False
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
        # Multi-class losses and metrics take class indices (B, H, W); binary ones the mask.
        target = mask[:, 0].long() if self.classes is not None else mask
        loss = self.loss(logits, target)
        loss_mean = self.loss_means[f"{stage}_loss"]
        # Weighted by batch size as one value per sample (a stride-0 view): with "disable",
        # MeanMetric ignores a ``weight`` argument.
        loss_mean.update(loss.detach().expand(image.shape[0]))
        self.log(f"{stage}/loss", loss_mean, on_step=False, on_epoch=True, prog_bar=True)
        if stage in self.metrics and self.classes is not None:
            self.metrics[stage].update(logits.detach().argmax(1), target)
        elif stage in self.metrics:
            self.metrics[stage].update(logits.detach().sigmoid(), mask.int())
            self.log_dict(self.metrics[stage], on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def _log_classes(self, stage: str) -> None:
        """Log the epoch's multi-class scores from its confusion matrix, then reset it."""
        metric = self.metrics[stage]
        if not metric.update_called:
            return
        confusion = metric.compute()
        metric.reset()
        self.confusion[stage] = confusion.detach().cpu()
        scores = class_scores(confusion)
        self.log(f"{stage}/miou", scores["miou"].float(), prog_bar=True)
        self.log(f"{stage}/mdice", scores["mdice"].float())
        for i, name in enumerate(self.classes):
            self.log(f"{stage}/iou/{name}", scores["iou"][i].float())
            self.log(f"{stage}/dice/{name}", scores["dice"][i].float())

    def on_validation_epoch_end(self) -> None:
        if self.classes is not None:
            self._log_classes("val")

    def on_test_epoch_end(self) -> None:
        if self.classes is not None:
            self._log_classes("test")

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
