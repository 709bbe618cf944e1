"""`nailseg eval`, `predict`, `export` and the shared loader on a multi-class run: one tiny
three-class VOC run (background, nail, skin) trained once for the module."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nailseg.errors import ConfigError
from nailseg.inference import class_confusion, default_palette, load_run, predict_probs
from nailseg.model.module import class_scores
from tests.conftest import FAST_OVERRIDES, nailseg_cli, train_ok
from tests.multiclass_data import CLASSES, class_image, class_mask, make_voc

THRESHOLD_REFUSAL = (
    "--threshold applies to binary runs only; this run has 3 classes (background, nail, skin)"
)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """U-Net/resnet18, 64 px, one short epoch on a 12-image VOC folder with labels.txt
    (train.py, so its overrides are recorded for eval's data overrides)."""
    root = tmp_path_factory.mktemp("multiclass_run")
    run = root / "run"
    train_ok(
        *FAST_OVERRIDES,
        "data=voc",
        f"data.root={make_voc(root / 'voc')}",
        "loss=ce_dice",
        f"paths.data_dir={root / 'data'}",
        f"hydra.run.dir={run}",
    )
    return run


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_load_run_reads_classes_and_default_palette(run_dir: Path) -> None:
    loaded = load_run(run_dir)
    assert loaded.classes == CLASSES and loaded.multiclass
    # data.palette is null: Pascal VOC's colour map.
    assert loaded.palette == ((0, 0, 0), (128, 0, 0), (0, 128, 0))
    with torch.inference_mode():
        assert loaded.model(torch.zeros(1, 3, 64, 64)).shape == (1, 3, 64, 64)


def test_eval_per_class_table_agrees_with_training(run_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "eval"
    capsys.readouterr()
    from nailseg.cli import main

    assert main(["eval", str(run_dir), "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    lines = stdout.splitlines()
    assert lines[1].split() == ["class", "iou", "dice", "truth", "share"]
    for name, line in zip(CLASSES, lines[2:5], strict=True):
        assert line.split()[0] == name and line.endswith("%")
    assert lines[5].startswith("mIoU, mDice")

    summary = json.loads((out / "eval.json").read_text())
    metrics = summary["metrics"]
    assert set(metrics) == {"miou", "mdice"} | {
        f"{m}/{n}" for m in ("iou", "dice") for n in CLASSES
    }
    assert [row["class"] for row in summary["classes"]] == list(CLASSES)
    assert sum(row["pixel_share"] for row in summary["classes"]) == pytest.approx(1.0)
    # The table is the confusion matrix's class_scores (the training metric's function).
    recomputed = class_scores(torch.tensor(summary["confusion"]))
    assert metrics["miou"] == pytest.approx(float(recomputed["miou"]))
    for i, row in enumerate(summary["classes"]):
        assert row["iou"] == pytest.approx(float(recomputed["iou"][i]))
        assert row["pixels"] == sum(summary["confusion"][i])

    # eval scored the best checkpoint; its monitored val/miou is what training logged for it.
    record = json.loads((run_dir / "run.json").read_text())
    assert Path(summary["checkpoint"]).name == Path(record["best_checkpoint"]).name
    assert metrics["miou"] == pytest.approx(record["best_score"], abs=1e-6)
    # One epoch: the run's final metrics are those of the best checkpoint's epoch, per class too.
    assert record["metrics"]["val/miou"] == record["best_score"]
    for name in CLASSES:
        assert metrics[f"iou/{name}"] == pytest.approx(
            record["metrics"][f"val/iou/{name}"], abs=1e-6
        )
        assert metrics[f"dice/{name}"] == pytest.approx(
            record["metrics"][f"val/dice/{name}"], abs=1e-6
        )

    with (out / "eval_per_image.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == record["data"]["n"]["valid"] == summary["images"] == 3
    assert set(rows[0]) == {"rank", "image", "mask", "miou", "mdice"} | {
        f"iou/{n}" for n in CLASSES
    }
    mious = [float(r["miou"]) for r in rows]
    assert mious == sorted(mious)  # worst first
    assert summary["per_image_mean"]["miou"] == pytest.approx(np.mean(mious))
    grid = np.asarray(Image.open(out / "predictions.png"))
    assert grid.ndim == 3 and grid.shape[0] > 64


def test_eval_tta(run_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "eval"
    code, err = nailseg_cli(capsys, "eval", str(run_dir), "--tta", "--out", str(out))
    assert code == 0, err
    summary = json.loads((out / "eval.json").read_text())
    assert summary["tta"] is True
    assert 0 <= summary["metrics"]["miou"] <= 1 and math.isfinite(summary["metrics"]["mdice"])


@pytest.mark.parametrize("value", ["0.5", "auto"])
def test_threshold_is_refused(run_dir: Path, tmp_path: Path, capsys, value: str) -> None:
    out = tmp_path / "eval"
    record = (run_dir / "run.json").read_text()
    code, err = nailseg_cli(capsys, "eval", str(run_dir), "--threshold", value, "--out", str(out))
    assert code == 2
    assert err.startswith(f"error: {THRESHOLD_REFUSAL}")
    assert not out.exists() and (run_dir / "run.json").read_text() == record
    code, err = nailseg_cli(capsys, "predict", str(run_dir), "--input", str(run_dir),
                            "--output", str(tmp_path / "p"), "--threshold", "0.5")  # fmt: skip
    assert code == 2 and THRESHOLD_REFUSAL in err and not (tmp_path / "p").exists()


def test_eval_data_overrides_of_other_classes_are_refused(
    run_dir: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "eval"
    code, err = nailseg_cli(
        capsys, "eval", str(run_dir), "--out", str(out), "data.classes=[background,nail]"
    )
    assert code == 2
    assert "data.classes=[background, nail]" in err
    assert "data.classes=[background, nail, skin]" in err
    assert not out.exists()


def test_predict_writes_palette_label_maps_at_original_sizes(
    run_dir: Path, tmp_path: Path, capsys
) -> None:
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    mask = class_mask(4, (97, 131))
    Image.fromarray(class_image(mask, 4)).save(inputs / "odd.jpg")
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (70, 45), dtype=np.uint8)).save(inputs / "gray.png")
    code, err = nailseg_cli(
        capsys, "predict", str(run_dir), "--input", str(inputs), "--output", str(out), "--tta"
    )
    assert code == 0, err
    flat = [v for colour in load_run(run_dir).palette for v in colour]
    for name, size in (("odd", (97, 131)), ("gray", (70, 45))):
        picture = Image.open(out / "masks" / f"{name}.png")
        assert picture.mode == "P" and picture.getpalette()[:9] == flat
        labels = np.asarray(picture)
        assert labels.shape == size, name
        assert set(np.unique(labels)) <= {0, 1, 2}
        overlay = np.asarray(Image.open(out / "overlays" / f"{name}.png"))
        # The image, with the legend under it.
        assert overlay.shape[1:] == (size[1], 3) and overlay.shape[0] > size[0]


def test_export_metadata_has_classes_and_palette(run_dir: Path, tmp_path: Path, capsys) -> None:
    onnx = pytest.importorskip("onnx", reason="onnx is not installed (extra: nailseg[export])")
    ort = pytest.importorskip(
        "onnxruntime", reason="onnxruntime is not installed (extra: nailseg[export])"
    )
    out = tmp_path / "model.onnx"
    code, err = nailseg_cli(capsys, "export", str(run_dir), "--out", str(out))
    assert code == 0, err
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(meta["classes"]) == list(CLASSES)
    assert json.loads(meta["palette"]) == [[0, 0, 0], [128, 0, 0], [0, 128, 0]]
    assert "threshold" not in meta and "(B, 3, H, W)" in meta["output"]
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"image": np.zeros((1, 3, 32, 64), np.float32)})
    assert got.shape == (1, 3, 32, 64)


def test_checkpoint_of_other_classes_is_refused(run_dir: Path, tmp_path: Path, capsys) -> None:
    copy = tmp_path / "copied"
    shutil.copytree(run_dir, copy)
    config = copy / "config.resolved.yaml"
    text = config.read_text()
    recorded = "  classes:\n  - background\n  - nail\n  - skin\n"
    assert recorded in text
    # Same count, so the weights fit the network: only the names tell.
    config.write_text(text.replace(recorded, "  classes:\n  - background\n  - skin\n  - nail\n"))
    with pytest.raises(ConfigError) as info:
        load_run(copy)
    message = str(info.value)
    assert "\n" not in message
    assert "trained for classes [background, nail, skin]" in message
    assert "data.classes=[background, skin, nail]" in message
    code, err = nailseg_cli(capsys, "eval", str(copy))
    assert code == 2 and "data.classes=[background, skin, nail]" in err
    # A multi-class checkpoint in a run that says binary.
    config.write_text(text.replace(recorded, "  classes: null\n"))
    with pytest.raises(ConfigError, match=r"\[background, nail, skin\].*data.classes=null"):
        load_run(copy)


def test_default_palette_is_vocs_colour_map() -> None:
    palette = default_palette(22)
    assert palette[:6] == ((0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0), (0, 0, 128),
                           (128, 0, 128))  # fmt: skip
    assert palette[8] == (64, 0, 0) and palette[15] == (192, 128, 128)  # person
    assert len(set(default_palette(255))) == 255


def test_multiclass_tta_averages_softmax_of_flips_in_one_forward() -> None:
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 3, 3, padding=1)
    ramp = torch.linspace(-2, 2, 32).view(1, 1, 1, 32) * torch.tensor([1.0, -1.0, 0.5]).view(
        1, 3, 1, 1
    )

    class Net(torch.nn.Module):
        def forward(self, x):
            return conv(x) + ramp

    net, calls = Net(), []
    net.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    x = torch.randn(2, 3, 16, 32)
    probs = predict_probs(net, x, tta=True)
    assert calls == [8] and probs.shape == (2, 3, 16, 32)
    with torch.no_grad():
        versions = [
            net(x).softmax(1),
            net(x.flip(3)).softmax(1).flip(3),
            net(x.flip(2)).softmax(1).flip(2),
            net(x.flip(2, 3)).softmax(1).flip(2, 3),
        ]
    torch.testing.assert_close(probs, torch.stack(versions).mean(0))
    torch.testing.assert_close(probs.sum(1), torch.ones(2, 16, 32))
    torch.testing.assert_close(predict_probs(net, x), versions[0])


def test_class_confusion_leaves_void_out() -> None:
    masks = torch.tensor([[[0, 1], [2, 255]], [[1, 1], [0, 2]]]).unsqueeze(1)
    labels = torch.tensor([[[0, 1], [1, 2]], [[1, 0], [0, 2]]])
    confusion = class_confusion(labels, masks, 3, ignore_index=255)
    assert confusion.shape == (2, 3, 3)
    assert confusion[0].tolist() == [[1, 0, 0], [0, 1, 0], [0, 1, 0]]
    assert confusion.sum().item() == 7  # the void pixel is left out
