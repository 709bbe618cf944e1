"""Defaults that follow the machine: loader workers per spare core, the decode cache when the set
fits in memory."""

from __future__ import annotations

import os

import pytest

from nailseg.data.datamodule import auto_cache, memory_available, worker_count
from nailseg.errors import ConfigError


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
