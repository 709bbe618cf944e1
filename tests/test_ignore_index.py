"""Void pixels (``data.ignore_index``) count as neither foreground nor background: in every loss
of ``conf/loss``, in IoU and Dice, and in training; without void pixels nothing changes."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import segmentation_models_pytorch as smp
import torch
from hydra.utils import instantiate

from nailseg.build import build_datamodule, build_module
from nailseg.errors import ConfigError
from nailseg.model import SegmentationModule
from nailseg.model.losses import SymmetricLovaszLoss, WeightedSum
from tests.conftest import quiet_trainer
from tests.test_masks_and_images import make_voc

LOSSES = ["bce", "bce_dice", "dice", "focal", "lovasz_symmetric"]
# What each option built before void pixels existed.
BEFORE = {
    "bce": lambda: smp.losses.SoftBCEWithLogitsLoss(),
    "bce_dice": lambda: WeightedSum(
        {"bce": smp.losses.SoftBCEWithLogitsLoss(), "dice": BEFORE["dice"]()}
    ),
    "dice": lambda: smp.losses.DiceLoss(mode="binary", from_logits=True),
    "focal": lambda: smp.losses.FocalLoss(mode="binary", alpha=None, gamma=2.0),
    "lovasz_symmetric": lambda: SymmetricLovaszLoss(per_image=False),
}


def batch(seed: int = 0, void: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and a float target ``(2, 1, 16, 16)``: objects, background and a void band."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 1, 16, 16, generator=generator) * 2
    target = (torch.rand(2, 1, 16, 16, generator=generator) < 0.4).float()
    if void:
        target[:, :, 5:8, :] = 255.0
        target[1, :, :, 12:] = 255.0
    return logits, target


def kept_only(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The non-void pixels alone, as one image."""
    kept = target != 255
    return logits[kept].view(1, 1, 1, -1), target[kept].view(1, 1, 1, -1)


@pytest.fixture(scope="module")
def cfg():
    from nailseg.config import compose_config

    return {
        name: compose_config(["paths.output_dir=unused", f"loss={name}"]).loss for name in LOSSES
    }


@pytest.mark.parametrize("name", LOSSES)
def test_void_pixels_drop_out_of_every_loss(cfg, name: str) -> None:
    loss = instantiate(cfg[name], _convert_="all")
    logits, target = batch()
    logits.requires_grad_(True)
    value = loss(logits, target)
    reference = loss(*kept_only(logits.detach(), target))
    torch.testing.assert_close(value, reference, rtol=1e-6, atol=1e-6)
    value.backward()
    void = target == 255
    assert bool((logits.grad[void] == 0).all()), "void pixels get no gradient"
    assert bool((logits.grad[~void] != 0).any())
    # Whatever the model predicts on void pixels, the loss is the same.
    moved = torch.where(void, -logits.detach() * 5, logits.detach())
    torch.testing.assert_close(loss(moved, target), value.detach(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", LOSSES)
def test_without_void_every_loss_is_bit_identical_to_before(cfg, name: str) -> None:
    now, before = instantiate(cfg[name], _convert_="all"), BEFORE[name]()
    for seed in range(3):
        logits, target = batch(seed, void=False)
        a, b = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
        value_now, value_before = now(a, target), before(b, target)
        assert torch.equal(value_now, value_before), (value_now, value_before)
        value_now.backward()
        value_before.backward()
        assert torch.equal(a.grad, b.grad)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", LOSSES)
def test_void_masking_makes_no_host_sync_on_cuda(cfg, name: str) -> None:
    loss = instantiate(cfg[name], _convert_="all").cuda()
    logits, target = (t.cuda() for t in batch())
    logits.requires_grad_(True)
    loss(logits, target).backward()  # first use: kernels chosen
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss(logits, target).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_a_loss_of_only_void_pixels_is_zero_not_nan(cfg) -> None:
    logits, target = batch()
    target[:] = 255.0
    for name in LOSSES:
        value = instantiate(cfg[name], _convert_="all")(logits, target)
        assert float(value) == 0.0, name


def test_iou_and_dice_leave_void_pixels_out(make_cfg) -> None:
    module = build_module(make_cfg())
    assert module.ignore_index == 255, "read from the loss, which reads data.ignore_index"
    logits, target = batch()
    metrics = module.metrics["val"]
    metrics.update(logits.sigmoid(), target.int())
    with_void = {k: float(v) for k, v in metrics.compute().items()}
    metrics.reset()
    kept_logits, kept_target = kept_only(logits, target)
    metrics.update(kept_logits.sigmoid(), kept_target.int())
    assert {k: float(v) for k, v in metrics.compute().items()} == with_void
    # Every void pixel predicted as foreground, then as background: the same scores.
    void = target == 255
    for fill in (10.0, -10.0):
        metrics.reset()
        metrics.update(torch.where(void, fill, logits).sigmoid(), target.int())
        assert {k: float(v) for k, v in metrics.compute().items()} == with_void


def test_summed_losses_must_agree_on_the_void_value() -> None:
    with pytest.raises(ConfigError, match="loss.losses.bce.ignore_index=None"):
        WeightedSum(
            {
                "bce": smp.losses.SoftBCEWithLogitsLoss(),
                "dice": smp.losses.DiceLoss(mode="binary", ignore_index=255),
            }
        )


def _fit(module: SegmentationModule, datamodule) -> pl.Trainer:
    trainer = quiet_trainer(fast_dev_run=True)
    trainer.fit(module, datamodule=datamodule)
    return trainer


def test_training_on_void_masks_and_a_loss_that_ignores_nothing(make_cfg, tmp_path: Path) -> None:
    root = make_voc(tmp_path / "voc")
    overrides = ("data=voc", f"data.root={root}", "data.image_size=32", "aug=kornia_gpu")
    cfg = make_cfg(*overrides)
    trainer = _fit(build_module(cfg), build_datamodule(cfg))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    assert {"val/iou", "val/dice", "val/loss", "train/loss"} <= set(metrics)
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values()), metrics

    cfg = make_cfg(
        *overrides, "loss.losses.bce.ignore_index=null", "loss.losses.dice.ignore_index=null"
    )
    with pytest.raises(ConfigError, match=r"void pixels \(value 255, data.ignore_index\)"):
        _fit(build_module(cfg), build_datamodule(cfg))
