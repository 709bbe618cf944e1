"""``data.cache=device``: the data on the model's device, batches gathered there by index.

Device batches must be the DataLoader path's batches (same samples, seeds, order and count per
epoch), so training gives the same numbers with either cache; a run that would not fit, an
augmentation backend that needs DataLoader workers and several processes (DDP) stop before
training. Here the device is the CPU; on a CUDA machine the same code keeps the data on the GPU.
"""

from __future__ import annotations

import doctest
import json
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from nailseg.build import build_datamodule
from nailseg.data import datamodule as datamodule_module
from nailseg.data.datamodule import compute_dtype
from nailseg.data.device import DeviceBatches, free_memory
from nailseg.errors import ConfigError
from nailseg.train import run
from tests.conftest import quiet_trainer

# Two short epochs: the second one shows that Lightning calls set_epoch on the device loader.
TWO_EPOCHS = ("trainer.max_epochs=2", "trainer.enable_progress_bar=false")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One thread: on a small shared CPU, thread contention makes these tiny steps many times
    slower (as in tests/test_runs.py)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _batches(loader, epoch: int) -> list[dict[str, torch.Tensor]]:
    loader.sampler.set_epoch(epoch)  # what Lightning does before each epoch
    return list(loader)


def test_device_batches_are_the_dataloader_batches(make_cfg) -> None:
    ram = build_datamodule(make_cfg("aug=kornia_gpu", "data.cache=ram"))
    device = build_datamodule(make_cfg("aug=kornia_gpu", "data.cache=device"))
    for datamodule in (ram, device):
        datamodule.setup("fit")
    # 20 train samples in batches of 4 (train drops an incomplete last batch), 4 valid.
    for name, shuffle in (("train", True), ("valid", False)):
        expected_loader = ram._loader(name, shuffle)
        loader = device._loader(name, shuffle)
        assert isinstance(expected_loader, DataLoader) and isinstance(loader, DeviceBatches)
        assert len(loader) == len(expected_loader)
        orders = []
        for epoch in (0, 1):
            expected, got = _batches(expected_loader, epoch), _batches(loader, epoch)
            assert len(got) == len(expected) == len(loader)
            for want, have in zip(expected, got, strict=True):
                assert want.keys() == have.keys() == {"image", "mask", "seed", "index"}
                for key in want:
                    assert have[key].dtype == want[key].dtype, key
                    assert torch.equal(have[key], want[key]), (name, epoch, key)
            orders.append([i for batch in got for i in batch["index"].tolist()])
        assert (orders[0] != orders[1]) == shuffle, "train reshuffles per epoch, valid does not"
    assert got[0]["image"].shape[1:] == (3, 64, 64) and got[0]["mask"].shape[1:] == (1, 64, 64)
    assert set(got[0]["mask"].unique().tolist()) <= {0, 1}
    # The device tensors hold the data; the RAM copy the check filled is dropped.
    assert len(device.cache) == 0 and set(device.device_data) == {"train", "valid"}


def test_device_data_lands_on_the_trainers_device(make_cfg) -> None:
    ram = build_datamodule(make_cfg("aug=none", "data.cache=ram"))
    datamodule = build_datamodule(make_cfg("aug=none", "data.cache=device"))
    for dm in (ram, datamodule):
        dm.setup("fit")
        dm.trainer = trainer = quiet_trainer()
        # A resumed fit that has finished one epoch: the loader starts in epoch 1, as the
        # DataLoader path does (Lightning starts the first iterator before it calls set_epoch).
        trainer.fit_loop.epoch_progress.current.processed = 1
    loader = datamodule.train_dataloader()
    assert loader.sampler.epoch == 1
    batch = next(iter(loader))
    assert torch.equal(batch["index"], next(iter(ram.train_dataloader()))["index"])
    assert loader.device == trainer.strategy.root_device
    assert all(t.device == trainer.strategy.root_device for t in batch.values())
    out = datamodule.on_after_batch_transfer(batch, 0)
    assert out["image"].dtype == torch.float32 and out["mask"].dtype == torch.float32


def _record(cfg) -> dict:
    return json.loads((Path(cfg.paths.output_dir) / "run.json").read_text())


def test_run_without_augmentation_trains_and_tests_from_the_device(make_cfg) -> None:
    record = run(make_cfg("aug=none", "data.cache=device", "data.test_fraction=0.2"))
    assert record["status"] == "completed", record.get("error")
    assert 0 <= record["metrics"]["val/iou"] <= 1 and 0 <= record["metrics"]["test/iou"] <= 1


def test_device_and_ram_caches_train_bit_identically(make_cfg, tmp_path: Path) -> None:
    """Same batches, same seeds, same augmentation: the same numbers, run after run.

    Also the end-to-end run of ``aug=kornia_gpu data.cache=device``, over two epochs, so the second
    epoch's order shows that Lightning calls ``set_epoch`` on the device loader's sampler.
    """
    metrics = []
    for i, cache in enumerate(("device", "device", "ram")):
        cfg = make_cfg(
            "aug=kornia_gpu",
            f"data.cache={cache}",
            *TWO_EPOCHS,
            extra=(f"paths.output_dir={tmp_path / f'run{i}'}",),
        )
        record = run(cfg)
        assert record["status"] == "completed", record.get("error")
        assert _record(cfg)["status"] == "completed"
        metrics.append({k: v for k, v in record["metrics"].items() if k.startswith("val/")})
    assert 0 <= metrics[0]["val/iou"] <= 1
    assert metrics[0] == metrics[1], "two runs with data.cache=device differ"
    assert metrics[0] == metrics[2], "data.cache=device and data.cache=ram differ"


def test_data_that_does_not_fit_stops_before_training(make_cfg) -> None:
    cfg = make_cfg("aug=kornia_gpu", "data.cache=device", "data.device_cache_share=1e-12")
    with pytest.raises(ConfigError) as caught:
        run(cfg)
    message = str(caught.value)
    assert "\n" not in message
    # 24 samples of 64 x 64 x (3 + 1) bytes, then the memory free and the share, and the fix.
    assert "needs 0.4 MB on cpu" in message and "data.device_cache_share=1e-12" in message
    assert "MB is free there" in message and "Use data.cache=ram" in message
    assert free_memory(torch.device("cpu")) > 0
    record = _record(cfg)
    assert record["status"] == "failed" and "data.cache=ram" in record["error"]
    assert not list(Path(cfg.paths.output_dir).rglob("*.ckpt")), "nothing was trained"


@pytest.mark.parametrize("share", ["0", "1.5"])
def test_device_cache_share_must_be_a_share(make_cfg, share: str) -> None:
    with pytest.raises(ConfigError, match=rf"data.device_cache_share={share} is invalid"):
        build_datamodule(
            make_cfg("aug=none", "data.cache=device", f"data.device_cache_share={share}")
        )


def test_albu_cpu_is_refused(make_cfg) -> None:
    with pytest.raises(ConfigError) as caught:
        build_datamodule(make_cfg("aug=albu_cpu", "data.cache=device"))
    assert str(caught.value) == (
        "data.cache=device needs a device-side augmentation backend (aug=kornia_gpu or aug=none);"
        " aug=albu_cpu augments per sample in DataLoader workers. Use data.cache=ram with"
        " aug=albu_cpu."
    )


def test_ddp_is_refused(make_cfg) -> None:
    datamodule = build_datamodule(make_cfg("aug=kornia_gpu", "data.cache=device"))
    datamodule.setup("fit")
    # Two CPU processes: the strategy is set up, nothing is launched until fit.
    datamodule.trainer = quiet_trainer(devices=2, strategy="ddp")
    with pytest.raises(ConfigError, match=r"2 processes \(DDP\).*Use data.cache=ram"):
        datamodule.train_dataloader()


@pytest.mark.parametrize(
    ("precision", "dtype"),
    [
        ("32-true", torch.float32),
        ("32", torch.float32),
        ("16-mixed", torch.float16),
        ("16-true", torch.float16),
        ("bf16-mixed", torch.bfloat16),
        ("bf16-true", torch.bfloat16),
        ("64-true", torch.float64),
        (None, torch.float32),
    ],
)
def test_compute_dtype(precision: str | None, dtype: torch.dtype) -> None:
    assert compute_dtype(precision) is dtype


def test_compute_dtype_examples() -> None:
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner()
    for test in finder.find(compute_dtype, "compute_dtype", globs=vars(datamodule_module)):
        runner.run(test)
    assert runner.tries > 0 and runner.failures == 0


def test_batches_arrive_in_the_trainers_dtype(make_cfg) -> None:
    datamodule = build_datamodule(make_cfg("aug=kornia_gpu", "data.cache=device"))
    datamodule.setup("fit")
    datamodule.trainer = quiet_trainer(precision="bf16-mixed")
    batch = next(iter(datamodule.val_dataloader()))
    out = datamodule.on_after_batch_transfer(batch, 0)
    assert out["image"].dtype == torch.bfloat16 and out["mask"].dtype == torch.float32
