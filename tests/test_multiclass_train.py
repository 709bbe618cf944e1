"""Multi-class training: data.classes drives the network, loss, metrics and records; binary stays.

One tiny three-class synthetic run (module scope) serves the record tests; the units are fast.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torchmetrics.classification import MulticlassF1Score, MulticlassJaccardIndex

from nailseg import cli
from nailseg.build import build_module
from nailseg.classes import check_classes, folder_classes
from nailseg.commands.train import default_loss_override
from nailseg.config import compose_config
from nailseg.errors import EXIT_ERROR, ConfigError
from nailseg.inference import default_palette
from nailseg.model.losses import CrossEntropyLoss
from nailseg.model.module import class_scores
from nailseg.pictures import VOID_RGB
from nailseg.runs.record import read_run
from nailseg.runs.summary import (
    METRICS,
    MULTICLASS_METRICS,
    metrics_of,
    summary_rows,
    write_summary,
)
from nailseg.train import run
from tests.conftest import FAST_OVERRIDES, FAST_SYNTHETIC, nailseg_cli
from tests.multiclass_data import make_voc

THREE = ("background", "skin", "nail")


def test_binary_defaults_are_unchanged() -> None:
    cfg = compose_config([])
    assert cfg.data.classes is None and cfg.model.classes == 1
    assert cfg.optimized_metric == "val/iou"
    assert cfg.callbacks.model_checkpoint.monitor == "val/iou"
    assert cfg.callbacks.model_checkpoint.filename == "epoch{epoch:03d}-iou{val/iou:.4f}"
    assert cfg.loss.losses.dice.mode == "binary"


def test_classes_flow_from_the_data_to_every_reader() -> None:
    cfg = compose_config(["data.source.classes=3", "loss=dice", "callbacks=early_stopping"])
    assert list(cfg.data.classes) == list(THREE)
    assert cfg.model.classes == 3 and cfg.loss.mode == "multiclass"
    assert cfg.optimized_metric == "val/miou"
    assert cfg.callbacks.model_checkpoint.monitor == "val/miou"
    assert cfg.callbacks.early_stopping.monitor == "val/miou"
    assert cfg.callbacks.model_checkpoint.filename == "epoch{epoch:03d}-miou{val/miou:.4f}"
    module = build_module(cfg)
    assert module(torch.rand(1, 3, 64, 64)).shape == (1, 3, 64, 64)
    assert module.hparams["classes"] == list(THREE)


def test_voc_labels_file_names_the_classes(tmp_path: Path) -> None:
    assert folder_classes(tmp_path) is None  # no labels.txt: binary, as before
    (tmp_path / "labels.txt").write_text("__ignore__\nbackground\n# a comment\naeroplane\n\nbus\n")
    assert folder_classes(tmp_path) == ["background", "aeroplane", "bus"]
    assert folder_classes(tmp_path, foreground=[1]) is None  # data.foreground merges: binary
    cfg = compose_config(["data=voc", f"data.root={tmp_path}", "loss=ce_dice"])
    assert list(cfg.data.classes) == ["background", "aeroplane", "bus"] and cfg.model.classes == 3


@pytest.mark.parametrize(
    ("classes", "message"),
    [
        (["nail"], "names 1 class: a multi-class run needs at least two"),
        ("nail", "list the class names"),
        (["a", "b", "a"], "'a' is named twice"),
    ],
)
def test_bad_class_lists_are_one_line(classes, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        check_classes(classes)
    assert "\n" not in str(caught.value)


def test_class_list_of_one_stops_train_py_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    code, message = nailseg_cli(
        capsys, "train", "data.classes=[nail]", f"hydra.run.dir={tmp_path / 'run'}"
    )
    assert code == EXIT_ERROR and "data.classes=['nail'] names 1 class" in message
    assert len(message.strip().splitlines()) == 1
    assert not list((tmp_path / "run").glob("checkpoints/*"))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["data.source.classes=3"],
            r"losses.bce \(SoftBCEWithLogitsLoss\) is binary-only, but the data has 3",
        ),
        (["data.source.classes=3", "loss=lovasz_symmetric"], "binary-only"),
        (["loss=ce"], "CrossEntropyLoss is for multi-class data, but the data is binary"),
    ],
)
def test_a_loss_of_the_other_kind_is_a_config_error(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        build_module(compose_config(overrides))
    assert "\n" not in str(caught.value)


def test_class_scores_match_torchmetrics_with_void() -> None:
    generator = torch.Generator().manual_seed(0)
    target = torch.randint(0, 4, (3, 20, 24), generator=generator)
    target[:, :2] = 255  # a void border
    preds = torch.where(
        torch.rand(target.shape, generator=generator) < 0.7,
        target.clamp(max=3),
        torch.randint(0, 4, target.shape, generator=generator),
    )
    from torchmetrics.functional.classification import multiclass_confusion_matrix

    confusion = multiclass_confusion_matrix(preds, target, 4, ignore_index=255)
    scores = class_scores(confusion)
    iou = MulticlassJaccardIndex(4, average="none", ignore_index=255)(preds, target)
    dice = MulticlassF1Score(4, average="none", ignore_index=255)(preds, target)
    assert torch.allclose(scores["iou"].float(), iou, atol=1e-6)
    assert torch.allclose(scores["dice"].float(), dice, atol=1e-6)
    assert math.isclose(scores["miou"].item(), iou.mean().item(), rel_tol=1e-6)


def test_cross_entropy_leaves_void_out_and_takes_no_void() -> None:
    logits = torch.randn(2, 3, 5, 6)
    target = torch.randint(0, 3, (2, 5, 6))
    voided = target.clone()
    voided[:, 0] = 255
    loss = CrossEntropyLoss(ignore_index=255)(logits, voided)
    kept = torch.nn.functional.cross_entropy(logits[:, :, 1:], target[:, 1:])
    assert torch.allclose(loss, kept)
    assert torch.isfinite(CrossEntropyLoss(ignore_index=None)(logits, target))


def test_sweep_summary_columns_follow_the_kind_of_run() -> None:
    assert metrics_of([{"final val/iou": 0.5}]) == METRICS
    assert metrics_of([{"final val/iou": None, "final val/miou": 0.5}]) == MULTICLASS_METRICS


# ------------------------------------------------------------------ one tiny three-class run


@pytest.fixture(scope="module")
def three_class_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("multiclass")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = compose_config(
            [
                f"paths.output_dir={root / 'run'}",
                f"paths.data_dir={root / 'data'}",
                *FAST_OVERRIDES,
                *FAST_SYNTHETIC,
                "+experiment=multiclass",
                "trainer.max_epochs=2",
            ]
        )
        record = run(cfg)
    finally:
        torch.set_num_threads(threads)
    return root / "run", record


def test_three_class_run_logs_per_class_scores_and_records_classes(three_class_run) -> None:
    run_dir, record = three_class_run
    assert record["status"] == "completed", record.get("error")
    metrics = record["metrics"]
    for name in ("val/miou", "val/mdice", *(f"val/iou/{c}" for c in THREE)):
        assert math.isfinite(metrics[name]) and 0 <= metrics[name] <= 1, name
    assert "val/iou" not in metrics
    present = [metrics[f"val/iou/{c}"] for c in THREE]
    assert math.isclose(metrics["val/miou"], sum(present) / 3, rel_tol=1e-5)
    on_disk = read_run(run_dir)
    assert on_disk["classes"] == list(THREE)
    confusion = torch.tensor(on_disk["confusion"], dtype=torch.float64)
    assert confusion.shape == (3, 3) and confusion.sum() > 0
    # The recorded matrix is the last validation epoch's: its mIoU is the one logged last.
    assert math.isclose(class_scores(confusion)["miou"].item(), metrics["val/miou"], rel_tol=1e-5)
    assert (run_dir / "confusion.png").is_file() and (run_dir / "curves.png").is_file()
    best = Path(on_disk["best_checkpoint"])
    assert best.name.startswith("epoch") and "-miou" in best.name
    saved = torch.load(best, weights_only=True)
    assert saved["hyper_parameters"]["classes"] == list(THREE)
    resolved = yaml.safe_load((run_dir / "config.resolved.yaml").read_text())
    assert resolved["data"]["classes"] == list(THREE) and resolved["model"]["classes"] == 3


def test_diff_shows_the_change_of_classes(three_class_run, capsys: pytest.CaptureFixture) -> None:
    run_dir, _ = three_class_run
    capsys.readouterr()
    code = cli.main(["diff", str(run_dir), "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 1
    assert data["config"]["data.classes"] == {"a": list(THREE), "b": None}
    assert data["config"]["model.classes"] == {"a": 3, "b": 1}


def test_resume_with_other_classes_is_refused(
    three_class_run, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # A copy of the run recorded as interrupted, as a killed run's record reads.
    stopped = tmp_path / "stopped"
    shutil.copytree(three_class_run[0], stopped)
    record = read_run(stopped)
    (stopped / "run.json").write_text(json.dumps({**record, "status": "interrupted"}))
    code, message = nailseg_cli(
        capsys, "train", f"resume={stopped}", "data.classes=[background,nail]"
    )
    assert code == EXIT_ERROR, message
    assert re.search(
        r"contradict the recorded run.*data\.classes=\[.?background.?, .?skin", message
    )
    assert "[background,nail]" in message or "['background', 'nail']" in message


def test_preview_draws_class_masks_in_their_colours(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root = make_voc(tmp_path / "voc", count=6, valid=2)
    out = tmp_path / "preview.png"
    code, message = nailseg_cli(
        capsys,
        "preview",
        "data=voc",
        f"data.root={root}",
        "loss=ce_dice",
        "data.image_size=64",
        "data.num_workers=0",
        f"paths.data_dir={tmp_path / 'data'}",
        "--samples=2",
        "--versions=1",
        f"--out={out}",
    )
    assert code == 0, message
    grid = np.asarray(Image.open(out).convert("RGB"))
    mask_column = grid[:, -64:].reshape(-1, 3)
    colours = {tuple(int(v) for v in c) for c in np.unique(mask_column, axis=0)}
    # The nail and skin blocks in the default palette's colours, the void border in VOC's cream.
    nail, skin = default_palette(3)[1], default_palette(3)[2]
    assert nail in colours and skin in colours and VOID_RGB in colours


def test_sweep_summary_ranks_multiclass_jobs_by_miou(three_class_run, tmp_path: Path) -> None:
    """Two copies of the real run as the jobs of a sweep, the second recorded 0.2 better."""
    run_dir, _ = three_class_run
    for job, lr in enumerate(("0.001", "0.003")):
        job_dir = tmp_path / str(job)
        shutil.copytree(run_dir, job_dir, ignore=shutil.ignore_patterns("*.ckpt"))
        (job_dir / ".hydra").mkdir(exist_ok=True)
        (job_dir / ".hydra" / "overrides.yaml").write_text(f"- optimizer.lr={lr}\n")
        record = read_run(job_dir)
        record["metrics"]["val/miou"] += 0.2 * job
        (job_dir / "run.json").write_text(json.dumps({**record, "run_dir": str(job_dir)}))
    rows, keys, metric = summary_rows(tmp_path)
    assert metric == "val/miou" and keys == ["optimizer.lr"]
    assert [row["job"] for row in rows] == [1, 0]  # best mIoU first
    write_summary(tmp_path)
    header = (tmp_path / "summary.csv").read_text().splitlines()[0]
    assert "final val/miou" in header and "final val/iou" not in header
    assert "Sorted by `val/miou`" in (tmp_path / "summary.md").read_text()


def test_multiclass_data_gets_the_multiclass_default_loss_on_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root = make_voc(tmp_path / "voc", count=6, valid=2)
    common = [
        "data=voc",
        f"data.root={root}",
        *FAST_OVERRIDES,
        f"paths.data_dir={tmp_path / 'data'}",
    ]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        capsys.readouterr()
        code = cli.main(["train", *common, f"hydra.run.dir={tmp_path / 'run'}"])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    assert "loss=ce_dice, the multi-class counterpart" in capsys.readouterr().err
    recorded = yaml.safe_load((tmp_path / "run" / ".hydra" / "overrides.yaml").read_text())
    assert recorded[-1] == "loss=ce_dice" and read_run(tmp_path / "run")["status"] == "completed"
    # A loss the user names is kept, and a binary-only one refused in one line.
    code, message = nailseg_cli(
        capsys, "train", *common, "loss=bce_dice", f"hydra.run.dir={tmp_path / 'named'}"
    )
    assert code == EXIT_ERROR and "is binary-only, but the data has 3 classes" in message
    # Binary data keeps the binary default, with no override added.
    assert default_loss_override(compose_config([], return_hydra_config=True), []) is None
