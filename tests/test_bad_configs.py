"""Bad configs stop before training with one line that names the key and the fix, no traceback.

One table of overrides, run in-process through :func:`nailseg.train.task` (what ``train.py``
runs: its ``sys.exit`` message is what the user sees), and a few through a real ``train.py``.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from nailseg.cli import main as nailseg
from nailseg.config import REPO_ROOT
from nailseg.config_check import check_config
from nailseg.errors import EXIT_ERROR
from nailseg.train import task
from tests.conftest import nailseg_cli
from tests.test_config import EXPERIMENTS, group_options

# (overrides, what the one-line message must name)
BAD = [
    ("data.batch_size=0", "data.batch_size=0"),
    ("data.batch_size=-4", "data.batch_size=-4"),
    ("data.batch_size=2.5", "data.batch_size=2.5"),  # was trained as 2, recorded as 2.5
    ("optimizer.lr=-0.01", "optimizer.lr=-0.01"),
    ("optimizer=sgd optimizer.lr=abc", "optimizer.lr=abc"),
    ("trainer.max_epochs=abc", "trainer.max_epochs=abc"),
    ("trainer.max_epochs=0", "trainer.max_epochs=0"),  # was "completed" with NaN metrics
    ("seed=abc", "seed=abc"),
    ("seed=-1", "seed=-1"),
    ("data.num_workers=-1", "data.num_workers=-1"),
    ("+data.batch_sise=4", "Did you mean data.batch_size?"),
    ("+trainer.max_epoch=3", "Did you mean trainer.max_epochs"),
    ("+loss.losses.dice.from_logit=true", "Did you mean loss.losses.dice.from_logits?"),
    ("+model.decoder_chanels=[8,8,8,8,8]", "Did you mean model.decoder_channels"),
    ("data.source._target_=nailseg.data.NoSuchSource", "data.source._target_"),
    ("encoder.name=tu-resnet10x", "Did you mean 'tu-resnet10t'"),
    ("encoder.weights=/no/such/resnet18.pth", "/no/such/resnet18.pth"),
]


@pytest.mark.parametrize(("overrides", "named"), BAD, ids=[b[0] for b in BAD])
def test_bad_config_is_one_line_naming_the_key(
    make_cfg, tmp_path: Path, capsys: pytest.CaptureFixture, overrides: str, named: str
) -> None:
    cfg = make_cfg(*overrides.split())
    with pytest.raises(SystemExit) as stop:
        task(cfg)
    assert stop.value.code == EXIT_ERROR
    message = capsys.readouterr().err.strip()
    assert message.startswith("error: ") and "\n" not in message
    assert named in message
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["status"] == "failed"


def test_two_problems_in_one_line(make_cfg) -> None:
    with pytest.raises(Exception, match=r"2 config problems: seed=-1 .* data\.batch_size=1\.5 "):
        check_config(make_cfg("seed=-1", "data.batch_size=1.5"))


def test_zero_learning_rate_warns(make_cfg, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="nailseg.config_check"):
        check_config(make_cfg("optimizer.lr=0"))
    assert "optimizer.lr=0" in caplog.text


CASES = [(g, o) for g, o in group_options()] + [("+experiment", e) for e in EXPERIMENTS]


@pytest.mark.parametrize(("group", "option"), CASES, ids=lambda v: str(v))
def test_every_shipped_config_passes(make_cfg, group: str, option: str) -> None:
    # No false alarms: every option of every group and every experiment is a valid config.
    check_config(make_cfg(f"{group}={option}", fast=group != "+experiment"))


def test_train_py_prints_one_line_and_no_traceback(tmp_path: Path) -> None:
    # Real processes, started together (each spends most of its ~7 s importing).
    cases = {
        "trainer.max_epochs=abc": "trainer.max_epochs=abc",
        "+data.batch_sise=4": "Did you mean data.batch_size?",
    }
    runs = {
        override: subprocess.Popen(
            [
                sys.executable,
                str(REPO_ROOT / "train.py"),
                override,
                f"hydra.run.dir={tmp_path / str(n)}",
                f"paths.data_dir={tmp_path / 'data'}",
            ],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n, override in enumerate(cases)
    }
    for override, process in runs.items():
        stdout, stderr = process.communicate(timeout=120)
        assert process.returncode != 0, override
        assert "Traceback" not in stdout + stderr, override
        last = stderr.strip().splitlines()[-1]
        assert last.startswith("error: ") and cases[override] in last, last
        record = json.loads((tmp_path / str(list(cases).index(override)) / "run.json").read_text())
        assert record["status"] == "failed"


def _blocked(tmp_path: Path) -> Path:
    (tmp_path / "a-file").write_text("")
    return tmp_path / "a-file" / "grid.png"


# (case, --out or overrides for `nailseg preview`, what the one-line message must name)
PREVIEW = [
    ("no extension", lambda t: ["--out", str(t / "grid")], "has no extension"),
    ("unknown format", lambda t: ["--out", str(t / "grid.xyz")], "cannot write '.xyz'"),
    ("a folder", lambda t: ["--out", str(t)], "has no extension"),
    ("unwritable", lambda t: ["--out", str(_blocked(t))], "is a file, not a folder"),
    ("not in struct", lambda t: ["data.batch_sise=4"], "Did you mean data.batch_size?"),
    ("+key typo", lambda t: ["+data.batch_sise=4"], "Did you mean data.batch_size?"),
    ("bad value", lambda t: ["data.batch_size=2.5"], "data.batch_size=2.5"),
]


@pytest.mark.parametrize(("case", "args", "named"), PREVIEW, ids=[p[0] for p in PREVIEW])
def test_preview_bad_input_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture, case: str, args, named: str
) -> None:
    code = nailseg(["preview", *args(tmp_path), f"paths.data_dir={tmp_path / 'data'}"])
    assert code == EXIT_ERROR
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and named in err


# Misspelt keys and group options stop before Hydra starts: one line, did-you-mean, exit 2.
COMPOSE = [
    ("data.imagesize=64", "Did you mean data.image_size"),
    ("trainer.max_epoch=2", "Did you mean trainer.max_epochs?"),
    ("aug=kornia_gpuu", "Did you mean aug=kornia_gpu?"),
    ("model=unett", "Did you mean model=unet?"),
    ("-m encoder=resnet18,resnet344 aug=albu_cpuu", "Did you mean aug=albu_cpu?"),
]


@pytest.mark.parametrize(("overrides", "named"), COMPOSE, ids=[c[0] for c in COMPOSE])
def test_train_refuses_misspelt_names_before_starting(
    tmp_path: Path, capsys: pytest.CaptureFixture, overrides: str, named: str
) -> None:
    code, message = nailseg_cli(
        capsys, "train", *overrides.split(), f"hydra.run.dir={tmp_path / 'run'}"
    )
    assert code == EXIT_ERROR and message.startswith("error: ") and named in message, message
    assert not (tmp_path / "run").exists()  # nothing started
