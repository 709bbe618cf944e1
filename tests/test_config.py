"""Every option of every config group composes, and its objects instantiate."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate

from nailseg.build import build_datamodule, build_module, build_trainer
from nailseg.config import CONF_DIR, REPO_ROOT
from tests.conftest import train_py

SKIP = {"hydra", "paths"}  # composed implicitly by every case
# Sweep-level groups (Hydra's launcher, our sweeper) build no training object: their own tests
# compose and run them (tests/test_sweep_summary.py, tests/test_optuna_search.py).
SWEEP_GROUPS = {"hydra/launcher", "hparams_search"}


def group_options() -> list[tuple[str, str]]:
    cases = []
    for folder in sorted(p for p in CONF_DIR.rglob("*") if p.is_dir()):
        group = folder.relative_to(CONF_DIR).as_posix()
        if group in SKIP or group in SWEEP_GROUPS or group == "experiment":
            continue
        # data/default.yaml is the layouts' shared base, not an option of its own.
        cases += [
            (group, f.stem)
            for f in sorted(folder.glob("*.yaml"))
            if (group, f.stem) != ("data", "default")
        ]
    return cases


EXPERIMENTS = sorted(p.stem for p in (REPO_ROOT / "experiments").glob("*.yaml"))


def test_every_group_has_options() -> None:
    groups = {g for g, _ in group_options()}
    expected = {
        "data",
        "aug",
        "aug/policy",
        "model",
        "encoder",
        "loss",
        "optimizer",
        "scheduler",
        "trainer",
        "callbacks",
        "logger",
    }
    assert expected <= groups


@pytest.mark.parametrize(("group", "option"), group_options(), ids=lambda v: str(v))
def test_option_composes_and_instantiates(
    make_cfg, group: str, option: str, tmp_path: Path
) -> None:
    # Layouts that read a user's folder get paths here; they are read at setup, not built here.
    extra = (
        {
            "nails": [f"data.root={tmp_path}"],
            "voc": [f"data.root={tmp_path}"],
            "folder": [f"data.images={tmp_path}/images", f"data.masks={tmp_path}/masks"],
            "csv": [f"data.file={tmp_path}/pairs.csv"],
        }.get(option, [])
        if group == "data"
        else []
    )
    if group == "trainer" and option in ("gpu", "ddp") and not torch.cuda.is_available():
        # Lightning refuses a GPU trainer without a GPU; instantiate the rest of the preset on CPU.
        assert make_cfg(f"trainer={option}").trainer.accelerator == "gpu"
        extra = ["trainer.accelerator=cpu", "trainer.precision=32-true", "trainer.devices=1"]
    # The multi-class losses are built for a three-class run (they refuse binary data).
    classes = 3 if (group, option) in (("loss", "ce"), ("loss", "ce_dice")) else 1
    if classes > 1:
        extra = ["data.classes=[background,nail,skin]"]
    cfg = make_cfg(f"{group}={option}", extra=extra)
    top = group.split("/")[0]
    if top in ("data", "aug"):
        datamodule = build_datamodule(cfg)
        assert isinstance(datamodule, pl.LightningDataModule)
    elif top in ("model", "encoder", "loss", "optimizer", "scheduler"):
        module = build_module(cfg)
        logits = module(torch.rand(2, 3, 64, 64))
        assert logits.shape == (2, classes, 64, 64)
        target = (
            torch.randint(0, 3, (2, 64, 64))
            if classes > 1
            else torch.randint(0, 2, (2, 1, 64, 64)).float()
        )
        loss = module.loss(logits, target)
        assert torch.isfinite(loss)
        optimizers = module.configure_optimizers()
        assert optimizers is not None
    elif top in ("trainer", "callbacks", "logger"):
        assert isinstance(build_trainer(cfg), pl.Trainer)
    else:
        pytest.fail(f"no instantiation check for group {group!r}")


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes(make_cfg, name: str) -> None:
    cfg = make_cfg(f"+experiment={name}", fast=False)
    assert cfg.model.arch
    instantiate(cfg.loss)


def test_help_lists_groups_and_options() -> None:
    out = train_py("--help")
    assert out.returncode == 0, out.stderr
    for line in (
        "aug: albu_cpu, kornia_gpu, none",
        "encoder: effnet_b4, mobilenet_v2, resnet18, resnet34",
        "loss: bce, bce_dice, ce, ce_dice, dice, focal, lovasz, lovasz_symmetric",
    ):
        assert line in out.stdout


def test_cfg_job_and_info_defaults() -> None:
    job = train_py("--cfg", "job", "aug=kornia_gpu", "encoder=effnet_b4")
    assert job.returncode == 0, job.stderr
    assert "nailseg.augment.kornia_gpu.KorniaAugment" in job.stdout
    assert "tu-efficientnet_b4" in job.stdout
    info = train_py("--info", "defaults")
    assert info.returncode == 0, info.stderr
    assert "aug/albu_cpu" in info.stdout and "encoder/resnet18" in info.stdout
