"""Defaults that follow the machine and the data: loader workers per spare core, the decode cache
when the set fits in memory, the image size from the data's sizes, channels-last on a CPU."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from PIL import Image

from nailseg.build import build_module
from nailseg.data.datamodule import (
    as_size,
    auto_cache,
    auto_image_size,
    memory_available,
    worker_count,
)
from nailseg.errors import ConfigError
from nailseg.inference import load_run, trained_size
from nailseg.train import run


def test_auto_workers_leave_the_training_core_alone() -> None:
    cores = len(os.sched_getaffinity(0))
    assert worker_count("auto") == max(0, min(4, cores - 1))
    assert worker_count(0) == 0 and worker_count(3) == 3
    with pytest.raises(ConfigError, match="data.num_workers=-1 is invalid.*or auto"):
        worker_count(-1)


def test_auto_cache_keeps_ram_only_when_the_set_fits() -> None:
    available = memory_available()
    assert available is not None and available > 0
    assert auto_cache(52, (256, 256), share=0.25).kind == "ram"  # 13 MB
    too_many = int(available / (256 * 256 * 4)) + 1  # more than all of the memory available
    assert auto_cache(too_many, (256, 256), share=1.0).kind == "none"


def test_default_data_config_uses_both(make_cfg) -> None:
    cfg = make_cfg(fast=False)
    assert cfg.data.num_workers == "auto"
    assert cfg.data.cache == "ram"  # data=synthetic keeps its own choice
    assert make_cfg("data=folder", fast=False).data.cache == "auto"


def _image(path: Path, width: int, height: int) -> Path:
    Image.new("RGB", (width, height), (90, 60, 30)).save(path)
    return path


def test_auto_image_size_is_the_median_side_rounded_to_32(tmp_path: Path) -> None:
    sizes = [(200, 200), (300, 100), (100, 300), (400, 400)]  # sides 200, 173, 173, 400
    files = [_image(tmp_path / f"{i}.png", w, h) for i, (w, h) in enumerate(sizes)]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")  # left to the data check, not counted here
    assert auto_image_size([*files, broken], largest=256) == (192, 192)  # median 187 -> 192
    assert auto_image_size(files, largest=128) == (128, 128)  # never above image_size_max
    tiny = [_image(tmp_path / "tiny.png", 20, 20)]
    assert auto_image_size(tiny, largest=256) == (64, 64)  # never below 64
    assert auto_image_size([broken], largest=256) == (256, 256)  # nothing readable: the largest
    with pytest.raises(ConfigError, match="data.image_size='big' is invalid.*or auto"):
        as_size("big")


def test_an_auto_sized_run_records_its_size_for_eval_and_trains_channels_last(
    make_cfg, tmp_path: Path
) -> None:
    # The synthetic images are drawn at 64 px, so auto picks 64 (the default config's is 96).
    record = run(make_cfg("data.image_size=auto", "data.image_size_max=128"))
    assert record["data"]["image_size"] == [64, 64]
    run_dir = Path(record["run_dir"])
    assert load_run(run_dir).image_size == (64, 64)  # config says auto; run.json says 64
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    conv = state["net.encoder.conv1.weight"]
    # channels_last=auto on a CPU: the weights are kept channels-last.
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()


def test_channels_last_false_keeps_the_default_layout(make_cfg) -> None:
    record = run(make_cfg("channels_last=false"))
    state = torch.load(Path(record["run_dir"]) / "checkpoints" / "last.ckpt", weights_only=True)[
        "state_dict"
    ]
    assert state["net.encoder.conv1.weight"].is_contiguous()
    with pytest.raises(ConfigError, match="channels_last='yes' is invalid"):
        build_module(make_cfg("channels_last=yes"))


def test_trained_size_of_an_auto_run_without_a_record_is_an_error(make_cfg, tmp_path) -> None:
    cfg = make_cfg("data.image_size=auto")
    assert trained_size(cfg, {"data": {"image_size": [96, 128]}}, tmp_path) == (96, 128)
    with pytest.raises(ConfigError, match="does not say which size data.image_size=auto chose"):
        trained_size(cfg, {"data": {}}, tmp_path)


@pytest.mark.parametrize("bad", [100, 32, "big"])
def test_bad_image_size_max_names_the_key(make_cfg, bad) -> None:
    from nailseg.build import build_datamodule

    with pytest.raises(ConfigError, match=f"data.image_size_max={bad!r} is invalid"):
        build_datamodule(make_cfg("data.image_size=auto", f"data.image_size_max={bad}"))
