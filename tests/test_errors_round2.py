"""Errors that escaped as tracebacks or with the wrong exit status (issue 24, section 3): each one
is now one ``error:`` line on stderr that names the file or key, the value and the fix, exit 2.

In-process and small: one tiny run trained once for the module (for predict, export and the
checkpoint loader), the rest stops before training.
"""

from __future__ import annotations

import csv
import json
import pickle
from pathlib import Path

import pytest
import torch
from hydra.errors import InstantiationException
from omegaconf import OmegaConf
from PIL import Image

from nailseg.build import instantiate_node
from nailseg.cli import main as nailseg
from nailseg.config import compose_config
from nailseg.errors import EXIT_ERROR, ConfigError, PickledCheckpointError
from nailseg.inference import load_run
from nailseg.runs.checkpoint import read_checkpoint
from nailseg.runs.summary import SUMMARY_CSV, SUMMARY_MD
from nailseg.train import run, task
from tests.conftest import FAST_OVERRIDES, FAST_SYNTHETIC, nailseg_cli

# What torch.load's refusal of a pickle advises; a tool must never pass that advice on.
UNSAFE_ADVICE = ("weights_only", "arbitrary code", "trust")


class Opaque:
    """A Python object a checkpoint must not hold (pickled by reference, as tests.<module>)."""


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny completed run (U-Net/resnet18, 64 px, two batches), trained in this process."""
    root = tmp_path_factory.mktemp("round2")
    cfg = compose_config(
        [
            f"paths.output_dir={root / 'run'}",
            f"paths.data_dir={root / 'data'}",
            *FAST_OVERRIDES,
            *FAST_SYNTHETIC,
        ]
    )
    assert run(cfg)["status"] == "completed"
    return root / "run"


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "photo.png"
    Image.new("RGB", (40, 30), (200, 120, 90)).save(path)
    return path


def one_line(capsys: pytest.CaptureFixture) -> str:
    """The error line: the last on stderr (progress bars may come before it), no traceback."""
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    last = err.splitlines()[-1] if err else ""
    assert last.startswith("error: "), err
    return last


def failed_task(cfg, capsys: pytest.CaptureFixture, run_json: Path) -> str:
    """Run ``cfg`` as ``train.py`` does; it must stop with exit 2, one line, a failed record."""
    with pytest.raises(SystemExit) as stop:
        task(cfg)
    assert stop.value.code == EXIT_ERROR
    message = one_line(capsys)
    assert json.loads(run_json.read_text())["status"] == "failed"
    return message


# 1. data.cache=disk with a cache dir that cannot be created.


@pytest.mark.parametrize("where", ["proc", "under a file"])
def test_disk_cache_dir_that_cannot_be_created(
    make_cfg, tmp_path: Path, capsys: pytest.CaptureFixture, where: str
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    folder = "/proc/nope" if where == "proc" else str(blocker / "cache")
    cfg = make_cfg("data.cache=disk", f"data.cache_dir={folder}")
    message = failed_task(cfg, capsys, tmp_path / "run" / "run.json")
    assert f"data.cache_dir={folder} cannot be written: " in message
    assert "data.cache=ram" in message  # a way out
    if where != "proc":
        assert f"{blocker} is a file, not a folder" in message


# 2. A library refuses a value (ValueError, TypeError, assert, Lightning's Misconfiguration...)
# while a config node becomes an object.

REFUSED = [
    # (override, the key and value named, the library's own words kept)
    ("trainer.precision=8", "trainer.precision=8", "Allowed precision values: ("),
    ("optimizer.weight_decay=-1", "optimizer.weight_decay=-1", "Invalid weight_decay value"),
    ("loss.losses.dice.mode=foo", "loss.losses.dice.mode=foo", "`assert mode in {BINARY_MODE"),
    (
        "callbacks.model_checkpoint.mode=maxx",
        "callbacks.model_checkpoint.mode=maxx",
        "`mode` can be min, max but got maxx",
    ),
    (
        "callbacks.lr_monitor.logging_interval=hour",
        "callbacks.lr_monitor.logging_interval=hour",
        "logging_interval",
    ),
]


@pytest.mark.parametrize(("override", "named", "words"), REFUSED, ids=[r[0] for r in REFUSED])
def test_library_refusal_is_one_line_naming_the_key(
    make_cfg,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    override: str,
    named: str,
    words: str,
) -> None:
    message = failed_task(make_cfg(override), capsys, tmp_path / "run" / "run.json")
    assert named in message and words in message, message
    assert "Error in call to target" not in message and "full_key" not in message


EARLY_STOPPING = {"_target_": "pytorch_lightning.callbacks.EarlyStopping", "monitor": "val/iou"}


def test_refusal_names_the_key_of_a_nested_or_detached_node() -> None:
    """A TypeError at the call (an argument the target does not take); a node nested in another;
    a node detached from the whole config (as ``data`` is built) named by ``config_key``."""
    cfg = OmegaConf.create(
        {"logger": {"csv": {"_target_": "pytorch_lightning.loggers.CSVLogger", "save_dirr": "x"}}}
    )
    with pytest.raises(ConfigError, match=r"^logger\.csv\.save_dirr=x was refused .*unexpected"):
        instantiate_node(cfg.logger.csv, "logger csv")
    nested = {"_target_": "builtins.dict", "stop": {**EARLY_STOPPING, "mode": "maxx"}}
    with pytest.raises(ConfigError, match=r"^callbacks\.x\.stop\.mode=maxx was refused by "):
        instantiate_node(OmegaConf.create({"callbacks": {"x": nested}}).callbacks.x, "callback")
    with pytest.raises(ConfigError, match=r"^data\.stop\.mode=maxx was refused by "):
        instantiate_node(OmegaConf.create(nested), "datamodule", config_key="data")


def test_value_error_inside_nailseg_stays_a_bug() -> None:
    """A ValueError raised in nailseg's own code is a bug to see, not a user error to word."""
    cfg = OmegaConf.create(
        {"callbacks": {"b": {"_target_": "nailseg.model.budget.TimeBudget", "budget_s": "abc"}}}
    )
    with pytest.raises(InstantiationException):
        instantiate_node(cfg.callbacks.b, "callback b")


# 3. predict --output that cannot be written.


@pytest.mark.parametrize("where", ["under a file", "sys"])
def test_predict_output_that_cannot_be_written(
    run_dir: Path, image: Path, tmp_path: Path, capsys: pytest.CaptureFixture, where: str
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    out = "/sys/nailseg-nope" if where == "sys" else str(blocker / "out")
    capsys.readouterr()
    code = nailseg(["predict", str(run_dir), "--input", str(image), "--output", out])
    assert code == EXIT_ERROR
    message = one_line(capsys)
    assert f"--output {out} cannot be written: " in message and "--output DIR" in message
    if where != "sys":
        assert f"{blocker} is a file, not a folder" in message


# 4. export --opset outside what the installed torch exports.


@pytest.mark.parametrize("opset", ["3", "99", "-1"])
def test_export_opset_out_of_range(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture, opset: str
) -> None:
    capsys.readouterr()
    out = tmp_path / "m.onnx"
    code = nailseg(["export", str(run_dir), "--out", str(out), "--opset", opset])
    assert code == EXIT_ERROR
    message = one_line(capsys)
    constants = torch.onnx._constants  # the TorchScript exporter's range (dynamo=False)
    low, high = constants.ONNX_MIN_OPSET, constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET
    assert f"--opset {opset}" in message and f"{low} to {high}" in message, message
    assert not out.exists()


def test_export_opset_too_old_for_the_network(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Opset 7 is in torch's range, but cannot express the U-Net's upsampling."""
    code, message = nailseg_cli(
        capsys, "export", str(run_dir), "--out", str(tmp_path / "m.onnx"), "--opset", "7"
    )
    assert code == EXIT_ERROR
    assert message.startswith("error: --opset 7 cannot express this network (Unsupported: ")
    assert "--opset 17" in message


# 5. summary with a damaged run.json: that job's row says so, the others are still written.


def _job(sweep: Path, num: int, overrides: list[str], record: str) -> None:
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (job / "run.json").write_text(record)


def test_summary_with_damaged_records(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    sweep = tmp_path / "sweep"
    good = {"status": "completed", "metrics": {"val/iou": 0.5}, "duration_s": 3.0}
    _job(sweep, 0, ["optimizer.lr=0.1"], json.dumps(good))
    _job(sweep, 1, ["optimizer.lr=0.2"], "[1, 2]")
    _job(sweep, 2, ["optimizer.lr=0.3"], "")
    _job(sweep, 3, ["optimizer.lr=0.4"], json.dumps({**good, "metrics": [0.4]}))
    code, _ = nailseg_cli(capsys, "summary", str(sweep))
    assert code == 0
    with (sweep / SUMMARY_CSV).open(newline="") as f:
        rows = {r["job"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"0", "1", "2", "3"}
    assert rows["0"]["status"] == "completed" and float(rows["0"]["final val/iou"]) == 0.5
    assert rows["1"]["status"] == rows["2"]["status"] == "bad record"
    assert "run.json holds a JSON list, not a run record" in rows["1"]["error"]
    assert str(sweep / "2" / "run.json") in rows["2"]["error"]
    assert "is empty" in rows["2"]["error"]
    assert rows["3"]["status"] == "completed"  # a damaged field alone: the rest still read
    markdown = (sweep / SUMMARY_MD).read_text()
    assert "| 1 | 0.2 | bad record |" in markdown and "| **0** | 0.1 | completed |" in markdown


# 6. A checkpoint holding pickled Python objects.


def _pickled(folder: Path, how: str) -> Path:
    path = folder / f"{how}.ckpt"
    if how == "torch.save":
        torch.save({"state_dict": {}, "x": Opaque()}, path)
    else:
        path.write_bytes(pickle.dumps({"state_dict": {}, "x": Opaque()}))
    return path.resolve()


@pytest.mark.parametrize("how", ["torch.save", "pickle"])
def test_pickled_checkpoint_is_refused_without_torch_advice(
    run_dir: Path, image: Path, tmp_path: Path, capsys: pytest.CaptureFixture, how: str
) -> None:
    ckpt = _pickled(run_dir / "checkpoints", how)
    try:
        expected = (
            f"error: Checkpoint {ckpt} holds pickled Python objects, not only tensors: nailseg"
            " loads weights only and refuses it. Use a checkpoint that nailseg wrote."
        )
        for command in (
            ["predict", str(ckpt), "--input", str(image), "--output", str(tmp_path / "o")],
            ["export", str(ckpt), "--out", str(tmp_path / "m.onnx")],
        ):
            code, message = nailseg_cli(capsys, *command)
            assert code == EXIT_ERROR and message == expected, message
        with pytest.raises(PickledCheckpointError) as err:
            read_checkpoint(ckpt)
        with pytest.raises(PickledCheckpointError):
            load_run(run_dir, checkpoint=ckpt)
        assert not any(words in str(err.value) for words in UNSAFE_ADVICE)
    finally:
        ckpt.unlink()


def test_damaged_checkpoint_names_the_file_and_the_fix(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    ckpt = run_dir / "checkpoints" / "empty.ckpt"
    ckpt.write_bytes(b"")
    try:
        code, message = nailseg_cli(capsys, "export", str(ckpt), "--out", str(tmp_path / "m.onnx"))
    finally:
        ckpt.unlink()
    assert code == EXIT_ERROR
    assert f"Cannot read checkpoint {ckpt.resolve()} (EOFError)" in message
    assert "Use a checkpoint that nailseg wrote." in message


def test_pickled_encoder_weights_give_no_torch_advice(make_cfg, tmp_path: Path) -> None:
    from nailseg.build import build_module
    from nailseg.errors import EncoderWeightsError

    weights = tmp_path / "resnet18.pth"
    weights.write_bytes(pickle.dumps({"conv1.weight": Opaque()}))
    with pytest.raises(EncoderWeightsError) as err:
        build_module(make_cfg(f"encoder.weights={weights}"))
    assert "pickled Python objects" in str(err.value)
    assert not any(words in str(err.value) for words in UNSAFE_ADVICE)
