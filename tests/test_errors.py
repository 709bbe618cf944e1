"""Bad input gets a clear message naming the value and the fix, not a deep traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from nailseg.build import build_datamodule, build_module
from nailseg.errors import EXIT_ERROR, ConfigError, DataError, EncoderWeightsError
from tests.conftest import train_py


def test_missing_data_root(make_cfg, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-folder"
    datamodule = build_datamodule(make_cfg("data=nails", f"data.root={missing}"))
    with pytest.raises(DataError, match="data.root") as err:
        datamodule.setup("fit")
    assert str(missing) in str(err.value)


def test_data_root_not_given(make_cfg) -> None:
    with pytest.raises(DataError, match=r"data\.root=/path"):
        build_datamodule(make_cfg("data=nails")).setup("fit")


def test_unknown_encoder_suggests_close_names(make_cfg) -> None:
    with pytest.raises(ConfigError, match="Unknown encoder 'resnet81'.*Did you mean 'resnet18'"):
        build_module(make_cfg("encoder.name=resnet81"))


def test_unknown_architecture_lists_options(make_cfg) -> None:
    with pytest.raises(ConfigError, match="Unknown architecture 'unett'.*Options:.*unet"):
        build_module(make_cfg("model.arch=unett"))


def test_imagenet_weights_offline_say_how_to_proceed(make_cfg) -> None:
    # conftest sets HF_HUB_OFFLINE=1, so this is the offline case whatever the machine.
    with pytest.raises(EncoderWeightsError) as err:
        build_module(make_cfg("encoder.weights=imagenet"))
    message = str(err.value)
    assert "encoder.weights=null" in message and "/path/to/file.pth" in message


def test_missing_local_weights_file(make_cfg, tmp_path: Path) -> None:
    with pytest.raises(EncoderWeightsError, match="not found"):
        build_module(make_cfg(f"encoder.weights={tmp_path / 'resnet18.pth'}"))


def test_cli_error_is_one_clear_line_and_failed_record(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    out = train_py(
        "encoder.name=resnet81", f"hydra.run.dir={run_dir}", f"paths.data_dir={tmp_path / 'data'}"
    )
    assert out.returncode == EXIT_ERROR
    assert "error: Unknown encoder 'resnet81'" in out.stderr
    assert "Traceback" not in out.stderr
    record = (run_dir / "run.json").read_text()
    assert '"status": "failed"' in record and "resnet81" in record
