"""Fine-tuning a pretrained encoder: train the decoder first, then the encoder at a lower rate.

``callbacks=finetune`` (``conf/callbacks/finetune.yaml``) adds :class:`EncoderFinetuning`.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import BackboneFinetuning
from torch import nn
from torch.optim import Optimizer

from nailseg.errors import ConfigError


def encoder_of(pl_module: pl.LightningModule) -> nn.Module:
    """The smp network's encoder (``pl_module.net.encoder``)."""
    encoder = getattr(getattr(pl_module, "net", None), "encoder", None)
    if not isinstance(encoder, nn.Module):
        raise ConfigError(
            f"callbacks=finetune needs a network with an encoder (module.net.encoder);"
            f" {type(pl_module).__name__} has none. Drop callbacks.finetune."
        )
    return encoder


class EncoderFinetuning(BackboneFinetuning):
    """Lightning's :class:`~pytorch_lightning.callbacks.BackboneFinetuning` on ``net.encoder``.

    The encoder is frozen for the first ``unfreeze_backbone_at_epoch`` epochs, then joins the
    optimiser as its own parameter group at ``lr * backbone_initial_ratio_lr`` (``lr``: the
    first group's rate at that epoch); each later epoch multiplies its rate by
    ``lambda_func(epoch + 1)`` (2: doubled) until it reaches the decoder's (``should_align``).
    Without ``train_bn`` (the default) the encoder's BatchNorm layers stay frozen throughout,
    running statistics included. The epoch scheduler (``scheduler=cosine``) scales the
    encoder's group too: torch's cosine step multiplies every group's rate by the same factor,
    so the encoder's rate is this schedule times the cosine decay since the unfreeze.

    The module's ``configure_optimizers`` takes only parameters that require gradients, so the
    frozen encoder is not in the optimiser until this callback adds it.
    """

    def __init__(
        self,
        unfreeze_backbone_at_epoch: int = 5,
        backbone_initial_ratio_lr: float = 0.1,
        should_align: bool = True,
        train_bn: bool = False,
        verbose: bool = True,
    ) -> None:
        if int(unfreeze_backbone_at_epoch) < 0 or not backbone_initial_ratio_lr > 0:
            raise ConfigError(
                "callbacks.finetune: unfreeze_backbone_at_epoch must be >= 0 and"
                f" backbone_initial_ratio_lr > 0 (got {unfreeze_backbone_at_epoch},"
                f" {backbone_initial_ratio_lr})."
            )
        super().__init__(
            unfreeze_backbone_at_epoch=int(unfreeze_backbone_at_epoch),
            backbone_initial_ratio_lr=float(backbone_initial_ratio_lr),
            should_align=should_align,
            train_bn=train_bn,
            verbose=verbose,
        )

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        encoder_of(pl_module)  # BackboneFinetuning's check wants a `backbone` attribute
        super(BackboneFinetuning, self).on_fit_start(trainer, pl_module)

    def freeze_before_training(self, pl_module: pl.LightningModule) -> None:
        self.freeze(encoder_of(pl_module), train_bn=self.train_bn)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # A run resumed after the unfreeze epoch gets its param groups back from the checkpoint
        # (BaseFinetuning.on_fit_start) but setup() froze the encoder again: thaw it.
        if trainer.current_epoch > self.unfreeze_backbone_at_epoch:
            _thaw(encoder_of(pl_module), self.train_bn)
        super().on_train_epoch_start(trainer, pl_module)

    def finetune_function(self, pl_module: pl.LightningModule, epoch: int, optimizer: Any) -> None:
        if epoch != self.unfreeze_backbone_at_epoch:
            # After it: BackboneFinetuning raises the encoder group's rate (pl_module.backbone is
            # not read on this path).
            super().finetune_function(pl_module, epoch, optimizer)
            return
        current_lr = optimizer.param_groups[0]["lr"]
        self.previous_backbone_lr = current_lr * self.backbone_initial_ratio_lr
        _unfreeze_into(encoder_of(pl_module), optimizer, self.previous_backbone_lr, self.train_bn)
        if self.verbose:
            pl.utilities.rank_zero_info(
                f"Encoder unfrozen at epoch {epoch}: lr {current_lr:.3g},"
                f" encoder lr {self.previous_backbone_lr:.3g}"
            )


def _thaw(encoder: nn.Module, train_bn: bool) -> None:
    """Make the encoder trainable; without ``train_bn`` its BatchNorm layers stay frozen."""
    BackboneFinetuning.make_trainable(encoder)
    if not train_bn:
        norms = [m for m in encoder.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        BackboneFinetuning.freeze(norms, train_bn=False)


def _unfreeze_into(encoder: nn.Module, optimizer: Optimizer, lr: float, train_bn: bool) -> None:
    """``BaseFinetuning.unfreeze_and_add_param_group``, but a parameter counts as already in the
    optimiser by identity: Lightning's ``filter_on_optimizer`` compares values
    (``torch.equal``), so a freshly initialised encoder bias (all zeros) equal to any decoder
    bias would be left out of the new group and never train."""
    _thaw(encoder, train_bn)
    present = {id(p) for group in optimizer.param_groups for p in group["params"]}
    params = [p for p in encoder.parameters() if p.requires_grad and id(p) not in present]
    if params:
        optimizer.add_param_group({"params": params, "lr": lr})
