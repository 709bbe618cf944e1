"""``budget=``: the learning rate anneals over wall time and the run ends inside the budget."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nailseg.errors import ConfigError
from nailseg.model.budget import budget_seconds, parse_budget
from nailseg.train import run


@pytest.mark.parametrize("bad", ["10 minutes", "-5", "0", "m", True])
def test_bad_budget_names_the_value_and_the_fix(bad) -> None:
    with pytest.raises(ConfigError, match="budget=.*e.g. budget=600, budget=90s, budget=10m"):
        parse_budget(bad)


def test_max_time_alone_is_a_budget(make_cfg) -> None:
    assert budget_seconds(make_cfg("+trainer.max_time=00:00:02:30")) == 150.0
    assert budget_seconds(make_cfg()) is None


@pytest.mark.slow
def test_budgeted_run_anneals_and_ends_inside_the_budget(make_cfg, tmp_path: Path) -> None:
    cfg = make_cfg(
        "budget=8s",
        "trainer.limit_train_batches=null",
        "trainer.limit_val_batches=null",
        "data.source.count=48",
        "data.source.image_size=64",
    )
    record = run(cfg)
    budget = record["budget"]
    assert budget["budget_s"] == 8.0 and budget["stopped_by_budget"], budget
    assert budget["used_s"] <= 8.0 * 1.25, budget  # the final validation fits (with slack)
    assert budget["steps"] > 0 and record["metrics"]["val/iou"] >= 0
    final = torch.load(record["final_checkpoint"], map_location="cpu", weights_only=True)
    lr = final["optimizer_states"][0]["param_groups"][0]["lr"]
    assert lr < 0.25 * cfg.optimizer.lr, lr  # annealed over the budget, not over max_epochs
    assert final["global_step"] == budget["steps"]
