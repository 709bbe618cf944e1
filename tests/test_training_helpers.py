"""Training helpers: encoder fine-tuning, lr-find, timm (tu-) encoders, curves.png."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import segmentation_models_pytorch as smp
import timm
import torch
from torch import nn

from nailseg.build import build_augment, build_datamodule, build_module, build_trainer
from nailseg.config import compose_config
from nailseg.model.finetune import EncoderFinetuning
from nailseg.model.network import build_network
from nailseg.runs.curves import read_epoch_metrics, write_curves
from tests.conftest import FAST_SYNTHETIC, nailseg_cli


def _fit(cfg, *extra_callbacks: pl.Callback) -> tuple[pl.Trainer, pl.LightningModule]:
    pl.seed_everything(cfg.seed, workers=True)
    augment = build_augment(cfg)
    module = build_module(cfg, normalization=augment.normalization)
    datamodule = build_datamodule(cfg, augment)
    trainer = build_trainer(cfg)
    trainer.callbacks.extend(extra_callbacks)
    trainer.fit(module, datamodule=datamodule)
    return trainer, module


class Probe(pl.Callback):
    """Per epoch, after the first batch: the encoder's trainability and the optimiser groups."""

    def __init__(self) -> None:
        self.seen: dict[int, dict] = {}
        self.weights: dict[int, torch.Tensor] = {}

    def on_train_start(self, trainer, pl_module) -> None:
        self.weights[-1] = pl_module.net.encoder.conv1.weight.detach().clone()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        encoder = pl_module.net.encoder
        epoch = trainer.current_epoch
        self.weights[epoch] = encoder.conv1.weight.detach().clone()
        if batch_idx:
            return
        norms = [m for m in encoder.modules() if isinstance(m, nn.BatchNorm2d)]
        not_norm = [
            p
            for m in encoder.modules()
            if not isinstance(m, nn.BatchNorm2d)
            for p in m.parameters(recurse=False)
        ]
        groups = trainer.optimizers[0].param_groups
        self.seen[epoch] = {
            "trainable": {p.requires_grad for p in not_norm},
            "norm_trainable": {p.requires_grad for n in norms for p in n.parameters()},
            "in_optimizer": [
                sum(any(p is q for q in g["params"]) for p in not_norm) for g in groups
            ],
            "lrs": [g["lr"] for g in groups],
            "count": len(not_norm),
        }


def test_finetune_freezes_the_encoder_then_adds_it_at_a_lower_rate(make_cfg) -> None:
    cfg = make_cfg(
        "callbacks=finetune",
        "callbacks.finetune.unfreeze_backbone_at_epoch=1",
        "callbacks.finetune.backbone_initial_ratio_lr=0.1",
        "trainer.max_epochs=3",
        "scheduler=none",
    )
    probe = Probe()
    trainer, module = _fit(cfg, probe)
    assert any(isinstance(c, EncoderFinetuning) for c in trainer.callbacks)
    frozen, unfrozen, later = probe.seen[0], probe.seen[1], probe.seen[2]
    lr = float(cfg.optimizer.lr)
    # Epoch 0: frozen and not in the optimiser at all.
    assert frozen["trainable"] == {False} and frozen["in_optimizer"] == [0]
    assert frozen["lrs"] == [pytest.approx(lr)]
    # Epoch 1: every encoder parameter (zero-initialised biases too) in a new group at lr * 0.1.
    assert unfrozen["trainable"] == {True}
    assert unfrozen["in_optimizer"] == [0, unfrozen["count"]]
    assert unfrozen["lrs"] == [pytest.approx(lr), pytest.approx(lr * 0.1)]
    # Epoch 2: the encoder's rate doubles every epoch towards the decoder's.
    assert later["lrs"] == [pytest.approx(lr), pytest.approx(lr * 0.2)]
    # train_bn: false: the encoder's BatchNorm layers never train.
    assert frozen["norm_trainable"] == unfrozen["norm_trainable"] == {False}
    # The frozen encoder did not move in epoch 0; it trains after the unfreeze.
    assert torch.equal(probe.weights[-1], probe.weights[0])
    assert not torch.equal(probe.weights[0], probe.weights[2])
    # curves.png from the run's CSV log: three epochs of each curve.
    run_dir = Path(cfg.paths.output_dir)
    curves = read_epoch_metrics(run_dir / "csv" / "metrics.csv")
    assert sorted(curves["train/loss"]) == sorted(curves["val/iou"]) == [0, 1, 2]
    assert all(0 <= v <= 1 for v in curves["val/dice"].values())
    png = write_curves(run_dir)
    assert png == run_dir / "curves.png" and png.stat().st_size > 10_000


def test_frozen_encoder_does_not_change_in_the_frozen_epochs(make_cfg) -> None:
    cfg = make_cfg(
        "callbacks=finetune",
        "callbacks.finetune.unfreeze_backbone_at_epoch=5",
        "trainer.max_epochs=1",
        "~logger",
    )
    pl.seed_everything(cfg.seed, workers=True)  # as _fit does: the same initial weights
    before = build_module(cfg).net.state_dict()
    _, module = _fit(cfg)
    after = module.net.state_dict()
    # The encoder's weights and BatchNorm running statistics alike stay; the decoder trains.
    encoder = [k for k in before if k.startswith("encoder.")]
    assert encoder and all(torch.equal(before[k], after[k]) for k in encoder)
    assert any(
        not torch.equal(before[k], after[k])
        for k in before
        if k.startswith("decoder.") and before[k].is_floating_point()
    )


def test_write_curves_skips_without_a_csv_log_or_matplotlib(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    assert write_curves(tmp_path) is None  # no csv/metrics.csv
    (tmp_path / "csv").mkdir()
    (tmp_path / "csv" / "metrics.csv").write_text(
        "epoch,step,train/loss,train/loss_step,val/dice,val/iou,val/loss\n"
        "0,0,,0.9,,,\n0,1,,,0.5,0.4,0.8\n0,1,0.85,,,,\n1,3,,,0.6,0.5,0.7\n1,3,0.75,,,,\n"
    )
    assert read_epoch_metrics(tmp_path / "csv" / "metrics.csv")["val/iou"] == {0: 0.4, 1: 0.5}
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    with caplog.at_level("INFO", logger="nailseg.runs.curves"):
        assert write_curves(tmp_path) is None
    assert "matplotlib is not installed" in caplog.text
    assert not (tmp_path / "curves.png").exists()


def test_lr_find_writes_a_suggestion_and_a_plot(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "lr"
    code, _ = nailseg_cli(
        capsys,
        "lr-find",
        "--num-training",
        "8",
        "--max-lr",
        "0.1",
        "--out",
        str(out),
        f"paths.data_dir={tmp_path / 'data'}",
        "trainer=debug",  # its 2-batch epochs must not end the search: lr-find lifts the limit
        "data.image_size=64",
        "data.batch_size=4",
        "data.num_workers=0",
        *FAST_SYNTHETIC,
    )
    assert code == 0
    result = json.loads((out / "lr_find.json").read_text())
    assert result["steps_run"] == 8
    suggestion = result["suggestion"]
    assert isinstance(suggestion, float) and math.isfinite(suggestion) and suggestion > 0
    assert 1e-8 <= suggestion <= 0.1
    assert result["override"] == f"optimizer.lr={suggestion:.3g}"
    assert (out / "lr_find.png").stat().st_size > 5_000


def test_lr_find_refuses_a_bad_range(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code, line = nailseg_cli(capsys, "lr-find", "--min-lr", "1", "--max-lr", "0.1")
    assert code == 2 and "--min-lr" in line


def test_module_lr_overrides_the_optimizer_partial(make_cfg) -> None:
    module = build_module(make_cfg())
    assert module.configure_optimizers()["optimizer"].param_groups[0]["lr"] == 0.001
    module.lr = 0.05  # what Tuner.lr_find sets
    assert module.configure_optimizers()["optimizer"].param_groups[0]["lr"] == 0.05


def test_a_timm_universal_encoder_trains(make_cfg) -> None:
    cfg = make_cfg("encoder.name=tu-resnet18", "trainer.limit_train_batches=1", "~logger")
    trainer, module = _fit(cfg)
    assert type(module.net.encoder).__name__ == "TimmUniversalEncoder"
    assert trainer.global_step == 1
    assert math.isfinite(float(trainer.callback_metrics["train/loss"]))


def test_effnet_b4_is_the_timm_universal_encoder() -> None:
    cfg = compose_config(["encoder=effnet_b4"])
    assert cfg.encoder.name == "tu-efficientnet_b4" and cfg.encoder.weights is None


@pytest.mark.parametrize("source", ["timm", "smp_timm_prefix"])
def test_effnet_b4_loads_a_timm_or_old_smp_state_dict(tmp_path: Path, source: str) -> None:
    """timm's own efficientnet_b4 file, or the deprecated smp timm-efficientnet-b4 encoder's:
    the same tensors under other names (no ``model.`` prefix, a classifier head)."""
    torch.manual_seed(0)
    if source == "timm":
        state = timm.create_model("efficientnet_b4", pretrained=False).state_dict()
    else:
        with pytest.warns(DeprecationWarning, match="timm-"):
            state = smp.Unet("timm-efficientnet-b4", encoder_weights=None).encoder.state_dict()
    path = tmp_path / "effnet_b4.pth"
    torch.save(state, path)
    net = build_network("unet", "tu-efficientnet_b4", str(path))
    loaded = net.encoder.state_dict()
    assert torch.equal(loaded["model.conv_stem.weight"], state["conv_stem.weight"])
    assert torch.equal(loaded["model.blocks.6.1.bn3.bias"], state["blocks.6.1.bn3.bias"])


def test_ema_checkpoints_the_average_and_keeps_the_raw_weights(make_cfg) -> None:
    from nailseg.inference import load_run
    from nailseg.train import run

    record = run(make_cfg("callbacks=ema", "trainer.max_epochs=2"))
    assert record["status"] == "completed"
    saved = torch.load(record["last_checkpoint"], map_location="cpu", weights_only=True)
    average, raw = saved["state_dict"], saved["current_model_state"]
    key = "net.encoder.conv1.weight"
    # Lightning's EMAWeightAveraging: the average is what was validated and checkpointed.
    assert not torch.equal(average[key], raw[key])
    loaded = load_run(record["run_dir"], checkpoint=record["last_checkpoint"])
    assert torch.equal(loaded.model.state_dict()["encoder.conv1.weight"], average[key])
