"""`nailseg eval`, `predict`, `export` and the shared loader (`nailseg.inference`), on one tiny run
trained once for the module."""

from __future__ import annotations

import csv
import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nailseg.errors import ConfigError
from nailseg.inference import best_threshold, load_run, predict_probs
from tests.conftest import FAST_OVERRIDES, FAST_SYNTHETIC, nailseg_cli, train_ok


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One U-Net/resnet18 run, 64 px, one short epoch (train.py, so its overrides are recorded)."""
    root = tmp_path_factory.mktemp("eval_run")
    run = root / "run"
    train_ok(
        *FAST_OVERRIDES,
        *FAST_SYNTHETIC,
        f"paths.data_dir={root / 'data'}",
        f"hydra.run.dir={run}",
    )
    return run


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_eval_tta_auto_threshold(run_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "eval"
    code, err = nailseg_cli(
        capsys, "eval", str(run_dir), "--tta", "--threshold", "auto", "--out", str(out)
    )
    assert code == 0, err
    summary = json.loads((out / "eval.json").read_text())
    assert summary["tta"] is True and summary["split"] == "valid"
    assert 0 < summary["threshold"] < 1
    assert summary["threshold_source"].startswith("auto")
    for name in ("iou", "dice", "precision", "recall"):
        assert math.isfinite(summary["metrics"][name]), name
        assert 0 <= summary["metrics"][name] <= 1
    n_valid = json.loads((run_dir / "run.json").read_text())["data"]["n"]["valid"]
    with (out / "eval_per_image.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == n_valid == summary["images"]
    ious = [float(r["iou"]) for r in rows]
    assert ious == sorted(ious)  # worst first
    assert Path(rows[0]["image"]).is_file()
    grid = np.asarray(Image.open(out / "predictions.png"))
    assert grid.ndim == 3 and grid.shape[0] > 64
    # The tuned threshold is the run's from now on.
    record = json.loads((run_dir / "run.json").read_text())
    assert record["threshold"] == summary["threshold"]
    assert load_run(run_dir).threshold == summary["threshold"]
    # Dataset-level IoU agrees with the summed counts of the per-image table.
    tp, fp, fn = (sum(int(r[k]) for r in rows) for k in ("tp", "fp", "fn"))
    assert summary["metrics"]["iou"] == pytest.approx(tp / (tp + fp + fn))


def test_eval_on_other_data_all_split(run_dir: Path, tmp_path: Path, capsys) -> None:
    """Hydra overrides switch the data layout; the recorded synthetic-only keys do not break it."""
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir(), masks.mkdir()
    rng = np.random.default_rng(0)
    for k in range(3):
        Image.fromarray(rng.integers(0, 255, (50, 70, 3), dtype=np.uint8)).save(images / f"{k}.jpg")
        mask = np.zeros((50, 70), np.uint8)
        mask[10:30, 20:40] = 255
        Image.fromarray(mask).save(masks / f"{k}.png")
    out = tmp_path / "eval"
    code, err = nailseg_cli(
        capsys, "eval", str(run_dir), "--split", "all", "--threshold", "0.5", "--out", str(out),
        "data=folder", f"data.images={images}", f"data.masks={masks}",
        f"paths.data_dir={tmp_path / 'data'}",
    )  # fmt: skip
    assert code == 0, err
    summary = json.loads((out / "eval.json").read_text())
    assert summary["images"] == 3 and summary["threshold"] == 0.5
    assert summary["image_size"] == [64, 64]


def _write_inputs(folder: Path) -> None:
    folder.mkdir()
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (250, 333, 3), dtype=np.uint8)).save(folder / "odd.jpg")
    Image.fromarray(rng.integers(0, 255, (70, 45), dtype=np.uint8)).save(folder / "gray.png")
    rgba = rng.integers(0, 255, (100, 90, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(folder / "rgba.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot an image")


def test_predict_keeps_sizes_and_skips_corrupt(run_dir: Path, tmp_path: Path, capsys) -> None:
    inputs, out = tmp_path / "in", tmp_path / "out"
    _write_inputs(inputs)
    capsys.readouterr()
    from nailseg.cli import main

    code = main(["predict", str(run_dir), "--input", str(inputs), "--output", str(out),
                 "--tta", "--batch-size", "2"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0, err
    assert "broken.png" in err
    for name, size in (("odd", (250, 333)), ("gray", (70, 45)), ("rgba", (100, 90))):
        mask = np.asarray(Image.open(out / "masks" / f"{name}.png"))
        assert mask.shape == size, name
        assert set(np.unique(mask)) <= {0, 255}
        overlay = np.asarray(Image.open(out / "overlays" / f"{name}.png"))
        assert overlay.shape == (*size, 3)
    assert not (out / "masks" / "broken.png").exists()


def test_predict_nothing_readable_exits_2(run_dir: Path, tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"junk")
    code, err = nailseg_cli(
        capsys, "predict", str(run_dir), "--input", str(bad), "--output", str(tmp_path / "o")
    )
    assert code == 2
    assert "bad.png" in err


def test_export_onnx_parity(run_dir: Path, tmp_path: Path, capsys) -> None:
    import onnx
    import onnxruntime

    out = tmp_path / "model.onnx"
    capsys.readouterr()
    from nailseg.cli import main

    code = main(["export", str(run_dir), "--format", "onnx", "--out", str(out)])
    stdout = capsys.readouterr().out
    assert code == 0
    assert "2x3x64x64" in stdout and "2x3x96x128" in stdout
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    loaded = load_run(run_dir)
    assert json.loads(meta["mean"]) == loaded.normalization["mean"]
    assert json.loads(meta["std"]) == loaded.normalization["std"]
    assert json.loads(meta["image_size"]) == [64, 64]
    assert float(meta["threshold"]) == loaded.threshold
    assert meta["encoder"] == "resnet18" and meta["arch"] == "unet"
    # Dynamic batch, height and width, and the same logits as PyTorch.
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, 32, 96)
    (got,) = session.run(None, {"image": x.numpy()})
    with torch.inference_mode():
        expected = loaded.model(x).numpy()
    assert got.shape == (3, 1, 32, 96)
    assert np.abs(got - expected).max() < 1e-4


def test_export_without_onnxruntime_says_how_to_install(
    run_dir: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    code, err = nailseg_cli(capsys, "export", str(run_dir), "--out", str(tmp_path / "m.onnx"))
    assert code == 2
    assert "pip install 'nailseg[export]'" in err


def test_checkpoint_of_another_encoder_is_named(run_dir: Path, tmp_path: Path, capsys) -> None:
    """A run dir whose recorded config says resnet34 but whose checkpoint holds resnet18."""
    copy = tmp_path / "copied"
    shutil.copytree(run_dir, copy)
    config = copy / "config.resolved.yaml"
    text = config.read_text()
    assert "encoder_name: resnet18" in text
    config.write_text(text.replace("resnet18", "resnet34"))
    with pytest.raises(ConfigError) as info:
        load_run(copy)
    message = str(info.value)
    assert "encoder.name=resnet34" in message and "model.arch=unet" in message
    assert "'encoder.layer1.2.conv1.weight'" in message  # resnet34's first block resnet18 lacks
    assert "checkpoint absent, network (64, 64, 3, 3)" in message
    code, err = nailseg_cli(capsys, "eval", str(copy))
    assert code == 2 and "encoder.name=resnet34" in err
    # mobilenet_v2: other names and shapes from the first tensor on.
    config.write_text(text.replace("resnet18", "mobilenet_v2"))
    with pytest.raises(ConfigError, match=r"encoder.name=mobilenet_v2.*first differing tensor"):
        load_run(copy)


def test_checkpoint_outside_a_run_dir(run_dir: Path, tmp_path: Path) -> None:
    loose = tmp_path / "loose" / "last.ckpt"
    loose.parent.mkdir()
    shutil.copy(run_dir / "checkpoints" / "last.ckpt", loose)
    with pytest.raises(ConfigError, match="not inside a run dir.*has no run.json"):
        load_run(loose)
    # Inside its run dir a .ckpt path works, and that checkpoint is the one used.
    loaded = load_run(run_dir / "checkpoints" / "last.ckpt")
    assert loaded.checkpoint.name == "last.ckpt" and loaded.run_dir == run_dir.resolve()


def test_tta_is_one_batched_forward_of_flips_mapped_back() -> None:
    torch.manual_seed(0)
    # Not flip-equivariant: a fixed position-dependent bias makes each flip's output differ.
    conv = torch.nn.Conv2d(3, 1, 3, padding=1)
    ramp = torch.linspace(-2, 2, 32).view(1, 1, 1, 32) + torch.linspace(0, 1, 16).view(1, 1, 16, 1)

    class Net(torch.nn.Module):
        def forward(self, x):
            return conv(x) + ramp

    net, calls = Net(), []
    net.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    x = torch.randn(2, 3, 16, 32)
    probs = predict_probs(net, x, tta=True)
    assert calls == [8]  # one forward, 4 versions x 2 images
    with torch.no_grad():
        versions = [
            net(x).sigmoid(),
            net(x.flip(3)).sigmoid().flip(3),
            net(x.flip(2)).sigmoid().flip(2),
            net(x.flip(2, 3)).sigmoid().flip(2, 3),
        ]
    expected = torch.stack(versions).mean(0)
    torch.testing.assert_close(probs, expected)
    assert not torch.allclose(probs, versions[0])  # TTA changed something


def test_best_threshold_maximises_dataset_iou_and_skips_void() -> None:
    masks = torch.zeros(2, 1, 8, 8, dtype=torch.long)
    masks[:, :, 2:6, 2:6] = 1
    probs = torch.where(masks == 1, 0.3, 0.1).float()
    masks[0, 0, 0, 0] = 255  # void, with a probability that would be a false positive
    probs[0, 0, 0, 0] = 0.9
    threshold, iou = best_threshold(probs, masks, ignore_index=255)
    # Every threshold in [0.1, 0.3) separates perfectly; ties go to the one nearest 0.5.
    assert threshold == pytest.approx(0.25) and iou == pytest.approx(1.0)
    # Without leaving the void pixel out, it is a false positive at 0.25.
    _, iou_with_void = best_threshold(probs, masks.clamp(max=1) * (masks == 1), None)
    assert iou_with_void < 1.0
