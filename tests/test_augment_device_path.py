"""The GPU-first data path of ``aug=kornia_gpu``, through the real DataModule.

Workers only decode and resize (``uint8`` out); after the batch reaches the device,
``on_after_batch_transfer`` converts, augments (training only) and normalises. On a machine
without CUDA the same code runs on the CPU and warns once.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from pytorch_lightning.utilities import move_data_to_device

from nailseg.build import build_datamodule
from tests.conftest import quiet_trainer


@pytest.fixture(params=["cuda", "cpu"] if torch.cuda.is_available() else ["cpu"])
def device(request: pytest.FixtureRequest) -> torch.device:
    """The GPU path runs on CUDA where there is one, and on the CPU here."""
    return torch.device(request.param)


def _gpu_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if "kornia_gpu is augmenting on" in str(w.message)]


def test_kornia_gpu_path(make_cfg, device: torch.device) -> None:
    datamodule = build_datamodule(make_cfg("aug=kornia_gpu", "data.source.count=16"))
    datamodule.setup("fit")
    # A real Trainer only to say whether we are training, as Lightning does during fit/validate.
    datamodule.trainer = quiet_trainer()

    loader = datamodule.train_dataloader()
    assert loader.pin_memory == torch.cuda.is_available()  # page-locked only where it helps
    raw = next(iter(loader))
    # Workers: decode + resize only, uint8 out.
    assert raw["image"].dtype == torch.uint8 and raw["image"].shape[1:] == (3, 64, 64)
    assert raw["mask"].dtype == torch.uint8 and raw["mask"].shape[1:] == (1, 64, 64)
    batch_size = raw["image"].shape[0]

    def after_transfer(training: bool) -> dict:
        datamodule.trainer.training = training
        batch = move_data_to_device(raw, device)
        return datamodule.on_after_batch_transfer(batch, 0)

    # Written out here as the definition, independent of the backends' fused conversion.
    mean, std = (
        t.to(device).view(1, 3, 1, 1) for t in (datamodule.augment.mean, datamodule.augment.std)
    )
    expected_plain = (raw["image"].to(device).float() / 255 - mean) / std
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train_batches = [after_transfer(training=True) for _ in range(2)]
        valid = after_transfer(training=False)

    for out in (*train_batches, valid):
        assert out["image"].dtype == torch.float32 and out["image"].device.type == device.type
        assert tuple(out["image"].shape) == (batch_size, 3, 64, 64)
        assert out["mask"].dtype == torch.float32 and tuple(out["mask"].shape) == (
            batch_size,
            1,
            64,
            64,
        )
        assert set(out["mask"].unique().tolist()) <= {0.0, 1.0}
    # Validation: normalisation only, bit for bit; masks untouched.
    torch.testing.assert_close(valid["image"], expected_plain)
    torch.testing.assert_close(valid["mask"], raw["mask"].to(device).float())
    # Training: augmented (so different from the plain batch), and reproducible from the seeds.
    assert not torch.allclose(train_batches[0]["image"], expected_plain)
    torch.testing.assert_close(train_batches[0]["image"], train_batches[1]["image"])
    torch.testing.assert_close(train_batches[0]["mask"], train_batches[1]["mask"])
    # One warning on the CPU, however many batches; none on a GPU.
    assert len(_gpu_warnings(caught)) == (0 if device.type == "cuda" else 1), _gpu_warnings(caught)
