"""``encoder.weights=/path/file.pth`` lands in the built network, for every encoder family; a file
that does not fit stops with one line naming the file and what is wrong."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import segmentation_models_pytorch as smp
import torch
from safetensors.torch import save_file

from nailseg.build import build_module
from nailseg.errors import EncoderWeightsError

# One small encoder per family: torchvision-style ResNet, the two EfficientNet ports, timm ("tu-").
FAMILIES = ["resnet18", "efficientnet-b0", "timm-efficientnet-b0", "tu-resnet10t"]


def encoder_state(name: str, seed: int = 1, in_channels: int = 3) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return smp.Unet(name, encoder_weights=None, in_channels=in_channels).encoder.state_dict()


def assert_loaded(module: torch.nn.Module, saved: dict[str, torch.Tensor]) -> None:
    built = module.net.encoder.state_dict()
    assert built.keys() == saved.keys()
    for key, tensor in saved.items():
        assert torch.equal(built[key], tensor), key


@pytest.mark.parametrize("name", FAMILIES)
def test_local_weights_land_in_the_encoder(make_cfg, tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.pth"
    saved = encoder_state(name, seed=1)
    torch.save(saved, path)
    # Built under another seed: only the file can make its tensors equal to the saved ones.
    torch.manual_seed(2)
    module = build_module(make_cfg(f"encoder.name={name}", f"encoder.weights={path}"))
    assert_loaded(module, saved)
    fresh = encoder_state(name, seed=2)
    assert any(not torch.equal(fresh[k], saved[k]) for k in saved if saved[k].is_floating_point())


def test_safetensors_and_whole_model_state_dicts_load(make_cfg, tmp_path: Path) -> None:
    saved = encoder_state("resnet18")
    save_file(saved, tmp_path / "resnet18.safetensors")
    module = build_module(make_cfg(f"encoder.weights={tmp_path / 'resnet18.safetensors'}"))
    assert_loaded(module, saved)
    # A whole smp model's state dict (encoder., decoder., segmentation_head. keys): the encoder's.
    torch.manual_seed(3)
    whole = smp.Unet("resnet18", encoder_weights=None)
    torch.save(whole.state_dict(), tmp_path / "unet.pth")
    module = build_module(make_cfg(f"encoder.weights={tmp_path / 'unet.pth'}"))
    assert_loaded(module, whole.encoder.state_dict())


def _save(obj: object) -> Callable[[Path], None]:
    return lambda path: torch.save(obj, path)


def _text(path: Path) -> None:
    path.write_text("not a checkpoint\n")


RESNET18_KEYS = len(encoder_state("resnet18"))

# (what the file holds, how it is written, what the one-line message must say)
BAD_FILES = [
    (
        "another encoder",
        lambda p: torch.save(encoder_state("efficientnet-b0"), p),
        [
            f"{RESNET18_KEYS} missing key(s) (e.g. conv1.weight",
            "unexpected key(s) (e.g. _conv_stem",
        ],
    ),
    (
        "a deeper resnet",
        lambda p: torch.save(encoder_state("resnet34"), p),
        ["unexpected key(s) (e.g. layer1.2."],
    ),
    (
        "other input channels",
        lambda p: torch.save(encoder_state("resnet18", in_channels=1), p),
        ["1 shape mismatch(es) (e.g. conv1.weight (64, 1, 7, 7) in the file, (64, 3, 7, 7)"],
    ),
    ("a list", _save([1, 2]), ["hold a list, not a state dict"]),
    ("a non-tensor value", _save({"conv1.weight": 3}), ["'conv1.weight' holds a int"]),
    ("a pickled module", _save(torch.nn.Linear(2, 2)), ["pickled Python object (torch.nn"]),
    ("text", _text, ["Cannot read encoder weights"]),
]


@pytest.mark.parametrize(("what", "write", "says"), BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_a_file_that_does_not_fit_is_named_in_one_line(
    make_cfg, tmp_path: Path, what: str, write: Callable[[Path], None], says: list[str]
) -> None:
    path = tmp_path / "weights.pth"
    write(path)
    with pytest.raises(EncoderWeightsError) as err:
        build_module(make_cfg(f"encoder.weights={path}"))
    message = str(err.value)
    assert "\n" not in message and str(path) in message and "encoder.weights" in message
    for fragment in says:
        assert fragment in message
