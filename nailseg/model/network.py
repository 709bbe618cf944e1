"""Building the segmentation network from segmentation-models-pytorch, with clear errors.

Registries are plain dicts behind one lookup; a bad key lists the valid ones.
"""

from __future__ import annotations

import difflib
import logging
from pathlib import Path
from typing import Any

import segmentation_models_pytorch as smp
import torch
from torch import nn

from nailseg.errors import ConfigError, EncoderWeightsError

log = logging.getLogger(__name__)

ARCHITECTURES: dict[str, type[nn.Module]] = {
    "unet": smp.Unet,
    "unetplusplus": smp.UnetPlusPlus,
    "fpn": smp.FPN,
    "deeplabv3plus": smp.DeepLabV3Plus,
    "deeplabv3": smp.DeepLabV3,
    "linknet": smp.Linknet,
    "pspnet": smp.PSPNet,
    "manet": smp.MAnet,
    "pan": smp.PAN,
    "segformer": smp.Segformer,
    "upernet": smp.UPerNet,
}


def _unknown(kind: str, value: str, options: list[str], key: str) -> ConfigError:
    close = difflib.get_close_matches(value, options, n=3)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return ConfigError(
        f"Unknown {kind} {value!r} ({key}).{hint} Options: {', '.join(sorted(options))}."
    )


def check_encoder_name(name: str) -> None:
    options = list(smp.encoders.get_encoder_names())
    if name not in options:
        raise _unknown("encoder", name, options, "encoder.name")


def build_network(
    arch: str,
    encoder_name: str,
    encoder_weights: str | None = None,
    in_channels: int = 3,
    classes: int = 1,
    **arch_kwargs: Any,
) -> nn.Module:
    """Build an smp model that outputs ``(B, classes, H, W)`` logits.

    Args:
        arch: a key of :data:`ARCHITECTURES` (``unet``, ``fpn``, ...).
        encoder_name: any smp encoder name (``resnet18``, ``timm-efficientnet-b4``, ...).
        encoder_weights: ``None`` (random init), a pretrained name known to smp for this encoder
            (``imagenet``), or the path of a local encoder state dict
            (``.pth``/``.pt``/``.safetensors``).
        arch_kwargs: passed to the smp class; ``None`` values are dropped (library default).
    """
    if arch not in ARCHITECTURES:
        raise _unknown("architecture", arch, list(ARCHITECTURES), "model.arch")
    check_encoder_name(encoder_name)
    kwargs = {k: v for k, v in arch_kwargs.items() if v is not None}
    factory = ARCHITECTURES[arch]
    local_file = None
    if encoder_weights is not None and _looks_like_path(encoder_weights):
        local_file, encoder_weights = Path(encoder_weights).expanduser(), None
        if not local_file.is_file():
            raise EncoderWeightsError(
                f"Encoder weights file not found: {local_file} (encoder.weights). Give an existing"
                " state-dict file, encoder.weights=imagenet with a network, or"
                " encoder.weights=null."
            )
    elif encoder_weights is not None:
        known = list(smp.encoders.encoders[encoder_name].get("pretrained_settings", {}))
        if encoder_weights not in known:
            raise ConfigError(
                f"Encoder {encoder_name!r} has no pretrained weights named {encoder_weights!r}"
                f" (encoder.weights). Options: {', '.join(known) or 'none'}, a local file path, or"
                " null."
            )
    try:
        net = factory(
            encoder_name=encoder_name,
            encoder_weights=encoder_weights,
            in_channels=in_channels,
            classes=classes,
            **kwargs,
        )
    except (OSError, ConnectionError, RuntimeError) as err:
        if encoder_weights is None:
            raise
        raise EncoderWeightsError(
            f"Could not load {encoder_weights!r} weights for encoder {encoder_name!r}: {err}\n"
            "They are downloaded on first use, and this machine seems offline. Either: (1) run once"
            " with a network to fill the cache (HF_HOME / TORCH_HOME); (2) download the encoder's"
            " state dict elsewhere and pass encoder.weights=/path/to/file.pth; or (3) train from"
            " scratch with encoder.weights=null."
        ) from err
    except TypeError as err:
        raise ConfigError(
            f"Bad option for model.arch={arch}: {err}. Check the keys under model."
        ) from err
    if local_file is not None:
        load_encoder_weights(net.encoder, local_file)
    return net


def _looks_like_path(value: str) -> bool:
    return any(sep in value for sep in ("/", "\\")) or value.endswith(
        (".pth", ".pt", ".safetensors")
    )


def load_encoder_weights(encoder: nn.Module, path: Path) -> None:
    """Load a local encoder state dict (no pickled objects), failing on missing or extra keys."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any failure to read is a bad file for the user to fix
        raise EncoderWeightsError(f"Cannot read encoder weights {path}: {err}") from err
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    result = encoder.load_state_dict(state, strict=False)
    if result.missing_keys:
        raise EncoderWeightsError(
            f"Encoder weights {path} do not fit the encoder: {len(result.missing_keys)} missing"
            f" key(s), e.g. {result.missing_keys[:3]}. Was it saved from the same encoder.name?"
        )
    if result.unexpected_keys:
        log.warning(
            "Ignored %d unexpected key(s) in %s (e.g. %s)",
            len(result.unexpected_keys),
            path,
            result.unexpected_keys[:3],
        )
    log.info("Loaded encoder weights from %s", path)
