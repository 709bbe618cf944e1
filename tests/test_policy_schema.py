"""The policy schema (OmegaConf structured configs), its defaults, and where normalisation comes
from: the policy, else the encoder (smp, offline), else ImageNet."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from nailseg.augment.albu import AlbumentationsAugment
from nailseg.augment.base import NoAugment, augment_arrays
from nailseg.augment.kornia_gpu import KorniaAugment
from nailseg.augment.policy import IMAGENET_NORMALIZATION, AugPolicy
from nailseg.config import CONF_DIR, compose_config
from nailseg.errors import ConfigError
from nailseg.model import network
from nailseg.model.network import encoder_normalization

BACKENDS = [AlbumentationsAugment, KorniaAugment, NoAugment]
IMAGENET = {key: list(value) for key, value in IMAGENET_NORMALIZATION.items()}
ENCODER = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "source": "a test"}


def _policy(name: str) -> AugPolicy:
    return AugPolicy.from_config(
        compose_config(["paths.output_dir=unused", f"aug/policy={name}"]).aug.policy
    )


# --- schema -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "named"),
    [
        ({"affine": {"degres": 30}}, "Unknown key aug.policy.affine.degres=30. Did you mean"),
        ({"affine": {"degres": 30}}, "aug.policy.affine.degrees?"),
        ({"colour": {"hsv": {"hu": 0.1}}}, "Did you mean aug.policy.colour.hsv.hue?"),
        ({"afine": {"p": 0.1}}, "Valid keys of aug.policy: affine, blur, colour, hflip_p"),
        ({"hflip_p": "abc"}, "aug.policy.hflip_p='abc' is invalid"),
        ({"blur": {"kernel_size": 5.5}}, "aug.policy.blur.kernel_size=5.5 is invalid"),
        ({"affine": {"scale": ["a", 1]}}, "aug.policy.affine.scale=['a', 1] is invalid"),
        ({"affine": 3}, "aug.policy.affine=3 is invalid: expected a mapping of"),
        ({"colour": {"hsv": 3}}, "aug.policy.colour.hsv=3 is invalid: expected a mapping of"),
        ({"affine": {"scale": None}}, "aug.policy.affine.scale=None is invalid"),
        # Our range checks, after OmegaConf's type checks.
        ({"hflip_p": 1.5}, "aug.policy.hflip_p=1.5 is invalid: expected a probability"),
        ({"affine": {"scale": [1.2, 0.8]}}, "aug.policy.affine.scale=[1.2, 0.8] is invalid"),
        ({"affine": {"scale": [1, 2, 3]}}, "aug.policy.affine.scale=[1.0, 2.0, 3.0] is invalid"),
        ({"blur": {"kernel_size": 4}}, "expected an odd integer of at least 3"),
        ({"affine": {"interpolation": "cubic"}}, "expected one of ['bilinear', 'nearest']"),
        ({"mean": [0.5, 0.5]}, "aug.policy.mean=[0.5, 0.5] is invalid"),
        ({"std": [0.2, 0.0, 0.2]}, "aug.policy.std=[0.2, 0.0, 0.2] is invalid"),
    ],
)
def test_bad_policy_is_one_line_naming_the_key(config: dict, named: str) -> None:
    with pytest.raises(ConfigError) as err:
        AugPolicy.from_config(config)
    assert named in str(err.value) and "\n" not in str(err.value)


def test_a_policy_is_frozen_with_tuples() -> None:
    policy = _policy("heavy")
    assert policy.affine.scale == (0.75, 1.25) and isinstance(policy.colour.clahe.clip_limit, tuple)
    hash(policy)  # frozen, no lists inside
    with pytest.raises(AttributeError):
        policy.hflip_p = 0.1  # type: ignore[misc]


# --- defaults ---------------------------------------------------------------------------------

# The tutorial policy's values as tutorial.yaml listed them before the dataclass held them.
TUTORIAL = {
    "hflip_p": 0.5,
    "vflip_p": 0.0,
    "affine": {
        "p": 0.5,
        "degrees": 15,
        "scale": [0.9, 1.1],
        "translate": 0.0625,
        "interpolation": "bilinear",
    },
    "noise": {"p": 0.2, "std": [0.02, 0.06]},
    "blur": {"p": 0.2, "sigma": [0.3, 1.2], "kernel_size": 5},
    "colour": {
        "p": 0.5,
        "hsv": {"hue": 0.05, "saturation": 0.15, "value": 0.1},
        "clahe": {"clip_limit": [1.0, 4.0], "grid_size": 8},
        "brightness_contrast": {"brightness": 0.2, "contrast": 0.2},
    },
}
HEAVY = {
    "hflip_p": 0.5,
    "vflip_p": 0.5,
    "affine": {
        "p": 0.8,
        "degrees": 45,
        "scale": [0.75, 1.25],
        "translate": 0.1,
        "interpolation": "bilinear",
    },
    "noise": {"p": 0.4, "std": [0.03, 0.1]},
    "blur": {"p": 0.4, "sigma": [0.5, 2.0], "kernel_size": 7},
    "colour": {
        "p": 0.8,
        "hsv": {"hue": 0.1, "saturation": 0.3, "value": 0.2},
        "clahe": {"clip_limit": [1.0, 6.0], "grid_size": 8},
        "brightness_contrast": {"brightness": 0.3, "contrast": 0.3},
    },
}


def test_the_dataclass_defaults_are_the_tutorial_policy() -> None:
    assert AugPolicy() == AugPolicy.from_config(TUTORIAL) == _policy("tutorial")
    # The file only starts from the ConfigStore node that holds the dataclass defaults.
    listed = yaml.safe_load((CONF_DIR / "aug" / "policy" / "tutorial.yaml").read_text())
    assert listed == {"defaults": ["defaults", "_self_"]}


@pytest.mark.parametrize("name", ["tutorial", "light", "heavy"])
def test_every_policy_key_is_a_plain_override(name: str) -> None:
    cfg = compose_config(
        ["paths.output_dir=unused", f"aug/policy={name}", "aug.policy.affine.degrees=33"]
    )
    assert AugPolicy.from_config(cfg.aug.policy).affine.degrees == 33


def test_heavy_lists_only_what_differs_and_keeps_its_values() -> None:
    assert _policy("heavy") == AugPolicy.from_config(HEAVY)
    listed = yaml.safe_load((CONF_DIR / "aug" / "policy" / "heavy.yaml").read_text())
    defaults = AugPolicy()
    for key, value in listed.items():
        if key != "defaults" and not isinstance(value, dict):
            assert getattr(defaults, key) != value, key


# --- normalisation ----------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_normalisation_falls_back_to_imagenet(backend) -> None:
    engine = backend()
    assert engine.normalization == IMAGENET
    assert engine.mean.tolist() == pytest.approx(IMAGENET["mean"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_normalisation_is_taken_from_the_encoder(backend) -> None:
    engine = backend(normalization=ENCODER)
    assert engine.normalization == {"mean": ENCODER["mean"], "std": ENCODER["std"]}
    white = np.full((8, 8, 3), 255, np.uint8)
    image, _ = augment_arrays(engine, [white], [np.zeros((8, 8), np.uint8)], [0], train=False)
    assert image.flatten().tolist() == pytest.approx([2.0] * image.numel())  # (1 - 0.5) / 0.25


@pytest.mark.parametrize("backend", BACKENDS)
def test_explicit_policy_values_win_over_the_encoder(backend) -> None:
    policy = {"mean": [0.1, 0.2, 0.3], "std": [1, 1, 1]}
    engine = backend(policy, normalization=ENCODER)
    assert engine.normalization == {"mean": [0.1, 0.2, 0.3], "std": [1.0, 1.0, 1.0]}


def test_a_bad_encoder_normalization_is_named() -> None:
    with pytest.raises(ConfigError, match=r"normalization std=\[1, 0, 1\] is invalid"):
        NoAugment(normalization={"mean": [0, 0, 0], "std": [1, 0, 1]})


def test_encoder_normalization_offline() -> None:
    # No network on the test machines: every one of these must answer from local data.
    for name in ("resnet18", "mobilenet_v2", "timm-efficientnet-b4"):
        values = encoder_normalization(name)
        assert {k: values[k] for k in ("mean", "std")} == IMAGENET, name
        assert values["source"]
    for name in ("tu-resnet18", "tu-efficientnet_b4"):
        values = encoder_normalization(name)
        assert {k: values[k] for k in ("mean", "std")} == IMAGENET, name
        assert "timm pretrained config" in values["source"]
    inception = encoder_normalization("tu-tf_efficientnet_b4.ap_in1k")  # AdvProp: 0.5, 0.5
    assert inception["mean"] == [0.5] * 3 and inception["std"] == [0.5] * 3
    with pytest.raises(ConfigError, match="Unknown encoder 'resnet19'"):
        encoder_normalization("resnet19")


def test_encoder_normalization_reads_smps_cached_config(tmp_path: Path, monkeypatch) -> None:
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps({"mean": [127.5] * 3, "std": [255.0] * 3, "input_range": [0, 255]})
    )
    monkeypatch.setattr(network, "try_to_load_from_cache", lambda *a, **k: str(config))
    values = encoder_normalization("resnet18")
    assert values["mean"] == [0.5] * 3 and values["std"] == [1.0] * 3  # scaled to [0, 1] images
    assert "smp-hub/resnet18.imagenet" in values["source"]
