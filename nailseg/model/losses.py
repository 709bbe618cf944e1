"""Losses: everything comes from ``segmentation_models_pytorch.losses``; this module only combines
them and makes void pixels drop out exactly.

All losses take logits ``(B, 1, H, W)`` and a float target ``(B, 1, H, W)`` in ``{0, 1}``, plus
``ignore_index`` for void pixels where the data has them (``data.ignore_index``, which every
``conf/loss`` option reads; see :mod:`nailseg.data.masks`). A void pixel counts as neither
foreground nor background: it adds nothing to a loss, gets no gradient, and means are taken over
the other pixels. smp's DiceLoss does this as it is. For BCE and focal loss smp's own
``ignore_index`` falls short (BCE still counts void pixels in its mean; focal loss and Lovász drop
them by boolean indexing, which makes the host wait for the GPU every step), so the classes here
mask them elementwise instead. Without void pixels every loss returns bit for bit what smp's
returns.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from segmentation_models_pytorch import losses as smp_losses
from segmentation_models_pytorch.losses.lovasz import _lovasz_grad
from segmentation_models_pytorch.losses.lovasz import mean as _lovasz_mean
from torch import Tensor, nn

from nailseg.errors import ConfigError


def ignore_index_of(loss: nn.Module) -> int | None:
    """The void value a loss leaves out (its ``ignore_index``), or ``None``.

    smp's BCE defaults to ``-100``, a value ``uint8`` masks cannot hold: that counts as none.
    """
    value = getattr(loss, "ignore_index", None)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 255:
        return None
    return value


def mean_over_kept(loss: Tensor, kept: Tensor) -> Tensor:
    """The mean of elementwise ``loss`` over the ``kept`` elements (zero when none is kept).

    Computed as ``where(kept, loss, 0).mean()`` scaled by ``numel / kept``: without void the
    scale is exactly 1, so the result is bit for bit ``loss.mean()``; and nothing is read back to
    the host.
    """
    return torch.where(kept, loss, 0).mean() * (kept.numel() / kept.sum().clamp_min(1))


class SoftBCEWithLogitsLoss(smp_losses.SoftBCEWithLogitsLoss):
    """smp's BCE whose mean leaves void pixels out of the count too (smp only zeroes them, so an
    image with a void border would weigh less)."""

    def forward(self, y_pred: Tensor, y_true: Tensor) -> Tensor:
        if self.ignore_index is None or self.reduction != "mean":
            return super().forward(y_pred, y_true)
        kept = y_true != self.ignore_index
        target = torch.where(kept, y_true, 0)
        if self.smooth_factor is not None:
            target = (1 - target) * self.smooth_factor + target * (1 - self.smooth_factor)
        loss = F.binary_cross_entropy_with_logits(
            y_pred, target, self.weight, pos_weight=self.pos_weight, reduction="none"
        )
        return mean_over_kept(loss, kept)


class FocalLoss(smp_losses.FocalLoss):
    """smp's focal loss; in binary mode with a mean, void pixels are masked elementwise instead of
    dropped by boolean indexing (the same value, without a host sync per step)."""

    def __init__(self, mode: str, **kwargs: Any) -> None:
        super().__init__(mode, **kwargs)
        keywords = self.focal_loss_fn.keywords
        self._elementwise = None
        if mode == "binary" and keywords["reduction"] == "mean" and not keywords["normalized"]:
            self._elementwise = partial(self.focal_loss_fn, reduction="none")

    def forward(self, y_pred: Tensor, y_true: Tensor) -> Tensor:
        if self.ignore_index is None or self._elementwise is None or not self.from_logits:
            return super().forward(y_pred, y_true)
        y_pred, y_true = y_pred.reshape(-1), y_true.reshape(-1)
        kept = y_true != self.ignore_index
        return mean_over_kept(self._elementwise(y_pred, torch.where(kept, y_true, 0)), kept)


def lovasz_hinge(
    logits: Tensor, target: Tensor, kept: Tensor | None = None, per_image: bool = False
) -> Tensor:
    """Binary Lovász hinge (smp's ``LovaszLoss(mode="binary")``) with void pixels masked.

    A void pixel gets the error ``-inf``: it sorts after every pixel with a positive error and
    adds nothing to the hinge, and the Lovász gradient at each position depends only on the
    pixels sorted before it, so the loss is the one over the other pixels alone.
    """
    if per_image:
        return _lovasz_mean(
            lovasz_hinge(logit[None], label[None], None if kept is None else keep[None])
            for logit, label, keep in zip(
                logits, target, target if kept is None else kept, strict=True
            )
        )
    logits, labels = logits.reshape(-1), target.reshape(-1)
    signs = 2.0 * labels.float() - 1.0
    errors = 1.0 - logits * signs
    if kept is not None:
        kept = kept.reshape(-1)
        errors = torch.where(kept, errors, -torch.inf)
        labels = torch.where(kept, labels, 0)
    errors_sorted, perm = torch.sort(errors, dim=0, descending=True)
    grad = _lovasz_grad(labels[perm])
    return torch.dot(F.relu(errors_sorted), grad)


class SymmetricLovaszLoss(nn.Module):
    """The tutorial's loss: ``0.5 * (lovasz_hinge(logits, y) + lovasz_hinge(-logits, 1 - y))``.

    Treats background as a second foreground, so both classes' IoU is optimised. Void pixels
    (``ignore_index``) are left out of both terms.
    """

    def __init__(self, per_image: bool = False, ignore_index: int | None = None) -> None:
        super().__init__()
        self.per_image, self.ignore_index = per_image, ignore_index
        self.lovasz = smp_losses.LovaszLoss(mode="binary", per_image=per_image, from_logits=True)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        if self.ignore_index is None:
            return 0.5 * (self.lovasz(logits, target) + self.lovasz(-logits, 1 - target))
        kept = target != self.ignore_index
        target = torch.where(kept, target, 0)
        return 0.5 * (
            lovasz_hinge(logits, target, kept, self.per_image)
            + lovasz_hinge(-logits, 1 - target, kept, self.per_image)
        )


class CrossEntropyLoss(nn.CrossEntropyLoss):
    """torch's cross-entropy over the classes; ``ignore_index=None`` (no void value,
    ``data.ignore_index=null``) leaves nothing out instead of failing."""

    def __init__(self, ignore_index: int | None = None, **kwargs: Any) -> None:
        super().__init__(ignore_index=-100 if ignore_index is None else ignore_index, **kwargs)


# The losses that model one foreground logit: they cannot train a multi-class network.
_BINARY_ONLY = (SoftBCEWithLogitsLoss, smp_losses.SoftBCEWithLogitsLoss, nn.BCEWithLogitsLoss)
_MULTICLASS_ONLY = (nn.CrossEntropyLoss, smp_losses.SoftCrossEntropyLoss)


def loss_modes(loss: nn.Module) -> set[str]:
    """The modes a loss (or each part of a :class:`WeightedSum`) works in: ``binary``,
    ``multiclass``, or both when it does not say (a loss of the user's own)."""
    if isinstance(loss, WeightedSum):
        parts = [loss_modes(part) for part in loss.losses.values()]
        return set.intersection(*parts) if parts else {"binary", "multiclass"}
    if isinstance(loss, (*_BINARY_ONLY, SymmetricLovaszLoss)):
        return {"binary"}
    if isinstance(loss, _MULTICLASS_ONLY):
        return {"multiclass"}
    mode = getattr(loss, "mode", None)
    if mode in ("binary", "multiclass", "multilabel"):
        return {mode}
    return {"binary", "multiclass"}


def check_loss_mode(loss: nn.Module, classes: tuple[str, ...] | None) -> None:
    """A loss that cannot train this data's network is a one-line :class:`ConfigError`."""
    mode = "binary" if classes is None else "multiclass"
    if mode in loss_modes(loss):
        return
    name = type(loss).__name__
    if isinstance(loss, WeightedSum):  # name the part that cannot
        part = next(k for k, v in loss.losses.items() if mode not in loss_modes(v))
        name = f"{name}'s loss.losses.{part} ({type(loss.losses[part]).__name__})"
    if mode == "multiclass":
        raise ConfigError(
            f"The loss {name} is binary-only, but the data has {len(classes)} classes"
            f" (data.classes={list(classes)}). Use a multi-class loss: loss=ce_dice, ce, dice,"
            " focal or lovasz."
        )
    raise ConfigError(
        f"The loss {name} is for multi-class data, but the data is binary (data.classes=null)."
        " Use loss=bce_dice, bce, dice, focal, lovasz or lovasz_symmetric, or list the classes"
        " in data.classes."
    )


class WeightedSum(nn.Module):
    """``sum(weight[name] * loss[name](logits, target))``, e.g. BCE + Dice.

    Args:
        losses: named loss modules; they must agree on ``ignore_index``.
        weights: weight per name; missing names weigh 1.
    """

    def __init__(
        self, losses: Mapping[str, nn.Module], weights: Mapping[str, float] | None = None
    ) -> None:
        super().__init__()
        self.losses = nn.ModuleDict(dict(losses))
        self.weights = {name: float((weights or {}).get(name, 1.0)) for name in self.losses}
        ignored = {name: ignore_index_of(loss) for name, loss in self.losses.items()}
        if len(set(ignored.values())) > 1:
            shown = ", ".join(f"loss.losses.{k}.ignore_index={v}" for k, v in ignored.items())
            raise ConfigError(
                f"The summed losses leave out different void values ({shown}). Give each"
                " ignore_index: ${data.ignore_index}."
            )
        self.ignore_index = next(iter(ignored.values()), None)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return sum(self.weights[name] * loss(logits, target) for name, loss in self.losses.items())
